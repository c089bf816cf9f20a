"""The main job (`make demo`): does PPKT pretraining make 3D segmentation label-efficient?

    python -m experiments.demo                      # the study (see the README for its time)
    python -m experiments.demo --config experiments/configs/demo.py:full    # + PointContrast,
                                                    # 10% and 25% of the labels
    python -m experiments.demo --config experiments/configs/demo.py:runlocal \
        --workdir /tmp/demo_local --results /tmp/demo_local/results   # tiny, about 2 minutes

Synthetic world (240 rooms: 156 for the 2D teacher, 72 training rooms, 12 val rooms, all
disjoint) -> a ResNet-18 teacher trained on the 2D labels of its own rooms -> PPKT pretraining
of the PointNet++ student with that frozen teacher -> fine-tuning from scratch and from PPKT at
1%, 5% and 100% of the training rooms' labels (3 seeds at 1% and 5%; every run the same number
of steps) and linear probes on cached features (the scratch probe reads the randomly
initialised student) -> `results/`: the table, its JSON, the label-efficiency plot, the
training curves and PCA pictures of the features.

The budget (steps of each stage, below) was chosen from learning curves measured on worlds of
other seeds, never on this world's val rooms; docs/demo/results.md records a measured run.

Hardware: a 2-core CPU.
"""

from collections.abc import Callable

import ml_collections

from experiments.configs import pointcontrast_synthetic, ppkt_synthetic
from p2p_jax.configs import common
from p2p_jax.configs import finetune as finetune_schema
from p2p_jax.configs import pretrain as pretrain_schema
from p2p_jax.configs import teacher as teacher_schema
from p2p_jax.train import config as config_lib

# The budget, chosen from learning curves measured on other worlds (docs/demo/budget.md).
TEACHER_STEPS = 2000
PRETRAIN_STEPS = 1500
FINETUNE_STEPS = 1000


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  # The 2D teacher stands in for a network trained on a rich 2D dataset, so most rooms are its:
  # 156 teacher rooms (2496 frames), 72 training rooms and 12 val rooms, all disjoint.
  c.world = ml_collections.ConfigDict(dict(
      scenes=240, frames_per_scene=16, height=120, width=160, seed=0, val_fraction=0.05,
      teacher_fraction=0.65, points_per_m2=300.0))
  # The student, and whether it reads colours, in every stage (`stages` sets them there).
  c.student = "pointnet2_small"
  # The student reads geometry alone. Every instance of these rooms draws its own colour, so a
  # student given colours fits the instance colours of its few labelled rooms: measured on a
  # world of another seed, 2.8 mIoU with colours against 32.2 without at 5% of the labels,
  # and 54.1 without at 100% (docs/demo/budget.md). The 2D teacher still sees colour images.
  c.student_colors = False
  # SR-UNet students' voxels, convolutions and capacities, the same in every stage.
  c.sparse = common.sparse()
  c.study = ml_collections.ConfigDict(dict(
      fractions=(0.01, 0.05, 1.0),
      seeds=(3, 3, 1),  # runs per fraction
      probe_seeds=1,
      inits=("scratch", "ppkt"),
  ))

  c.teacher = teacher_schema.base()
  c.teacher.arch = "resnet18"
  # Heads on every stage: stride-4 detail for the 2D labels, layer3 semantics for PPKT's UPL.
  c.teacher.head_layers = ("layer1", "layer2", "layer3", "layer4")
  c.teacher.total_steps = TEACHER_STEPS
  c.teacher.optimizer.learning_rate = 5e-3
  # Channel shuffles and grey images off: no measurable effect on held-out mIoU in the
  # measured curves, and they hide the class-dependent colour distributions.
  c.teacher.augment.update(channel_shuffle_probability=0.0, grayscale_probability=0.0)
  c.teacher.log_every = 50
  c.teacher.eval.every = 500

  c.ppkt = ppkt_synthetic.get_config()
  c.ppkt.points.num_points = 4096
  c.ppkt.ppkt.update(image_hw=(96, 128), num_pairs=256, views_per_frame=2)
  c.ppkt.ppkt.teacher.cache = True
  c.ppkt.ppkt.teacher.layer = "layer3"  # at 96x128 layer4 is a 3x4 map, layer3 6x8
  c.ppkt.per_device_batch = 8
  c.ppkt.total_steps = PRETRAIN_STEPS
  c.ppkt.log_every = 10
  c.ppkt.checkpointing.update(every=100, keep=2)

  # PointContrast (demo.py:full) pretrains with PPKT's data, student, optimiser and budget
  # (`p2p_jax.configs.pretrain.switch_method`); here are its own settings only, with as many
  # matches per frame pair as PPKT draws pixel-point pairs per frame.
  c.pointcontrast = pointcontrast_synthetic.get_config().pointcontrast
  c.finetune = finetune_schema.base()
  c.finetune.update(batch_size=8, total_steps=FINETUNE_STEPS, log_every=25)

  if arg == "runlocal":
    c.world.update(scenes=8, frames_per_scene=4, height=48, width=64, val_fraction=0.25,
                   teacher_fraction=0.25, points_per_m2=60.0)
    c.study.update(fractions=(0.25, 1.0), seeds=(2, 1), probe_seeds=1,
                   inits=("scratch", "pointcontrast", "ppkt"))
    c.teacher.update(arch="tiny", image_hw=(32, 48), batch_size=4, total_steps=10,
                     log_every=1)
    c.teacher.eval.batch_size = 4
    c.teacher.optimizer.warmup_steps = 0
    c.ppkt.points.num_points = 256
    c.ppkt.ppkt.update(image_hw=(48, 64), num_pairs=64)
    c.ppkt.per_device_batch = 1
    c.ppkt.total_steps = 6
    c.ppkt.checkpointing.update(every=3, keep=2)
    c.ppkt.log_every = 1
    c.finetune.update(batch_size=4, total_steps=10, log_every=1)
    c.finetune.crop.num_points = 256
    c.finetune.optimizer.warmup_steps = 0
    c.finetune.eval.batch_size = 4
    c.pointcontrast.min_overlap = 0.2
  elif arg == "full":
    # Every baseline and label fraction (PointContrast pretrains with the same budget).
    c.study.update(fractions=(0.01, 0.05, 0.1, 0.25, 1.0), seeds=(3, 3, 1, 1, 1),
                   inits=("scratch", "pointcontrast", "ppkt"))
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'runlocal', 'full' or none")
  c.pointcontrast.num_matches = c.ppkt.ppkt.num_pairs
  return c


def stages(c: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """Each stage's config, with what the stages share set from its one place: the student, its
  colour input and SR-UNet settings (`student`, `student_colors`, `sparse`) and the teacher's
  architecture; PointContrast is PPKT's config with its own method settings
  (`pointcontrast`)."""
  teacher = ml_collections.ConfigDict(c.teacher.to_dict())
  ppkt = ml_collections.ConfigDict(c.ppkt.to_dict())
  ppkt.student = c.student
  ppkt.sparse = ml_collections.ConfigDict(c.sparse.to_dict())
  ppkt.points.colors = c.student_colors
  ppkt.ppkt.teacher.arch = c.teacher.arch
  pointcontrast = pretrain_schema.switch_method(ppkt, "pointcontrast")
  pointcontrast.pointcontrast = ml_collections.ConfigDict(c.pointcontrast.to_dict())
  finetune = ml_collections.ConfigDict(c.finetune.to_dict())
  finetune.student = c.student
  finetune.sparse = ml_collections.ConfigDict(c.sparse.to_dict())
  finetune.crop.colors = c.student_colors
  return {"teacher": teacher, "ppkt": ppkt, "pointcontrast": pointcontrast,
          "finetune": finetune}


def checks() -> dict[str, Callable[[ml_collections.ConfigDict], None]]:
  """The start-up check of each stage's config (its schema's `check`)."""
  return {"teacher": teacher_schema.check, "ppkt": pretrain_schema.check,
          "pointcontrast": pretrain_schema.check, "finetune": finetune_schema.check}


def check(c: ml_collections.ConfigDict) -> None:
  """Checks the study's own keys and values (`config_lib.check_config`), then each stage's
  config with its schema's check: all before any data is touched."""
  r = config_lib
  rules = {
      "student": common.student_rule(), "student_colors": r.flag(),
      "study.fractions": r.tuple_of(r.number(0, 1, low_open=True)),
      "study.seeds": r.tuple_of(r.integer(1)), "study.probe_seeds": r.integer(0),
      "study.inits": r.tuple_of(r.choice(("scratch", "ppkt", "pointcontrast"))),
  } | common.synthetic_rules("world") | common.sparse_rules()
  del rules["world.frames_per_scene"]
  rules["world.frames_per_scene"] = r.integer(1)

  def cross(c):
    if len(c.study.seeds) != len(c.study.fractions):
      return [f"study.seeds = {tuple(c.study.seeds)}: expected one count per fraction of "
              f"study.fractions = {tuple(c.study.fractions)}"]
    return []

  r.check_config(c, get_config(), rules, cross)
  for name, stage in stages(c).items():
    try:
      checks()[name](stage)
    except ValueError as e:
      raise ValueError(f"the {name} stage of the study: {e}") from None
