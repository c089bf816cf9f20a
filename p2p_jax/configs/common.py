"""Sub-configs every stage's schema shares, so each idea is spelled once."""

import ml_collections


def synthetic(**overrides) -> ml_collections.ConfigDict:
  """`data.synthetic`: rooms generated into `data.manual_dir` when it has no scans/ and
  `scenes` > 0 (`p2p_jax.data.synthetic.generate`'s keywords)."""
  return ml_collections.ConfigDict(dict(
      scenes=0, frames_per_scene=1, height=240, width=320, seed=0, val_fraction=0.2,
      teacher_fraction=0.0, points_per_m2=1000.0) | overrides)


def optimizer(**overrides) -> ml_collections.ConfigDict:
  """`optimizer`: "sgd" (with momentum, optionally dampened) or "adamw" on a warm-up + cosine
  or poly schedule (`p2p_jax.train.state.OptimizerConfig`)."""
  return ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-2, weight_decay=1e-4, momentum=0.9, dampening=0.0,
      warmup_steps=0, schedule="cosine", power=0.9) | overrides)


def sparse(**overrides) -> ml_collections.ConfigDict:
  """`sparse`: the SR-UNet students' settings (`p2p_jax.models.backbone_kwargs`; other students
  ignore them): voxel edge in metres (0: the student's default), convolutions ("pairs" on
  CPU/GPU, "dense" on TPU; see `p2p_jax.sparse.conv`), pair slots per voxel slot of levels 0-4,
  and the voxel capacities of levels 1-4 as fractions of level 0's (empty: the student's)."""
  return ml_collections.ConfigDict(dict(
      voxel_size=0.0, conv_impl="pairs", pairs_per_voxel=(4.0, 8.0, 11.0, 12.0, 14.0),
      coarse_capacity_ratios=()) | overrides)
