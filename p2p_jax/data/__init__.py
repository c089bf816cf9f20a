"""Readers of prepared datasets and the pretraining input pipeline (numpy in, numpy out).

    labels     NYU40 ids and the 20 ScanNet benchmark classes
    scannet    the ScanNet export layout on disk: read and write frames, intrinsics, meshes
    pipeline   frames -> fixed-shape pixel-point batches with 2D/3D augmentations
"""
