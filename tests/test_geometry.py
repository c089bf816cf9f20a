"""geometry.py against hand-computed values and brute-force NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from p2p_jax import geometry


def random_intrinsics(rng, batch=()):
  k = np.zeros(batch + (3, 3), np.float32)
  k[..., 0, 0] = rng.uniform(200, 600, batch)
  k[..., 1, 1] = rng.uniform(200, 600, batch)
  k[..., 0, 1] = rng.uniform(-5, 5, batch)  # skew, to exercise the general pinhole model
  k[..., 0, 2] = rng.uniform(100, 220, batch)
  k[..., 1, 2] = rng.uniform(80, 160, batch)
  k[..., 2, 2] = 1.0
  return k


def random_pose(rng, batch=()):
  """Random rigid camera-to-world matrices via QR of Gaussian matrices (det +1)."""
  q, r = np.linalg.qr(rng.normal(size=batch + (3, 3)))
  q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
  q = q * np.linalg.det(q)[..., None, None]
  pose = np.zeros(batch + (4, 4))
  pose[..., :3, :3] = q
  pose[..., :3, 3] = rng.uniform(-3, 3, batch + (3,))
  pose[..., 3, 3] = 1.0
  return pose.astype(np.float32)


def reference_back_project(depth_mm, k, pose):
  """Per pixel: z K^-1 [u, v, 1]^T, then pose [p, 1]^T, in float64 with explicit loops."""
  h, w = depth_mm.shape
  out = np.zeros((h, w, 3))
  kinv = np.linalg.inv(k.astype(np.float64))
  for v in range(h):
    for u in range(w):
      z = depth_mm[v, u] / 1000.0
      if not (np.isfinite(z) and 0.1 <= z <= 10.0):
        continue
      cam = z * (kinv @ np.array([u, v, 1.0]))
      out[v, u] = (pose.astype(np.float64) @ np.append(cam, 1.0))[:3]
  return out


def test_back_project_hand_computed():
  # fx=2, fy=4, cx=1, cy=0.5; 2x3 image; depth in millimetres.
  k = np.array([[2.0, 0, 1.0], [0, 4.0, 0.5], [0, 0, 1]], np.float32)
  depth = np.array([[1000, 2000, 0], [4000, 500, 1000]], np.uint16)
  points, valid = geometry.back_project(depth, k)
  expected = np.array([
      [[-0.5, -0.125, 1.0], [0.0, -0.25, 2.0], [0.0, 0.0, 0.0]],
      [[-2.0, 0.5, 4.0], [0.0, 0.0625, 0.5], [0.5, 0.125, 1.0]],
  ])
  np.testing.assert_allclose(points, expected, rtol=1e-6)
  np.testing.assert_array_equal(valid, [[True, True, False], [True, True, True]])


def test_back_project_matches_numpy_with_random_intrinsics_and_poses():
  rng = np.random.default_rng(0)
  batch = 3
  depth = rng.integers(0, 12000, size=(batch, 12, 17)).astype(np.uint16)
  k = random_intrinsics(rng, (batch,))
  pose = random_pose(rng, (batch,))
  points, valid = jax.jit(geometry.back_project)(depth, k, pose)
  for b in range(batch):
    ref = reference_back_project(depth[b], k[b], pose[b])
    np.testing.assert_allclose(points[b], ref, atol=2e-5, rtol=1e-5)
    ref_valid = (depth[b] >= 100) & (depth[b] <= 10000)
    np.testing.assert_array_equal(valid[b], ref_valid)


def test_back_project_invalid_depths_are_zero_and_never_nan():
  k = np.array([[300.0, 0, 2], [0, 300.0, 1], [0, 0, 1]], np.float32)
  depth = np.array([[0.0, np.nan, np.inf, -np.inf], [0.05, 10.5, 0.1, 10.0]], np.float32)
  points, valid = geometry.back_project(depth, k, depth_scale=1.0)
  np.testing.assert_array_equal(valid, [[False] * 4, [False, False, True, True]])
  assert np.all(np.isfinite(points))
  np.testing.assert_array_equal(np.asarray(points)[~np.asarray(valid)], 0.0)
  # The bounds are inclusive and configurable.
  _, valid = geometry.back_project(depth, k, depth_scale=1.0, min_depth=0.01, max_depth=20.0)
  np.testing.assert_array_equal(valid[1], [True, True, True, True])


def test_back_project_accepts_one_intrinsics_for_a_batch():
  rng = np.random.default_rng(1)
  depth = rng.integers(500, 3000, size=(2, 5, 6)).astype(np.uint16)
  k = random_intrinsics(rng)
  batched, _ = geometry.back_project(depth, np.broadcast_to(k, (2, 3, 3)))
  shared, _ = geometry.back_project(depth, k)
  np.testing.assert_array_equal(batched, shared)


def test_back_project_then_project_returns_the_pixel_grid():
  rng = np.random.default_rng(2)
  depth = rng.integers(0, 9000, size=(2, 24, 32)).astype(np.uint16)
  k = random_intrinsics(rng, (2,))
  k[..., 0, 2], k[..., 1, 2] = 15.5, 11.5
  pose = random_pose(rng, (2,))
  points, valid = geometry.back_project(depth, k, pose)
  pixels, z, in_frame = geometry.project(points, k, geometry.invert_rigid(pose), (24, 32))
  rows, cols = np.meshgrid(np.arange(24), np.arange(32), indexing="ij")
  grid = np.stack([rows, cols], -1).astype(np.float32)
  v = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(pixels)[v], np.broadcast_to(grid, pixels.shape)[v],
                             atol=2e-3)
  np.testing.assert_allclose(np.asarray(z)[v], (depth / 1000.0)[v], rtol=1e-5)
  assert np.all(np.asarray(in_frame)[v])


def test_project_matches_numpy():
  rng = np.random.default_rng(3)
  k = random_intrinsics(rng)
  w2c = random_pose(rng)
  pts = rng.uniform(-4, 4, size=(50, 3)).astype(np.float32)
  pixels, z, in_frame = geometry.project(pts, k, w2c, (240, 320))
  cam = (w2c[:3, :3].astype(np.float64) @ pts.T.astype(np.float64)).T + w2c[:3, 3]
  hom = (k.astype(np.float64) @ cam.T).T
  front = cam[:, 2] > 1e-6
  ref = np.stack([hom[:, 1] / hom[:, 2], hom[:, 0] / hom[:, 2]], -1)
  np.testing.assert_allclose(np.asarray(pixels)[front], ref[front], rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(z, cam[:, 2], rtol=1e-5, atol=1e-5)
  ref_in = (front & (ref[:, 0] >= -0.5) & (ref[:, 0] < 239.5)
            & (ref[:, 1] >= -0.5) & (ref[:, 1] < 319.5))
  np.testing.assert_array_equal(in_frame, ref_in)
  assert np.all(np.isfinite(pixels))


def test_project_edges_of_the_pixel_area():
  k = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]], np.float32)
  # Points at z=1 land on (row, col) = (y, x).
  pts = np.array([[-0.5, -0.5, 1], [-0.51, 0, 1], [3.49, 1.49, 1], [0, 1.5, 1], [0, 0, -1],
                  [0, 0, 0]], np.float32)
  _, _, in_frame = geometry.project(pts, k, None, (2, 4))
  np.testing.assert_array_equal(in_frame, [True, False, True, False, False, False])


@pytest.mark.parametrize("dst", [(25, 48), (50, 96)])
def test_resize_intrinsics_agrees_with_jax_image_resize(dst):
  # An image whose value is the source column of each pixel: after a linear resize, the value
  # at column u' says which source column u' samples. The resized intrinsics must agree.
  k = np.array([[50.0, 0, 30.3], [0, 55.0, 20.7], [0, 0, 1]], np.float32)
  src = (40, 64)
  cols = np.broadcast_to(np.arange(src[1], dtype=np.float32), src)
  rows = np.broadcast_to(np.arange(src[0], dtype=np.float32)[:, None], src)
  resize = lambda x: np.asarray(jax.image.resize(x, dst, "linear", antialias=False))
  resized_cols, resized_rows = resize(cols), resize(rows)
  k2 = np.asarray(geometry.resize_intrinsics(k, src, dst))
  # Ray through pixel (r', c') of the resized image, projected with the original intrinsics.
  r2, c2 = np.meshgrid(np.arange(dst[0]), np.arange(dst[1]), indexing="ij")
  rays = np.linalg.inv(k2.astype(np.float64)) @ np.stack([c2, r2, np.ones_like(c2)]).reshape(3, -1)
  src_pix = (k.astype(np.float64) @ rays)
  interior = (r2 > 0) & (r2 < dst[0] - 1) & (c2 > 0) & (c2 < dst[1] - 1)
  np.testing.assert_allclose(src_pix[0].reshape(dst)[interior], resized_cols[interior], atol=1e-4)
  np.testing.assert_allclose(src_pix[1].reshape(dst)[interior], resized_rows[interior], atol=1e-4)


def test_crop_intrinsics_shifts_projections():
  rng = np.random.default_rng(4)
  k = random_intrinsics(rng)
  pts = rng.uniform([-1, -1, 1], [1, 1, 3], size=(20, 3)).astype(np.float32)
  full, _, _ = geometry.project(pts, k, None, (480, 640))
  cropped = jax.jit(geometry.crop_intrinsics)(k, 17, 40)
  crop_pix, _, _ = geometry.project(pts, cropped, None, (100, 100))
  np.testing.assert_allclose(crop_pix, np.asarray(full) - np.array([17.0, 40.0]), atol=1e-3)


def test_rigid_transforms_match_numpy():
  rng = np.random.default_rng(5)
  pose = random_pose(rng, (4,))
  np.testing.assert_allclose(geometry.invert_rigid(pose), np.linalg.inv(pose), atol=1e-5)
  pts = rng.normal(size=(4, 7, 3)).astype(np.float32)
  hom = np.concatenate([pts, np.ones((4, 7, 1))], -1)
  ref = np.einsum("bij,bnj->bni", pose.astype(np.float64), hom)[..., :3]
  np.testing.assert_allclose(geometry.transform_points(pose, pts), ref, atol=1e-5)
  rebuilt = geometry.rigid_transform(pose[:, :3, :3], pose[:, :3, 3])
  np.testing.assert_allclose(rebuilt, pose, atol=0)
  rot = np.asarray(geometry.rotation_about_z(np.pi / 2))
  np.testing.assert_allclose(rot @ np.array([1.0, 0, 0]), [0, 1, 0], atol=1e-6)
  np.testing.assert_allclose(rot @ np.array([0, 0, 1.0]), [0, 0, 1], atol=1e-6)


def test_transform_rejects_more_batch_axes_than_points():
  with pytest.raises(ValueError, match="batch axes"):
    geometry.transform_points(np.eye(4)[None, None], np.zeros((5, 3)))


def check_pair_sample(sample, valid, num_points, num_pairs):
  valid = np.asarray(valid)
  pix = np.asarray(sample.point_pixels)
  mask = np.asarray(sample.point_mask)
  n_valid = valid.sum()
  assert pix.shape == (num_points, 2) and mask.shape == (num_points,)
  assert mask.sum() == min(num_points, n_valid)
  np.testing.assert_array_equal(valid[pix[:, 0], pix[:, 1]], mask)
  flat = pix[:, 0] * valid.shape[1] + pix[:, 1]
  assert len(np.unique(flat)) == num_points  # without replacement
  pair_points = np.asarray(sample.pair_points)
  pair_mask = np.asarray(sample.pair_mask)
  assert pair_points.shape == (num_pairs,)
  assert np.all((0 <= pair_points) & (pair_points < num_points))
  assert len(np.unique(pair_points)) == num_pairs
  np.testing.assert_array_equal(sample.pair_pixels, pix[pair_points])
  np.testing.assert_array_equal(pair_mask, mask[pair_points])
  assert pair_mask.sum() == min(num_pairs, mask.sum())


@pytest.mark.parametrize("valid_fraction", [0.9, 0.05, 0.0])
def test_sample_pairs_shapes_and_padding(valid_fraction):
  rng = np.random.default_rng(6)
  valid = rng.uniform(size=(20, 30)) < valid_fraction
  sample = jax.jit(geometry.sample_pairs, static_argnums=(2, 3))(
      jax.random.key(0), valid, 100, 64)
  check_pair_sample(sample, valid, 100, 64)


def test_sample_pairs_is_uniform_over_valid_pixels():
  valid = np.zeros((4, 8), bool)
  valid[1, 2:8] = valid[3, :4] = True  # 10 valid pixels
  keys = jax.random.split(jax.random.key(1), 4000)
  samples = jax.vmap(lambda key: geometry.sample_pairs(key, valid, 5, 2))(keys)
  for i in range(0, 4000, 997):
    check_pair_sample(jax.tree.map(lambda x: x[i], samples), valid, 5, 2)  # noqa: B023
  pix = np.asarray(samples.point_pixels)[np.asarray(samples.point_mask)]
  counts = np.bincount(pix[:, 0] * 8 + pix[:, 1], minlength=32)[valid.reshape(-1)]
  # 4000 draws of 5 among 10: each pixel expected 2000 times, std about 32.
  assert np.all(np.abs(counts - 2000) < 160), counts
  pairs = np.asarray(samples.pair_pixels).reshape(-1, 2)
  pair_counts = np.bincount(pairs[:, 0] * 8 + pairs[:, 1], minlength=32)[valid.reshape(-1)]
  assert np.all(np.abs(pair_counts - 800) < 120), pair_counts


def test_sample_pairs_rejects_bad_sizes():
  with pytest.raises(ValueError, match="num_pairs"):
    geometry.sample_pairs(jax.random.key(0), np.ones((4, 4), bool), 8, 9)
  with pytest.raises(ValueError, match="H \\* W"):
    geometry.sample_pairs(jax.random.key(0), np.ones((4, 4), bool), 17, 4)



def test_sample_pixels_draws_the_points_of_sample_pairs():
  # PointContrast draws its points with `sample_pixels`, PPKT through `sample_pairs`: the same
  # draw for the same key.
  valid = np.random.default_rng(10).uniform(size=(20, 30)) < 0.3
  for seed in range(3):
    key = jax.random.key(seed)
    sample = geometry.sample_pairs(key, valid, 250, 50)
    pixels, mask = geometry.sample_pixels(jax.random.split(key)[0], valid, 250)
    np.testing.assert_array_equal(pixels, sample.point_pixels)
    np.testing.assert_array_equal(mask, sample.point_mask)
    assert pixels.dtype == jnp.int32 and int(mask.sum()) == int(valid.sum()) < 250
  with pytest.raises(ValueError, match="H \\* W"):
    geometry.sample_pixels(jax.random.key(0), valid, 601)


def test_sample_indices_draws_true_entries_without_replacement():
  mask = np.zeros(40, bool)
  mask[[3, 7, 8, 20, 31]] = True
  for seed in range(5):
    few = np.asarray(geometry.sample_indices(jax.random.key(seed), mask, 3))
    assert len(set(few)) == 3 and mask[few].all()
    padded = np.asarray(geometry.sample_indices(jax.random.key(seed), mask, 8))
    assert len(set(padded)) == 8
    assert set(padded[mask[padded]]) == set(np.flatnonzero(mask))  # every True one, then pads


def test_scaled_rotation_about_and_its_inverse():
  rng = np.random.default_rng(11)
  rotation = np.asarray(geometry.rotation_about_z(0.7))
  center = np.array([1.0, -2.0, 0.0], np.float32)
  forward, inverse = geometry.scaled_rotation_about(rotation, 1.3, center)
  forward, inverse = np.asarray(forward, np.float64), np.asarray(inverse, np.float64)
  np.testing.assert_allclose(forward @ inverse, np.eye(4), atol=1e-6)
  p = rng.normal(size=(5, 3))
  np.testing.assert_allclose(p @ forward[:3, :3].T + forward[:3, 3],
                             1.3 * (p - center) @ rotation.T, atol=1e-5)
  points = rng.normal(size=(6, 3)).astype(np.float32)
  mask = np.array([True, True, False, True, False, False])
  np.testing.assert_allclose(geometry.horizontal_center(points, mask),
                             [*points[mask, :2].mean(0), 0.0], atol=1e-6)
  np.testing.assert_array_equal(geometry.horizontal_center(points, np.zeros(6, bool)), 0.0)

def reference_voxelize(points, voxel_size, capacity, mask):
  keep = mask & np.all(np.isfinite(points), -1)
  coords = np.floor(points[keep].astype(np.float64) / voxel_size).astype(np.int64)
  uniq, inv = np.unique(coords, axis=0, return_inverse=True)
  inverse = np.full(len(points), capacity)
  inverse[np.flatnonzero(keep)] = np.where(inv.reshape(-1) < capacity, inv.reshape(-1), capacity)
  return uniq, inverse, max(len(uniq) - capacity, 0)


@pytest.mark.parametrize("capacity", [400, 25])
def test_voxelize_matches_numpy_unique(capacity):
  rng = np.random.default_rng(7)
  points = rng.uniform(-1.0, 1.0, size=(2, 300, 3)).astype(np.float32)
  points[:, 50:60] = points[:, 40:50]  # duplicates share voxels
  mask = rng.uniform(size=(2, 300)) < 0.8
  points[0, 5] = np.nan  # non-finite points are treated as masked
  vox = jax.jit(geometry.voxelize, static_argnums=(1, 2))(points, 0.25, capacity, mask)
  for b in range(2):
    uniq, inverse, overflow = reference_voxelize(points[b], 0.25, capacity, mask[b])
    kept = min(len(uniq), capacity)
    np.testing.assert_array_equal(vox.coords[b][:kept], uniq[:kept])
    np.testing.assert_array_equal(vox.coords[b][kept:], 0)
    np.testing.assert_array_equal(vox.voxel_mask[b], np.arange(capacity) < kept)
    np.testing.assert_array_equal(vox.inverse[b], inverse)
    np.testing.assert_array_equal(vox.point_mask[b], inverse < capacity)
    assert int(vox.overflow[b]) == overflow
  if capacity == 25:
    assert np.all(np.asarray(vox.overflow) > 0)


def test_voxelize_negative_coordinates_floor():
  points = np.array([[-0.01, 0.0, 0.01], [-0.99, -1.0, 0.99], [0.0, 0.0, 0.0]], np.float32)
  vox = geometry.voxelize(points, 1.0, 4)
  np.testing.assert_array_equal(vox.coords[:2], [[-1, -1, 0], [-1, 0, 0]])
  np.testing.assert_array_equal(vox.inverse, [1, 0, 2])


def test_gradients_through_back_projection_and_projection_float64():
  rng = np.random.default_rng(8)
  depth = rng.uniform(0.5, 4.0, size=(2, 5, 6))
  depth[0, 0, 0] = 0.0  # an invalid pixel contributes a zero, finite gradient
  k = random_intrinsics(rng, (2,)).astype(np.float64)
  pose = random_pose(rng, (2,)).astype(np.float64)
  with jax.enable_x64(True):
    back = lambda d, p: geometry.back_project(d, k, p, depth_scale=1.0)[0]
    assert back(depth, pose).dtype == jnp.float64
    check_grads(back, (jnp.asarray(depth), jnp.asarray(pose)), order=1,
                              modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)
    pts = jnp.asarray(rng.uniform([-1, -1, 2], [1, 1, 4], size=(2, 7, 3)))
    proj = lambda x, p: geometry.project(x, k, p, (240, 320))[0]
    check_grads(proj, (pts, jnp.asarray(np.linalg.inv(pose))), order=1,
                              modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


def test_sample_pairs_restricted_to_pair_valid_pixels():
  rng = np.random.default_rng(9)
  valid = rng.uniform(size=(20, 30)) < 0.8
  pair_valid = np.zeros((20, 30), bool)
  pair_valid[5:10, 10:20] = True  # a "crop"
  sample = geometry.sample_pairs(jax.random.key(3), valid, 400, 100, pair_valid=pair_valid)
  pix = np.asarray(sample.pair_pixels)[np.asarray(sample.pair_mask)]
  assert len(pix) == min(100, int((valid & pair_valid)[
      np.asarray(sample.point_pixels)[:, 0], np.asarray(sample.point_pixels)[:, 1]].sum()))
  assert np.all(pair_valid[pix[:, 0], pix[:, 1]] & valid[pix[:, 0], pix[:, 1]])
