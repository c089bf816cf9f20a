"""The pmapped PPKT step: 8 devices == 1 device, frozen teacher, no recompiles, learning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from test_pipeline import make_frames

from p2p_jax.data import pipeline
from p2p_jax.methods import ppkt
from p2p_jax.models import pointnet2, projector, resnet, student
from p2p_jax.train import contrastive, parallel
from p2p_jax.train import state as state_lib

PAIRS = pipeline.PairConfig(image_hw=(32, 48), num_points=128, num_pairs=64,
                            crop_scale=(0.6, 1.0))


def setup(optimizer="sgd", global_negatives=True, learning_rate=0.1):
  teacher = resnet.ResNetTiny()
  teacher_vars = jax.jit(teacher.init)(jax.random.key(0), jnp.zeros((1, 32, 48, 3)))
  model = ppkt.PPKTModel(
      projector=projector.UpsamplingProjector(features=16),
      student=student.PointModel(pointnet2.PointNet2Tiny(bn_axis_name=parallel.AXIS),
                                   student.ProjectionHead(16)))
  schedule_config = state_lib.OptimizerConfig(optimizer, learning_rate=learning_rate,
                                              weight_decay=1e-4, total_steps=100)
  schedule = state_lib.make_schedule(schedule_config)
  tx = state_lib.make_optimizer(schedule_config)
  frames = make_frames(8, seed=1)
  host = pipeline.pretrain_dataset(frames, PAIRS, seed=0, num_devices=1, per_device_batch=8,
                                   process_index=0, process_count=1)
  example = jax.tree.map(lambda x: x[0], pipeline.make_pairs_jit(host[0], PAIRS))
  layer4, _ = teacher.apply(teacher_vars, resnet.preprocess(example["image"]))
  state = jax.jit(lambda k: ppkt.init_state(model, tx, k, layer4, example))(jax.random.key(1))
  kwargs = dict(model=model, teacher=teacher, tx=tx, pair_config=PAIRS,
                loss_config=ppkt.LossConfig(temperature=0.1, global_negatives=global_negatives),
                schedule=schedule)
  return state, teacher_vars, host, kwargs


def run(state, teacher_vars, host_batch, kwargs, devices, steps=1):
  """Runs `steps` pmapped steps on the global batch split over `devices`."""
  n = len(devices)
  step = contrastive.pmap_step(ppkt.train_step, devices, **kwargs)
  split = lambda x: x.reshape((n, -1) + x.shape[2:])
  state = parallel.replicate(state, devices)
  teacher_vars = parallel.replicate(teacher_vars, devices)
  metrics = []
  for i in range(steps):
    state, m = step(state, teacher_vars, jax.tree.map(split, host_batch[i]))
    metrics.append(jax.tree.map(lambda x: np.asarray(x[0]), m))
  return jax.tree.map(lambda x: np.asarray(x[0]), state), metrics


def test_eight_devices_equal_one_device_on_the_same_global_batch():
  # SGD: updates are linear in the gradients, so the comparison is not amplified the way
  # Adam's normalisation amplifies rounding in near-zero gradients. AdamW runs below.
  state, teacher_vars, host, kwargs = setup("sgd")
  batches = [host[0], host[1]]
  one, m1 = run(state, teacher_vars, batches, kwargs, jax.devices()[:1], steps=2)
  eight, m8 = run(state, teacher_vars, batches, kwargs, jax.devices()[:8], steps=2)
  for key in ("loss", "positive_similarity", "negative_similarity", "pair_accuracy", "pairs",
              "grad_norm", "update_norm"):
    np.testing.assert_allclose(m8[0][key], m1[0][key], rtol=2e-4, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(eight.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(eight.batch_stats), jax.tree.leaves(one.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert int(eight.step) == 2 and m1[1]["loss"] != m1[0]["loss"]


def test_per_device_negatives_differ_from_global_ones():
  state, teacher_vars, host, kwargs = setup()
  _, global_m = run(state, teacher_vars, [host[0]], kwargs, jax.devices()[:8])
  kwargs["loss_config"] = dataclasses.replace(kwargs["loss_config"], global_negatives=False)
  _, local_m = run(state, teacher_vars, [host[0]], kwargs, jax.devices()[:8])
  # With 8 frames' pairs as negatives the task is harder than with one frame's.
  assert local_m[0]["loss"] < global_m[0]["loss"]


def test_teacher_is_frozen_and_in_inference_mode():
  state, teacher_vars, host, kwargs = setup()
  before = jax.tree.map(np.array, teacher_vars)
  new_state, _ = run(state, teacher_vars, [host[0]], kwargs, jax.devices()[:2])
  for a, b in zip(jax.tree.leaves(teacher_vars), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  assert "teacher" not in str(jax.tree_util.tree_structure(new_state.params))
  # The step's loss has no gradient with respect to the teacher, and the teacher's features
  # are its inference-mode output (running statistics, not batch statistics).
  images = resnet.preprocess(pipeline.make_pairs_jit(host[0], PAIRS)["image"][0])
  frozen, _ = resnet.frozen_features(kwargs["teacher"], teacher_vars, images)
  inference, _ = kwargs["teacher"].apply(teacher_vars, images, train=False)
  np.testing.assert_array_equal(frozen, inference)
  grads = jax.grad(lambda v: jnp.sum(resnet.frozen_features(kwargs["teacher"], v, images)[0]))(
      teacher_vars)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


def test_no_recompilation_across_steps_and_the_loss_falls():
  state, teacher_vars, host, kwargs = setup(optimizer="adamw", learning_rate=3e-3)
  traces = []
  original = ppkt.train_step

  def counted(*args, **kw):
    traces.append(1)
    return original(*args, **kw)

  ppkt.train_step = counted
  try:
    _, metrics = run(state, teacher_vars, [host[i] for i in range(20)], kwargs,
                     jax.devices()[:2], steps=20)
  finally:
    ppkt.train_step = original
  assert len(traces) == 1
  losses = [m["loss"] for m in metrics]
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses
  assert all(np.isfinite(losses))
