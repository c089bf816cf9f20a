"""3D object detection (`p2p_jax.train.detection`): the schema, its defaults and its rules.

`base()` is also the template a run's config is checked against (`check`).
"""

import math

import ml_collections

from p2p_jax.configs import common
from p2p_jax.train import config as config_lib


def base() -> ml_collections.ConfigDict:
  """The schema and defaults of every detection config: VoteNet's ScanNet settings."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # initialisation of the heads and the samples
  c.data = ml_collections.ConfigDict(dict(
      dataset="scannet",        # scannet_boxes (ScanNet, or synthetic rooms in its layout)
      manual_dir="data/rooms",  # the export (ScanNet layout)
      data_dir="data/tfds",     # the TFDS data dir scannet_boxes is built into
      # Generate synthetic rooms into manual_dir first when it has none (scenes > 0).
      synthetic=common.synthetic(height=48, width=64),
  ))
  c.init = ml_collections.ConfigDict(dict(checkpoint=""))  # pretraining work dir; "" = scratch
  c.student = "pointnet2_seg"  # a key of p2p_jax.models.STUDENTS
  c.sparse = common.sparse()   # SR-UNet students only
  # Limited annotations: boxes of `fraction` of the training scenes (nested, fixed by seed,
  # written to the work dir as label_lists.json).
  c.labels = ml_collections.ConfigDict(dict(fraction=1.0, seed=0))
  # Samples (VoteNet's ScanNet loader): points per scene, flips in x and y, rotation about z
  # up to 5 degrees, no scaling; colours as the student's input (grey without).
  c.points = ml_collections.ConfigDict(dict(
      num_points=40_000, flip=True, max_rotation=math.pi / 36, scale_range=(1.0, 1.0),
      colors=True))
  c.boxes = ml_collections.ConfigDict(dict(max_boxes=64))  # padded GT boxes per scene
  # VoteNet: 1024 seeds, 256 proposals, vote balls of 0.3 m with 16 votes, 128-wide heads;
  # one heading bin for axis-aligned boxes (ScanNet), 12 for oriented ones (SUN RGB-D).
  c.model = ml_collections.ConfigDict(dict(
      num_seeds=1024, num_proposals=256, vote_radius=0.3, vote_nsample=16, hidden=128,
      num_heading_bins=1))
  c.loss = ml_collections.ConfigDict(dict(near_threshold=0.3, far_threshold=0.6))
  c.optimizer = common.optimizer(name="adamw", learning_rate=1e-3, weight_decay=0.0)
  c.batch_size = 8
  c.total_steps = 1000
  # VoteNet's evaluation: objectness > conf_threshold, per-class 3D NMS at nms_iou.
  c.eval = ml_collections.ConfigDict(dict(batch_size=8, nms_iou=0.25, conf_threshold=0.05))
  c.log_every = 10
  return c


def rules() -> dict[str, config_lib.Rule]:
  """The rule of every key of `base()` (`p2p_jax.train.config`)."""
  r = config_lib
  return {
      "seed": r.integer(0), "data.dataset": r.choice(("scannet",)),
      "data.manual_dir": r.text(), "data.data_dir": r.text(), "init.checkpoint": r.text(),
      "student": common.student_rule(),
      "labels.fraction": r.number(0, 1, low_open=True), "labels.seed": r.integer(0),
      "points.num_points": r.integer(1), "points.flip": r.flag(),
      "points.max_rotation": r.number(0, math.pi), "points.scale_range":
      r.ordered_pair(r.positive()), "points.colors": r.flag(),
      "boxes.max_boxes": r.integer(1),
      "model.num_seeds": r.integer(1), "model.num_proposals": r.integer(1),
      "model.vote_radius": r.positive(), "model.vote_nsample": r.integer(1),
      "model.hidden": r.integer(1), "model.num_heading_bins": r.integer(1),
      "loss.near_threshold": r.positive(), "loss.far_threshold": r.positive(),
      "batch_size": r.integer(1), "total_steps": r.integer(1), "log_every": r.integer(1),
      "eval.batch_size": r.integer(1), "eval.nms_iou": r.number(0, 1),
      "eval.conf_threshold": r.number(0, 1, high_open=True),
  } | common.synthetic_rules("data.synthetic") | common.sparse_rules() | (
      common.optimizer_rules())


def _checks(c: ml_collections.ConfigDict) -> list[str]:
  out = common.schedule_checks(c)
  if c.model.num_seeds > c.points.num_points:
    out.append(f"model.num_seeds = {c.model.num_seeds}: expected <= points.num_points "
               f"({c.points.num_points})")
  if c.model.num_proposals > c.model.num_seeds:
    out.append(f"model.num_proposals = {c.model.num_proposals}: expected <= model.num_seeds "
               f"({c.model.num_seeds})")
  if c.loss.near_threshold > c.loss.far_threshold:
    out.append(f"loss.near_threshold = {c.loss.near_threshold}: expected <= "
               f"loss.far_threshold ({c.loss.far_threshold})")
  return out


def check(config: ml_collections.ConfigDict) -> None:
  """Checks a detection config at start-up: its keys, every value and the cross-key
  constraints, all named in one error (`config_lib.check_config`)."""
  config_lib.check_config(config, base(), rules(), _checks)
