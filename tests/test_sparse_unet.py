"""SR-UNet student: MinkowskiEngine's shapes, padding and permutation invariance, jit, grad, SGD."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from p2p_jax.models import sparse_unet as su
from p2p_jax.models import student as st


def surface_points(rng, batch, num):
  """Points on the floor and two walls of a 2 x 2 x 1 m corner (surfaces, like real scans)."""
  pts = rng.uniform(0, 1, size=(batch, num, 3)) * [2.0, 2.0, 1.0]
  face = rng.integers(0, 3, size=(batch, num))
  for axis in range(3):
    pts[..., axis] = np.where(face == axis, 0.0, pts[..., axis])
  return pts.astype(np.float32)


def random_variables(model, *args):
  """Variables shaped as `model.init` makes them, drawn with NumPy (no compiled init):
  kernels ~ N(0, 0.3^2), vectors (BatchNorm scales, biases, statistics) ~ U(0.5, 1.5)."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))
  draw = lambda s: (rng.uniform(0.5, 1.5, s.shape) if s.ndim == 1 else
                    rng.normal(size=s.shape) * 0.3)
  return jax.tree.map(lambda s: jnp.asarray(draw(s), s.dtype), shapes)


def test_res16unet34c_matches_minkowski_engine_shapes():
  model = st.PointModel(su.SparseUNet34C(), st.ProjectionHead(128))
  points = jax.ShapeDtypeStruct((2, 4096, 3), jnp.float32)
  colors = jax.ShapeDtypeStruct((2, 4096, 3), jnp.float32)
  variables = jax.eval_shape(lambda p, c: model.init(jax.random.key(0), p, c), points, colors)
  (out, aux), _ = jax.eval_shape(
      lambda v, p, c: model.apply(v, p, c, train=True, mutable=["batch_stats"]), variables,
      points, colors)
  assert out.shape == (2, 4096, 128) and aux["features"].shape == (2, 4096, 96)
  assert su.SparseUNet34C().output_width == 96
  assert su.SparseUNet34C(out_features=20).output_width == 20
  params = variables["params"]["backbone"]
  assert params["conv0p1s1"]["kernel"].shape == (27, 3, 32)
  blocks = {name.split("_")[0]: 0 for name in params if name.startswith("block")}
  for name in params:
    if name.startswith("block"):
      blocks[name.split("_")[0]] += 1
  assert [blocks[f"block{i}"] for i in range(1, 9)] == [2, 3, 4, 6, 2, 2, 2, 2]
  # Decoder inputs: PLANES[4..7] concatenated with the encoder skips (ME's inplanes).
  assert params["block5_0"]["conv1"]["kernel"].shape == (27, 256 + 128, 256)
  assert params["block6_0"]["conv1"]["kernel"].shape == (27, 128 + 64, 128)
  assert params["block7_0"]["conv1"]["kernel"].shape == (27, 96 + 32, 96)
  assert params["block8_0"]["conv1"]["kernel"].shape == (27, 96 + 32, 96)
  assert params["block8_0"]["downsample_conv"]["kernel"].shape == (128, 96)
  assert params["convtr4p16s2"]["kernel"].shape == (8, 256, 256)
  assert params["conv4p8s2"]["kernel"].shape == (8, 128, 128)
  num = sum(np.prod(x.shape) for x in jax.tree.leaves(params))
  assert 37.5e6 < num < 38.0e6  # Res16UNet34C with a 3^3 stem: 37.8M parameters
  small = jax.eval_shape(lambda p, c: su.SparseUNet14A(conv0_kernel_size=5).init(
      jax.random.key(0), p, c), points, colors)["params"]
  assert small["conv0p1s1"]["kernel"].shape == (125, 3, 32)
  assert "block1_1" not in small and small["convtr4p16s2"]["kernel"].shape == (8, 256, 128)


def test_padding_and_permutation_change_no_valid_output():
  rng = np.random.default_rng(0)
  num, pad = 192, 40
  points = surface_points(rng, 2, num + pad)
  colors = rng.uniform(size=(2, num + pad, 3)).astype(np.float32)
  mask = np.ones((2, num + pad), bool)
  mask[:, num:] = False
  mask[1, 150:] = False  # cloud 1 has fewer points
  points[~mask] = 0.0
  # The same clouds permuted, with garbage in the padding (NaN, far away, huge colours).
  perm = rng.permutation(num + pad)
  points2, colors2, mask2 = points[:, perm], colors[:, perm].copy(), mask[:, perm]
  points2[~mask2] = np.nan
  points2[0, np.flatnonzero(~mask2[0])[:10]] = 1e4
  colors2[~mask2] = 1e6

  model = st.PointModel(su.SparseUNetTiny(), st.ProjectionHead(8))
  variables = random_variables(model, points, colors, mask)
  apply = jax.jit(lambda v, p, c, m, train: model.apply(v, p, c, m, train=train,
                                                        mutable=["batch_stats"]),
                  static_argnums=4)
  for train in (True, False):
    (out, aux), updates = apply(variables, points, colors, mask, train)
    (out2, aux2), updates2 = apply(variables, points2, colors2, mask2, train)
    np.testing.assert_array_equal(aux["overflow"], [0, 0])
    np.testing.assert_array_equal(aux["num_voxels"], aux2["num_voxels"])
    assert np.all(np.isfinite(out2))
    np.testing.assert_allclose(np.asarray(out2), np.asarray(out)[:, perm], rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(out2)[~mask2] == 0.0) and np.abs(np.asarray(out)[mask]).min() >= 0
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(updates2)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # BN statistics ignore padding


def test_overflow_is_reported_in_aux_and_warned():
  rng = np.random.default_rng(1)
  points = surface_points(rng, 1, 128)
  model = su.SparseUNetTiny(capacity=16)
  variables = random_variables(model, points)
  with pytest.warns(RuntimeWarning, match="capacity overflow"):
    _, aux = jax.jit(model.apply)(variables, points)
    jax.effects_barrier()
  assert int(aux["overflow"][0]) > 0 and int(aux["num_voxels"][0, 0]) > 16


def test_sgd_on_student_reduces_loss():
  rng = np.random.default_rng(2)
  points = surface_points(rng, 2, 256)
  colors = rng.uniform(size=(2, 256, 3)).astype(np.float32)
  mask = np.ones((2, 256), bool)
  mask[1, 200:] = False
  target = np.sign(points[..., :1] - 1.0) * np.array([1.0, -1.0, 0.5, 0.0], np.float32)
  model = st.PointModel(su.SparseUNetTiny(), st.LinearHead(4))
  variables = random_variables(model, points, colors, mask)
  variables = {**variables, "params": jax.tree.map(lambda x: x * 0.3, variables["params"])}
  tx = optax.sgd(0.05, momentum=0.9)

  @jax.jit
  def step(params, batch_stats, opt_state):
    def loss_fn(params):
      (out, aux), updates = model.apply({"params": params, "batch_stats": batch_stats}, points,
                                        colors, mask, train=True, mutable=["batch_stats"])
      err = jnp.sum((out - target) ** 2, -1)
      return jnp.sum(jnp.where(mask, err, 0.0)) / mask.sum(), (updates["batch_stats"], aux)
    (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss, grads, aux

  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  losses = []
  for i in range(25):
    *state, loss, grads, aux = step(*state)
    losses.append(float(loss))
    if i == 0:
      assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
      assert all(np.any(g != 0) for g in jax.tree.leaves(grads["backbone"]))
      np.testing.assert_array_equal(aux["overflow"], [0, 0])
  assert losses[-1] < 0.5 * losses[0], losses


def test_pair_lists_and_dense_gathers_give_the_same_network():
  """SR-UNet with per-offset pair lists == with dense-gather maps: outputs, BN statistics and
  every parameter gradient, in training mode."""
  rng = np.random.default_rng(3)
  points = surface_points(rng, 2, 320)
  colors = rng.uniform(size=(2, 320, 3)).astype(np.float32)
  mask = np.ones((2, 320), bool)
  mask[1, 250:] = False
  weights = rng.normal(size=(2, 320, 8)).astype(np.float32)
  results = {}
  for impl in ("pairs", "dense"):
    model = su.SparseUNetTiny(conv_impl=impl, out_features=8)
    variables = random_variables(model, points, colors, mask)

    def loss(params, model=model, variables=variables):
      (out, aux), updates = model.apply({**variables, "params": params}, points, colors, mask,
                                        train=True, mutable=["batch_stats"])
      return jnp.sum(jnp.tanh(out) * weights), (out, aux["overflow"], updates)

    results[impl] = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  (value, (out, overflow, updates)), grads = results["pairs"]
  np.testing.assert_array_equal(overflow, [0, 0])
  np.testing.assert_allclose(out, results["dense"][0][1][0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(value, results["dense"][0][0], rtol=1e-4)
  for a, b in zip(jax.tree.leaves((updates, grads)),
                  jax.tree.leaves((results["dense"][0][1][2], results["dense"][1]))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * max(np.abs(b).max(), 1e-6))


def test_pair_overflow_is_counted():
  rng = np.random.default_rng(4)
  points = surface_points(rng, 1, 256)
  model = su.SparseUNetTiny(pairs_per_voxel=(0.2, 8.0, 11.0, 12.0, 14.0), warn_on_overflow=False)
  variables = random_variables(model, points)
  _, aux = jax.jit(model.apply)(variables, points)
  full = su.SparseUNetTiny(warn_on_overflow=False)
  _, aux_full = jax.jit(full.apply)(variables, points)
  np.testing.assert_array_equal(aux_full["overflow"], [0])
  assert int(aux["overflow"][0]) > 0
