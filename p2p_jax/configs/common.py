"""Sub-configs every stage's schema shares, so each idea is spelled once."""

import ml_collections

from p2p_jax import models
from p2p_jax.train import config as config_lib


def synthetic(**overrides) -> ml_collections.ConfigDict:
  """`data.synthetic`: rooms generated into `data.manual_dir` when it has no scans/ and
  `scenes` > 0 (`p2p_jax.data.synthetic.generate`'s keywords)."""
  return ml_collections.ConfigDict(dict(
      scenes=0, frames_per_scene=1, height=240, width=320, seed=0, val_fraction=0.2,
      teacher_fraction=0.0, points_per_m2=1000.0) | overrides)


def optimizer(**overrides) -> ml_collections.ConfigDict:
  """`optimizer`: "sgd" (with momentum, optionally dampened) or "adamw" on a warm-up + cosine,
  poly or step schedule (`p2p_jax.train.state.OptimizerConfig`)."""
  return ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-2, weight_decay=1e-4, momentum=0.9, dampening=0.0,
      warmup_steps=0, schedule="cosine", power=0.9, boundaries=(), decay=0.1) | overrides)


def sparse(**overrides) -> ml_collections.ConfigDict:
  """`sparse`: the SR-UNet students' settings (`p2p_jax.models.backbone_kwargs`; other students
  ignore them): voxel edge in metres (0: the student's default), convolutions ("pairs" on
  CPU/GPU, "dense" on TPU; see `p2p_jax.sparse.conv`), pair slots per voxel slot of levels 0-4,
  and the voxel capacities of levels 1-4 as fractions of level 0's (empty: the student's)."""
  return ml_collections.ConfigDict(dict(
      voxel_size=0.0, conv_impl="pairs", pairs_per_voxel=(4.0, 8.0, 11.0, 12.0, 14.0),
      coarse_capacity_ratios=()) | overrides)


# The rules of the blocks above (`p2p_jax.train.config`), by dotted path under the block.

def synthetic_rules(at: str) -> dict[str, config_lib.Rule]:
  """Rules of a `synthetic` block placed at `at` (e.g. "data.synthetic")."""
  return _under(at, {
      "scenes": config_lib.integer(0), "frames_per_scene": config_lib.integer(0),
      "height": config_lib.integer(8), "width": config_lib.integer(8),
      "seed": config_lib.integer(0),
      "val_fraction": config_lib.number(0, 1, high_open=True),
      "teacher_fraction": config_lib.number(0, 1, high_open=True),
      "points_per_m2": config_lib.positive()})


def optimizer_rules(at: str = "optimizer") -> dict[str, config_lib.Rule]:
  """Rules of an `optimizer` block."""
  return _under(at, {
      "name": config_lib.choice(("sgd", "adamw")), "learning_rate": config_lib.positive(),
      "weight_decay": config_lib.number(0), "momentum": config_lib.number(0, 1, high_open=True),
      "dampening": config_lib.number(0, 1, high_open=True),
      "warmup_steps": config_lib.integer(0),
      "schedule": config_lib.choice(("cosine", "poly", "step")),
      "power": config_lib.positive(),
      "boundaries": config_lib.tuple_of(config_lib.number(0, 1, low_open=True)),
      "decay": config_lib.number(0, 1, low_open=True)})


def sparse_rules(at: str = "sparse") -> dict[str, config_lib.Rule]:
  """Rules of a `sparse` block."""
  return _under(at, {
      "voxel_size": config_lib.number(0),
      "conv_impl": config_lib.choice(("pairs", "dense")),
      "pairs_per_voxel": config_lib.tuple_of(config_lib.positive(), (5,)),
      "coarse_capacity_ratios": config_lib.tuple_of(config_lib.positive(), (0, 4))})


def student_rule() -> config_lib.Rule:
  """A key of `p2p_jax.models.STUDENTS`."""
  return config_lib.choice(sorted(models.STUDENTS))


def schedule_checks(c: ml_collections.ConfigDict) -> list[str]:
  """The warm-up must end within the run."""
  if c.optimizer.warmup_steps > c.total_steps:
    return [f"optimizer.warmup_steps = {c.optimizer.warmup_steps}: expected <= total_steps "
            f"({c.total_steps})"]
  return []


def _under(at: str, rules: dict[str, config_lib.Rule]) -> dict[str, config_lib.Rule]:
  return {f"{at}.{key}": rule for key, rule in rules.items()}
