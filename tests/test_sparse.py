"""Sparse convolution: kernel maps against brute force, convolutions against dense ones."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from p2p_jax import sparse

SIZE = 6  # occupied voxels lie in a SIZE^3 box per cloud


def random_level(rng, batch=2, capacity=96, occupancy=0.3, origin=(-3, 2, -5)):
  """Random voxels scattered over the rows of each cloud; padding rows hold garbage."""
  coords = rng.integers(-1000, 1000, size=(batch, capacity, 3)).astype(np.int32)
  mask = np.zeros((batch, capacity), bool)
  for b in range(batch):
    cells = np.argwhere(rng.random((SIZE,) * 3) < occupancy)[:capacity]
    rows = rng.permutation(capacity)[:len(cells)]
    coords[b, rows] = cells + np.asarray(origin) + b
    mask[b, rows] = True
  flat = np.concatenate([np.repeat(np.arange(batch), capacity)[:, None].astype(np.int32),
                         coords.reshape(-1, 3)], axis=1)
  return flat, mask.reshape(-1)


def brute_force_neighbours(coords, mask, capacity, kernel_size):
  r = kernel_size // 2
  lookup = {tuple(c): i for i, c in enumerate(coords.tolist()) if mask[i]}
  span = range(-r, r + 1)
  offsets = [(a, b, c) for a in span for b in span for c in span]
  expected = np.full((len(coords), len(offsets)), len(coords), np.int32)
  for i, c in enumerate(coords.tolist()):
    if mask[i]:
      for o, d in enumerate(offsets):
        expected[i, o] = lookup.get((c[0], c[1] + d[0], c[2] + d[1], c[3] + d[2]), len(coords))
  return expected


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_kernel_map_matches_brute_force(kernel_size):
  rng = np.random.default_rng(kernel_size)
  coords, mask = random_level(rng)
  kmap, key_overflow = jax.jit(sparse.kernel_map, static_argnums=(2, 3))(coords, mask, 2,
                                                                         kernel_size)
  np.testing.assert_array_equal(kmap.neighbours,
                                brute_force_neighbours(coords, mask, 96, kernel_size))
  np.testing.assert_array_equal(key_overflow, [0, 0])


def test_kernel_map_reports_key_range_overflow():
  coords = np.array([[0, 0, 0, 0], [0, 2000, 2000, 2000], [0, 1, 0, 0]], np.int32)
  kmap, key_overflow = jax.jit(sparse.kernel_map, static_argnums=2)(
      coords, np.array([True, True, False]), 1)
  np.testing.assert_array_equal(key_overflow, [1])  # 2001^3 voxels do not fit int32 keys
  assert np.all(np.asarray(kmap.neighbours) == 3)  # an empty map, never an aliased one


def test_coarsen_matches_brute_force_and_reports_overflow():
  rng = np.random.default_rng(1)
  coords, mask = random_level(rng)
  fn = jax.jit(sparse.coarsen, static_argnums=(2, 3))
  for capacity in (64, 6):
    coarse, coarse_mask, smap, overflow = fn(coords, mask, 2, capacity)
    coarse, coarse_mask = np.asarray(coarse), np.asarray(coarse_mask)
    kept_by_cloud = []
    for b in range(2):
      fine = coords[b * 96:(b + 1) * 96]
      parents = sorted({tuple(c[1:] // 2) for c, m in zip(fine, mask[b * 96:(b + 1) * 96]) if m})
      kept = parents[:capacity]
      kept_by_cloud.append(kept)
      rows = slice(b * capacity, (b + 1) * capacity)
      np.testing.assert_array_equal(coarse[rows][coarse_mask[rows]][:, 1:], kept)
      assert np.all(coarse[rows][:, 0] == b)
      assert overflow[b] == len(parents) - len(kept)
    # Every fine voxel is its parent's child at its offset, and nothing else is.
    children = np.asarray(smap.children)
    for i in range(len(coords)):
      p = int(smap.parent[i])
      if p < len(coarse):
        offset = coords[i, 1:] - 2 * coarse[p, 1:]
        slot = offset @ [4, 2, 1]
        assert children[p, slot] == i and smap.child_slot[i] == 8 * p + slot
      else:
        assert smap.child_slot[i] == 8 * len(coarse) and i not in children
        assert not mask[i] or tuple(coords[i, 1:] // 2) not in kept_by_cloud[i // 96]
    assert np.all(children[~coarse_mask] == len(coords))
    assert np.sum(children < len(coords)) == np.sum(np.asarray(smap.parent) < len(coarse))


def dense_grid(coords, mask, features, batch, origin, size):
  grid = np.zeros((batch, size, size, size, features.shape[1]), np.float32)
  idx = coords[mask]
  grid[idx[:, 0], idx[:, 1] - origin[0], idx[:, 2] - origin[1], idx[:, 3] - origin[2]] = \
      features[mask]
  return grid


def read_grid(grid, coords, mask, origin):
  idx = coords[mask]
  return grid[idx[:, 0], idx[:, 1] - origin[0], idx[:, 2] - origin[1], idx[:, 3] - origin[2]]


def assert_grads_close(sparse_loss, dense_loss, args):
  for a, b in zip(jax.jit(jax.grad(sparse_loss, argnums=(0, 1)))(*args),
                  jax.jit(jax.grad(dense_loss, argnums=(0, 1)))(*args)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def level_map(coords, mask, batch, impl, kernel_size=3):
  """The level's map for `impl`: the dense-gather `KernelMap` or its exact `PairMap`."""
  kmap, _ = jax.jit(sparse.kernel_map, static_argnums=(2, 3))(coords, mask, batch, kernel_size)
  if impl == "dense":
    return kmap
  num_pairs = int(np.sum(np.asarray(kmap.neighbours) < len(coords)) - mask.sum())
  pairs, dropped = jax.jit(sparse.pair_map, static_argnums=(1, 2))(
      kmap, batch, sparse.pair_capacity(num_pairs, kernel_size**3))
  np.testing.assert_array_equal(dropped, 0)
  return pairs


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_pair_map_matches_brute_force_and_counts_what_does_not_fit(kernel_size):
  rng = np.random.default_rng(10 + kernel_size)
  coords, mask = random_level(rng, occupancy=0.5)
  expected = brute_force_neighbours(coords, mask, 96, kernel_size)
  rows, centre = len(coords), kernel_size**3 // 2
  triples = {(i, int(j), o) for i, o in zip(*np.nonzero(expected < rows)) if o != centre
             for j in [expected[i, o]]}
  per_offset = np.bincount([o for _, _, o in triples], minlength=kernel_size**3)
  kmap, _ = jax.jit(sparse.kernel_map, static_argnums=(2, 3))(coords, mask, 2, kernel_size)
  fn = jax.jit(sparse.pair_map, static_argnums=(1, 2))
  capacity = sparse.pair_capacity(len(triples), kernel_size**3)
  pairs, dropped = fn(kmap, 2, capacity)
  np.testing.assert_array_equal(dropped, [0, 0])
  tile = pairs.tile
  assert capacity % tile == 0 and len(pairs.tile_offset) == capacity // tile
  in_rows, out_rows = np.asarray(pairs.in_rows), np.asarray(pairs.out_rows)
  offsets = np.repeat(np.asarray(pairs.tile_offset), tile)
  used = out_rows < rows
  assert np.all((in_rows < rows) == used)
  got = set(zip(out_rows[used].tolist(), in_rows[used].tolist(), offsets[used].tolist()))
  assert got == triples and used.sum() == len(triples)  # each pair once, at its offset
  np.testing.assert_array_equal(pairs.center, mask)
  # Too few slots: whole tiles per offset, in offset order, until the list is full.
  small = capacity // 2 // tile * tile
  tile = sparse.pair_tile(small)
  _, dropped = fn(kmap, 2, small)
  slots, kept = 0, {0: 0, 1: 0}
  for o in np.flatnonzero(per_offset):
    room = max(0, small - slots)
    chosen = sorted(i for i, _, oo in triples if oo == o)[:room]
    for i in chosen:
      kept[i // 96] += 1
    slots += -(-per_offset[o] // tile) * tile
  total = {b: sum(1 for i, _, _ in triples if i // 96 == b) for b in (0, 1)}
  np.testing.assert_array_equal(dropped, [total[0] - kept[0], total[1] - kept[1]])
  assert int(np.sum(dropped)) > 0


@pytest.mark.parametrize("impl", ["dense", "pairs"])
def test_conv_matches_dense_convolution(impl):
  rng = np.random.default_rng(2)
  coords, mask = random_level(rng, origin=(0, 0, 0))
  coords[~mask, 1:] = 0  # (dense reference indexing only; the map ignores padding rows)
  features = rng.normal(size=(len(coords), 5)).astype(np.float32)
  kernel = rng.normal(size=(27, 5, 4)).astype(np.float32)
  weights = rng.normal(size=(int(mask.sum()), 4)).astype(np.float32)
  kmap = level_map(coords, mask, 2, impl)

  def dense(f, k):
    grid = jnp.asarray(dense_grid(coords, mask, np.zeros_like(features), 2, (0,) * 3, SIZE + 2))
    idx = coords[mask]
    grid = grid.at[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]].set(f[mask])
    out = jax.lax.conv_general_dilated(grid, k.reshape(3, 3, 3, 5, 4), (1, 1, 1), "SAME",
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                       precision="highest")
    return out[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]]

  out = jax.jit(sparse.conv)(features, kmap, kernel)
  np.testing.assert_allclose(out[mask], dense(features, kernel), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(out[~mask], 0.0)
  assert_grads_close(lambda f, k: jnp.sum(sparse.conv(f, kmap, k)[mask] * weights),
                     lambda f, k: jnp.sum(dense(f, k) * weights), (features, kernel))


@pytest.mark.parametrize("impl", ["dense", "pairs"])
def test_strided_and_transposed_conv_match_dense(impl):
  rng = np.random.default_rng(3)
  origin = (-4, 2, -6)  # even, so dense stride-2 windows are the coarse voxels
  coords, mask = random_level(rng, origin=origin)
  coords[1 * 96:][mask[96:], 1:] -= 1  # cloud 1 sits at an odd offset: grid origin - 2
  origin = (origin[0] - 2, origin[1] - 2, origin[2] - 2)
  size = SIZE + 4
  coarse, coarse_mask, smap, overflow = jax.jit(sparse.coarsen, static_argnums=(2, 3))(
      coords, mask, 2, 64)
  assert np.all(np.asarray(overflow) == 0)
  if impl == "pairs":
    dense_map = smap
    smap = jax.jit(sparse.stride_pairs)(smap)
    # One pair per fine voxel with a parent, at the fine voxel's child offset.
    fine, parents = np.asarray(smap.fine_rows), np.asarray(smap.coarse_rows)
    offsets = np.repeat(np.asarray(smap.tile_offset), len(fine) // len(smap.tile_offset))
    used = fine < len(coords)
    assert sorted(fine[used]) == sorted(np.flatnonzero(np.asarray(dense_map.parent) < 128))
    np.testing.assert_array_equal(8 * parents[used] + offsets[used],
                                  np.asarray(dense_map.child_slot)[fine[used]])
  coarse, coarse_mask = np.asarray(coarse), np.asarray(coarse_mask)
  half = tuple(o // 2 for o in origin)
  features = rng.normal(size=(len(coords), 5)).astype(np.float32)
  kernel = rng.normal(size=(8, 5, 4)).astype(np.float32)
  w_coarse = rng.normal(size=(int(coarse_mask.sum()), 4)).astype(np.float32)

  def dense_down(f, k):
    grid = jnp.zeros((2, size, size, size, 5)).at[tuple(
        (coords[mask] - np.array((0,) + origin)).T)].set(f[mask])
    out = jax.lax.conv_general_dilated(grid, k.reshape(2, 2, 2, 5, 4), (2, 2, 2), "VALID",
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                       precision="highest")
    return out[tuple((coarse[coarse_mask] - np.array((0,) + half)).T)]

  down = jax.jit(sparse.conv_down)(features, smap, kernel)
  np.testing.assert_allclose(down[coarse_mask], dense_down(features, kernel), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_array_equal(down[~coarse_mask], 0.0)
  assert_grads_close(lambda f, k: jnp.sum(sparse.conv_down(f, smap, k)[coarse_mask] * w_coarse),
                     lambda f, k: jnp.sum(dense_down(f, k) * w_coarse), (features, kernel))

  # Transposed: coarse -> fine voxels (the fine level's coordinates), against PyTorch.
  coarse_features = rng.normal(size=(len(coarse), 5)).astype(np.float32)
  w_fine = rng.normal(size=(int(mask.sum()), 4)).astype(np.float32)
  up, grads = jax.jit(lambda f, k, w: (lambda y, vjp: (y, vjp(w)))(
      *jax.vjp(lambda f, k: sparse.conv_up(f, smap, k)[mask], f, k)))(
          coarse_features, kernel, w_fine)
  x = torch.tensor(dense_grid(coarse, coarse_mask, coarse_features, 2, half, size // 2)
                   ).permute(0, 4, 1, 2, 3).requires_grad_()
  weight = torch.tensor(kernel.reshape(2, 2, 2, 5, 4)).permute(3, 4, 0, 1, 2).requires_grad_()
  out = torch.nn.functional.conv_transpose3d(x, weight, stride=2).permute(0, 2, 3, 4, 1)
  idx = torch.tensor(coords[mask] - np.array((0,) + origin)).long()
  ref = out[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]]
  torch.sum(ref * torch.tensor(w_fine)).backward()
  np.testing.assert_allclose(up, ref.detach().numpy(), rtol=1e-4, atol=1e-4)
  dx = read_grid(x.grad.permute(0, 2, 3, 4, 1).numpy(), coarse, coarse_mask, half)
  np.testing.assert_allclose(np.asarray(grads[0])[coarse_mask], dx, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(grads[0])[~coarse_mask], 0.0)
  np.testing.assert_allclose(grads[1], weight.grad.permute(2, 3, 4, 0, 1).reshape(8, 5, 4),
                             rtol=1e-4, atol=1e-3)


def test_conv_backward_keeps_no_gathered_neighbours():
  """The backward of stacked convolutions holds about one [M, 27 C] gather at a time.

  Re-gathering the input in the backward let XLA share that gather with the forward's and keep
  every layer's [M, 27 C] temporary until its backward (5 gathers' worth here; 8.5 GB for
  Res16UNet34C on a 45k-voxel room).
  """
  rows, channels, layers = 2000, 32, 4
  neighbours = jnp.asarray(np.random.default_rng(0).integers(0, rows + 1, (rows, 27)), jnp.int32)

  def loss(x, kernels):
    for kernel in kernels:
      x = jnp.tanh(sparse.conv(x, sparse.KernelMap(neighbours), kernel))
    return jnp.sum(x)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(
      jnp.ones((rows, channels)), jnp.ones((layers, 27, channels, channels))).compile()
  gather_bytes = rows * 27 * channels * 4
  assert compiled.memory_analysis().temp_size_in_bytes < 2 * gather_bytes


def test_pair_and_dense_gather_convolutions_agree_in_values_and_gradients():
  """Stacked layers on a denser level and a 5x5x5 kernel: pair lists == dense gathers."""
  rng = np.random.default_rng(7)
  coords, mask = random_level(rng, occupancy=0.6)
  maps = {impl: (level_map(coords, mask, 2, impl), level_map(coords, mask, 2, impl, 5))
          for impl in ("dense", "pairs")}
  x = rng.normal(size=(len(coords), 6)).astype(np.float32)
  k3 = rng.normal(size=(27, 6, 7)).astype(np.float32) * 0.3
  k5 = rng.normal(size=(125, 7, 5)).astype(np.float32) * 0.1

  def loss(impl, x, k3, k5):
    m3, m5 = maps[impl]
    y = jnp.tanh(sparse.conv(x, m3, k3))
    return jnp.sum(jnp.sin(sparse.conv(y, m5, k5)) * mask[:, None])

  results = {impl: jax.jit(jax.value_and_grad(functools.partial(loss, impl), argnums=(0, 1, 2)))(
      x, k3, k5) for impl in maps}
  for a, b in zip(jax.tree.leaves(results["pairs"]), jax.tree.leaves(results["dense"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
  np.testing.assert_array_equal(np.asarray(results["pairs"][1][0])[~mask], 0.0)


@pytest.mark.parametrize("impl", ["dense", "pairs"])
def test_padding_rows_change_nothing(impl):
  """More padding rows (with garbage coordinates) leave every valid output unchanged."""
  rng = np.random.default_rng(4)
  coords, mask = random_level(rng, batch=1, capacity=64)
  features = rng.normal(size=(64, 3)).astype(np.float32)
  kernel = rng.normal(size=(27, 3, 2)).astype(np.float32)
  pad = 40
  big_coords = np.concatenate([coords, rng.integers(-9, 9, (pad, 4)).astype(np.int32)])
  big_coords[64:, 0] = 0
  big_mask = np.concatenate([mask, np.zeros(pad, bool)])
  big_features = np.concatenate([features, np.full((pad, 3), 1e6, np.float32)])

  @jax.jit
  def layers(c, m, f):
    kmap, _ = sparse.kernel_map(c, m, 1)
    _, _, smap, _ = sparse.coarsen(c, m, 1, 32)
    if impl == "pairs":
      kmap, _ = sparse.pair_map(kmap, 1, sparse.pair_capacity(26 * 64))
      smap = sparse.stride_pairs(smap)
    y = sparse.conv(f, kmap, kernel)
    z = sparse.conv_up(sparse.conv_down(y, smap, kernel[:8, :2]), smap, kernel[:8, :2])
    return jnp.concatenate([y, z], -1)

  outs = [np.asarray(layers(c, m, f))[:64][mask] for c, m, f in
          [(coords, mask, features), (big_coords, big_mask, big_features)]]
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_voxelize_permutation_padding_and_overflow():
  rng = np.random.default_rng(5)
  points = rng.uniform(-1, 1, size=(2, 200, 3)).astype(np.float32)
  colors = rng.uniform(size=(2, 200, 3)).astype(np.float32)
  mask = np.ones((2, 200), bool)
  mask[1, 150:] = False
  fn = jax.jit(sparse.voxelize, static_argnums=(3, 4))
  tensor, rows, overflow = fn(points, colors, mask, 0.5, 64)
  np.testing.assert_array_equal(overflow, [0, 0])
  per_point = np.asarray(sparse.devoxelize(tensor.features, rows))
  # Each point reads the mean colour of the points in its voxel.
  for b in range(2):
    keys = np.floor(points[b] / 0.5).astype(int)
    for n in np.flatnonzero(mask[b])[:30]:
      same = mask[b] & np.all(keys == keys[n], axis=1)
      np.testing.assert_allclose(per_point[b, n], colors[b][same].mean(0), rtol=1e-5)
  assert np.all(per_point[~mask] == 0)
  # Permuted and padded with garbage: the same voxels and per-point features.
  perm = rng.permutation(200)
  pts2 = np.concatenate([points[:, perm], np.full((2, 30, 3), np.nan, np.float32)], 1)
  pts2[0, 200:210] = 1e9
  col2 = np.concatenate([colors[:, perm], np.full((2, 30, 3), 1e6, np.float32)], 1)
  mask2 = np.concatenate([mask[:, perm], np.zeros((2, 30), bool)], 1)
  tensor2, rows2, _ = fn(pts2, col2, mask2, 0.5, 64)
  np.testing.assert_array_equal(tensor2.coords, tensor.coords)
  np.testing.assert_array_equal(tensor2.mask, tensor.mask)
  np.testing.assert_allclose(tensor2.features, tensor.features, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(rows2[:, :200], np.asarray(rows)[:, perm])
  # Too small a capacity: dropped voxels are counted, and the caller warns or raises.
  _, rows3, overflow3 = fn(points, colors, mask, 0.5, 8)
  counts = [len({tuple(k) for k in np.floor(points[b][mask[b]] / 0.5).astype(int)})
            for b in range(2)]
  np.testing.assert_array_equal(overflow3, np.array(counts) - 8)
  assert np.all(np.asarray(rows3)[mask] <= 16)
  with pytest.warns(RuntimeWarning, match="capacity overflow"):
    sparse.report_overflow(overflow3)
  with pytest.raises(RuntimeError, match="capacity overflow"):
    sparse.report_overflow(overflow3, raise_error=True)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    sparse.report_overflow(overflow)
