"""2D teacher training (`p2p_jax.train.teacher`): the schema and its defaults.

`base()` is also the template a run's config is checked against.
"""

import ml_collections

from p2p_jax.configs import common
from p2p_jax.train import config as config_lib


def base() -> ml_collections.ConfigDict:
  """The schema and defaults of every teacher config (the template it is checked against)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      manual_dir="data/rooms",   # a ScanNet-layout export with scannetv2_teacher.txt
      data_dir="data/tfds",      # the teacher's export and frames dataset go in a subfolder
      frames_config="skip25_labels",  # a scannet_frames config with 2D labels
      holdout_fraction=0.2,      # share of the teacher scenes held out for evaluation
      holdout_seed=0,
      # Generate synthetic rooms into manual_dir first when it has no scans/ (scenes > 0).
      synthetic=common.synthetic(frames_per_scene=20, height=120, width=160,
                                 val_fraction=0.15, teacher_fraction=0.2),
  ))
  c.arch = "resnet18"               # a key of p2p_jax.models.resnet.VARIANTS
  c.init = ml_collections.ConfigDict(dict(checkpoint=""))  # warm start: a converted ResNet
  c.head_layers = ("layer4",)       # 1x1 conv heads, upsampled and summed; add "layer3" for detail
  c.image_hw = (96, 128)
  c.augment = ml_collections.ConfigDict(dict(
      crop_scale=(0.35, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_probability=0.5,
      color_jitter=0.4, channel_shuffle_probability=0.5, grayscale_probability=0.2))
  c.optimizer = common.optimizer(learning_rate=2e-3, warmup_steps=20)
  # Loss weight of each class: (median frequency / frequency) ** power; 0 = plain CE.
  c.class_weight_power = 0.0
  c.batch_size = 16
  c.total_steps = 300
  c.log_every = 10
  # Held-out mIoU every `every` steps (a multiple of log_every; 0: at the end only).
  c.eval = ml_collections.ConfigDict(dict(batch_size=16, every=0))
  return c


def rules() -> dict[str, config_lib.Rule]:
  """The rule of every key of `base()` (`p2p_jax.train.config`)."""
  from p2p_jax.data import scannet_frames  # the frames configs; TFDS only when checking
  from p2p_jax.models import resnet
  r = config_lib
  return {
      "seed": r.integer(0), "data.manual_dir": r.text(), "data.data_dir": r.text(),
      "data.frames_config": r.choice([c.name for c in
                                      scannet_frames.ScannetFrames.BUILDER_CONFIGS
                                      if c.labels]),
      "data.holdout_fraction": r.number(0, 1, low_open=True, high_open=True),
      "data.holdout_seed": r.integer(0),
      "arch": r.choice(sorted(resnet.VARIANTS)), "init.checkpoint": r.text(),
      "head_layers": r.tuple_of(r.choice(("layer1", "layer2", "layer3", "layer4")),
                                (1, 2, 3, 4)),
      "image_hw": r.tuple_of(r.integer(16), (2,)),
      "augment.crop_scale": r.ordered_pair(r.number(0, 1, low_open=True)),
      "augment.crop_ratio": r.ordered_pair(r.positive()),
      "augment.flip_probability": r.number(0, 1), "augment.color_jitter": r.number(0, 1),
      "augment.channel_shuffle_probability": r.number(0, 1),
      "augment.grayscale_probability": r.number(0, 1),
      "class_weight_power": r.number(0),
      "batch_size": r.integer(1), "total_steps": r.integer(1), "log_every": r.integer(1),
      "eval.batch_size": r.integer(1), "eval.every": r.integer(0),
  } | common.synthetic_rules("data.synthetic") | common.optimizer_rules()


def _checks(c: ml_collections.ConfigDict) -> list[str]:
  out = common.schedule_checks(c)
  if c.eval.every and c.eval.every % c.log_every:
    out.append(f"eval.every = {c.eval.every}: expected a multiple of log_every "
               f"({c.log_every}); the held-out mIoU is measured on logged steps")
  return out


def check(config: ml_collections.ConfigDict) -> None:
  """Checks a teacher config at start-up: its keys, every value and the cross-key
  constraints, all named in one error (`config_lib.check_config`)."""
  config_lib.check_config(config, base(), rules(), _checks)
