"""Camera geometry for pixel-to-point pretraining: pure, jit-able functions.

Back-projection turns every valid depth pixel into one 3D point, so pixel-point pairs are known
exactly (PPKT, Liu et al. 2021, Sec. 3.1). Functions take leading batch dimensions where the
docstring says so; everything else composes with `jax.vmap`.

Coordinate transforms are written elementwise rather than as matrix products: on TPU the
default matmul precision rounds inputs to bfloat16, which would move a point 3 m away by about
a centimetre.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


def _as_float(x) -> jax.Array:
  """float32, or float64 for float64 inputs (with jax_enable_x64), so gradients can be checked."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_matrix(name: str, x: jax.Array, rows: int, cols: int) -> None:
  if x.ndim < 2 or x.shape[-2:] != (rows, cols):
    raise ValueError(f"{name} must have shape [..., {rows}, {cols}], got {x.shape}")


def _align(mat: jax.Array, core_ndim: int, target_ndim: int) -> jax.Array:
  """Inserts singleton axes after `mat`'s batch axes so it broadcasts over a target's items.

  `mat` has shape [*batch, *core] with `core_ndim` core axes; the target has shape
  [*batch, *items, 3]. The result has shape [*batch, 1 (per item axis), *core].
  """
  extra = target_ndim - 1 - (mat.ndim - core_ndim)
  if extra < 0:
    raise ValueError(
        f"a transform of shape {mat.shape} has more batch axes than points of "
        f"{target_ndim - 1} leading axes")
  batch = mat.shape[:mat.ndim - core_ndim]
  return mat.reshape(batch + (1,) * extra + mat.shape[mat.ndim - core_ndim:])


def transform_points(transform: jax.Array, points: jax.Array) -> jax.Array:
  """Applies rigid (or affine) transforms to points.

  Args:
    transform: [*batch, 4, 4] or [*batch, 3, 4]; the last row of a 4x4 is ignored.
    points: [*batch, *items, 3]; the transform's batch axes match the leading axes.

  Returns:
    [*batch, *items, 3] float32: R p + t.
  """
  transform = _as_float(transform)
  points = _as_float(points)
  if transform.ndim < 2 or transform.shape[-1] != 4 or transform.shape[-2] not in (3, 4):
    raise ValueError(f"transform must have shape [..., 4, 4] or [..., 3, 4], got {transform.shape}")
  if points.shape[-1:] != (3,):
    raise ValueError(f"points must have shape [..., 3], got {points.shape}")
  m = _align(transform, 2, points.ndim)
  x, y, z = points[..., 0], points[..., 1], points[..., 2]
  rows = [m[..., i, 0] * x + m[..., i, 1] * y + m[..., i, 2] * z + m[..., i, 3] for i in range(3)]
  return jnp.stack(rows, axis=-1)


def rigid_transform(rotation: jax.Array, translation: jax.Array) -> jax.Array:
  """[*batch, 4, 4] rigid transforms from rotations [*batch, 3, 3] and translations [*batch, 3]."""
  rotation = _as_float(rotation)
  translation = _as_float(translation)
  _check_matrix("rotation", rotation, 3, 3)
  top = jnp.concatenate([rotation, translation[..., :, None]], axis=-1)
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], top.dtype), top.shape[:-2] + (1, 4))
  return jnp.concatenate([top, bottom], axis=-2)


def invert_rigid(transform: jax.Array) -> jax.Array:
  """Inverts rigid transforms [*batch, 4, 4] exactly (R^T, -R^T t), without a general inverse."""
  transform = _as_float(transform)
  _check_matrix("transform", transform, 4, 4)
  rot_t = jnp.swapaxes(transform[..., :3, :3], -1, -2)
  t = transform[..., :3, 3]
  new_t = -jnp.stack([jnp.sum(rot_t[..., i, :] * t, axis=-1) for i in range(3)], axis=-1)
  return rigid_transform(rot_t, new_t)


def rotation_about_z(angle: jax.Array) -> jax.Array:
  """Rotations [*batch, 3, 3] about the z axis (gravity in ScanNet's world frame), radians."""
  angle = _as_float(angle)
  c, s = jnp.cos(angle), jnp.sin(angle)
  zero, one = jnp.zeros_like(angle), jnp.ones_like(angle)
  return jnp.stack([
      jnp.stack([c, -s, zero], -1),
      jnp.stack([s, c, zero], -1),
      jnp.stack([zero, zero, one], -1),
  ], axis=-2)


def scaled_rotation_about(rotation: jax.Array, scale: jax.Array,
                          center: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The 4x4 affine p -> scale R (p - center), and its inverse p' -> R^T p' / scale + center.

  The 3D augmentation of both pretraining data paths: rotation and isotropic scaling about a
  centre, with the exact inverse that maps augmented points back to world coordinates.

  Args:
    rotation: [3, 3] R.
    scale: scalar.
    center: [3].

  Returns:
    (forward, inverse), both [4, 4].
  """
  # Matrix-vector products written out: exact on TPU, where matmuls default to bfloat16.
  rotated_center = jnp.sum(rotation * center[None, :], axis=1)
  forward = rigid_transform(scale * rotation, -scale * rotated_center)
  inverse = rigid_transform(rotation.T / scale, center)
  return forward, inverse


def horizontal_center(points: jax.Array, mask: jax.Array) -> jax.Array:
  """[3] mean x, y of the masked points [N, 3], with z = 0: a centre for rotations about
  gravity that keeps heights. (0, 0, 0) when no point is masked."""
  count = jnp.maximum(jnp.sum(mask), 1)
  center_xy = jnp.sum(jnp.where(mask[:, None], points[:, :2], 0.0), axis=0) / count
  return jnp.concatenate([center_xy, jnp.zeros(1, points.dtype)])


def back_project(depth: jax.Array,
                 intrinsics: jax.Array,
                 cam_to_world: jax.Array | None = None,
                 *,
                 depth_scale: float = 1000.0,
                 min_depth: float = 0.1,
                 max_depth: float = 10.0) -> tuple[jax.Array, jax.Array]:
  """Back-projects a depth map to one 3D point per pixel (PPKT's back-projection function).

  For pixel (row v, column u) with depth z = depth / depth_scale:
  Y = (v - cy) z / fy, X = (u - cx - s Y / z) z / fx, Z = z (s is the skew, 0 for ScanNet).

  Args:
    depth: [*batch, H, W] raw depth, uint16 millimetres or float.
    intrinsics: [*batch, 3, 3] pinhole matrices of the depth image.
    cam_to_world: optional [*batch, 4, 4] poses; if given, points are in world coordinates.
    depth_scale: raw depth units per metre.
    min_depth: smallest valid depth in metres.
    max_depth: largest valid depth in metres.

  Returns:
    points: [*batch, H, W, 3] float32; 0 where not valid, never NaN.
    valid: [*batch, H, W] bool; False for depth 0, NaN, inf or outside [min_depth, max_depth].
  """
  depth = jnp.asarray(depth)
  intrinsics = _as_float(intrinsics)
  if depth.ndim < 2:
    raise ValueError(f"depth must have shape [..., H, W], got {depth.shape}")
  _check_matrix("intrinsics", intrinsics, 3, 3)
  height, width = depth.shape[-2:]
  z = _as_float(depth) / depth_scale
  valid = jnp.isfinite(z) & (z >= min_depth) & (z <= max_depth)
  z = jnp.where(valid, z, 0.0)

  k = intrinsics[..., None, None, :, :]
  fx, skew, cx = k[..., 0, 0], k[..., 0, 1], k[..., 0, 2]
  fy, cy = k[..., 1, 1], k[..., 1, 2]
  v = lax.broadcasted_iota(z.dtype, (height, width), 0)
  u = lax.broadcasted_iota(z.dtype, (height, width), 1)
  y_over_z = (v - cy) / fy
  x_over_z = (u - cx - skew * y_over_z) / fx
  points = jnp.stack([x_over_z * z, y_over_z * z, z], axis=-1)
  if cam_to_world is not None:
    cam_to_world = _as_float(cam_to_world)
    _check_matrix("cam_to_world", cam_to_world, 4, 4)
    points = transform_points(cam_to_world, points)
  return jnp.where(valid[..., None], points, 0.0), valid


def project(points: jax.Array,
            intrinsics: jax.Array,
            world_to_cam: jax.Array | None,
            image_hw: tuple[int, int],
            *,
            min_depth: float = 1e-6) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Projects points into an image: the inverse of `back_project`.

  Args:
    points: [*batch, *items, 3] points (world coordinates if `world_to_cam` is given).
    intrinsics: [*batch, 3, 3].
    world_to_cam: [*batch, 4, 4] or None for points already in camera coordinates.
    image_hw: (H, W) of the image the pixels index.
    min_depth: points with camera depth at or below this are behind the camera.

  Returns:
    pixels: [*batch, *items, 2] float32 (row, col); finite everywhere, meaningful where in_frame.
    depth: [*batch, *items] camera-space z in the points' units.
    in_frame: [*batch, *items] bool: in front of the camera and inside the pixel area
      rows [-0.5, H - 0.5), cols [-0.5, W - 0.5), so rounding gives a valid pixel index.
  """
  points = _as_float(points)
  intrinsics = _as_float(intrinsics)
  _check_matrix("intrinsics", intrinsics, 3, 3)
  if points.shape[-1:] != (3,):
    raise ValueError(f"points must have shape [..., 3], got {points.shape}")
  cam = points if world_to_cam is None else transform_points(world_to_cam, points)
  k = _align(intrinsics, 2, cam.ndim)
  x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
  in_front = z > min_depth
  safe_z = jnp.where(in_front, z, 1.0)
  col = (k[..., 0, 0] * x + k[..., 0, 1] * y) / safe_z + k[..., 0, 2]
  row = k[..., 1, 1] * y / safe_z + k[..., 1, 2]
  height, width = image_hw
  in_frame = (in_front & (row >= -0.5) & (row < height - 0.5)
              & (col >= -0.5) & (col < width - 0.5))
  return jnp.stack([row, col], axis=-1), z, in_frame


def resize_intrinsics(intrinsics: jax.Array, src_hw: tuple[int, int],
                      dst_hw: tuple[int, int]) -> jax.Array:
  """Intrinsics of an image resized from `src_hw` to `dst_hw` (half-pixel-centre resampling).

  With pixel centres at integer coordinates, a resize maps u -> (u + 0.5) sx - 0.5, the
  convention of `jax.image.resize`, PIL and OpenCV's INTER_LINEAR/INTER_AREA:
  fx' = fx sx, s' = s sx, cx' = (cx + 0.5) sx - 0.5, and likewise for rows.

  Args:
    intrinsics: [*batch, 3, 3].
    src_hw: (H, W) before the resize.
    dst_hw: (H, W) after the resize.

  Returns:
    [*batch, 3, 3] float32.
  """
  intrinsics = _as_float(intrinsics)
  _check_matrix("intrinsics", intrinsics, 3, 3)
  sy = dst_hw[0] / src_hw[0]
  sx = dst_hw[1] / src_hw[1]
  row0 = jnp.stack([intrinsics[..., 0, 0] * sx, intrinsics[..., 0, 1] * sx,
                    (intrinsics[..., 0, 2] + 0.5) * sx - 0.5], axis=-1)
  row1 = jnp.stack([intrinsics[..., 1, 0], intrinsics[..., 1, 1] * sy,
                    (intrinsics[..., 1, 2] + 0.5) * sy - 0.5], axis=-1)
  return jnp.stack([row0, row1, intrinsics[..., 2, :]], axis=-2)


def crop_intrinsics(intrinsics: jax.Array, top: jax.Array, left: jax.Array) -> jax.Array:
  """Intrinsics of the crop whose first pixel is (top, left) of the original image.

  Args:
    intrinsics: [*batch, 3, 3].
    top: [*batch] or scalar row offset (may be traced, e.g. a random crop under jit).
    left: [*batch] or scalar column offset.

  Returns:
    [*batch, 3, 3] float32 with cx - left and cy - top.
  """
  intrinsics = _as_float(intrinsics)
  _check_matrix("intrinsics", intrinsics, 3, 3)
  intrinsics = intrinsics.at[..., 0, 2].add(-_as_float(left))
  return intrinsics.at[..., 1, 2].add(-_as_float(top))


def gather_pixels(image: jax.Array, pixels: jax.Array) -> jax.Array:
  """Reads `image [H, W, ...]` at integer `pixels [..., 2]` (row, col); vmap for batches."""
  pixels = jnp.asarray(pixels)
  return image[pixels[..., 0], pixels[..., 1]]


class PairSample(NamedTuple):
  """Fixed-shape sample of N points and K pixel-point pairs from one depth frame.

  Attributes:
    point_pixels: [N, 2] int32 (row, col) of the pixel each point comes from.
    point_mask: [N] bool; False for padding when the frame has fewer than N valid pixels.
    pair_pixels: [K, 2] int32 (row, col) of each pair's pixel.
    pair_points: [K] int32 index of each pair's point among the N points.
    pair_mask: [K] bool; False for padding when fewer than K valid points exist.
  """
  point_pixels: jax.Array
  point_mask: jax.Array
  pair_pixels: jax.Array
  pair_points: jax.Array
  pair_mask: jax.Array


def sample_indices(key: jax.Array, mask: jax.Array, num: int) -> jax.Array:
  """`num` indices drawn uniformly without replacement among the True entries of `mask` [M],
  padded with False entries when it has fewer; `mask[indices]` marks the real draws.

  Random priorities in [0, 1) for True entries, -1 for False ones: the top `num` are the draw.
  Shapes are static, so this runs under jit and vmap.
  """
  score = jnp.where(mask, jax.random.uniform(key, mask.shape), -1.0)
  _, index = lax.top_k(score, num)
  return index


def sample_pixels(key: jax.Array, valid: jax.Array,
                  num_points: int) -> tuple[jax.Array, jax.Array]:
  """Samples N pixels uniformly without replacement among the valid pixels of a frame.

  With fewer than N valid pixels every one is taken and the rest is padding, masked out.

  Args:
    key: a PRNG key.
    valid: [H, W] bool, e.g. from `back_project`.
    num_points: N <= H * W.

  Returns:
    pixels: [N, 2] int32 (row, col); gather with `gather_pixels`.
    mask: [N] bool, False for padding.
  """
  valid = jnp.asarray(valid)
  if valid.ndim != 2:
    raise ValueError(f"valid must have shape [H, W] (vmap for batches), got {valid.shape}")
  height, width = valid.shape
  if not 0 < num_points <= height * width:
    raise ValueError(f"num_points {num_points} must be in [1, H * W = {height * width}]")
  flat_valid = valid.reshape(-1)
  flat_index = sample_indices(key, flat_valid, num_points)
  pixels = jnp.stack([flat_index // width, flat_index % width], axis=-1).astype(jnp.int32)
  return pixels, flat_valid[flat_index]


def sample_pairs(key: jax.Array, valid: jax.Array, num_points: int, num_pairs: int, *,
                 pair_valid: jax.Array | None = None) -> PairSample:
  """Samples N points among the valid pixels of a frame and K pixel-point pairs among them.

  Points are drawn uniformly without replacement among the valid pixels (`sample_pixels`);
  pairs uniformly without replacement among the sampled points (those whose pixel is also
  `pair_valid`, e.g. inside a crop), so each pair's point is the back-projection of its pixel.
  With fewer valid pixels than N (or candidates than K) every one is taken and the rest is
  padding, masked out. Shapes are static, so this runs under jit and vmap.

  Args:
    key: a PRNG key.
    valid: [H, W] bool, e.g. from `back_project`.
    num_points: N.
    num_pairs: K <= N.
    pair_valid: optional [H, W] bool; pairs only at these pixels (all valid ones if None).

  Returns:
    A `PairSample`. Gather the points with `gather_pixels(points, sample.point_pixels)`.
  """
  valid = jnp.asarray(valid)
  if valid.ndim != 2:
    raise ValueError(f"valid must have shape [H, W] (vmap for batches), got {valid.shape}")
  height, width = valid.shape
  if not 0 < num_pairs <= num_points <= height * width:
    raise ValueError(f"need 0 < num_pairs ({num_pairs}) <= num_points ({num_points}) <= "
                     f"H * W ({height * width})")
  point_key, pair_key = jax.random.split(key)
  point_pixels, point_mask = sample_pixels(point_key, valid, num_points)
  candidate = point_mask
  if pair_valid is not None:
    candidate = candidate & gather_pixels(jnp.asarray(pair_valid, bool), point_pixels)
  pair_points = sample_indices(pair_key, candidate, num_pairs)
  return PairSample(
      point_pixels=point_pixels,
      point_mask=point_mask,
      pair_pixels=point_pixels[pair_points],
      pair_points=pair_points.astype(jnp.int32),
      pair_mask=candidate[pair_points],
  )


class Voxelization(NamedTuple):
  """Static-shape voxelisation of one point cloud.

  Attributes:
    coords: [capacity, 3] int32 voxel coordinates floor(p / voxel_size), sorted
      lexicographically; 0 in unused slots.
    inverse: [N] int32 slot of each point's voxel; `capacity` (one past the last slot) for
      masked points and points whose voxel did not fit, so `jax.ops.segment_sum(...,
      num_segments=capacity)` drops them.
    voxel_mask: [capacity] bool, True for occupied slots.
    overflow: int32 scalar, occupied voxels that did not fit into `capacity` (never silent).
    point_mask: [N] bool, True for points that landed in a kept voxel.
  """
  coords: jax.Array
  inverse: jax.Array
  voxel_mask: jax.Array
  overflow: jax.Array
  point_mask: jax.Array


def _voxelize_one(points, voxel_size, capacity, mask):
  num = points.shape[0]
  mask = mask & jnp.all(jnp.isfinite(points), axis=-1)
  coords = jnp.floor(jnp.where(mask[:, None], points, 0.0) / voxel_size).astype(jnp.int32)
  # Sort by (masked, i, j, k): equal voxels become runs, masked points go last.
  invalid, c0, c1, c2, perm = lax.sort(
      (jnp.int32(1) - mask.astype(jnp.int32), coords[:, 0], coords[:, 1], coords[:, 2],
       jnp.arange(num, dtype=jnp.int32)), num_keys=4)
  changed = (c0[1:] != c0[:-1]) | (c1[1:] != c1[:-1]) | (c2[1:] != c2[:-1])
  starts = jnp.concatenate([jnp.ones((1,), bool), changed]) & (invalid == 0)
  slot = jnp.cumsum(starts, dtype=jnp.int32) - 1
  num_voxels = jnp.sum(starts, dtype=jnp.int32)
  kept = (invalid == 0) & (slot < capacity)
  slot = jnp.where(kept, slot, capacity)
  inverse = jnp.zeros((num,), jnp.int32).at[perm].set(slot)
  voxel_coords = jnp.zeros((capacity, 3), jnp.int32).at[slot].set(
      jnp.stack([c0, c1, c2], axis=-1), mode="drop")
  return Voxelization(
      coords=voxel_coords,
      inverse=inverse,
      voxel_mask=jnp.arange(capacity) < jnp.minimum(num_voxels, capacity),
      overflow=jnp.maximum(num_voxels - capacity, 0),
      point_mask=inverse < capacity,
  )


def voxelize(points: jax.Array, voxel_size: float, capacity: int,
             mask: jax.Array | None = None) -> Voxelization:
  """Assigns points to voxels of edge `voxel_size` with a fixed number of voxel slots.

  Occupied voxels are found by a lexicographic sort of integer coordinates (exact for any
  extent, no hash collisions). If more than `capacity` voxels are occupied, the
  lexicographically first ones are kept and the rest counted in `overflow`.

  Args:
    points: [*batch, N, 3].
    voxel_size: voxel edge, in the points' units.
    capacity: number of voxel slots per cloud (static).
    mask: optional [*batch, N] bool; masked and non-finite points get no voxel.

  Returns:
    A `Voxelization` whose fields carry the same leading batch axes.
  """
  points = _as_float(points)
  if points.ndim < 2 or points.shape[-1] != 3:
    raise ValueError(f"points must have shape [..., N, 3], got {points.shape}")
  if mask is None:
    mask = jnp.ones(points.shape[:-1], bool)
  mask = jnp.asarray(mask, bool)
  if mask.shape != points.shape[:-1]:
    raise ValueError(f"mask shape {mask.shape} does not match points {points.shape[:-1]}")
  fn = lambda p, m: _voxelize_one(p, voxel_size, capacity, m)
  for _ in range(points.ndim - 2):
    fn = jax.vmap(fn)
  return fn(points, mask)
