"""Every config is checked at start-up, in one place, before any data is touched.

Each stage's schema has a rule for every key; a bad value is an error naming the key, the
value and what is allowed, and the scripts stop on it before preparing anything.
"""

import glob
import importlib
import math
import os
import subprocess
import sys

import ml_collections
import pytest

from experiments.configs import demo as demo_config
from p2p_jax.configs import detection as detection_schema
from p2p_jax.configs import finetune as finetune_schema
from p2p_jax.configs import pretrain as pretrain_schema
from p2p_jax.configs import teacher as teacher_schema
from p2p_jax.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCHEMAS = {
    "pretrain/ppkt": (pretrain_schema.base("ppkt"), pretrain_schema.rules("ppkt")),
    "pretrain/pointcontrast": (pretrain_schema.base("pointcontrast"),
                               pretrain_schema.rules("pointcontrast")),
    "finetune": (finetune_schema.base(), finetune_schema.rules()),
    "teacher": (teacher_schema.base(), teacher_schema.rules()),
    "detection": (detection_schema.base(), detection_schema.rules()),
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_key_of_every_schema_has_a_rule(name):
  template, rules = SCHEMAS[name]
  keys = set(config_lib.leaf_keys(template))
  assert sorted(keys - set(rules)) == [], "keys without a rule"
  assert sorted(set(rules) - keys) == [], "rules for keys the schema does not have"
  # And the defaults pass their own rules.
  for path, rule in rules.items():
    assert rule.accepts(config_lib.value_at(template, path)), path


def _check_for(config):
  if "world" in config:
    return demo_config.check
  if "method" in config:
    return pretrain_schema.check
  if "arch" in config:
    return teacher_schema.check
  if "boxes" in config:
    return detection_schema.check
  return finetune_schema.check


@pytest.mark.parametrize("path", sorted(p for p in glob.glob(
    os.path.join(ROOT, "experiments", "configs", "*.py")) if not p.endswith("__init__.py")))
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_experiment_config_passes_its_check(path, arg):
  module = importlib.import_module(f"experiments.configs.{os.path.basename(path)[:-3]}")
  config = module.get_config(arg)
  _check_for(config)(config)


def _error(check, config) -> str:
  with pytest.raises(ValueError) as e:
    check(config)
  return str(e.value)


# (schema, key, bad value, what the message must say is allowed)
BAD_VALUES = [
    ("ppkt", "ppkt.image_hw", (48,), "a tuple of 2 (each an integer >= 16)"),
    ("ppkt", "ppkt.image_hw", 48, "a tuple of 2"),
    ("ppkt", "checkpointing.every", 0, "an integer >= 1"),
    ("ppkt", "per_device_batch", 0, "an integer >= 1"),
    ("ppkt", "student", "pointnet3", "one of ['pointnet2_seg'"),
    ("ppkt", "ppkt.teacher.arch", "resnet51", "one of ['resnet101'"),
    ("ppkt", "ppkt.crop_scale", (0.9, 0.5), "low <= high"),
    ("ppkt", "loss.temperature", 0.0, "a number > 0"),
    ("ppkt", "loss.temperature", math.nan, "a number > 0"),
    ("ppkt", "points.colors", 1, "True or False"),
    ("ppkt", "total_steps", True, "an integer >= 1"),  # a bool is not a count
    ("ppkt", "data.frames_config", "skip26", "one of ['skip25', 'skip25_labels'"),
    ("pointcontrast", "pointcontrast.min_overlap", 1.5, "a number in [0, 1]"),
    ("finetune", "data.dataset", "s3d1s", "one of ['scannet', 's3dis']"),
    ("finetune", "data.val_area", 7, "an integer in [1, 6]"),
    ("finetune", "labels.fraction", 0.0, "a number in (0, 1]"),
    ("finetune", "optimizer.schedule", "exponential", "one of ['cosine', 'poly', 'step']"),
    ("finetune", "optimizer.boundaries", (0.5, 1.5), "a tuple (each a number in (0, 1])"),
    ("finetune", "sparse.pairs_per_voxel", (4.0, 8.0), "a tuple of 5"),
    ("finetune", "sparse.conv_impl", "gather", "one of ['pairs', 'dense']"),
    ("finetune", "head.dropout", 1.0, "a number in [0, 1)"),
    ("teacher", "head_layers", ("layer5",), "one of ['layer1'"),
    ("teacher", "data.frames_config", "skip25", "one of ['skip25_labels'"),
    ("teacher", "optimizer.name", "adam", "one of ['sgd', 'adamw']"),
]

BASES = {"ppkt": lambda: pretrain_schema.base("ppkt"),
         "pointcontrast": lambda: pretrain_schema.base("pointcontrast"),
         "finetune": finetune_schema.base, "teacher": teacher_schema.base}
CHECKS = {"ppkt": pretrain_schema.check, "pointcontrast": pretrain_schema.check,
          "finetune": finetune_schema.check, "teacher": teacher_schema.check}


def _set(config: ml_collections.ConfigDict, path: str, value) -> None:
  *parents, key = path.split(".")
  for p in parents:
    config = config[p]
  # Past the ConfigDict's type check, as a --config.x= override can be (a tuple parsed from
  # one number), or a config file assigning a whole new block.
  with config.ignore_type():
    config[key] = value


@pytest.mark.parametrize("schema,path,value,allowed", BAD_VALUES)
def test_a_bad_value_names_the_key_the_value_and_what_is_allowed(schema, path, value, allowed):
  config = BASES[schema]()
  _set(config, path, value)
  message = _error(CHECKS[schema], config)
  line = next((x for x in message.splitlines() if x.strip().startswith(path + " = ")), None)
  assert line is not None, message
  assert repr(value) in line and allowed in line, line


def test_every_problem_is_reported_at_once():
  config = pretrain_schema.base("ppkt")
  for path, value in (("checkpointing.every", 0), ("per_device_batch", 0),
                      ("student", "pointnet3")):
    _set(config, path, value)
  message = _error(pretrain_schema.check, config)
  assert all(k in message for k in ("checkpointing.every = 0", "per_device_batch = 0",
                                    "student = 'pointnet3'")), message


def test_an_unknown_method_is_named():
  config = pretrain_schema.base("ppkt")
  config.method = "ppkt2"
  assert "method = 'ppkt2': expected one of ['pointcontrast', 'ppkt']" in _error(
      pretrain_schema.check, config)


@pytest.mark.parametrize("schema,change,expected", [
    ("ppkt", {"points.num_points": 4096, "ppkt.image_hw": (48, 64)},
     "expected num_pairs <= num_points <= H * W (3072)"),
    ("ppkt", {"ppkt.num_pairs": 9000}, "expected num_pairs <= num_points"),
    ("ppkt", {"ppkt.teacher.cache": True, "ppkt.views_per_frame": 0},
     "expected ppkt.views_per_frame > 0"),
    ("finetune", {"optimizer.warmup_steps": 300}, "expected <= total_steps (250)"),
    ("finetune", {"mode": "linear_probe", "labels.points_per_scene": 20},
     "expected 0 with mode 'linear_probe'"),
    ("teacher", {"eval.every": 15}, "expected a multiple of log_every (10)"),
])
def test_cross_key_constraints_name_their_keys(schema, change, expected):
  config = BASES[schema]()
  for path, value in change.items():
    _set(config, path, value)
  message = _error(CHECKS[schema], config)
  assert expected in message, message
  assert all(path in message for path in change if "image_hw" not in path), message


def test_the_demo_checks_its_own_keys_and_every_stage():
  config = demo_config.get_config("runlocal")
  config.study.seeds = (1,)
  assert "study.seeds = (1,): expected one count per fraction" in _error(
      demo_config.check, config)
  config = demo_config.get_config("runlocal")
  config.ppkt.ppkt.num_pairs = 10_000
  message = _error(demo_config.check, config)
  assert message.startswith("the ppkt stage of the study: invalid config"), message


def test_rules_by_hand():
  r = config_lib
  assert r.integer(1).accepts(3) and not r.integer(1).accepts(0)
  assert not r.integer(0).accepts(True) and not r.integer(0).accepts(2.0)
  assert r.number(0, 1, high_open=True).accepts(0.0)
  assert not r.number(0, 1, high_open=True).accepts(1.0)
  assert not r.positive().accepts(math.inf) and not r.positive().accepts("1")
  assert r.tuple_of(r.positive(), (0, 4)).accepts(()) and not r.tuple_of(
      r.positive(), (0, 4)).accepts((1.0,))
  assert r.choice(("a", "b")).accepts("a") and not r.choice((0, 1)).accepts(False)
  assert r.ordered_pair(r.number()).accepts((1, 1)) and not r.ordered_pair(
      r.number()).accepts((2, 1))


def test_the_script_stops_on_a_bad_config_before_touching_any_data(tmp_path):
  """The issue's own cases, through the command line: one error naming all four keys, exit
  status 2 within seconds, and neither the rooms nor the work dir written."""
  rooms, work = tmp_path / "rooms", tmp_path / "work"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.pretrain",
       "--config", "experiments/configs/ppkt_synthetic.py:runlocal", "--workdir", str(work),
       f"--config.data.manual_dir={rooms}", f"--config.data.data_dir={tmp_path / 'tfds'}",
       "--config.ppkt.image_hw=48", "--config.checkpointing.every=0",
       "--config.per_device_batch=0", "--config.student=pointnet3"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  for expected in ("ppkt.image_hw = (48,)", "checkpointing.every = 0",
                   "per_device_batch = 0", "student = 'pointnet3'"):
    assert expected in proc.stderr, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert not rooms.exists() and not work.exists()
