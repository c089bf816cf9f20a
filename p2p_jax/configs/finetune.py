"""Fine-tuning and linear probing (`p2p_jax.train.finetune`): the schema and its defaults.

`base()` is also the template a run's config is checked against.
"""

import math

import ml_collections

from p2p_jax.configs import common


def base() -> ml_collections.ConfigDict:
  """The schema and defaults of every fine-tuning config (the template it is checked against)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # initialisation of the head, crops and dropout
  c.data = ml_collections.ConfigDict(dict(
      # "scannet": scannet_scenes (20 classes, splits from scannetv2_{train,val}.txt);
      # "s3dis": the s3dis dataset (13 classes), `val_area` held out, the other areas train.
      dataset="scannet",
      val_area=5,
      manual_dir="data/rooms",  # the export (ScanNet layout, or the folder holding S3DIS)
      data_dir="data/tfds",     # the TFDS data dir the dataset is built into
      # Generate synthetic rooms into manual_dir first when it has none (scenes > 0).
      synthetic=common.synthetic(height=48, width=64),
  ))
  c.init = ml_collections.ConfigDict(dict(checkpoint=""))  # pretraining work dir; "" = scratch
  c.student = "pointnet2_tiny"  # a key of p2p_jax.models.STUDENTS
  c.sparse = common.sparse()  # SR-UNet students only
  c.mode = "finetune"           # or "linear_probe"
  # Limited annotations: `fraction` of the training scenes (limited scenes), and of each of
  # those scenes only `points_per_scene` labelled points (limited points; 0 = all). Both
  # subsets are nested and fixed by `seed`, and written to the work dir (label_lists.json).
  c.labels = ml_collections.ConfigDict(dict(fraction=1.0, seed=0, points_per_scene=0))
  c.crop = ml_collections.ConfigDict(dict(
      num_points=2048, size=3.0, max_rotation=math.pi, scale_range=(0.9, 1.1),
      jitter_sigma=0.005, jitter_clip=0.02,
      colors=True))  # False: the student sees geometry only (constant grey colour input)
  c.head = ml_collections.ConfigDict(dict(hidden=64, dropout=0.3))  # finetune mode only
  c.optimizer = common.optimizer(warmup_steps=10)
  c.batch_size = 8
  c.total_steps = 250
  c.eval = ml_collections.ConfigDict(dict(batch_size=16))
  c.log_every = 10
  return c


def paper_sgd(optimizer: ml_collections.ConfigDict) -> None:
  """Sets `optimizer` to the paper code's fine-tuning optimiser: SGD lr 0.1, momentum 0.9,
  dampening 0.1, weight decay 1e-4, PolyLR power 0.9, no warm-up."""
  optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9, dampening=0.1,
                   weight_decay=1e-4, schedule="poly", power=0.9, warmup_steps=0)
