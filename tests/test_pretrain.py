"""The pretraining loop: configs, checkpoints, exact resumption after SIGKILL, SIGTERM."""

import glob
import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboardX.proto import event_pb2

from p2p_jax.configs import pretrain as schema
from p2p_jax.train import pretrain
from p2p_jax.train.config import check_config

CONFIGS = sorted(os.path.basename(p)[:-3] for pattern in ("ppkt_*.py", "pointcontrast_*.py")
                 for p in glob.glob(f"experiments/configs/{pattern}"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runlocal(tmp_path, name="ppkt_synthetic"):
  config = importlib.import_module(f"experiments.configs.{name}").get_config("runlocal")
  config.data.manual_dir = str(tmp_path / "rooms")
  config.data.data_dir = str(tmp_path / "tfds")
  return config


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_and_has_only_known_keys(name):
  module = importlib.import_module(f"experiments.configs.{name}")
  assert "python -m experiments.pretrain" in module.__doc__
  for arg in (None, "runlocal"):
    config = module.get_config(arg)
    check_config(config, schema.base(config.method))
  with pytest.raises(ValueError, match="unknown config argument"):
    module.get_config("bogus")


def test_unknown_keys_fail_loudly():
  config = schema.base()
  config.optimiser = ml_collections.ConfigDict({"name": "sgd"})  # British spelling: a typo
  config.loss.temprature = 0.1
  with pytest.raises(ValueError, match="loss.temprature, optimiser"):
    check_config(config, schema.base())
  # A run is handed only its own method's settings.
  pointcontrast = schema.switch_method(schema.base(), "pointcontrast")
  assert "ppkt" not in pointcontrast and "pointcontrast" in pointcontrast
  check_config(pointcontrast, schema.base("pointcontrast"))
  with pytest.raises(ValueError, match="unknown config keys: ppkt"):
    check_config(schema.base("ppkt"), schema.base("pointcontrast"))


def restore_state(workdir, step=None):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    step = manager.latest_step() if step is None else step
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), student=ocp.args.StandardRestore(),
        data=ocp.args.JsonRestore()))
  return step, restored


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """A 20-step runlocal run: the reference every resumed run must reproduce exactly."""
  tmp = tmp_path_factory.mktemp("uninterrupted")
  config = runlocal(tmp)
  pretrain.prepare(config, str(tmp / "work"))
  last = pretrain.train(config, str(tmp / "work"), template=schema.base(config.method))
  return config, str(tmp / "work"), last


def test_runlocal_trains_and_the_loss_falls(uninterrupted):
  _, workdir, last = uninterrupted
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records] == list(range(1, 21)) and last["step"] == 20
  losses = [r["loss"] for r in records]
  assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
  for key in ("positive_similarity", "negative_similarity", "pair_accuracy", "learning_rate",
              "grad_norm", "param_norm", "update_norm", "frames_per_second", "pairs_per_second"):
    assert np.isfinite(records[-1][key]), key
  # TensorBoard event files (TFRecord framing: length, crc, event, crc) hold the same values.
  (events_file,) = glob.glob(os.path.join(workdir, "tensorboard", "events*"))
  data, i, scalars = open(events_file, "rb").read(), 0, {}
  while i < len(data):
    size = struct.unpack("<Q", data[i:i + 8])[0]
    event = event_pb2.Event.FromString(data[i + 12:i + 12 + size])
    i += 16 + size
    for value in event.summary.value:
      scalars[value.tag, event.step] = value.simple_value
  assert scalars["loss", 20] == pytest.approx(records[-1]["loss"], rel=1e-6)
  assert scalars["pair_accuracy", 1] == pytest.approx(records[0]["pair_accuracy"], abs=1e-7)
  step, restored = restore_state(workdir)
  assert step == 20 and restored["data"]["next_batch"] == 20
  # The student's variables are saved on their own, for downstream fine-tuning.
  assert_trees_equal(restored["student"]["params"], restored["state"]["params"]["student"])


def test_resuming_in_process_reproduces_the_uninterrupted_run_bitwise(uninterrupted, tmp_path):
  config, reference_dir, _ = uninterrupted
  config = ml_collections.ConfigDict(config.to_dict())
  workdir = str(tmp_path / "work")
  pretrain.train(config, workdir, stop_at=12)  # checkpoints at 5, 10, 12 ...
  pretrain.train(config, workdir)  # ... and the second run resumes from 12
  _, ours = restore_state(workdir, 20)
  _, reference = restore_state(reference_dir, 20)
  assert_trees_equal(ours["state"], reference["state"])


def pretrain_command(config_dir, workdir, *extra):
  return [sys.executable, "-m", "experiments.pretrain",
          "--config", "experiments/configs/ppkt_synthetic.py:runlocal", "--workdir", workdir,
          f"--config.data.manual_dir={config_dir}/rooms",
          f"--config.data.data_dir={config_dir}/tfds", *extra]


def test_sigkill_then_restart_reaches_the_same_parameters_bitwise(uninterrupted, tmp_path):
  config, reference_dir, _ = uninterrupted
  data_dir = os.path.dirname(config.data.manual_dir)
  workdir = str(tmp_path / "work")
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  proc = subprocess.Popen(pretrain_command(data_dir, workdir), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not glob.glob(os.path.join(workdir, "checkpoints", "10")) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)  # somewhere after step 10: mid-step, mid-save, anywhere
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  done = subprocess.run(pretrain_command(data_dir, workdir), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  _, ours = restore_state(workdir, 20)
  _, reference = restore_state(reference_dir, 20)
  assert_trees_equal(ours["state"], reference["state"])


def test_sigterm_saves_and_exits_cleanly(uninterrupted, tmp_path):
  config, _, _ = uninterrupted
  data_dir = os.path.dirname(config.data.manual_dir)
  workdir = str(tmp_path / "work")
  log = open(tmp_path / "log.txt", "w")  # a file: a full pipe would stall the run
  proc = subprocess.Popen(pretrain_command(data_dir, workdir, "--config.checkpointing.every=100",
                                           "--config.total_steps=100000"),
                          cwd=ROOT, stdout=log, stderr=log)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while (not os.path.exists(metrics) or len(open(metrics).readlines()) < 3) and (
      time.time() < deadline):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=120)
  log.close()
  assert proc.returncode == 0, open(tmp_path / "log.txt").read()[-3000:]
  stopped = len(open(metrics).readlines())
  step, restored = restore_state(workdir)
  assert step == stopped >= 3 and restored["data"]["next_batch"] == step  # where it stopped


def test_sigterm_during_setup_exits_cleanly_before_the_first_step(tmp_path):
  """A stop while the run prepares its data (here: generating rooms and building the dataset)
  ends it with exit 0 before its first step, and writes no checkpoint."""
  workdir = str(tmp_path / "work")
  log_path = tmp_path / "log.txt"
  log = open(log_path, "w")
  proc = subprocess.Popen(pretrain_command(str(tmp_path), workdir), cwd=ROOT, stdout=log,
                          stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
  deadline = time.time() + 120
  while "SIGTERM handler installed" not in open(log_path).read() and time.time() < deadline:
    assert proc.poll() is None, open(log_path).read()[-3000:]
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=300)
  log.close()
  output = open(log_path).read()
  assert proc.returncode == 0, output[-3000:]
  assert "SIGTERM before step 1" in output
  assert not glob.glob(os.path.join(workdir, "checkpoints", "[0-9]*"))


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    uninterrupted, tmp_path):
  config, _, _ = uninterrupted
  config = ml_collections.ConfigDict(config.to_dict())
  workdir = str(tmp_path / "work")
  pretrain.train(config, workdir, stop_at=5)
  _, good = restore_state(workdir, 5)
  config.optimizer.learning_rate = 1e30  # the parameters overflow within a step or two
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step (6|7|8)"):
    pretrain.train(config, workdir)
  step, kept = restore_state(workdir)
  assert step == 5
  assert_trees_equal(kept["state"], good["state"])


def test_restoring_on_a_different_device_count(uninterrupted, tmp_path):
  config, reference_dir, _ = uninterrupted
  data_dir = os.path.dirname(config.data.manual_dir)
  workdir = str(tmp_path / "work")
  subprocess.run(["cp", "-r", reference_dir, workdir], check=True)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  done = subprocess.run(pretrain_command(data_dir, workdir, "--config.total_steps=22"),
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  step, restored = restore_state(workdir)
  assert step == 22 and restored["data"]["next_batch"] == 22


def test_two_processes_equal_one_process_with_as_many_devices(uninterrupted, tmp_path):
  """2 processes x 2 devices (localhost, gloo collectives) == 1 process x 4 devices."""
  config, _, _ = uninterrupted
  data_dir = os.path.dirname(config.data.manual_dir)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  steps = "--config.total_steps=3"
  two = str(tmp_path / "two")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [subprocess.Popen(
      pretrain_command(data_dir, two, steps, "--coordinator_address", f"127.0.0.1:{port}",
                       "--num_processes", "2", "--process_id", str(i)),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  one = str(tmp_path / "one")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  done = subprocess.run(pretrain_command(data_dir, one, steps), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]

  finals = [json.loads(out.split("final metrics:")[1]) for out, _ in outs + [(done.stdout, "")]]
  # Each process ends with its own replica of the parameters: identical across processes.
  assert finals[0]["param_norm"] == finals[1]["param_norm"]
  assert finals[0]["pairs"] == finals[2]["pairs"]
  # Only process 0 wrote metrics; the checkpoint equals the one-process run's, up to the
  # order in which the collectives sum.
  assert len(open(os.path.join(two, "metrics.jsonl")).readlines()) == 3
  _, a = restore_state(two, 3)
  _, b = restore_state(one, 3)
  for x, y in zip(jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"]), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(finals[0]["loss"], finals[2]["loss"], rtol=1e-5)


def test_teacher_cache_run_matches_the_uncached_run(uninterrupted, tmp_path):
  config, _, _ = uninterrupted
  results = {}
  for cache in (False, True):
    c = ml_collections.ConfigDict(config.to_dict())
    c.total_steps, c.ppkt.views_per_frame, c.ppkt.teacher.cache = 4, 2, cache
    c.ppkt.teacher.layer = "layer3"  # a finer map than the default layer4, both ways
    pretrain.prepare(c, str(tmp_path / f"cache_{cache}"))
    results[cache] = pretrain.train(c, str(tmp_path / f"cache_{cache}"),
                                    template=schema.base(c.method))
  assert os.path.exists(tmp_path / "cache_True" / "teacher_cache" / "cache.json")
  assert not os.path.exists(tmp_path / "cache_False" / "teacher_cache")
  for key in ("loss", "pair_accuracy", "param_norm"):
    assert results[True][key] == pytest.approx(results[False][key], rel=2e-3), key
  _, restored = restore_state(str(tmp_path / "cache_True"))
  # ResNetTiny: layer3 has 16 x 4 channels, layer4 32 x 4.
  assert restored["state"]["params"]["projector"]["conv1x1"]["kernel"].shape[0] == 64
  c = ml_collections.ConfigDict(config.to_dict())
  c.ppkt.teacher.cache = True  # views_per_frame = 0: fresh crops cannot be cached
  with pytest.raises(ValueError, match="views_per_frame > 0"):
    pretrain.train(c, str(tmp_path / "fresh"))


def test_pointcontrast_runlocal_trains_through_the_same_loop(uninterrupted, tmp_path):
  ppkt_config, _, _ = uninterrupted
  config = runlocal(tmp_path, "pointcontrast_synthetic")
  config.data.manual_dir, config.data.data_dir = (ppkt_config.data.manual_dir,
                                                  ppkt_config.data.data_dir)
  workdir = str(tmp_path / "work")
  pretrain.prepare(config, workdir)
  last = pretrain.train(config, workdir, template=schema.base(config.method))
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["loss"] for r in records]
  assert last["step"] == 20 and np.mean(losses[-5:]) < np.mean(losses[:5]), losses
  _, restored = restore_state(workdir)
  # The same student item as PPKT's, so fine-tuning loads either.
  _, ppkt_restored = restore_state(uninterrupted[1])
  assert (jax.tree.structure(restored["student"]) ==
          jax.tree.structure(ppkt_restored["student"]))
  config.method = "bogus"
  with pytest.raises(ValueError, match="unknown method 'bogus'"):
    pretrain.train(config, str(tmp_path / "bogus"))


def test_the_papers_sparse_unet_student_pretrains_through_the_same_loop(uninterrupted, tmp_path):
  ppkt_config, _, _ = uninterrupted
  config = runlocal(tmp_path, "ppkt_scannet")
  assert config.student == "sr_unet_tiny"
  assert importlib.import_module("experiments.configs.ppkt_scannet").get_config().student == (
      "sr_unet34c")
  config.data.manual_dir, config.data.data_dir = (ppkt_config.data.manual_dir,
                                                  ppkt_config.data.data_dir)
  pretrain.prepare(config, str(tmp_path / "work"))
  config.total_steps = 8
  last = pretrain.train(config, str(tmp_path / "work"), template=schema.base(config.method))
  records = [json.loads(line) for line in open(tmp_path / "work" / "metrics.jsonl")]
  assert last["step"] == 8 and all(np.isfinite(r["loss"]) for r in records)
  assert records[-1]["loss"] < records[0]["loss"]
  _, restored = restore_state(str(tmp_path / "work"))
  assert "backbone" in restored["student"]["params"]
