"""Every key of every stage's experiment config is read by the run it configures.

Each config's `runlocal` variant is prepared and run for one step while every read of a
`ConfigDict` key is recorded (`config.x`, `config["x"]`, `config.get("x")`, and whole subtrees
read with `to_dict()`); a leaf the run never reads is a setting that does nothing.
"""

import contextlib
import importlib

import ml_collections
import pytest

from p2p_jax.configs import finetune as finetune_schema
from p2p_jax.configs import pretrain as pretrain_schema
from p2p_jax.configs import teacher as teacher_schema
from p2p_jax.data import prepare
from p2p_jax.train import finetune, pretrain, teacher
from p2p_jax.train.config import check_config


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, tuple[int, str]]:
  """Dotted path -> (id of the ConfigDict holding it, key), for every leaf of `config`."""
  out = {}
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out.update(leaves(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = (id(config), key)
  return out


@contextlib.contextmanager
def recorded_reads():
  """The set of (id of a ConfigDict, key) read while the context is open."""
  reads = set()
  getitem, to_dict = ml_collections.ConfigDict.__getitem__, ml_collections.ConfigDict.to_dict

  def recording_getitem(self, key):
    reads.add((id(self), key))
    return getitem(self, key)

  def recording_to_dict(self, *args, **kwargs):
    for _, (owner, key) in leaves(self).items():
      reads.add((owner, key))
    return to_dict(self, *args, **kwargs)

  ml_collections.ConfigDict.__getitem__ = recording_getitem
  ml_collections.ConfigDict.to_dict = recording_to_dict
  try:
    yield reads
  finally:
    ml_collections.ConfigDict.__getitem__ = getitem
    ml_collections.ConfigDict.to_dict = to_dict


def run_pretraining(config, tmp_path):
  pretrain.prepare(config, str(tmp_path / "work"))
  pretrain.train(config, str(tmp_path / "work"))


def run_finetuning(config, tmp_path):
  prepare.scenes(config.data)
  finetune.train_and_evaluate(config, str(tmp_path / "work"), progress=False)


def run_teacher(config, tmp_path):
  prepare.teacher(config.data)
  teacher.train(config, str(tmp_path / "work"), progress=False)


CASES = {
    "ppkt_synthetic": (lambda c: pretrain_schema.base(c.method), run_pretraining),
    "pointcontrast_synthetic": (lambda c: pretrain_schema.base(c.method), run_pretraining),
    "finetune_synthetic": (lambda c: finetune_schema.base(), run_finetuning),
    "teacher_synthetic": (lambda c: teacher_schema.base(), run_teacher),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_key_is_read_by_its_run(name, tmp_path):
  schema, run = CASES[name]
  config = importlib.import_module(f"experiments.configs.{name}").get_config("runlocal")
  config.data.manual_dir, config.data.data_dir = str(tmp_path / "rooms"), str(tmp_path / "tfds")
  config.total_steps = 1
  check_config(config, schema(config))  # outside the recording: it reads every key
  paths = leaves(config)
  with recorded_reads() as reads:
    run(config, tmp_path)
  unread = sorted(path for path, where in paths.items() if where not in reads)
  assert not unread, f"{name}: keys the run never reads: {unread}"


def test_the_recorder_sees_an_unread_key():
  config = ml_collections.ConfigDict({"a": 1, "b": {"c": 2, "d": 3}})
  with recorded_reads() as reads:
    _ = config.a + config.b.get("c")
  paths = leaves(config)
  assert sorted(p for p, where in paths.items() if where not in reads) == ["b.d"]
