"""PointNet++ student: shapes, padding invariance, permutation behaviour, heads, jit and grad."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from p2p_jax.models import pointnet2 as pn
from p2p_jax.models import student as st


def room_points(rng, batch, num):
  return rng.uniform(0, 1, size=(batch, num, 3)).astype(np.float32) * [2.0, 2.0, 1.0]


def init_and_apply(model, points, features, mask, train):
  variables = jax.jit(model.init)({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                  points, features, mask)
  out, updates = apply(model, variables, points, features, mask, train)
  return variables, out, updates


def apply(model, variables, points, features, mask, train):
  """Jitted `model.apply` in the given mode, returning (output, batch statistics updates)."""
  fn = jax.jit(lambda v, p, f, m: model.apply(v, p, f, m, train=train, mutable=["batch_stats"],
                                              rngs={"dropout": jax.random.key(2)}))
  return fn(variables, points, features, mask)


def test_s3dis_configuration_shapes():
  model = st.PointModel(pn.PointNet2Seg(), st.SegmentationHead(13))
  points = jax.ShapeDtypeStruct((2, 4096, 3), jnp.float32)
  feats = jax.ShapeDtypeStruct((2, 4096, 9), jnp.float32)
  variables = jax.eval_shape(lambda p, f: model.init(jax.random.key(0), p, f), points, feats)
  (logits, aux), _ = jax.eval_shape(
      lambda v, p, f: model.apply(v, p, f, mutable=["batch_stats"]), variables, points, feats)
  assert logits.shape == (2, 4096, 13) and aux["features"].shape == (2, 4096, 128)
  for i, (npoint, width) in enumerate([(1024, 64), (256, 128), (64, 256), (16, 512)], start=1):
    assert aux[f"sa{i}_features"].shape == (2, npoint, width)
  sa1 = variables["params"]["backbone"]["sa1"]["SharedMLP_0"]
  kernels = [sa1[f"PointwiseDense_{i}"]["kernel"].shape for i in range(3)]
  assert kernels == [(12, 32), (32, 32), (32, 64)]
  fp = lambda i: variables["params"]["backbone"][f"fp{i}"]["SharedMLP_0"]
  fp_widths = [fp(i)[f"PointwiseDense_{j}"]["kernel"].shape[1]
               for i, n in zip(range(1, 5), (2, 2, 2, 3)) for j in range(n)]
  assert fp_widths == [256, 256, 256, 256, 256, 128, 128, 128, 128]


def test_padding_changes_no_valid_output():
  rng = np.random.default_rng(0)
  points = room_points(rng, 2, 96)
  feats = rng.normal(size=(2, 96, 4)).astype(np.float32)
  mask = np.ones((2, 96), bool)
  mask[1, 80:] = False  # batch 1 is already padded
  garbage_pts = np.full((2, 40, 3), np.nan, np.float32)
  garbage_pts[0, :20] = 0.5  # and some finite garbage inside the room
  padded_pts = np.concatenate([points, garbage_pts], 1)
  padded_feats = np.concatenate([feats, np.full((2, 40, 4), 1e6, np.float32)], 1)
  padded_mask = np.concatenate([mask, np.zeros((2, 40), bool)], 1)
  model = st.PointModel(pn.PointNet2Tiny(), st.ProjectionHead(8))
  for train in (False, True):
    variables, (out, aux), updates = init_and_apply(model, points, feats, mask, train)
    (pout, paux), pupdates = apply(model, variables, padded_pts, padded_feats, padded_mask, train)
    np.testing.assert_allclose(np.asarray(pout)[:, :96][mask], np.asarray(out)[mask],
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(pout)[~padded_mask] == 0.0)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(pupdates)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # BN statistics ignore padding
    np.testing.assert_array_equal(aux["sa1_index"], paux["sa1_index"])

  def loss(params, pts, f, m):
    (out, _), _ = model.apply({**variables, "params": params}, pts, f, m, train=True,
                              mutable=["batch_stats"])
    return jnp.sum(out * np.arange(8))

  grads = jax.jit(jax.grad(loss))(variables["params"], points, feats, mask)
  pgrads = jax.jit(jax.grad(loss))(variables["params"], padded_pts, padded_feats, padded_mask)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(pgrads)):
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(a).max())  # summation order


def small_net(nsample):
  levels = (pn.SALevel(16, (0.6,), (nsample,), ((8, 16),)), pn.SALevel(4, (1.2,), (16,), ((16,),)))
  return pn.PointNet2(sa_levels=levels, fp_mlps=((16,), (8,)))


def test_outputs_follow_a_permutation_when_balls_are_never_full():
  rng = np.random.default_rng(1)
  points = room_points(rng, 2, 48)
  feats = rng.normal(size=(2, 48, 3)).astype(np.float32)
  perm = np.concatenate([[0], 1 + rng.permutation(47)])  # FPS starts from the same point
  model = small_net(nsample=48)  # a ball can never hold more than 48 of 48 points
  variables, (out, _), _ = init_and_apply(model, points, feats, None, train=True)
  (pout, _), _ = apply(model, variables, points[:, perm], feats[:, perm], None, True)
  np.testing.assert_allclose(pout, np.asarray(out)[:, perm], rtol=1e-5, atol=1e-5)


def test_full_balls_keep_the_first_points_in_index_order():
  # With nsample smaller than a ball's population the kept neighbours depend on the order,
  # exactly as in PointNet++; the stated permutation property needs the precondition.
  rng = np.random.default_rng(2)
  points = room_points(rng, 1, 48)
  feats = rng.normal(size=(1, 48, 3)).astype(np.float32)
  perm = np.concatenate([[0], 1 + rng.permutation(47)])
  model = small_net(nsample=4)
  variables, (out, _), _ = init_and_apply(model, points, feats, None, train=False)
  (pout, _), _ = apply(model, variables, points[:, perm], feats[:, perm], None, False)
  assert not np.allclose(pout, np.asarray(out)[:, perm], atol=1e-4)


def test_heads_and_parameter_layout():
  rng = np.random.default_rng(3)
  points = room_points(rng, 2, 64)
  mask = np.ones((2, 64), bool)
  mask[0, 50:] = False
  for head, width in [(st.ProjectionHead(16), 16), (st.SegmentationHead(5), 5),
                      (st.LinearHead(7), 7)]:
    model = st.PointModel(pn.PointNet2Tiny(), head)
    variables, (out, aux), _ = init_and_apply(model, points, None, mask, train=True)
    assert set(variables["params"]) == {"backbone", "head"}
    assert out.shape == (2, 64, width) and aux["features"].shape == (2, 64, 16)
    if isinstance(head, st.ProjectionHead):
      np.testing.assert_allclose(np.linalg.norm(np.asarray(out)[mask], axis=-1), 1.0, rtol=1e-5)
  assert set(variables["params"]["head"]) == {"Dense_0"}  # the linear probe is one layer


def test_jit_grad_and_an_sgd_step_reduce_a_segmentation_loss():
  rng = np.random.default_rng(4)
  points = room_points(rng, 2, 128)
  feats = rng.uniform(size=(2, 128, 3)).astype(np.float32)
  labels = (points[..., 2] > 0.5).astype(np.int32) + 2 * (points[..., 0] > 1.0)
  model = st.PointModel(pn.PointNet2Tiny(), st.SegmentationHead(4, dropout_rate=0.0))
  variables = jax.jit(model.init)(jax.random.key(0), points, feats)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, batch_stats, opt_state):
    def loss_fn(params):
      (logits, _), updates = model.apply({"params": params, "batch_stats": batch_stats}, points,
                                         feats, train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates["batch_stats"]
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  params, batch_stats, opt_state = variables["params"], variables["batch_stats"], None
  opt_state = tx.init(params)
  history = []
  for _ in range(30):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
    history.append(float(loss))
  assert np.isfinite(history).all() and history[-1] < 0.7 * history[0], history
