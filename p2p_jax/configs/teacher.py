"""2D teacher training (`p2p_jax.train.teacher`): the schema and its defaults.

`base()` is also the template a run's config is checked against.
"""

import ml_collections

from p2p_jax.configs import common


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
