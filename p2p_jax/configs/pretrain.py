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
  c.checkpointing = ml_collections.ConfigDict(dict(every=1000, keep=3))  # saving
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
