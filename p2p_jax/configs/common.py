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
