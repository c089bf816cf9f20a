"""PPKT pretraining on ScanNet as in the paper (Liu et al. 2021).

    python -m experiments.convert_weights --input resnet50-0676ba61.pth --arch resnet50 \
        --output /ckpt/teacher_r50
    python -m experiments.pretrain --config experiments/configs/ppkt_scannet.py \
        --workdir /ckpt/ppkt_scannet --config.data.manual_dir=/data/scannet \
        --config.ppkt.teacher.checkpoint=/ckpt/teacher_r50

Student: SR-UNet34 (Res16UNet34C, 2.5 cm voxels; `p2p_jax.models.sparse_unet`), as in the paper.
Data: ScanNet's SensReader export of the 1513 training scans, every 25th frame (about 100k
frames), 480x640. Teacher: ImageNet ResNet-50, frozen. Optimiser: SGD, lr 0.5, momentum 0.9,
weight decay 1e-4, batch 24, 60k iterations, cosine schedule, tau 0.04 (the paper).
Hardware: the paper used one V100; per-device batch 24 assumes one accelerator (set
--config.per_device_batch for more). Expected result: the paper reports +3.1 mIoU over scratch
on S3DIS Area 5 with SR-UNet and gains that grow as labels shrink.
`runlocal` shrinks it to tiny synthetic data on a CPU, to check the wiring.
"""

from p2p_jax.configs import pretrain as schema


def get_config(arg=None):
  c = schema.base()
  c.data.manual_dir = "/data/scannet"
  c.data.data_dir = "/data/tfds"
  # PPKT draws 4096 pairs over the batch of 24: 171 per frame (4104 in all).
  c.points.num_points = 16384
  c.ppkt.update(image_hw=(480, 640), num_pairs=171)
  c.student = "sr_unet34c"  # the paper's segmentation student, 2.5 cm voxels
  if arg == "runlocal":
    c.data.manual_dir = c.data.data_dir = ""  # tiny synthetic rooms instead of ScanNet
    schema.shrink_for_cpu(c, "/tmp/ppkt_scannet_runlocal")
    c.student = "sr_unet_tiny"
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'runlocal' or none")
  return c
