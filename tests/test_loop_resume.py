"""The shared loop across interruptions: logs cut back to the resumed step, damaged checkpoints
set aside.

A toy run (a linear model under Adam, with an extra "student"-like item next to the state, as
pretraining saves) whose batches are functions of the step alone, so a resumed run must end
bitwise where an uninterrupted one does. Run as a script, this file trains the toy run and
dies (`os._exit`, no cleanup: what SIGKILL leaves) once a given step is logged.
"""

import collections
import glob
import itertools
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from tensorboardX.proto import event_pb2

from p2p_jax.train import loop

TOTAL_STEPS = 8
OPTIMIZER = optax.adam(0.05)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def init():
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.zeros(3)}
  return {"params": params, "opt": OPTIMIZER.init(params)}


@jax.jit
def toy_step(state, inputs, targets):
  def loss_fn(params):
    return jnp.mean(jnp.square(inputs @ params["w"] + params["b"] - targets))
  loss, grads = jax.value_and_grad(loss_fn)(state["params"])
  updates, opt = OPTIMIZER.update(grads, state["opt"], state["params"])
  return ({"params": optax.apply_updates(state["params"], updates), "opt": opt},
          {"loss": loss, "grad_norm": loop.global_norm(grads)})


def batches(start):
  """(step index, inputs [8, 4], targets [8, 3]) of steps start, start + 1, ...: each a
  function of the index alone."""
  for index in itertools.count(start):
    rng = np.random.default_rng([7, index])
    yield index, rng.normal(size=(8, 4)).astype(np.float32), rng.normal(
        size=(8, 3)).astype(np.float32)


def save_items(host_state):
  """A copy of the parameters and a JSON note, like pretraining's student and its config."""
  return {"params_copy": ocp.args.StandardSave(host_state["params"]),
          "note": ocp.args.JsonSave({"kind": "toy"})}


class KilledError(Exception):
  """Stands for the end of a process mid-run (in-process: the loop's cleanup still runs)."""


def train(workdir, *, stop_at=None, die_at=None, exit_at=None, **kwargs):
  """The toy run in `workdir`, saving every 2 steps and logging every step.

  Args:
    workdir: the run's work dir.
    stop_at: end the session after this step (see `loop.run`).
    die_at: raise `KilledError` instead of running this step (1-based).
    exit_at: `os._exit` instead of running this step, once checkpoint 6 is committed.
    **kwargs: more `loop.run` arguments.

  Returns:
    `loop.Result`.
  """
  def step(state, batch):
    index, inputs, targets = batch
    if index + 1 == die_at:
      raise KilledError(f"killed before step {die_at}")
    if index + 1 == exit_at:
      deadline = time.time() + 60  # Orbax commits checkpoints in the background
      while not os.path.isdir(os.path.join(workdir, "checkpoints", "6")):
        assert time.time() < deadline, "checkpoint 6 was never committed"
        time.sleep(0.01)
      os._exit(9)
    return toy_step(state, inputs, targets)

  return loop.run(workdir=workdir, total_steps=TOTAL_STEPS, init=init,
                  abstract_state=loop.abstract_state(init), step=step, batches=batches,
                  log_every=1, checkpoint_every=2, keep=10, save_items=save_items,
                  stop_at=stop_at, progress=False, **kwargs)


def read_events(workdir):
  """{tag: [(step, value), ...]} over every TensorBoard event file of `workdir`, read with
  their TFRecord framing (length u64, its crc u32, an `Event`, its crc u32)."""
  out = collections.defaultdict(list)
  for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events*"))):
    data, i = open(path, "rb").read(), 0
    while i < len(data):
      size = struct.unpack("<Q", data[i:i + 8])[0]
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + size])
      i += 16 + size
      for value in event.summary.value:
        out[value.tag].append((event.step, value.simple_value))
  return dict(out)


def read_metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, loop.METRICS))]


def assert_logged_once(workdir, reference_records):
  """metrics.jsonl and TensorBoard hold steps 1..TOTAL_STEPS once each, with the values of
  the uninterrupted run."""
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
  assert records == reference_records  # bitwise: the same floats
  events = read_events(workdir)
  assert sorted(events) == ["grad_norm", "loss"]
  for tag, points in events.items():
    assert sorted(step for step, _ in points) == list(range(1, TOTAL_STEPS + 1)), (
        f"{tag}: steps {sorted(step for step, _ in points)}")
    for step, value in points:
      assert value == pytest.approx(reference_records[step - 1][tag], rel=1e-6), (tag, step)


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference: (final state, metrics records) of a run that never stopped."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  result = train(workdir)
  return jax.device_get(result.state), read_metrics(workdir)


@pytest.fixture(scope="module")
def stopped_at_6(tmp_path_factory):
  """A work dir stopped after step 6: checkpoints 2, 4 and 6, steps 1-6 logged."""
  workdir = str(tmp_path_factory.mktemp("stopped") / "work")
  train(workdir, stop_at=6)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
  return workdir


# Part A: a resumed run logs each step once.


def test_steps_logged_after_the_restored_checkpoint_are_logged_once(uninterrupted, tmp_path):
  """Killed before step 8 with steps 1-7 logged and checkpoint 6 the latest: the resumed run
  logs 7 and 8 again, and metrics.jsonl and TensorBoard hold each step once."""
  reference_state, reference_records = uninterrupted
  workdir = str(tmp_path / "work")
  with pytest.raises(KilledError):
    train(workdir, die_at=8)
  assert [r["step"] for r in read_metrics(workdir)] == list(range(1, 8))
  result = train(workdir)
  assert result.start == 6
  assert [r["step"] for r in result.records] == list(range(1, TOTAL_STEPS + 1))
  assert_logged_once(workdir, reference_records)
  assert_trees_equal(result.state, reference_state)


def test_a_process_that_died_without_cleanup_resumes_with_complete_logs(
    uninterrupted, tmp_path):
  """A process gone without flushing TensorBoard (`os._exit` after step 7): after the resume,
  every step is in TensorBoard once, including those the dead writer had not flushed."""
  reference_state, reference_records = uninterrupted
  workdir = str(tmp_path / "work")
  done = subprocess.run([sys.executable, os.path.abspath(__file__), workdir, "8"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 9, done.stderr[-3000:]
  assert [r["step"] for r in read_metrics(workdir)] == list(range(1, 8))
  result = train(workdir)
  assert result.start == 6
  assert_logged_once(workdir, reference_records)
  assert_trees_equal(result.state, reference_state)


# Part B: a damaged latest checkpoint is set aside and the newest good one restored.


def _state_data_files(step_dir, item="state"):
  files = glob.glob(os.path.join(step_dir, item, "**", "d", "*"), recursive=True)
  assert files, f"no data files under {step_dir}/{item}"
  return files


def truncate_state_data(step_dir):
  for path in _state_data_files(step_dir):
    os.truncate(path, os.path.getsize(path) // 2)


def zero_state_data(step_dir):
  for path in _state_data_files(step_dir):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
      f.write(bytes(size))


def delete_manifest(step_dir):
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def delete_state_metadata(step_dir):
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


def delete_data_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, "data"))


def truncate_extra_item(step_dir):
  for path in _state_data_files(step_dir, "params_copy"):
    os.truncate(path, os.path.getsize(path) // 2)


DAMAGE = [truncate_state_data, zero_state_data, delete_manifest, delete_state_metadata,
          delete_data_item, truncate_extra_item]


def damaged_copy(stopped_at_6, tmp_path, damage, steps=(6,)):
  workdir = str(tmp_path / "work")
  shutil.copytree(stopped_at_6, workdir)
  for step in steps:
    damage(os.path.join(workdir, "checkpoints", str(step)))
  return workdir


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumed(
    damage, uninterrupted, stopped_at_6, tmp_path, caplog):
  reference_state, reference_records = uninterrupted
  workdir = damaged_copy(stopped_at_6, tmp_path, damage)
  with caplog.at_level(logging.WARNING):
    result = train(workdir)
  assert result.start == 4
  assert_trees_equal(result.state, reference_state)
  assert_logged_once(workdir, reference_records)
  step_dir = os.path.join(workdir, "checkpoints", "6")
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "checkpoint 6 at" in r.getMessage()]
  assert len(warnings) == 1 and step_dir in warnings[0], caplog.text
  # Kept aside, where the manager no longer sees it; the run saved a new step 6 and 8.
  assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "6", "state"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6", "8"]


@pytest.mark.parametrize("damage", [delete_data_item, truncate_extra_item],
                         ids=lambda f: f.__name__)
def test_without_fallback_a_damaged_latest_checkpoint_is_an_error_naming_it(
    damage, stopped_at_6, tmp_path):
  workdir = damaged_copy(stopped_at_6, tmp_path, damage)
  step_dir = os.path.join(workdir, "checkpoints", "6")
  with pytest.raises(loop.DamagedCheckpointError, match="checkpoint 6 ") as error:
    train(workdir, fallback=False)
  assert step_dir in str(error.value)
  assert os.path.isdir(step_dir) and not os.path.exists(
      os.path.join(workdir, "checkpoints_damaged"))


def test_when_no_checkpoint_restores_the_error_names_every_one(stopped_at_6, tmp_path):
  """Starting from scratch would silently drop the run's work: an error, nothing moved."""
  workdir = damaged_copy(stopped_at_6, tmp_path, delete_data_item, steps=(2, 4, 6))
  with pytest.raises(loop.DamagedCheckpointError) as error:
    train(workdir)
  for step in (2, 4, 6):
    assert os.path.join(workdir, "checkpoints", str(step)) in str(error.value)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
  assert not os.path.exists(os.path.join(workdir, "checkpoints_damaged"))


if __name__ == "__main__":  # the process `test_a_process_that_died_...` kills
  train(sys.argv[1], exit_at=int(sys.argv[2]))


def test_a_sigterm_marks_the_result_stopped_and_the_stage_raises(tmp_path):
  """A stop mid-run saves where it was and sets `stopped`; `raise_if_stopped` then names the
  step, so a stage never reports the results of an unfinished run. A finished run is not
  stopped, nor is one ended by `stop_at`."""
  workdir = str(tmp_path / "work")

  def stop_after_three(step_number, record, state):
    if step_number == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return {}

  result = train(workdir, on_log=stop_after_three)
  assert result.stopped and result.last["step"] == 3
  with pytest.raises(loop.StoppedError, match=f"stopped after step 3 of {workdir}"):
    loop.raise_if_stopped(result, "toy", workdir)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))
  partial = train(str(tmp_path / "partial"), stop_at=4)
  assert not partial.stopped
  resumed = train(workdir)
  assert not resumed.stopped and resumed.start == 3 and resumed.last["step"] == TOTAL_STEPS
  loop.raise_if_stopped(resumed, "toy", workdir)
