"""Fine-tuning and linear probing (`p2p_jax.train.finetune`): the schema and its defaults.

`base()` is also the template a run's config is checked against.
"""

import math

import ml_collections

from p2p_jax.configs import common
from p2p_jax.train import config as config_lib


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


def rules() -> dict[str, config_lib.Rule]:
  """The rule of every key of `base()` (`p2p_jax.train.config`)."""
  r = config_lib
  return {
      "seed": r.integer(0),
      "data.dataset": r.choice(("scannet", "s3dis")), "data.val_area": r.integer(1, 6),
      "data.manual_dir": r.text(), "data.data_dir": r.text(),
      "init.checkpoint": r.text(), "student": common.student_rule(),
      "mode": r.choice(("finetune", "linear_probe")),
      "labels.fraction": r.number(0, 1, low_open=True), "labels.seed": r.integer(0),
      "labels.points_per_scene": r.integer(0),
      "crop.num_points": r.integer(1), "crop.size": r.positive(),
      "crop.max_rotation": r.number(0), "crop.scale_range": r.ordered_pair(r.positive()),
      "crop.jitter_sigma": r.number(0), "crop.jitter_clip": r.number(0),
      "crop.colors": r.flag(),
      "head.hidden": r.integer(1), "head.dropout": r.number(0, 1, high_open=True),
      "batch_size": r.integer(1), "total_steps": r.integer(1), "eval.batch_size": r.integer(1),
      "log_every": r.integer(1),
  } | common.synthetic_rules("data.synthetic") | common.sparse_rules() | (
      common.optimizer_rules())


def _checks(c: ml_collections.ConfigDict) -> list[str]:
  out = common.schedule_checks(c)
  if c.labels.points_per_scene and c.mode == "linear_probe":
    out.append(f"labels.points_per_scene = {c.labels.points_per_scene}: limited points are "
               "for mode 'finetune'; expected 0 with mode 'linear_probe'")
  return out


def check(config: ml_collections.ConfigDict) -> None:
  """Checks a fine-tuning config at start-up: its keys, every value and the cross-key
  constraints, all named in one error (`config_lib.check_config`)."""
  config_lib.check_config(config, base(), rules(), _checks)
