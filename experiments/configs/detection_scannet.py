"""ScanNet 3D object detection with VoteNet, the paper's second table, and its label-efficient
settings.

    python -m experiments.finetune_detection --config experiments/configs/detection_scannet.py \
        --workdir /tmp/det_scannet_ppkt --config.init.checkpoint=/tmp/ppkt_scannet \
        --config.data.manual_dir=/data/scannet [--config.labels.fraction=0.1]
    python -m experiments.finetune_detection \
        --config experiments/configs/detection_scannet.py:runlocal --workdir /tmp/det_local

The VoteNet protocol on ScanNet: 18 classes, axis-aligned boxes (one heading bin) from the
instance annotation after `axisAlignment`; 40k points per scene, flips in x and y and up to 5
degrees of rotation; 1024 seeds, 256 proposals; Adam at 1e-3 without weight decay, batch 8,
180 epochs of the 1201 training scenes (27k steps); per-class NMS at IoU 0.25 and mAP at IoU
0.25 and 0.5 over the 312 val scenes. The backbone is the pretrained student: the paper used a
sparse-convolution backbone (5 cm voxels, 20k points in the authors' VoteNet configuration),
so `student` is SR-UNet34C at 5 cm with 20k points; `--config.student=pointnet2_seg
--config.points.num_points=40000` is VoteNet's own PointNet++ setting. The learning rate
drops tenfold at epochs 80, 120 and 160, as VoteNet's (its BatchNorm momentum decay is not
reproduced).
Paper (mAP@0.25 / @0.5): scratch 56.50 / 34.54, PointContrast 58.30 / 36.26, PPKT 59.67 /
38.90. Label-efficient: `labels.fraction` 0.01, 0.05, 0.1 of the training scenes, nested
and fixed by `labels.seed`.
Hardware: sized for accelerators; `runlocal` runs the same path on tiny generated rooms.
"""

from p2p_jax.configs import detection as schema

EPOCHS, TRAIN_SCENES = 180, 1201


def get_config(arg=None):
  c = schema.base()
  c.data.manual_dir = "data/scannet"
  c.student = "sr_unet34c"
  c.sparse.voxel_size = 0.05
  c.points.num_points = 20_000
  c.batch_size = 8
  c.total_steps = EPOCHS * TRAIN_SCENES // c.batch_size
  c.optimizer.update(schedule="step", boundaries=(80 / EPOCHS, 120 / EPOCHS, 160 / EPOCHS),
                     decay=0.1)
  c.log_every = 50
  if arg == "runlocal":
    c.data.manual_dir = "/tmp/detection_scannet_runlocal/rooms"
    c.data.data_dir = "/tmp/detection_scannet_runlocal/tfds"
    c.data.synthetic.update(scenes=4, frames_per_scene=1, val_fraction=0.25,
                            points_per_m2=100.0)
    c.student = "pointnet2_tiny"
    c.points.num_points = 1024
    c.model.update(num_seeds=128, num_proposals=32, hidden=32)
    c.batch_size = 2
    c.total_steps = 30
    c.optimizer.learning_rate = 3e-3
    c.eval.batch_size = 2
    c.log_every = 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'runlocal' or none")
  return c
