"""pointops.py against brute-force NumPy references written with explicit loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from p2p_jax import pointops


def cloud(rng, batch, num, duplicates=0):
  pts = rng.uniform(-1, 1, size=(batch, num, 3)).astype(np.float32)
  if duplicates:
    pts[:, num - duplicates:] = pts[:, :duplicates]
  return pts


def ref_fps(points, num_samples, mask, start):
  """Textbook FPS in float64: keep min distance to the chosen set, take the argmax."""
  points = points.astype(np.float64)
  valid = np.flatnonzero(mask)
  if len(valid) == 0:
    return []
  if not mask[start]:
    start = valid[0]
  chosen = [start]
  dist = np.full(len(points), np.inf)
  while len(chosen) < min(num_samples, len(valid)):
    dist = np.minimum(dist, ((points - points[chosen[-1]]) ** 2).sum(-1))
    best, best_d = -1, -1.0
    for i in valid:  # first index with the largest distance
      if dist[i] > best_d:
        best, best_d = i, dist[i]
    chosen.append(best)
  return chosen


@pytest.mark.parametrize("case", ["plain", "masked", "few_valid", "duplicates", "start_masked"])
def test_farthest_point_sample(case):
  rng = np.random.default_rng(0)
  batch, num, samples, start = 3, 200, 32, 5
  points = cloud(rng, batch, num, duplicates=60 if case == "duplicates" else 0)
  mask = np.ones((batch, num), bool)
  if case == "masked":
    mask = rng.uniform(size=(batch, num)) < 0.6
  if case == "few_valid":
    mask[:] = False
    mask[0, [3, 70, 150]] = True
    mask[1, :40] = True
  if case == "start_masked":
    mask[:, :10] = False
  points[~mask] = np.nan  # garbage in padding must not matter
  fn = jax.jit(pointops.farthest_point_sample, static_argnums=1, static_argnames="start_index")
  idx, sample_mask = fn(points, samples, mask=mask, start_index=start)
  for b in range(batch):
    ref = ref_fps(points[b], samples, mask[b], start)
    n = len(ref)
    np.testing.assert_array_equal(idx[b, :n], ref)
    np.testing.assert_array_equal(sample_mask[b], np.arange(samples) < n)
    # Padding repeats the first sample (index 0 for a cloud without valid points).
    np.testing.assert_array_equal(idx[b, n:], ref[0] if n else 0)
    assert n == 0 or np.all(mask[b][np.asarray(idx[b])])


def ref_knn(query, points, k, mask):
  d = ((query[:, None, :].astype(np.float64) - points[None, :, :]) ** 2).sum(-1)
  d[:, ~mask] = np.inf
  order = np.argsort(d, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("num,k,chunk", [(300, 8, None), (3000, 16, None), (3000, 16, 7),
                                         (20, 16, None)])
def test_knn(num, k, chunk):
  rng = np.random.default_rng(1)
  points = cloud(rng, 2, num, duplicates=num // 10)  # exact ties are broken by lower index
  query = np.concatenate([points[:, :50], cloud(rng, 2, 50)], axis=1)
  mask = rng.uniform(size=(2, num)) < 0.7
  mask[1, 8:] = False  # batch 1 has at most 8 valid points: fewer than k when k=16
  d, idx = jax.jit(pointops.knn, static_argnums=2, static_argnames="chunk_size")(
      query, points, k, mask=mask, chunk_size=chunk)
  for b in range(2):
    ref_d, ref_idx = ref_knn(query[b], points[b], k, mask[b])
    found = np.isfinite(ref_d)
    np.testing.assert_array_equal(np.isfinite(d[b]), found)
    np.testing.assert_allclose(np.asarray(d[b])[found], ref_d[found], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(idx[b])[found], ref_idx[found])
    # Missing neighbours point at the nearest valid one.
    rows = np.nonzero(~found)[0]
    np.testing.assert_array_equal(np.asarray(idx[b])[~found], ref_idx[rows, 0])


def test_knn_memory_is_chunked_for_100k_points():
  pts = jax.ShapeDtypeStruct((1, 100_000, 3), jnp.float32)
  compiled = jax.jit(lambda q, p: pointops.knn(q, p, 16)).lower(pts, pts).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  # A 100k x 100k float32 distance matrix would take 40 GB; the chunks take tens of MB.
  assert temp < 256 * 2**20, temp


def ref_ball_query(points, centers, radius, nsample, mask):
  idx = np.zeros((len(centers), nsample), np.int64)
  found = np.zeros((len(centers), nsample), bool)
  for s, c in enumerate(centers):
    hits = [i for i in range(len(points))
            if mask[i] and ((points[i].astype(np.float64) - c) ** 2).sum() <= radius ** 2]
    hits = hits[:nsample]
    if hits:
      idx[s] = hits + [hits[0]] * (nsample - len(hits))
      found[s, :len(hits)] = True
  return idx, found


@pytest.mark.parametrize("case", ["plain", "masked", "fewer_than_nsample", "empty_balls"])
def test_ball_query(case):
  rng = np.random.default_rng(2)
  num, nsample, radius = 400, 16, 0.4
  points = cloud(rng, 2, num, duplicates=40)
  centers = points[:, :30].copy()
  mask = np.ones((2, num), bool)
  if case == "masked":
    mask = rng.uniform(size=(2, num)) < 0.5
  if case == "fewer_than_nsample":
    points = points[:, :10]
    mask = mask[:, :10]
  if case == "empty_balls":
    centers[:, ::3] += 10.0  # far from every point
  idx, found = jax.jit(pointops.ball_query, static_argnums=(2, 3))(
      points, centers, radius, nsample, mask=mask)
  for b in range(2):
    ref_idx, ref_found = ref_ball_query(points[b], centers[b], radius, nsample, mask[b])
    np.testing.assert_array_equal(idx[b], ref_idx)
    np.testing.assert_array_equal(found[b], ref_found)
  if case == "empty_balls":
    assert not np.any(np.asarray(found)[:, ::3])


def test_ball_query_chunked_equals_unchunked():
  rng = np.random.default_rng(3)
  points = cloud(rng, 2, 500)
  centers = cloud(rng, 2, 37)
  whole = pointops.ball_query(points, centers, 0.3, 8)
  chunked = pointops.ball_query(points, centers, 0.3, 8, chunk_size=5)
  for a, b in zip(whole, chunked):
    np.testing.assert_array_equal(a, b)


def test_gather_and_group():
  rng = np.random.default_rng(4)
  points = cloud(rng, 2, 30)
  feats = rng.normal(size=(2, 30, 5)).astype(np.float32)
  centers = cloud(rng, 2, 4)
  idx = rng.integers(0, 30, size=(2, 4, 6))
  grouped = pointops.group(points, centers, idx, feats)
  assert grouped.shape == (2, 4, 6, 8)
  for b in range(2):
    for s in range(4):
      for j in range(6):
        np.testing.assert_allclose(grouped[b, s, j, :3], points[b, idx[b, s, j]] - centers[b, s],
                                   rtol=1e-6)
        np.testing.assert_array_equal(grouped[b, s, j, 3:], feats[b, idx[b, s, j]])
  np.testing.assert_array_equal(pointops.gather_points(feats, idx[:, :, 0]),
                                feats[np.arange(2)[:, None], idx[:, :, 0]])


def test_interpolate_matches_numpy():
  rng = np.random.default_rng(5)
  target = cloud(rng, 2, 60)
  source = cloud(rng, 2, 25)
  target[:, :5] = source[:, :5]  # coincident points: weight ~1e8, no NaN
  feats = rng.normal(size=(2, 25, 4)).astype(np.float32)
  mask = rng.uniform(size=(2, 25)) < 0.7
  mask[1] = False
  mask[1, 4] = True  # one valid source: every target copies it
  out = jax.jit(pointops.interpolate)(target, source, feats, source_mask=mask)
  for b in range(2):
    for n in range(60):
      d = np.sqrt(((source[b].astype(np.float64) - target[b, n]) ** 2).sum(-1))
      d[~mask[b]] = np.inf
      nn = np.argsort(d, kind="stable")[:3]
      w = np.where(np.isfinite(d[nn]), 1.0 / (d[nn] + 1e-8), 0.0)
      ref = (feats[b, nn] * (w / w.sum())[:, None]).sum(0)
      np.testing.assert_allclose(out[b, n], ref, rtol=1e-4, atol=1e-5)
  grad = jax.grad(lambda f: pointops.interpolate(target, source, f, source_mask=mask).sum())(feats)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(np.asarray(grad)[~mask], 0.0)


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_segment_pooling_matches_loops(op):
  rng = np.random.default_rng(6)
  data = rng.normal(size=(2, 50, 3)).astype(np.float32)
  ids = rng.integers(0, 8, size=(2, 50))
  ids[0, 0] = 8  # out of range: ignored
  mask = rng.uniform(size=(2, 50)) < 0.7
  ids[1][ids[1] == 5] = 6  # segment 5 of batch 1 is empty
  fn = {"sum": pointops.segment_sum, "mean": pointops.segment_mean, "max": pointops.segment_max}[op]
  out = np.asarray(jax.jit(fn, static_argnums=2)(data, ids, 8, mask=mask))
  for b in range(2):
    for s in range(8):
      rows = data[b][(ids[b] == s) & mask[b]]
      if len(rows) == 0:
        ref = np.zeros(3)
      else:
        ref = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0)}[op]
      np.testing.assert_allclose(out[b, s], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(
      pointops.segment_count(ids, 8, mask=mask)[1, 5], 0)


def test_masked_max_and_mean():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(3, 5, 4)).astype(np.float32)
  mask = rng.uniform(size=(3, 5)) < 0.5
  mask[2] = False
  top = np.asarray(pointops.masked_max(x, mask[..., None], axis=1))
  mean = np.asarray(pointops.masked_mean(x, mask[..., None], axis=1))
  for i in range(3):
    rows = x[i][mask[i]]
    np.testing.assert_allclose(top[i], rows.max(0) if len(rows) else 0.0)
    np.testing.assert_allclose(mean[i], rows.mean(0) if len(rows) else 0.0, rtol=1e-6)


def test_ops_reject_unbatched_points():
  with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
    pointops.knn(np.zeros((10, 3)), np.zeros((10, 3)), 2)
  with pytest.raises(ValueError, match="mask shape"):
    pointops.farthest_point_sample(np.zeros((1, 10, 3)), 2, mask=np.ones((1, 9), bool))


def test_ops_under_pmap_and_vmap_equal_direct_calls():
  devices = jax.device_count()
  rng = np.random.default_rng(8)
  points = cloud(rng, 2 * devices, 256)
  mask = rng.uniform(size=(2 * devices, 256)) < 0.8
  feats = rng.normal(size=(2 * devices, 256, 4)).astype(np.float32)

  def level(points, mask, feats):
    idx, sample_mask = pointops.farthest_point_sample(points, 32, mask=mask)
    centers = pointops.gather_points(points, idx)
    nbr, nbr_mask = pointops.ball_query(points, centers, 0.5, 8, mask=mask)
    pooled = pointops.masked_max(pointops.group(points, centers, nbr, feats), nbr_mask[..., None],
                                 axis=2)
    up = pointops.interpolate(points, centers, pooled, source_mask=sample_mask)
    return idx, nbr, up

  direct = level(points, mask, feats)
  shard = lambda x: x.reshape((devices, 2) + x.shape[1:])
  unshard = lambda x: np.asarray(x).reshape((2 * devices,) + x.shape[2:])
  for run in (jax.pmap(level), jax.vmap(level)):
    out = run(shard(points), shard(mask), shard(feats))
    for a, b in zip(direct, out):
      np.testing.assert_allclose(unshard(b), a, rtol=1e-5, atol=1e-6)
