"""S3DIS semantic segmentation, Area 5 held out: SR-UNet34C at 5 cm, the paper's headline.

    python -m experiments.finetune --config experiments/configs/finetune_s3dis.py \
        --workdir /tmp/s3dis_ppkt --config.init.checkpoint=/tmp/ppkt_scannet \
        --config.data.manual_dir=/data/s3dis      # holds Stanford3dDataset_v1.2_Aligned_Version
    python -m experiments.finetune --config experiments/configs/finetune_s3dis.py:runlocal \
        --workdir /tmp/s3dis_local     # a minute on a 2-core CPU, tiny generated rooms

The data: `python -m datasets.s3dis.build` (run by the script when not built), 13 classes,
Areas 1-4 and 6 train, Area 5 is evaluated on every point of its rooms. The optimiser is the
one of the S3DIS fine-tuning configuration of the paper's code: SGD, lr 0.1, momentum 0.9,
dampening 0.1, weight decay 1e-4, PolyLR (power 0.9), 15k iterations of batch 32. A training
crop is a column of at most 12 m of a room with up to 80k of its points (rooms at 5 cm have
fewer voxels than that). Paper: 65.16 mIoU from scratch, 68.28 after PPKT.
Hardware: sized for accelerators (batch 32 of 80k points); the `runlocal` variant runs the
same code path with `sr_unet_tiny` on six generated rooms.
"""

from p2p_jax.configs import finetune as schema


def get_config(arg=None):
  c = schema.base()
  c.data.dataset = "s3dis"
  c.data.val_area = 5
  c.data.manual_dir = "data/s3dis"
  c.student = "sr_unet34c"
  c.sparse.voxel_size = 0.05
  c.crop.num_points = 80_000
  c.crop.size = 12.0
  c.head.update(hidden=96, dropout=0.0)
  schema.paper_sgd(c.optimizer)
  c.batch_size = 32
  c.total_steps = 15_000
  c.eval.batch_size = 4
  c.log_every = 50
  if arg == "runlocal":
    c.data.manual_dir = "/tmp/finetune_s3dis_runlocal/s3dis"
    c.data.data_dir = "/tmp/finetune_s3dis_runlocal/tfds"
    c.data.synthetic.update(scenes=6, points_per_m2=60.0)
    c.student = "sr_unet_tiny"
    c.sparse.voxel_size = 0.0  # the tiny student's 10 cm
    c.crop.update(num_points=512, size=3.0)
    c.head.hidden = 16
    c.batch_size = 4
    c.total_steps = 30
    c.optimizer.learning_rate = 0.05
    c.log_every = 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'runlocal' or none")
  return c
