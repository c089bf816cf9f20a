"""losses.py against hand-computed values, a float64 NumPy reference and multi-device runs."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from p2p_jax import losses


def unit_rows(rng, k, c):
  x = rng.normal(size=(k, c))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference(anchors, positives, temperature, where):
  """Per-pair InfoNCE in float64 with explicit loops over the valid pairs."""
  a = anchors.astype(np.float64)
  p = positives.astype(np.float64)
  out = np.zeros(len(a))
  valid = np.flatnonzero(where)
  for i in valid:
    logits = np.array([a[i] @ p[j] / temperature for j in valid])
    top = logits.max()
    out[i] = top + math.log(np.exp(logits - top).sum()) - a[i] @ p[i] / temperature
  return out


def test_hand_computed_three_pairs():
  anchors = np.eye(3, dtype=np.float32)
  positives = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]], np.float32)
  # logits = anchors @ positives^T = [[1,0,0],[0,1,1],[0,0,0]], temperature 1.
  expected = [math.log(math.e + 2) - 1, math.log(1 + 2 * math.e) - 1, math.log(3)]
  out = losses.pixel_to_point_info_nce(anchors, positives, temperature=1.0)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  # Temperature 0.5 doubles every logit.
  expected = [math.log(math.e ** 2 + 2) - 2, math.log(1 + 2 * math.e ** 2) - 2, math.log(3)]
  out = losses.pixel_to_point_info_nce(anchors, positives, temperature=0.5)
  np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("k,c", [(7, 5), (300, 16), (1500, 32)])
def test_matches_reference(k, c):
  rng = np.random.default_rng(k)
  a, p = unit_rows(rng, k, c), unit_rows(rng, k, c)
  p[: k // 3] = a[: k // 3] + 0.1 * p[: k // 3]  # some easy positives
  where = rng.uniform(size=k) < 0.8
  out = jax.jit(lambda a, p, w: losses.pixel_to_point_info_nce(
      a, p, temperature=0.07, where=w))(a, p, where)
  np.testing.assert_allclose(out, reference(a, p, 0.07, where), rtol=2e-5, atol=2e-5)


def test_blocking_changes_nothing(monkeypatch):
  rng = np.random.default_rng(0)
  a, p = unit_rows(rng, 100, 8), unit_rows(rng, 100, 8)
  where = rng.uniform(size=100) < 0.9
  whole = losses.info_nce(a, p, where=where)
  grads = jax.grad(lambda a, p: losses.info_nce(a, p, where=where).sum(), (0, 1))(a, p)
  monkeypatch.setattr(losses, "_BLOCK_ELEMENTS", 16 * 100)  # 16-row blocks, the last padded
  np.testing.assert_allclose(losses.info_nce(a, p, where=where), whole, rtol=1e-6)
  blocked = jax.grad(lambda a, p: losses.info_nce(a, p, where=where).sum(), (0, 1))(a, p)
  for g, h in zip(grads, blocked):
    np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-5)  # summation order differs


def test_masked_equals_sliced():
  rng = np.random.default_rng(1)
  a, p = unit_rows(rng, 40, 6), unit_rows(rng, 40, 6)
  where = rng.uniform(size=40) < 0.6
  weights = rng.uniform(size=40).astype(np.float32)
  full_loss = lambda a, p: jnp.sum(losses.info_nce(a, p, where=where) * weights)
  sliced_loss = lambda a, p: jnp.sum(losses.info_nce(a[where], p[where]) * weights[where])
  np.testing.assert_allclose(losses.info_nce(a, p, where=where)[where],
                             losses.info_nce(a[where], p[where]), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(losses.info_nce(a, p, where=where))[~where], 0.0)
  ga = jax.grad(full_loss, (0, 1))(a, p)
  gs = jax.grad(sliced_loss, (0, 1))(a, p)
  for g_full, g_sliced in zip(ga, gs):
    np.testing.assert_allclose(g_full, g_sliced, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(g_full)[~where], 0.0)


def test_invariant_to_pair_permutation():
  rng = np.random.default_rng(2)
  a, p = unit_rows(rng, 50, 8), unit_rows(rng, 50, 8)
  where = rng.uniform(size=50) < 0.7
  perm = rng.permutation(50)
  out = losses.info_nce(a, p, where=where, symmetric=True)
  out_perm = losses.info_nce(a[perm], p[perm], where=where[perm], symmetric=True)
  np.testing.assert_allclose(out_perm, np.asarray(out)[perm], rtol=1e-6)


def test_symmetric_is_the_mean_of_both_directions():
  rng = np.random.default_rng(3)
  a, p = unit_rows(rng, 20, 4), unit_rows(rng, 20, 4)
  where = rng.uniform(size=20) < 0.8
  expected = 0.5 * (reference(a, p, 0.1, where) + reference(p, a, 0.1, where))
  out = losses.info_nce(a, p, temperature=0.1, where=where, symmetric=True)
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("symmetric", [False, True])
def test_check_grads_float64(symmetric):
  rng = np.random.default_rng(4)
  where = jnp.asarray(rng.uniform(size=12) < 0.75)
  with jax.enable_x64(True):
    a = jnp.asarray(rng.normal(size=(12, 5)))
    p = jnp.asarray(rng.normal(size=(12, 5)))
    t = jnp.asarray(0.3)
    fn = lambda a, p, t: losses.info_nce(a, p, temperature=t, where=where, symmetric=symmetric)
    assert fn(a, p, t).dtype == jnp.float64
    check_grads(fn, (a, p, t), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_jit_equals_no_jit_and_vmap_equals_loop():
  rng = np.random.default_rng(5)
  a = np.stack([unit_rows(rng, 30, 8) for _ in range(3)])
  p = np.stack([unit_rows(rng, 30, 8) for _ in range(3)])
  where = rng.uniform(size=(3, 30)) < 0.8
  fn = lambda a, p, w: losses.point_info_nce(a, p, where=w, temperature=0.4)
  eager = [fn(a[i], p[i], where[i]) for i in range(3)]
  np.testing.assert_allclose(jax.jit(fn)(a[0], p[0], where[0]), eager[0], rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(fn)(a, p, where), np.stack(eager), rtol=1e-6)
  np.testing.assert_allclose(eager[1], reference(a[1], p[1], 0.4, where[1]), rtol=2e-5, atol=2e-6)


def test_all_padding_is_finite_with_zero_gradients():
  rng = np.random.default_rng(6)
  a, p = unit_rows(rng, 16, 4), unit_rows(rng, 16, 4)
  where = np.zeros(16, bool)
  fn = lambda a, p: losses.info_nce(a, p, where=where, symmetric=True).sum()
  value, grads = jax.value_and_grad(fn, (0, 1))(a, p)
  assert value == 0.0
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


def test_unnormalised_features_with_huge_logits_stay_finite():
  rng = np.random.default_rng(7)
  a = rng.normal(size=(64, 8)).astype(np.float32) * 30
  p = rng.normal(size=(64, 8)).astype(np.float32) * 30
  out, grads = jax.value_and_grad(lambda a, p: losses.info_nce(a, p).sum(), (0, 1))(a, p)
  assert np.isfinite(out) and all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_allclose(losses.info_nce(a, p), reference(a, p, 0.07, np.ones(64, bool)),
                             rtol=1e-4)


@pytest.mark.parametrize("symmetric", [False, True])
def test_pmap_with_axis_name_equals_one_device_on_concatenated_pairs(symmetric):
  devices = jax.device_count()
  rng = np.random.default_rng(8)
  k, c = 24, 16
  a, p = unit_rows(rng, devices * k, c), unit_rows(rng, devices * k, c)
  where = rng.uniform(size=devices * k) < 0.8
  where[:k] = False  # one device holds only padding
  kwargs = dict(temperature=0.1, symmetric=symmetric)

  def local(a, p, w):
    fn = lambda a, p: losses.pixel_to_point_info_nce(a, p, where=w, axis_name="batch",
                                                     **kwargs).sum()
    loss = losses.pixel_to_point_info_nce(a, p, where=w, axis_name="batch", **kwargs)
    return loss, jax.grad(fn, (0, 1))(a, p)

  shard = lambda x: x.reshape((devices, k) + x.shape[1:])
  loss, (ga, gp) = jax.pmap(local, axis_name="batch")(shard(a), shard(p), shard(where))
  global_fn = lambda a, p: losses.pixel_to_point_info_nce(a, p, where=where, **kwargs).sum()
  ref_loss = losses.pixel_to_point_info_nce(a, p, where=where, **kwargs)
  ref_ga, ref_gp = jax.grad(global_fn, (0, 1))(a, p)
  np.testing.assert_allclose(np.asarray(loss).reshape(-1), ref_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ga).reshape(-1, c), ref_ga, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gp).reshape(-1, c), ref_gp, rtol=1e-4, atol=1e-6)
  if not symmetric:
    np.testing.assert_allclose(ref_loss, reference(a, p, 0.1, where), rtol=2e-5, atol=2e-6)


def test_per_device_negatives_without_axis_name():
  devices = jax.device_count()
  rng = np.random.default_rng(9)
  a, p = unit_rows(rng, devices * 8, 4), unit_rows(rng, devices * 8, 4)
  out = jax.pmap(lambda a, p: losses.info_nce(a, p))(a.reshape(devices, 8, 4),
                                                      p.reshape(devices, 8, 4))
  for d in range(devices):
    sl = slice(8 * d, 8 * d + 8)
    np.testing.assert_allclose(out[d], reference(a[sl], p[sl], 0.07, np.ones(8, bool)),
                               rtol=2e-5, atol=2e-6)


def test_contrastive_metrics_match_numpy():
  rng = np.random.default_rng(10)
  a, p = unit_rows(rng, 40, 6), unit_rows(rng, 40, 6)
  p[:20] = a[:20]  # the first half is trivially correct
  where = rng.uniform(size=40) < 0.8
  m = losses.contrastive_metrics(a, p, where=where)
  sim = a.astype(np.float64) @ p.T.astype(np.float64)
  for i in range(40):
    if not where[i]:
      assert m["positive_similarity"][i] == m["negative_similarity"][i] == m["correct"][i] == 0
      continue
    neg = [sim[i, j] for j in range(40) if where[j] and j != i]
    np.testing.assert_allclose(m["positive_similarity"][i], sim[i, i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m["negative_similarity"][i], np.mean(neg), rtol=1e-4, atol=1e-6)
    assert m["correct"][i] == float(sim[i, i] > max(neg))
  assert np.all(np.asarray(m["correct"])[:20][where[:20]] == 1.0)


def test_contrastive_metrics_across_devices():
  devices = jax.device_count()
  rng = np.random.default_rng(11)
  a, p = unit_rows(rng, devices * 6, 4), unit_rows(rng, devices * 6, 4)
  where = rng.uniform(size=devices * 6) < 0.8
  shard = lambda x: x.reshape((devices, 6) + x.shape[1:])
  out = jax.pmap(lambda a, p, w: losses.contrastive_metrics(a, p, where=w, axis_name="i"),
                 axis_name="i")(shard(a), shard(p), shard(where))
  ref = losses.contrastive_metrics(a, p, where=where)
  for key in ref:
    np.testing.assert_allclose(np.asarray(out[key]).reshape(-1), ref[key], rtol=1e-5, atol=1e-6)


def test_shape_errors_are_clear():
  with pytest.raises(ValueError, match=r"\[K, C\]"):
    losses.info_nce(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="where must have shape"):
    losses.info_nce(np.zeros((4, 3)), np.zeros((4, 3)), where=np.ones(5, bool))


def test_importing_losses_pulls_in_nothing_heavy():
  code = ("import sys, p2p_jax.losses; "
          "heavy = {'tensorflow_datasets', 'tensorflow', 'trimesh', 'torch', 'flax', 'optax'}; "
          "print(sorted(heavy & set(sys.modules)))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_l2_normalize_matches_torch_semantics_with_finite_gradients_at_zero():
  x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0]], np.float32)
  np.testing.assert_allclose(losses.l2_normalize(x), [[0.6, 0.8], [0, 0], [1e-8, 0]], rtol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(losses.l2_normalize(x) * np.array([1.0, 2.0])))(x)
  assert np.all(np.isfinite(grad))
  # (I - u u^T) w / |x| with u = (0.6, 0.8), w = (1, 2), |x| = 5.
  np.testing.assert_allclose(grad[0], [-0.064, 0.048], rtol=1e-5)
