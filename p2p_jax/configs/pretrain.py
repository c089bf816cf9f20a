"""Pretraining (`p2p_jax.train.pretrain`): the schema and PPKT's paper defaults.

`base()` is also the template a run's config is checked against: a key that is not here is an
error, so a typo cannot silently fall back to a default. `shrink_for_cpu` is the `runlocal`
variant of any pretraining experiment.
"""

import copy
import math

import ml_collections

from p2p_jax import methods
from p2p_jax.configs import common
from p2p_jax.train import config as config_lib


def base(method: str = "ppkt") -> ml_collections.ConfigDict:
  """The schema of a pretraining run with `method` ("ppkt", or "pointcontrast", the 3D-to-3D
  baseline): the shared keys and that method's sub-config only."""
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      manual_dir="",           # a ScanNet export, or where synthetic rooms are generated
      data_dir="",             # the TFDS data dir scannet_frames is built into
      frames_config="skip25",  # every 25th frame, as in the paper
      split="train",
      # Generate synthetic rooms into manual_dir first when it has no scans/ (scenes > 0).
      synthetic=common.synthetic(frames_per_scene=0),
  ))
  # The student's clouds, in every method: N points per frame (or view), rotated about z,
  # scaled; with colors False the student sees geometry only (constant grey colour input).
  c.points = ml_collections.ConfigDict(dict(
      num_points=8192, max_rotation=math.pi, scale_range=(0.9, 1.1), colors=True))
  # The method's own settings, under its name (`p2p_jax.methods.<method>.config()`).
  c[method] = methods.get(method).config()
  c.student = "pointnet2_seg"
  c.sparse = common.sparse()  # SR-UNet students only
  c.projection_dim = 128
  c.loss = ml_collections.ConfigDict(dict(temperature=0.04, global_negatives=True,
                                          symmetric=False))
  c.optimizer = common.optimizer(name="sgd", learning_rate=0.5)
  c.per_device_batch = 24
  c.total_steps = 60_000
  c.log_every = 50
  # Saving; fallback: resume from the newest checkpoint that restores, setting damaged newer
  # ones aside (False: a damaged latest checkpoint stops the run; `p2p_jax.train.loop`).
  c.checkpointing = ml_collections.ConfigDict(dict(every=1000, keep=3, fallback=True))
  return c


def shrink_for_cpu(c: ml_collections.ConfigDict, workdir_hint: str) -> None:
  """The `runlocal` variant: the same experiment, small enough to run in seconds on a CPU."""
  c.data.synthetic.update(scenes=2, frames_per_scene=8, height=48, width=64, val_fraction=0.0)
  c.data.frames_config = "skip1"
  c.data.manual_dir = c.data.manual_dir or f"{workdir_hint}/rooms"
  c.data.data_dir = c.data.data_dir or f"{workdir_hint}/tfds"
  c.points.num_points = 256
  if "ppkt" in c:
    c.ppkt.update(image_hw=(48, 64), num_pairs=128)
    c.ppkt.teacher.arch = "tiny"
  c.student = "pointnet2_tiny"
  c.projection_dim = 16
  c.per_device_batch = 1
  c.total_steps = 20
  c.log_every = 1
  c.checkpointing.update(every=5, keep=2)


def switch_method(c: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """`c` for another method: every shared key as in `c`, the method's sub-config its
  defaults (e.g. PointContrast with PPKT's data, student, optimiser and budget)."""
  out = base(method)
  for key in c.keys():
    if key in out and key not in ("method", method):
      out[key] = copy.deepcopy(c[key])
  return out


def rules(method: str = "ppkt") -> dict[str, config_lib.Rule]:
  """The rule of every key of `base(method)` (`p2p_jax.train.config`)."""
  from p2p_jax.data import scannet_frames  # the frames configs; TFDS only when checking
  from p2p_jax.models import resnet
  r = config_lib
  out = {
      "method": r.choice(methods.names()), "seed": r.integer(0),
      "data.manual_dir": r.text(), "data.data_dir": r.text(),
      "data.frames_config": r.choice([c.name for c in
                                      scannet_frames.ScannetFrames.BUILDER_CONFIGS]),
      "data.split": r.text(),
      "points.num_points": r.integer(1), "points.max_rotation": r.number(0),
      "points.scale_range": r.ordered_pair(r.positive()), "points.colors": r.flag(),
      "student": common.student_rule(), "projection_dim": r.integer(1),
      "loss.temperature": r.positive(), "loss.global_negatives": r.flag(),
      "loss.symmetric": r.flag(),
      "per_device_batch": r.integer(1), "total_steps": r.integer(1), "log_every": r.integer(1),
      "checkpointing.every": r.integer(1), "checkpointing.keep": r.integer(1),
      "checkpointing.fallback": r.flag(),
  } | common.synthetic_rules("data.synthetic") | common.sparse_rules() | (
      common.optimizer_rules())
  if method == "ppkt":
    out |= {
        "ppkt.image_hw": r.tuple_of(r.integer(16), (2,)), "ppkt.num_pairs": r.integer(1),
        "ppkt.crop_scale": r.ordered_pair(r.number(0, 1, low_open=True)),
        "ppkt.flip_probability": r.number(0, 1), "ppkt.views_per_frame": r.integer(0),
        "ppkt.jitter_sigma": r.number(0), "ppkt.jitter_clip": r.number(0),
        "ppkt.teacher.arch": r.choice(sorted(resnet.VARIANTS)),
        "ppkt.teacher.checkpoint": r.text(),
        "ppkt.teacher.layer": r.choice(("layer3", "layer4")),
        "ppkt.teacher.cache": r.flag(), "ppkt.teacher.cache_dir": r.text()}
  if method == "pointcontrast":
    out |= {
        "pointcontrast.voxel_size": r.positive(),
        "pointcontrast.match_radius_voxels": r.positive(),
        "pointcontrast.min_overlap": r.number(0, 1), "pointcontrast.max_frame_distance":
        r.integer(0), "pointcontrast.num_matches": r.integer(1),
        "pointcontrast.full_rotation": r.flag()}
  return out


def _checks(c: ml_collections.ConfigDict) -> list[str]:
  out = common.schedule_checks(c)
  if c.method == "ppkt":
    height, width = c.ppkt.image_hw
    if not c.ppkt.num_pairs <= c.points.num_points <= height * width:
      out.append(f"ppkt.num_pairs = {c.ppkt.num_pairs}, points.num_points = "
                 f"{c.points.num_points}, ppkt.image_hw = {tuple(c.ppkt.image_hw)}: expected "
                 f"num_pairs <= num_points <= H * W ({height * width})")
    if c.ppkt.teacher.cache and not c.ppkt.views_per_frame:
      out.append("ppkt.teacher.cache = True: expected ppkt.views_per_frame > 0 (the cache "
                 "holds the features of fixed views)")
  return out


def check(config: ml_collections.ConfigDict) -> None:
  """Checks a pretraining config at start-up: its keys, every value and the cross-key
  constraints, all named in one error (`config_lib.check_config`)."""
  method = config.get("method")
  if method not in methods.names():
    raise ValueError(f"invalid config:\n  method = {method!r}: expected one of "
                     f"{methods.names()}")
  config_lib.check_config(config, base(method), rules(method), _checks)
