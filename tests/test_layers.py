"""MaskedBatchNorm against flax.linen.BatchNorm(mask=...) and a NumPy formula."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2p_jax.models.layers import MaskedBatchNorm, PointwiseDense


class FlaxReference(nn.Module):
  relu: bool
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, mask, *, train):
    y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     axis_name=self.axis_name)(x, mask=mask[..., None])
    return nn.relu(y) if self.relu else y


def run(module, variables, x, mask, train):
  return module.apply(variables, x, mask, train=train, mutable=["batch_stats"])


@pytest.mark.parametrize("relu", [False, True])
def test_matches_flax_batch_norm_values_gradients_and_running_averages(relu):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(3, 40, 6)) * 2 + 1).astype(np.float32)
  mask = rng.uniform(size=(3, 40)) < 0.7
  x[~mask] = 1e3  # padding far from the data must not move the statistics
  ours, ref = MaskedBatchNorm(relu=relu), FlaxReference(relu=relu)
  variables = ours.init(jax.random.key(0), x, mask, train=False)
  variables = jax.tree.map(lambda v: v + rng.uniform(0.5, 1.5, v.shape).astype(np.float32),
                           variables)
  for train in (True, False):
    y, stats = run(ours, variables, x, mask, train)
    y_ref, stats_ref = run(ref, {"params": {"BatchNorm_0": variables["params"]},
                                 "batch_stats": {"BatchNorm_0": variables["batch_stats"]}},
                           x, mask, train)
    np.testing.assert_allclose(np.asarray(y)[mask], np.asarray(y_ref)[mask], rtol=1e-5,
                               atol=1e-5)
    if train:
      np.testing.assert_allclose(stats["batch_stats"]["mean"],
                                 stats_ref["batch_stats"]["BatchNorm_0"]["mean"], rtol=1e-5)
      np.testing.assert_allclose(stats["batch_stats"]["var"],
                                 stats_ref["batch_stats"]["BatchNorm_0"]["var"], rtol=1e-5)

  weights = rng.normal(size=x.shape).astype(np.float32) * mask[..., None]
  def loss(module, params, x):
    tree = params if module is ours else {"BatchNorm_0": params}
    stats = variables["batch_stats"]
    stats = stats if module is ours else {"BatchNorm_0": stats}
    y, _ = run(module, {"params": tree, "batch_stats": stats}, x, mask, True)
    return jnp.sum(y * weights)
  grads = jax.grad(lambda p, x: loss(ours, p, x), (0, 1))(variables["params"], x)
  grads_ref = jax.grad(lambda p, x: loss(ref, p, x), (0, 1))(variables["params"], x)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_statistics_against_numpy_and_unmasked_rows_get_gradients():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 3)).astype(np.float32)
  mask = rng.uniform(size=50) < 0.5
  module = MaskedBatchNorm()
  variables = module.init(jax.random.key(0), x, mask, train=False)
  y, _ = run(module, variables, x, mask, True)
  mean, var = x[mask].mean(0), x[mask].var(0)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
  # A padded row's output is normalised too; its value depends on the statistics only.
  g = jax.grad(lambda x: jnp.sum(run(module, variables, x, mask, True)[0][~mask]))(x)
  assert np.all(np.isfinite(g))


def test_cross_device_statistics_equal_one_device_on_the_whole_batch():
  devices = jax.device_count()
  rng = np.random.default_rng(2)
  x = rng.normal(size=(devices, 12, 4)).astype(np.float32)
  mask = rng.uniform(size=(devices, 12)) < 0.8
  weights = rng.normal(size=x.shape).astype(np.float32)
  module = MaskedBatchNorm(relu=True, axis_name="batch")
  single = MaskedBatchNorm(relu=True)
  variables = single.init(jax.random.key(0), x[0], mask[0], train=False)

  def loss(module, params, x, mask, w):
    y, stats = run(module, {"params": params, "batch_stats": variables["batch_stats"]}, x, mask,
                   True)
    return jnp.sum(y * w), (y, stats)

  grad_fn = lambda m: jax.grad(lambda p, x, mk, w: loss(m, p, x, mk, w), (0, 1), has_aux=True)
  (gp, gx), (y, stats) = jax.pmap(grad_fn(module), axis_name="batch", in_axes=(None, 0, 0, 0))(
      variables["params"], x, mask, weights)
  flat = lambda a: a.reshape((-1,) + a.shape[2:])
  (rp, rx), (ry, rstats) = grad_fn(single)(variables["params"], flat(x), flat(mask),
                                           flat(weights))
  np.testing.assert_allclose(flat(np.asarray(y)), ry, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(flat(np.asarray(gx)), rx, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(rp)):  # per-device shares sum up
    np.testing.assert_allclose(np.asarray(a).sum(0), b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(rstats)):
    np.testing.assert_allclose(np.asarray(a)[0], b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_bias", [False, True])
def test_pointwise_dense_equals_flax_dense_with_gradients(use_bias):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 5, 7, 6)).astype(np.float32)
  weights = rng.normal(size=(2, 5, 7, 4)).astype(np.float32)
  ours, ref = PointwiseDense(4, use_bias=use_bias), nn.Dense(4, use_bias=use_bias)
  variables = ours.init(jax.random.key(0), x)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(
      np.shape, ref.init(jax.random.key(0), x))  # interchangeable checkpoints
  if use_bias:
    variables = {"params": {**variables["params"], "bias": np.arange(4, dtype=np.float32)}}
  np.testing.assert_allclose(ours.apply(variables, x), ref.apply(variables, x), rtol=1e-6)
  loss = lambda m: lambda v, x: jnp.sum(m.apply(v, x) * weights)
  g_ours = jax.jit(jax.grad(loss(ours), (0, 1)))(variables, x)
  g_ref = jax.grad(loss(ref), (0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
