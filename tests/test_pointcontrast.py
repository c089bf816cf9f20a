"""The pmapped PointContrast step: 8 devices == 1 device, no recompiles, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_frame_pairs import synthetic_frames

from p2p_jax.data import frame_pairs
from p2p_jax.data.scannet_frames import load_frames
from p2p_jax.methods import pointcontrast
from p2p_jax.models import pointnet2, student
from p2p_jax.train import contrastive, parallel
from p2p_jax.train import state as state_lib

MATCH = frame_pairs.MatchConfig(num_points=512, num_matches=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """(frames source, pair list) of 12 synthetic 48x64 frames of 2 scenes."""
  data_dir = synthetic_frames(tmp_path_factory.mktemp("pointcontrast"))
  pairs = frame_pairs.mine_pairs(data_dir, "train", "skip1", progress=False)
  return load_frames(data_dir, "train", "skip1"), pairs


def setup(data, optimizer="sgd", learning_rate=0.1):
  source, pairs = data
  model = pointcontrast.PointContrastModel(student=student.PointModel(
      pointnet2.PointNet2Tiny(bn_axis_name=parallel.AXIS), student.ProjectionHead(16)))
  schedule_config = state_lib.OptimizerConfig(optimizer, learning_rate=learning_rate,
                                              weight_decay=1e-4, total_steps=100)
  schedule = state_lib.make_schedule(schedule_config)
  tx = state_lib.make_optimizer(schedule_config)
  host = frame_pairs.pointcontrast_dataset(source, pairs, MATCH, seed=0, num_devices=1,
                                             per_device_batch=8, process_index=0,
                                             process_count=1)
  # Initialised from shapes, as a trainer does.
  example = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), jax.eval_shape(
      lambda b: frame_pairs.make_matches(b, MATCH), host[0]))
  state = jax.jit(lambda k: pointcontrast.init_state(model, tx, k, example))(jax.random.key(1))
  kwargs = dict(model=model, tx=tx, match_config=MATCH, schedule=schedule,
                loss_config=pointcontrast.LossConfig(temperature=0.1))
  return state, host, kwargs


@pytest.fixture(scope="module")
def harness(data):
  """(state, host batches, {device count: step}, traces of `train_step` so far).

  The steps are shared by the tests (compiling one takes most of a test's time).
  """
  original = pointcontrast.train_step
  traces = []

  def counted(*args, **kw):
    traces.append(1)
    return original(*args, **kw)

  pointcontrast.train_step = counted
  try:
    state, host, kwargs = setup(data)
    steps = {n: contrastive.pmap_step(pointcontrast.train_step, jax.devices()[:n], **kwargs)
             for n in (1, 8)}
    yield state, host, steps, traces
  finally:
    pointcontrast.train_step = original


def run(state, host_batches, step, devices):
  """Runs `step` once per batch, each global batch split over `devices`."""
  n = len(devices)
  split = lambda x: x.reshape((n, -1) + x.shape[2:])
  state = parallel.replicate(state, devices)
  metrics = []
  for batch in host_batches:
    state, m = step(state, jax.tree.map(split, batch))
    metrics.append(jax.tree.map(lambda x: np.asarray(x[0]), m))
  return jax.tree.map(lambda x: np.asarray(x[0]), state), metrics


def test_eight_devices_equal_one_device_on_the_same_global_batch(harness):
  # With negatives from one device only, the 8-device loss would differ from the 1-device
  # one: equality also shows that the negatives come from every device.
  state, host, steps, _ = harness
  batches = [host[0], host[1]]
  one, m1 = run(state, batches, steps[1], jax.devices()[:1])
  eight, m8 = run(state, batches, steps[8], jax.devices()[:8])
  assert set(m1[0]) == {"loss", "positive_similarity", "negative_similarity", "pair_accuracy",
                        "pairs", "learning_rate", "grad_norm", "param_norm", "update_norm"}
  assert m1[0]["pairs"] > 100
  for step in range(2):
    for key in m1[0]:
      np.testing.assert_allclose(m8[step][key], m1[step][key], rtol=2e-4, atol=1e-6,
                                 err_msg=f"{key} at step {step}")
  for a, b in zip(jax.tree.leaves(eight.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(eight.batch_stats), jax.tree.leaves(one.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert int(eight.step) == 2 and m1[1]["loss"] != m1[0]["loss"]
  assert list(one.params) == ["student"]


def test_no_recompilation_across_steps_and_the_loss_falls(harness):
  state, host, steps, traces = harness
  run(state, [host[0]], steps[1], jax.devices()[:1])  # compiles, unless an earlier test did
  traced = len(traces)
  _, metrics = run(state, [host[i] for i in range(16)], steps[1], jax.devices()[:1])
  assert len(traces) == traced  # no retracing across steps and runs
  losses = [m["loss"] for m in metrics]
  assert all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1, losses
  # Better than chance: a uniform guess among the batch's matches has loss log(pairs).
  chance = np.log(np.mean([m["pairs"] for m in metrics[-4:]]))
  assert np.mean(losses[-4:]) < chance - 0.5, (losses, chance)
