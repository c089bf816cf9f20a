"""Collective-aware functions under jax.jit(jax.shard_map(...)) with its default checks
(check_vma=True): the same numbers as under jax.pmap and on one device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_pointcontrast as pointcontrast_harness
import test_train_ppkt as ppkt_harness
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from p2p_jax import collectives, losses, pointops, sparse
from p2p_jax.methods import pointcontrast, ppkt
from p2p_jax.models.layers import MaskedBatchNorm, PointwiseDense
from p2p_jax.train import contrastive, parallel

AXIS = parallel.AXIS
D = 8  # devices of the mesh (tests/conftest.py simulates 8)



def unit_rows(rng, k, c):
  x = rng.normal(size=(k, c))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sharded(fn, in_specs, out_specs):
  """jit(shard_map(fn)) over D devices along AXIS, default checks; the arguments are placed
  on the mesh as `in_specs` say (the default mesh has Explicit axes)."""
  mesh = jax.make_mesh((D,), (AXIS,))
  mapped = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs))

  def call(*args):
    args = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, in_specs)]
    return mapped(*args)
  return call


def per_device(x):
  """[D * n, ...] -> [D, n, ...], pmap's layout of the same global batch."""
  return np.asarray(x).reshape((D, -1) + np.shape(x)[1:])


def close(a, b, rtol, atol, err_msg=""):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=err_msg)


def test_match_vma_casts_only_inside_shard_map():
  x = {"a": jnp.ones(3), "b": jnp.zeros((2, 2))}
  assert collectives.match_vma(x, jnp.ones(4)) is x
  seen = []

  def under_pmap(v):
    seen.append(collectives.varying_axes(v))
    assert collectives.match_vma(x, v) is x
    return v
  jax.pmap(under_pmap, axis_name=AXIS)(jnp.ones(D))
  assert seen == [frozenset()]

  def inside(v, w):
    assert collectives.varying_axes(v) == frozenset()
    assert collectives.varying_axes((v, w)) == {AXIS}
    u, same = collectives.match_vma((v, w), w)
    assert collectives.varying_axes(u) == {AXIS} and same is w
    return u
  np.testing.assert_array_equal(
      sharded(inside, (P(), P(AXIS)), P(AXIS))(np.ones(3, np.float32), np.ones(D, np.float32)),
      np.ones(3 * D))


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_loss_and_gradients(symmetric):
  rng = np.random.default_rng(0)
  k, c = 12, 8
  a, p = unit_rows(rng, D * k, c), unit_rows(rng, D * k, c)
  where = rng.uniform(size=D * k) < 0.8
  where[:k] = False  # one device holds only padding
  kwargs = dict(temperature=0.1, symmetric=symmetric)

  def local(a, p, w):
    fn = lambda a, p: losses.pixel_to_point_info_nce(a, p, where=w, axis_name=AXIS,
                                                     **kwargs).sum()
    loss = losses.pixel_to_point_info_nce(a, p, where=w, axis_name=AXIS, **kwargs)
    return loss, jax.grad(fn, (0, 1))(a, p)

  ours = sharded(local, (P(AXIS),) * 3, P(AXIS))(a, p, where)
  pmapped = jax.pmap(local, axis_name=AXIS)(per_device(a), per_device(p), per_device(where))
  pmapped = jax.tree.map(lambda x: np.asarray(x).reshape((D * k,) + x.shape[2:]), pmapped)
  global_fn = lambda a, p: losses.pixel_to_point_info_nce(a, p, where=where, **kwargs).sum()
  one = (losses.pixel_to_point_info_nce(a, p, where=where, **kwargs),
         jax.grad(global_fn, (0, 1))(a, p))
  close(ours, pmapped, rtol=1e-6, atol=1e-7)
  scale = max(np.abs(g).max() for g in jax.tree.leaves(one[1]))
  assert scale > 0.1  # gradients are not trivially zero
  close(ours, one, rtol=1e-4, atol=1e-5 * scale)  # summation orders differ


def test_contrastive_metrics():
  rng = np.random.default_rng(1)
  a, p = unit_rows(rng, D * 6, 4), unit_rows(rng, D * 6, 4)
  where = rng.uniform(size=D * 6) < 0.8
  local = lambda a, p, w: losses.contrastive_metrics(a, p, where=w, axis_name=AXIS)
  ours = sharded(local, (P(AXIS),) * 3, P(AXIS))(a, p, where)
  pmapped = jax.pmap(local, axis_name=AXIS)(per_device(a), per_device(p), per_device(where))
  one = losses.contrastive_metrics(a, p, where=where)
  for key in one:
    close(ours[key], np.asarray(pmapped[key]).reshape(-1), rtol=1e-6, atol=1e-7, err_msg=key)
    close(ours[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_masked_batch_norm_with_replicated_params():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(D * 12, 4)).astype(np.float32) * 2 + 1
  mask = rng.uniform(size=D * 12) < 0.8
  weights = rng.normal(size=x.shape).astype(np.float32)
  single = MaskedBatchNorm(relu=True)
  variables = single.init(jax.random.key(0), x[:12], mask[:12], train=False)
  params = jax.tree.map(lambda v: v + rng.uniform(0.5, 1.5, v.shape).astype(np.float32),
                        variables["params"])

  def grad_fn(module):
    def loss(params, x, mask, w):
      y, stats = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              mask, train=True, mutable=["batch_stats"])
      return jnp.sum(y * w), (y, stats["batch_stats"])
    return jax.grad(loss, (0, 1), has_aux=True)

  crossed = MaskedBatchNorm(relu=True, axis_name=AXIS)
  (gp, gx), (y, stats) = sharded(grad_fn(crossed), (P(), P(AXIS), P(AXIS), P(AXIS)),
                                 ((P(), P(AXIS)), (P(AXIS), P())))(params, x, mask, weights)
  (pp, px), (py, pstats) = jax.pmap(grad_fn(crossed), axis_name=AXIS, in_axes=(None, 0, 0, 0))(
      params, per_device(x), per_device(mask), per_device(weights))
  (rp, rx), (ry, rstats) = grad_fn(single)(params, x, mask, weights)
  flat = lambda t: jax.tree.map(lambda v: np.asarray(v).reshape((-1,) + v.shape[2:]), t)
  # shard_map sums the per-device shares of a replicated parameter's gradient; pmap leaves
  # them to the caller.
  close(gp, jax.tree.map(lambda v: np.asarray(v).sum(0), pp), rtol=1e-6, atol=1e-6)
  close((gx, y), flat((px, py)), rtol=1e-6, atol=1e-7)
  close(stats, jax.tree.map(lambda v: v[0], pstats), rtol=1e-6, atol=1e-7)
  close(gp, rp, rtol=1e-4, atol=1e-5)
  close((gx, y), (rx, ry), rtol=1e-4, atol=1e-5)
  close(stats, rstats, rtol=1e-5, atol=1e-6)


def test_pointwise_dense_with_replicated_kernel():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(D * 5, 3, 6)).astype(np.float32)
  weights = rng.normal(size=(D * 5, 3, 4)).astype(np.float32)
  module = PointwiseDense(4)
  variables = module.init(jax.random.key(0), x[:5])
  grad_fn = jax.grad(lambda v, x, w: jnp.sum(module.apply(v, x) * w), (0, 1))
  gv, gx = sharded(grad_fn, (P(), P(AXIS), P(AXIS)), (P(), P(AXIS)))(variables, x, weights)
  rv, rx = grad_fn(variables, x, weights)
  close(gv, rv, rtol=1e-5, atol=1e-5)
  close(gx, rx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_farthest_point_sample(masked):
  rng = np.random.default_rng(4)
  points = rng.uniform(-1, 1, size=(D * 2, 32, 3)).astype(np.float32)
  mask = rng.uniform(size=(D * 2, 32)) < 0.7
  fps = lambda q, m: pointops.farthest_point_sample(q, 8, mask=m if masked else None)
  ours = sharded(fps, (P(AXIS), P(AXIS)), P(AXIS))(points, mask)
  pmapped = jax.pmap(fps)(per_device(points), per_device(mask))
  one = fps(points, mask)
  for a, b, c in zip(ours, pmapped, one, strict=True):
    np.testing.assert_array_equal(a, np.asarray(b).reshape(a.shape))
    np.testing.assert_array_equal(a, c)


def test_sparse_convolutions_with_replicated_kernels():
  """conv, conv_down and conv_up (custom VJPs) on each device's own cloud."""
  rng = np.random.default_rng(5)
  points = rng.integers(0, 6, size=(D, 40, 3)).astype(np.float32)
  feats = rng.normal(size=(D, 40, 3)).astype(np.float32)
  mask = rng.uniform(size=(D, 40)) < 0.9
  kernels = {"conv": rng.normal(size=(27, 3, 4)).astype(np.float32),
             "down": rng.normal(size=(8, 4, 5)).astype(np.float32),
             "up": rng.normal(size=(8, 5, 2)).astype(np.float32)}

  def loss(kernels, feats, points, mask):
    batch = points.shape[0]
    tensor, _, _ = sparse.voxelize(points, feats, mask, 1.0, 40)
    kmap, _ = sparse.kernel_map(tensor.coords, tensor.mask, batch)
    _, _, smap, _ = sparse.coarsen(tensor.coords, tensor.mask, batch, 32)
    x = jnp.tanh(sparse.conv(tensor.features, kmap, kernels["conv"]))
    x = jnp.tanh(sparse.conv_down(x, smap, kernels["down"]))
    return jnp.sum(sparse.conv_up(x, smap, kernels["up"]) ** 2)

  grad_fn = jax.grad(loss, (0, 1))
  ours = sharded(grad_fn, (P(), P(AXIS), P(AXIS), P(AXIS)), (P(), P(AXIS)))(
      kernels, feats, points, mask)
  one = jax.jit(grad_fn)(kernels, feats, points, mask)  # all D clouds on one device
  close(ours, one, rtol=1e-5, atol=1e-5)
  assert all(np.abs(g).max() > 1e-3 for g in jax.tree.leaves(ours[0]))


def test_ppkt_step_equals_pmapped_step():
  state, teacher_vars, host, kwargs = ppkt_harness.setup("sgd")
  initial = state.params
  batches = [host[0], host[1]]
  pmapped, pm = ppkt_harness.run(state, teacher_vars, batches, kwargs, jax.devices()[:D],
                                 steps=2)
  step = sharded(functools.partial(ppkt.train_step, **kwargs), (P(), P(), P(AXIS)), (P(), P()))
  metrics = []
  for batch in batches:  # [1, 8, ...] -> the global batch of 8, one frame per device
    state, m = step(state, teacher_vars, jax.tree.map(lambda x: x.reshape(x.shape[1:]), batch))
    metrics.append(m)
  assert int(state.step) == 2
  close(state.params, pmapped.params, rtol=1e-6, atol=1e-7)
  close(state.batch_stats, pmapped.batch_stats, rtol=1e-6, atol=1e-7)
  for i in range(2):
    for key in pm[i]:
      close(metrics[i][key], pm[i][key], rtol=1e-5, atol=1e-7, err_msg=f"{key} at step {i}")
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                    jax.tree.leaves(initial)))


@pytest.fixture(scope="module")
def pointcontrast_data(tmp_path_factory):
  return pointcontrast_harness.data.__wrapped__(tmp_path_factory)


def test_pointcontrast_step_equals_pmapped_step(pointcontrast_data):
  state, host, kwargs = pointcontrast_harness.setup(pointcontrast_data)
  batches = [host[0], host[1]]
  step = contrastive.pmap_step(pointcontrast.train_step, jax.devices()[:D], **kwargs)
  pmapped, pm = pointcontrast_harness.run(state, batches, step, jax.devices()[:D])
  step = sharded(functools.partial(pointcontrast.train_step, **kwargs), (P(), P(AXIS)),
                 (P(), P()))
  metrics = []
  for batch in batches:
    state, m = step(state, jax.tree.map(lambda x: x.reshape(x.shape[1:]), batch))
    metrics.append(m)
  close(state.params, pmapped.params, rtol=1e-6, atol=1e-7)
  close(state.batch_stats, pmapped.batch_stats, rtol=1e-6, atol=1e-7)
  for i in range(2):
    for key in pm[i]:
      close(metrics[i][key], pm[i][key], rtol=1e-5, atol=1e-7, err_msg=f"{key} at step {i}")
