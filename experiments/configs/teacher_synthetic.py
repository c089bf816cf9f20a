"""A 2D teacher for PPKT on the synthetic rooms: ResNet + per-pixel ScanNet-20 segmentation.

    python -m datasets.synthetic_rooms.generate --out data/rooms --scenes 60 \
        --frames-per-scene 20 --height 120 --width 160 --val-fraction 0.15 \
        --teacher-fraction 0.2
    python -m experiments.train_teacher --config experiments/configs/teacher_synthetic.py \
        --workdir /tmp/teacher_synthetic
    python -m experiments.pretrain --config experiments/configs/ppkt_synthetic.py \
        --workdir /tmp/ppkt_synthetic --config.teacher.arch=resnet18 \
        --config.teacher.checkpoint=/tmp/teacher_synthetic/teacher
    python -m experiments.train_teacher --config experiments/configs/teacher_synthetic.py:runlocal \
        --workdir /tmp/teacher_local     # seconds on a 2-core CPU, tiny generated rooms

The teacher learns from the 2D labels of the scenes in `scannetv2_teacher.txt` only
(`--teacher-fraction`), disjoint from the scenes used for pretraining and fine-tuning; a share
of them (`data.holdout_fraction`) is held out for the reported 2D scores.

Hardware: a 2-core CPU. Runtime: about 3 minutes (300 steps of ResNet-18 on batches of 16
crops at 96x128, measured on the 60 rooms of the command above: 12 teacher scenes of 20
frames, 10 for training and 2 held out). Expected result on those rooms: the loss falls from
about 2.3 to about 1.0; on the held-out teacher frames pixel accuracy 0.61 and mIoU 0.11
(wall, floor and window learnt first). More teacher scenes give a better teacher: colours are
drawn per object, so the classes must be learnt from shape. The checkpoint in
`<workdir>/teacher` is what `config.teacher.checkpoint` of pretraining expects, with
`teacher.arch` = `arch`.
"""

import ml_collections


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
      synthetic=ml_collections.ConfigDict(dict(
          scenes=0, frames_per_scene=20, height=120, width=160, seed=0, val_fraction=0.15,
          teacher_fraction=0.2, points_per_m2=1000.0)),
  ))
  c.arch = "resnet18"               # a key of p2p_jax.models.resnet.VARIANTS
  c.init_checkpoint = ""            # optional warm start: a converted ResNet checkpoint
  c.head_layers = ("layer4",)       # 1x1 conv heads, upsampled and summed; add "layer3" for detail
  c.image_hw = (96, 128)
  c.augment = ml_collections.ConfigDict(dict(
      crop_scale=(0.35, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_probability=0.5,
      color_jitter=0.4, channel_shuffle_probability=0.5, grayscale_probability=0.2))
  c.optimizer = ml_collections.ConfigDict(dict(name="adamw", learning_rate=2e-3,
                                               weight_decay=1e-4, momentum=0.9,
                                               warmup_steps=20))
  # Loss weight of each class: (median frequency / frequency) ** power; 0 = plain CE.
  c.class_weight_power = 0.0
  c.batch_size = 16
  c.total_steps = 300
  c.eval_batch_size = 16
  c.log_every = 10
  c.eval_every = 0  # held-out mIoU every this many steps (a multiple of log_every); 0: at the end
  return c


def get_config(arg=None):
  c = base()
  if arg == "runlocal":
    c.data.manual_dir = "/tmp/teacher_runlocal/rooms"
    c.data.data_dir = "/tmp/teacher_runlocal/tfds"
    c.data.synthetic.update(scenes=4, frames_per_scene=4, height=48, width=64,
                            val_fraction=0.25, teacher_fraction=0.5, points_per_m2=50.0)
    c.arch = "tiny"
    c.image_hw = (32, 48)
    c.batch_size = 4
    c.total_steps = 30
    c.optimizer.warmup_steps = 0
    c.optimizer.learning_rate = 1e-2
    c.eval_batch_size = 4
    c.log_every = 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'runlocal' or none")
  return c
