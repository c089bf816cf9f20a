"""The main job (`make demo`): does PPKT pretraining make 3D segmentation label-efficient?

    python -m experiments.demo                      # the full study, <= 30 min on a 2-core CPU
    python -m experiments.demo --config experiments/configs/demo.py:runlocal \
        --workdir /tmp/demo_local --results /tmp/demo_local/results   # tiny, about 2 minutes

Synthetic world (scenes disjoint between the teacher's split, the training scenes and the
val scenes) -> a ResNet-18 teacher trained on the 2D labels of its own scenes -> PPKT
pretraining of the PointNet++ student with that frozen teacher, and PointContrast on the same
frames with the same student and budget -> fine-tuning from scratch / PointContrast / PPKT at
1, 5, 10, 25 and 100% of the training scenes' labels (3 seeds below 25%) and linear probes
(plus a randomly initialised student's) -> `results/`: the table, its JSON, the
label-efficiency plot and PCA pictures of the features.

Hardware: a 2-core CPU. Expected result: PPKT above scratch at 1% and 5% of the labels and a
linear probe well above the random student's; the README reports a measured run.
"""

from experiments.configs import common
from experiments.configs import finetune_synthetic
from experiments.configs import pointcontrast_synthetic
from experiments.configs import ppkt_synthetic
from experiments.configs import teacher_synthetic

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.world = ml_collections.ConfigDict(dict(
      scenes=80, frames_per_scene=16, height=120, width=160, seed=0, val_fraction=0.15,
      teacher_fraction=0.3, points_per_m2=300.0))
  c.student = "pointnet2_small"
  c.study = ml_collections.ConfigDict(dict(
      fractions=(0.01, 0.05, 0.1, 0.25, 1.0),
      seeds=(3, 3, 1, 1, 1),  # runs per fraction
      probe_seeds=1,
      inits=("scratch", "pointcontrast", "ppkt"),
  ))

  c.teacher = teacher_synthetic.base()
  c.teacher.arch = "resnet18"
  # At 96x128 layer4 is a 3x4 map: the head (and PPKT's UPL) also read layer3 (6x8).
  c.teacher.head_layers = ("layer3", "layer4")

  c.ppkt = ppkt_synthetic.get_config()
  c.ppkt.pairs.update(image_hw=(96, 128), num_points=4096, num_pairs=256, views_per_frame=2)
  c.ppkt.teacher.cache = True
  c.ppkt.teacher.layer = "layer3"
  c.ppkt.per_device_batch = 8
  c.ppkt.total_steps = 300
  c.ppkt.log_every = 10
  c.ppkt.checkpoint.update(every=50, keep=2)

  c.pointcontrast = pointcontrast_synthetic.get_config()
  c.finetune = finetune_synthetic.base()
  c.finetune.update(batch_size=4, total_steps=200)

  if arg == "runlocal":
    c.world.update(scenes=8, frames_per_scene=4, height=48, width=64, val_fraction=0.25,
                   teacher_fraction=0.25, points_per_m2=60.0)
    c.study.update(fractions=(0.25, 1.0), seeds=(2, 1), probe_seeds=1)
    c.teacher.update(arch="tiny", image_hw=(32, 48), batch_size=4, total_steps=10,
                     eval_batch_size=4, log_every=1)
    c.teacher.optimizer.warmup_steps = 0
    c.ppkt.pairs.update(image_hw=(48, 64), num_points=256, num_pairs=64)
    c.ppkt.per_device_batch = 1
    c.ppkt.total_steps = 6
    c.ppkt.checkpoint.update(every=3, keep=2)
    c.ppkt.log_every = 1
    c.finetune.update(batch_size=4, total_steps=10, log_every=1)
    c.finetune.crop.num_points = 256
    c.finetune.optimizer.warmup_steps = 0
    c.finetune.eval.batch_size = 4
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'runlocal' or none")

  # What the stages share: one world, one student, one pretraining budget.
  c.ppkt.student = c.pointcontrast.student = c.finetune.student = c.student
  c.ppkt.teacher.arch = c.teacher.arch
  for key in ("pairs", "per_device_batch", "total_steps", "log_every", "checkpoint",
              "optimizer"):
    c.pointcontrast[key] = ml_collections.ConfigDict(c.ppkt[key].to_dict()) if isinstance(
        c.ppkt[key], ml_collections.ConfigDict) else c.ppkt[key]
  c.pointcontrast.pointcontrast.num_matches = c.ppkt.pairs.num_pairs
  if arg == "runlocal":
    c.pointcontrast.pointcontrast.min_overlap = 0.2
  return c


def templates() -> dict[str, ml_collections.ConfigDict]:
  """The schema each stage's config is checked against."""
  return {"teacher": teacher_synthetic.base(), "ppkt": common.base(),
          "pointcontrast": common.base(), "finetune": finetune_synthetic.base()}
