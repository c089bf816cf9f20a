"""A 2D teacher for PPKT on the synthetic rooms: ResNet + per-pixel ScanNet-20 segmentation.

    python -m datasets.synthetic_rooms.generate --out data/rooms --scenes 60 \
        --frames-per-scene 20 --height 120 --width 160 --val-fraction 0.15 \
        --teacher-fraction 0.2
    python -m experiments.train_teacher --config experiments/configs/teacher_synthetic.py \
        --workdir /tmp/teacher_synthetic
    python -m experiments.pretrain --config experiments/configs/ppkt_synthetic.py \
        --workdir /tmp/ppkt_synthetic --config.ppkt.teacher.arch=resnet18 \
        --config.ppkt.teacher.checkpoint=/tmp/teacher_synthetic/teacher
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
`<workdir>/teacher` is what `ppkt.teacher.checkpoint` of pretraining expects, with
`ppkt.teacher.arch` = `arch`.
"""

from p2p_jax.configs import teacher as schema


def get_config(arg=None):
  c = schema.base()
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
    c.eval.batch_size = 4
    c.log_every = 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'runlocal' or none")
  return c
