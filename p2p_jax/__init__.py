"""p2p_jax: contrastive pixel-to-point knowledge transfer (PPKT) in JAX/Flax.

Liu et al., "Learning from 2D: Contrastive Pixel-to-Point Knowledge Transfer for 3D
Pretraining", arXiv 2104.04687 (2021).

Importing the package does no work and pulls in nothing heavy; import the submodule you need:

    geometry     back-projection, projection, intrinsics updates, rigid transforms, voxels
    pointops     farthest point sampling, kNN, ball query, grouping, interpolation, pooling
    losses       pixel-to-point InfoNCE (PPKT) and PointInfoNCE (PointContrast)
    sparse       sparse tensors and sparse convolution
    boxes        3D boxes (cx, cy, cz, dx, dy, dz, heading): IoU, NMS, VOC-style mAP
    checkpoints  `load_student`: a pretrained student from an Orbax checkpoint
    models, methods, tasks, train, data, configs   networks, pretraining methods,
                 downstream tasks, training stages, data and preparation, config schemas
                 (docs/architecture.md)

Legend (one name per idea, used everywhere):

    image         [B, H, W, 3]   RGB, uint8
    depth         [B, H, W]      raw depth (uint16 millimetres or float), see `depth_scale`
    depth_intrinsics, color_intrinsics
                  [B, 3, 3]      pinhole matrices [[fx, s, cx], [0, fy, cy], [0, 0, 1]]
    color_from_depth  [B, 4, 4]  rigid transform from the depth to the colour camera
    cam_to_world  [B, 4, 4]      rigid camera-to-world pose (ScanNet `pose/<f>.txt`)
    points        [B, N, 3]      xyz, float32
    point_mask    [B, N]         True for real points, False for padding
    pair_pixels   [B, K, 2]      (row, col) of each pixel-point pair, int32
    pair_points   [B, K]         index into the N points of each pair
    pair_mask     [B, K]         True for real pairs, False for padding
    match_points  [B, K, 2]      PointContrast: a match's point index in view 0 and in view 1
    match_mask    [B, K]         True for real matches

Pixels are addressed as (row v, column u); integer coordinates are pixel centres, so an image
of height H covers rows [-0.5, H - 0.5).
"""

__version__ = "0.1.0"
