"""Sparse 3D convolution with static shapes, from gather kernel maps (MinkowskiEngine-style).

A batch of B voxelised clouds is a `SparseTensor` of B * capacity rows: cloud b owns rows
[b * capacity, (b + 1) * capacity), the first of them occupied (`mask`), the rest padding.
Coordinates are integer voxel indices of the level (level l holds floor(level-0 coords / 2^l)),
so a 3x3x3 convolution at any level uses the offsets {-1, 0, 1}^3, as MinkowskiEngine's
convolutions at tensor stride 2^l do.

Kernel maps are built once per level and shared by every convolution of that level:

- `kernel_map`: for each voxel and each of the K^3 offsets, the row of the voxel at that offset
  (or the sentinel M = number of rows). Coordinates are encoded, per cloud, as
  ((i - i0) * Ej + (j - j0)) * Ek + (k - k0) with the cloud's bounding box origin and the
  box extents, keys are sorted once, and the K^2 columns (di, dj) of the kernel are found by
  `searchsorted`; the K voxels along k of one column are consecutive in key order, so they
  are read off the next K sorted keys. Exact (no hashing collisions) while the box has fewer
  than 2^31 voxels; a larger box is reported, never silently aliased.
- `coarsen`: the 2x2x2 stride-2 map between a level and the next, from a lexicographic sort
  of floor(coords / 2): each coarse voxel's 8 children (`children`) and each fine voxel's slot
  among its parent's (`child_slot`).

Convolutions are written as gathers and matmuls only. `conv` gathers the K^3 neighbours of
every output row ([M, K^3 * C_in]) and multiplies once by the [K^3 * C_in, C_out] kernel
(XLA:CPU schedules every gather of a convolution before its matmuls, so splitting the offsets
into chunks bounds no memory and only makes smaller matmuls). Its input gradient is the same
convolution with the mirrored kernel map, which for a stride-1 map is the map itself with
reversed offsets, so no scatter-add is needed (XLA:CPU runs scatter-adds serially); the one
gather of the output gradient by the map serves the weight gradient too. The backward never
re-gathers the input: XLA would merge that gather with the forward's and keep every
convolution's [M, K^3 * C_in] temporary alive until the backward (for Res16UNet34C on 45k
voxels: 8.5 GB, and forward + backward took 9x the forward). The strided and transposed
convolutions are each other's adjoints and likewise gather in both directions. Weight
gradients are x^T g with x transposed explicitly, as in `models.layers.PointwiseDense`.

Cost: every row gathers all K^3 offsets, occupied or not, so the work is that of a dense
K^3 C_in C_out matmul per voxel. On sparse surfaces most offsets are empty (a 50k-point room at
2.5 cm has 2.8 of 27 occupied per voxel at level 0). `pair_map` turns a kernel map into
MinkowskiEngine's per-offset pair lists, with a static capacity, and `conv` on a `PairMap`
does only the occupied pairs (see `conv` for which to use where).

Capacity overflow (voxels that did not fit into a level's capacity) and key-range overflow are
returned as counts; `report_overflow` turns them into a warning or an error on the host.

Kernel layout: [K^3, C_in, C_out] with offset (di, dj, dk) at index
((di + r) * K + (dj + r)) * K + (dk + r), r = K // 2 (a cross-correlation, as
`jax.lax.conv_general_dilated` and `torch.nn.functional.conv3d`); the stride-2 kernels
[8, C_in, C_out] hold offset (pi, pj, pk) in {0, 1}^3 at index 4 pi + 2 pj + pk, coarse voxel p
covering fine voxels 2 p + offset.
"""

import functools
import math
import warnings
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from p2p_jax import geometry
from p2p_jax.collectives import match_vma

_BIG = np.iinfo(np.int32).max


class SparseTensor(flax.struct.PyTreeNode):
  """B clouds of voxels with features, `capacity` rows per cloud.

  Attributes:
    coords: [B * capacity, 4] int32 (batch index, i, j, k); (b, 0, 0, 0) in padding rows.
    features: [B * capacity, C].
    mask: [B * capacity] bool, True for occupied rows.
    batch_size: B (static).
  """
  coords: jax.Array
  features: jax.Array
  mask: jax.Array
  batch_size: int = flax.struct.field(pytree_node=False)

  @property
  def capacity(self) -> int:
    """Rows per cloud."""
    return self.coords.shape[0] // self.batch_size

  def replace_features(self, features: jax.Array) -> "SparseTensor":
    return self.replace(features=features)


class KernelMap(NamedTuple):
  """Stride-1 kernel map of one level.

  Attributes:
    neighbours: [M, K^3] int32 row of the voxel at each offset; M (the number of rows) where
      there is none, and for every offset of a padding row.
  """
  neighbours: jax.Array


class StrideMap(NamedTuple):
  """2x2x2 stride-2 map between a fine level (M_f rows) and the next coarser one (M_c rows).

  Attributes:
    children: [M_c, 8] int32 fine row at each offset of a coarse voxel; M_f where none.
    child_slot: [M_f] int32 8 * parent row + offset of each fine voxel; 8 * M_c for padding
      rows and voxels whose parent did not fit.
    parent: [M_f] int32 parent row of each fine voxel; M_c where none.
  """
  children: jax.Array
  child_slot: jax.Array
  parent: jax.Array


def _batch_offsets(batch_size: int, shape_tail: tuple[int, ...], stride: int) -> jax.Array:
  return (jnp.arange(batch_size, dtype=jnp.int32) * stride).reshape((batch_size,) + (1,) *
                                                                    len(shape_tail))


def _to_global(local: jax.Array, local_size: int, batch_size: int) -> jax.Array:
  """Per-cloud indices [B, ...] in [0, local_size] (local_size = none) -> rows of the batch."""
  offset = _batch_offsets(batch_size, local.shape[1:], local_size)
  return jnp.where(local >= local_size, batch_size * local_size, local + offset).reshape(-1)


def _with_batch(coords: jax.Array, batch_size: int) -> jax.Array:
  """[B, cap, 3] -> [B * cap, 4] with the batch index first."""
  capacity = coords.shape[1]
  b = jnp.broadcast_to(jnp.arange(batch_size, dtype=jnp.int32)[:, None, None],
                       (batch_size, capacity, 1))
  return jnp.concatenate([b, coords], axis=-1).reshape(-1, 4)


def _unique_one(coords: jax.Array, mask: jax.Array, capacity: int):
  """Distinct valid rows of coords [n, 3] in lexicographic order, at most `capacity` of them."""
  n = coords.shape[0]
  invalid, c0, c1, c2, perm = lax.sort(
      (1 - mask.astype(jnp.int32), coords[:, 0], coords[:, 1], coords[:, 2],
       jnp.arange(n, dtype=jnp.int32)), num_keys=4)
  changed = (c0[1:] != c0[:-1]) | (c1[1:] != c1[:-1]) | (c2[1:] != c2[:-1])
  starts = jnp.concatenate([jnp.ones((1,), bool), changed]) & (invalid == 0)
  slot = jnp.cumsum(starts, dtype=jnp.int32) - 1
  count = jnp.sum(starts, dtype=jnp.int32)
  slot = jnp.where((invalid == 0) & (slot < capacity), slot, capacity)
  inverse = jnp.zeros((n,), jnp.int32).at[perm].set(slot)
  unique = jnp.zeros((capacity, 3), jnp.int32).at[slot].set(
      jnp.stack([c0, c1, c2], axis=-1), mode="drop")
  unique_mask = jnp.arange(capacity) < jnp.minimum(count, capacity)
  return unique, unique_mask, inverse, jnp.maximum(count - capacity, 0)


def _kernel_map_one(coords: jax.Array, mask: jax.Array, kernel_size: int):
  """Neighbour table [cap, K^3] (cap = none) of one cloud, and 1 if its key range overflows."""
  cap = coords.shape[0]
  r = kernel_size // 2
  any_valid = jnp.any(mask)
  lo = jnp.where(any_valid, jnp.min(jnp.where(mask[:, None], coords, _BIG), axis=0), 0)
  hi = jnp.where(any_valid, jnp.max(jnp.where(mask[:, None], coords, -_BIG), axis=0), 0)
  ext = hi - lo + 1
  # Keys up to prod(ext) - 1, queries up to r beyond: all must stay below the padding key.
  extent = hi.astype(jnp.float32) - lo.astype(jnp.float32) + 1.0
  range_ok = jnp.prod(extent) < float(2**31 - 2 * kernel_size - 2)
  rel = jnp.where(mask[:, None], coords - lo, 0)
  key = jnp.where(mask, (rel[:, 0] * ext[1] + rel[:, 1]) * ext[2] + rel[:, 2], _BIG)
  sorted_key, order = lax.sort((key, jnp.arange(cap, dtype=jnp.int32)), num_keys=1)
  # One column (di, dj) of the kernel per query: [cap, K^2] queries, one search for all.
  column = np.stack(np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij"),
                    axis=-1).reshape(-1, 2)
  q0 = rel[:, 0:1] + column[:, 0]
  q1 = rel[:, 1:2] + column[:, 1]
  r2 = rel[:, 2:3]
  in_box = mask[:, None] & (q0 >= 0) & (q0 < ext[0]) & (q1 >= 0) & (q1 < ext[1])
  center = (q0 * ext[1] + q1) * ext[2] + r2
  # The voxels (q0, q1, r2 - r .. r2 + r) are among the K keys from the first >= center - r.
  start = jnp.searchsorted(sorted_key, (center - r).reshape(-1), side="left").reshape(center.shape)
  pos = start[..., None] + np.arange(kernel_size)  # [cap, K^2, K]
  key_at = sorted_key[jnp.minimum(pos, cap - 1)]
  d = key_at - center[..., None]
  ok = (in_box[..., None] & (pos < cap) & (key_at != _BIG) & (d >= -r) & (d <= r)
        & (r2[..., None] + d >= 0) & (r2[..., None] + d < ext[2]))
  row = order[jnp.minimum(pos, cap - 1)]
  match = ok[..., None] & (d[..., None] == np.arange(-r, r + 1))  # [cap, K^2, K (t), K (dk)]
  found = jnp.sum(jnp.where(match, row[..., None] + 1, 0), axis=2) - 1  # each dk at most once
  neighbours = jnp.where(found >= 0, found, cap).reshape(cap, -1)
  neighbours = jnp.where(range_ok, neighbours, cap)
  return neighbours, (~range_ok & any_valid).astype(jnp.int32)


def kernel_map(coords: jax.Array, mask: jax.Array, batch_size: int,
               kernel_size: int = 3) -> tuple[KernelMap, jax.Array]:
  """Stride-1 kernel map of a level (see the module docstring).

  Args:
    coords: [B * cap, 4] int32 rows (batch index, i, j, k), distinct among valid rows of a cloud.
    mask: [B * cap] bool.
    batch_size: B.
    kernel_size: odd K.

  Returns:
    (KernelMap with neighbours [B * cap, K^3], key_overflow [B] int32: 1 for a cloud whose
    bounding box has too many voxels for int32 keys; its map is then empty).
  """
  if kernel_size % 2 != 1:
    raise ValueError(f"kernel_size must be odd, got {kernel_size}")
  if coords.ndim != 2 or coords.shape[1] != 4 or coords.shape[0] % batch_size:
    raise ValueError(f"coords must have shape [B * capacity, 4], got {coords.shape}")
  cap = coords.shape[0] // batch_size
  local, key_overflow = jax.vmap(functools.partial(_kernel_map_one, kernel_size=kernel_size))(
      coords[:, 1:].reshape(batch_size, cap, 3), mask.reshape(batch_size, cap))
  neighbours = _to_global(local, cap, batch_size).reshape(batch_size * cap, -1)
  return KernelMap(neighbours=neighbours), key_overflow


def _coarsen_one(coords: jax.Array, mask: jax.Array, capacity: int):
  fine_cap = coords.shape[0]
  parent_coords = coords // 2  # floor division, also for negative coordinates
  coarse, coarse_mask, parent, overflow = _unique_one(parent_coords, mask, capacity)
  offset = coords - 2 * parent_coords
  offset = offset[:, 0] * 4 + offset[:, 1] * 2 + offset[:, 2]
  child_slot = jnp.where(parent < capacity, parent * 8 + offset, capacity * 8)
  children = jnp.full((capacity, 8), fine_cap, jnp.int32).at[parent, offset].set(
      jnp.arange(fine_cap, dtype=jnp.int32), mode="drop")
  return coarse, coarse_mask, parent, child_slot, children, overflow


def coarsen(coords: jax.Array, mask: jax.Array, batch_size: int, capacity: int):
  """The next coarser level (floor(coords / 2), distinct) and the stride-2 map to it.

  Args:
    coords: [B * cap, 4] int32 rows (batch index, i, j, k) of the fine level.
    mask: [B * cap] bool.
    batch_size: B.
    capacity: coarse voxels per cloud (static); the lexicographically first ones are kept.

  Returns:
    (coarse coords [B * capacity, 4], coarse mask [B * capacity], StrideMap,
     overflow [B] int32: coarse voxels per cloud that did not fit).
  """
  cap = coords.shape[0] // batch_size
  coarse, coarse_mask, parent, child_slot, children, overflow = jax.vmap(
      functools.partial(_coarsen_one, capacity=capacity))(
          coords[:, 1:].reshape(batch_size, cap, 3), mask.reshape(batch_size, cap))
  smap = StrideMap(
      children=_to_global(children, cap, batch_size).reshape(batch_size * capacity, 8),
      child_slot=_to_global(child_slot, 8 * capacity, batch_size),
      parent=_to_global(parent, capacity, batch_size))
  return _with_batch(coarse, batch_size), coarse_mask.reshape(-1), smap, overflow


def voxelize(points: jax.Array, features: jax.Array, point_mask: jax.Array, voxel_size: float,
             capacity: int) -> tuple[SparseTensor, jax.Array, jax.Array]:
  """Voxelises B clouds into a `SparseTensor` whose features are the mean over each voxel.

  Args:
    points: [B, N, 3].
    features: [B, N, C].
    point_mask: [B, N] bool; masked and non-finite points get no voxel.
    voxel_size: voxel edge, in the points' units.
    capacity: voxels per cloud (static).

  Returns:
    (SparseTensor with B * capacity rows, point_rows [B, N] int32 row of each point's voxel
     (B * capacity for points without one), overflow [B] int32 voxels that did not fit).
  """
  batch, num = points.shape[:2]
  vox = geometry.voxelize(points, voxel_size, capacity, point_mask)
  rows = _to_global(vox.inverse, capacity, batch).reshape(batch, num)
  features = jnp.where(vox.point_mask[..., None], jnp.asarray(features, jnp.float32), 0.0)
  flat_rows = rows.reshape(-1)
  total = jax.ops.segment_sum(features.reshape(batch * num, -1), flat_rows,
                              num_segments=batch * capacity)
  count = jax.ops.segment_sum(vox.point_mask.reshape(-1).astype(jnp.float32), flat_rows,
                              num_segments=batch * capacity)
  tensor = SparseTensor(coords=_with_batch(vox.coords, batch),
                        features=total / jnp.maximum(count, 1.0)[:, None],
                        mask=vox.voxel_mask.reshape(-1), batch_size=batch)
  return tensor, rows, vox.overflow


def devoxelize(features: jax.Array, point_rows: jax.Array) -> jax.Array:
  """Per-point features [B, N, C] read from voxel features [M, C]; 0 where point_rows == M."""
  padded = jnp.concatenate([features, jnp.zeros((1, features.shape[1]), features.dtype)])
  return padded[point_rows]


def report_overflow(overflow, *, raise_error: bool = False) -> None:
  """Host-side check of an overflow count: warns (or raises) if any voxel or pair was dropped.

  Args:
    overflow: int array of dropped voxels / pairs / key-range failures (e.g. a model's
      aux["overflow"]), a concrete value (call it through `jax.debug.callback` under jit).
    raise_error: raise a RuntimeError instead of warning.
  """
  total = int(np.sum(np.asarray(overflow)))
  if total > 0:
    message = (f"sparse tensor capacity overflow: {total} voxels or neighbour pairs did not fit "
               f"(per cloud: {np.asarray(overflow).tolist()}); raise the capacities "
               "(voxels: capacity, coarse_capacity_ratios; pairs: pairs_per_voxel) or the voxel "
               "size")
    if raise_error:
      raise RuntimeError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)


# ---------------------------------------------------------------------------------------------
# Convolutions: gathers and matmuls, with hand-written gradients that only gather.
# ---------------------------------------------------------------------------------------------


def _pad_row(x: jax.Array) -> jax.Array:
  return jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])


def _gather_matmul(x: jax.Array, index: jax.Array, kernel: jax.Array) -> jax.Array:
  """sum_o x[index[:, o]] @ kernel[o]; index == len(x) reads zeros. Returns [rows, C_out]."""
  rows, num_offsets = index.shape
  c_in, c_out = kernel.shape[1:]
  cols = _pad_row(x)[index].reshape(rows, num_offsets * c_in)
  return cols @ kernel.reshape(num_offsets * c_in, c_out)


@jax.custom_vjp
def _conv(x, neighbours, kernel):
  return _gather_matmul(x, neighbours, kernel)


def _conv_fwd(x, neighbours, kernel):
  return _gather_matmul(x, neighbours, kernel), (x, neighbours, kernel)


def _conv_bwd(residuals, g):
  x, neighbours, kernel = residuals
  rows, num_offsets = neighbours.shape
  c_in, c_out = kernel.shape[1:]
  # Row i is neighbour o of row n exactly when n is neighbour K^3 - 1 - o of row i, so one
  # gather of g by the map itself, G[i, o] = g[neighbours[i, o]], gives both gradients:
  # dx[i] = sum_o G[i, o] kernel[K^3 - 1 - o]^T and dkernel[K^3 - 1 - o] = x^T G[:, o].
  # Gathering g (not x) also keeps XLA from sharing the forward's gather of x with the
  # backward, which kept every convolution's [M, K^3 C_in] gather alive until its backward.
  cols = _pad_row(g)[neighbours].reshape(rows, num_offsets * c_out)
  kernel_t = jnp.swapaxes(kernel[::-1], 1, 2).reshape(num_offsets * c_out, c_in)
  dkernel = (x.T @ cols).reshape(c_in, num_offsets, c_out)
  return cols @ kernel_t, None, jnp.swapaxes(dkernel, 0, 1)[::-1]


_conv.defvjp(_conv_fwd, _conv_bwd)


def _match_vma(features, kernel, index_map):
  """(features, kernel) varying over the same shard_map axes, those of either or of the map.

  A kernel passed in replicated (invariant) would otherwise get a per-device (varying)
  gradient from the custom VJP, which shard_map rejects; through the cast, the per-device
  gradients are summed over the devices instead.
  """
  return match_vma((features, kernel), features, kernel, index_map)


def _check_kernel(kernel: jax.Array, num_offsets: int, c_in: int) -> None:
  if kernel.ndim != 3 or kernel.shape[:2] != (num_offsets, c_in):
    raise ValueError(f"kernel must have shape [{num_offsets}, {c_in}, C_out], got {kernel.shape}")


def conv(features: jax.Array, kmap: "KernelMap | PairMap", kernel: jax.Array) -> jax.Array:
  """Stride-1 sparse convolution (submanifold: outputs at the input voxels).

  Two implementations of the same function (equal values and gradients):

  - a `PairMap` (`pair_map`): only the occupied pairs, MinkowskiEngine's way. Gathers and
    scatter-adds P + M rows and multiplies P + M rows instead of 27 M. The choice on CPU (and
    GPU), where scatter-adds are cheap: on a 50k-point room at 2.5 cm about a tenth of the
    dense work (`experiments/benchmark_sparse.py`).
  - a `KernelMap`: all K^3 offsets of every row, one [M, K^3 C_in] gather and one matmul,
    no scatter. Its shapes do not depend on the data and its one large matmul suits a matrix
    unit, so it is the candidate on TPU, where scatter-adds are slow and small batched
    matmuls waste the systolic array.

  Args:
    features: [M, C_in].
    kmap: the level's `KernelMap` or `PairMap` (K^3 offsets, M rows).
    kernel: [K^3, C_in, C_out].

  Returns:
    [M, C_out]; 0 in padding rows.
  """
  if isinstance(kmap, PairMap):
    _check_kernel(kernel, kmap.num_offsets, features.shape[1])
    features, kernel = _match_vma(features, kernel.astype(features.dtype), kmap)
    return _pair_conv(features, kmap, kernel)
  _check_kernel(kernel, kmap.neighbours.shape[1], features.shape[1])
  features, kernel = _match_vma(features, kernel.astype(features.dtype), kmap)
  return _conv(features, kmap.neighbours, kernel)


# ---------------------------------------------------------------------------------------------
# Pair lists: only the occupied (input, output) pairs of each offset, in tiles of one offset.
# ---------------------------------------------------------------------------------------------


class PairMap(flax.struct.PyTreeNode):
  """The occupied pairs of a stride-1 level, MinkowskiEngine's per-offset kernel maps.

  The centre offset pairs every occupied row with itself and is kept as a mask (`center`). The
  pairs of the other offsets lie in one flat list of static capacity P, grouped by offset, each
  group padded to whole tiles of `tile` slots so that every tile holds one offset's pairs.

  Attributes:
    in_rows: [P] int32 input row of each pair; M (the number of rows) in unused slots.
    out_rows: [P] int32 output row of each pair; M in unused slots.
    tile_offset: [P / tile] int32 kernel offset of each tile's pairs (in [0, K^3)).
    center: [M] bool, occupied rows (those that get the centre offset).
    num_offsets: K^3 (static).
  """
  in_rows: jax.Array
  out_rows: jax.Array
  tile_offset: jax.Array
  center: jax.Array
  num_offsets: int = flax.struct.field(pytree_node=False)

  @property
  def tile(self) -> int:
    """Slots per tile."""
    return self.in_rows.shape[0] // self.tile_offset.shape[0]


def pair_tile(capacity: int) -> int:
  """Tile size for a pair list of `capacity` slots: a power of two in [32, 512] near P / 64.

  A tile is one step of the convolution's loop (one matmul with one offset's kernel), so larger
  tiles cost fewer steps; each of the K^3 - 1 offsets wastes up to a tile of padding, so small
  lists take smaller tiles.
  """
  return int(min(512, max(32, 2 ** math.floor(math.log2(max(capacity, 1) / 64)))))


def pair_capacity(num_pairs: float, num_offsets: int = 27) -> int:
  """Slots that hold `num_pairs` non-centre pairs however they split over the offsets.

  Each offset's group is padded to whole tiles, which adds up to (K^3 - 1) (tile - 1) slots;
  the result is a multiple of its tile, `pair_tile(result)`.
  """
  need = max(int(math.ceil(num_pairs)), 1)
  tile = pair_tile(need)
  while True:
    capacity = tile * math.ceil((need + (num_offsets - 1) * (tile - 1)) / tile)
    if pair_tile(capacity) == tile:
      return capacity
    tile = pair_tile(capacity)


def pair_map(kmap: KernelMap, batch_size: int, capacity: int) -> tuple[PairMap, jax.Array]:
  """The pair lists of a level from its kernel map (exact: pairs are the map's entries).

  Args:
    kmap: the level's `KernelMap` ([M, K^3] neighbours, M = B * cap rows).
    batch_size: B.
    capacity: P, slots for the non-centre pairs of the whole batch (static; a multiple of its
      tile `pair_tile(P)`, as `pair_capacity` gives).

  Returns:
    (PairMap, dropped [B] int32: pairs per cloud, by output row, that did not fit; their
     contributions are missing from the convolution, so report them).
  """
  neighbours = kmap.neighbours
  rows, num_offsets = neighbours.shape
  tile = pair_tile(capacity)
  if capacity % tile:
    raise ValueError(f"pair capacity {capacity} is not a multiple of the tile {tile}")
  centre = num_offsets // 2
  others = np.delete(np.arange(num_offsets, dtype=np.int32), centre)
  source = neighbours[:, others]  # [M, K^3 - 1]
  valid = source < rows
  counts = jnp.sum(valid, axis=0, dtype=jnp.int32)
  ends = jnp.cumsum((counts + tile - 1) // tile * tile)
  slot = ends - (counts + tile - 1) // tile * tile + jnp.cumsum(valid, axis=0, dtype=jnp.int32) - 1
  keep = valid & (slot < capacity)
  slot = jnp.where(keep, slot, capacity).reshape(-1)
  in_rows = jnp.full((capacity,), rows, jnp.int32).at[slot].set(source.reshape(-1), mode="drop")
  out_rows = jnp.full((capacity,), rows, jnp.int32).at[slot].set(
      jnp.broadcast_to(jnp.arange(rows, dtype=jnp.int32)[:, None], source.shape).reshape(-1),
      mode="drop")
  group = jnp.searchsorted(ends, jnp.arange(capacity // tile, dtype=jnp.int32) * tile,
                           side="right")
  tile_offset = jnp.asarray(others)[jnp.minimum(group, len(others) - 1)]
  dropped = jnp.sum((valid & ~keep).reshape(batch_size, -1), axis=1, dtype=jnp.int32)
  pairs = PairMap(in_rows=in_rows, out_rows=out_rows, tile_offset=tile_offset,
                  center=neighbours[:, centre] < rows, num_offsets=num_offsets)
  return pairs, dropped


def _tiles(pairs):
  """(in_rows [T, tile], out_rows [T, tile], tile_offset [T]): the scan's per-tile inputs."""
  num_tiles = pairs.tile_offset.shape[0]
  return (pairs.in_rows.reshape(num_tiles, -1), pairs.out_rows.reshape(num_tiles, -1),
          pairs.tile_offset)


class StridePairs(flax.struct.PyTreeNode):
  """The pairs of a 2x2x2 stride-2 map, one per fine voxel that has a parent, in tiles of one
  child offset each (`stride_pairs`); the pair-list form of a `StrideMap`.

  Attributes:
    fine_rows: [P] int32 fine row of each pair; `num_fine` in unused slots.
    coarse_rows: [P] int32 its parent's row; `num_coarse` in unused slots.
    tile_offset: [P / tile] int32 child offset (4 pi + 2 pj + pk) of each tile's pairs.
    num_fine: M_f, rows of the fine level (static).
    num_coarse: M_c, rows of the coarse level (static).
  """
  fine_rows: jax.Array
  coarse_rows: jax.Array
  tile_offset: jax.Array
  num_fine: int = flax.struct.field(pytree_node=False)
  num_coarse: int = flax.struct.field(pytree_node=False)


def stride_pairs(smap: StrideMap) -> StridePairs:
  """The pair lists of a stride-2 map; every fine voxel with a parent fits (M_f + 8 tiles of
  slots), so nothing can overflow."""
  num_fine, num_coarse = smap.child_slot.shape[0], smap.children.shape[0]
  tile = pair_tile(num_fine)
  capacity = tile * math.ceil((num_fine + 8 * (tile - 1)) / tile)
  valid = smap.child_slot < 8 * num_coarse
  one_hot = valid[:, None] & (smap.child_slot[:, None] % 8 == np.arange(8))
  counts = jnp.sum(one_hot, axis=0, dtype=jnp.int32)
  padded = (counts + tile - 1) // tile * tile
  ends = jnp.cumsum(padded)
  rank = jnp.cumsum(one_hot, axis=0, dtype=jnp.int32) - 1
  slot = jnp.sum(jnp.where(one_hot, ends - padded + rank, 0), axis=1)
  slot = jnp.where(valid, slot, capacity)
  fine_rows = jnp.full((capacity,), num_fine, jnp.int32).at[slot].set(
      jnp.arange(num_fine, dtype=jnp.int32), mode="drop")
  coarse_rows = jnp.full((capacity,), num_coarse, jnp.int32).at[slot].set(smap.parent,
                                                                          mode="drop")
  group = jnp.searchsorted(ends, jnp.arange(capacity // tile, dtype=jnp.int32) * tile,
                           side="right")
  return StridePairs(fine_rows=fine_rows, coarse_rows=coarse_rows,
                     tile_offset=jnp.minimum(group, 7).astype(jnp.int32), num_fine=num_fine,
                     num_coarse=num_coarse)


def _rows(x, rows):
  """x[rows] with zeros where rows == len(x) (no padded copy of x)."""
  return jnp.take(x, rows, axis=0, mode="fill", fill_value=0)


def _scan_products(x, tiles, kernel, out):
  """`out` plus, for every pair, x[in] @ kernel[offset] added to its output row.

  One tile per scan step: gather its rows, one [tile, C_in] x [C_in, C_out] matmul with the
  tile's kernel slice, scatter-add into the carried output (in place). Measured against one
  batched matmul over all tiles, this is 1.3-2x faster and needs no [tiles, C_in, C_out] copies
  of the kernels (which XLA hoisted and kept alive: 0.9 GB for Res16UNet34C).
  """
  def tile(out, t):
    rows_in, rows_out, offset = t
    return out.at[rows_out].add(_rows(x, rows_in) @ kernel[offset], mode="drop"), None

  return lax.scan(tile, out, tiles)[0]


def _scan_transpose(x, g, tiles, kernel, dx, dkernel):
  """The transpose of `_scan_products` for cotangent g: (dx, dkernel) plus every pair's terms.

  Pair (out i, in j, offset o) adds x[j] W_o to y[i]: so g[i] W_o^T to dx[j] and x[j]^T g[i] to
  dW_o; the rows are gathered again per tile (nothing is kept from the forward). Tiles left
  empty by the capacity's slack are skipped (`lax.cond`): 0.25 s of 2.55 s for Res16UNet34C on
  a 50k-point room. (The same test in the forward's loop made it slower.)
  """
  def tile(carry, t):
    rows_in, rows_out, offset = t

    def add(carry):
      dx, dkernel = carry
      x_t, g_t = _rows(x, rows_in), _rows(g, rows_out)
      return (dx.at[rows_in].add(g_t @ kernel[offset].T, mode="drop"),
              dkernel.at[offset].add(x_t.T @ g_t))

    return lax.cond(rows_in[0] < x.shape[0], add, lambda carry: carry, carry), None

  return lax.scan(tile, (dx, dkernel), tiles)[0]


@jax.custom_vjp
def _pair_conv(x, pairs, kernel):
  centre = kernel.shape[0] // 2
  out = jnp.where(pairs.center[:, None], x @ kernel[centre], 0.0)
  return _scan_products(x, _tiles(pairs), kernel, out)


def _pair_conv_fwd(x, pairs, kernel):
  return _pair_conv(x, pairs, kernel), (x, pairs, kernel)


def _pair_conv_bwd(residuals, g):
  x, pairs, kernel = residuals
  centre = kernel.shape[0] // 2
  g_centre = jnp.where(pairs.center[:, None], g, 0.0)
  dkernel = jnp.zeros_like(kernel).at[centre].set(x.T @ g_centre)
  dx, dkernel = _scan_transpose(x, g, _tiles(pairs), kernel, g_centre @ kernel[centre].T,
                                dkernel)
  return dx, None, dkernel


_pair_conv.defvjp(_pair_conv_fwd, _pair_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _tile_conv(x, rows_in, rows_out, tile_offset, kernel, num_out):
  """Sum over pairs of x[in] @ kernel[offset] into [num_out, C_out] (no centre offset)."""
  tiles = (rows_in.reshape(tile_offset.shape[0], -1), rows_out.reshape(tile_offset.shape[0], -1),
           tile_offset)
  return _scan_products(x, tiles, kernel, jnp.zeros((num_out, kernel.shape[2]), x.dtype))


def _tile_conv_fwd(x, rows_in, rows_out, tile_offset, kernel, num_out):
  return (_tile_conv(x, rows_in, rows_out, tile_offset, kernel, num_out),
          (x, rows_in, rows_out, tile_offset, kernel))


def _tile_conv_bwd(num_out, residuals, g):
  del num_out
  x, rows_in, rows_out, tile_offset, kernel = residuals
  tiles = (rows_in.reshape(tile_offset.shape[0], -1), rows_out.reshape(tile_offset.shape[0], -1),
           tile_offset)
  dx, dkernel = _scan_transpose(x, g, tiles, kernel, jnp.zeros_like(x), jnp.zeros_like(kernel))
  return dx, None, None, None, dkernel


_tile_conv.defvjp(_tile_conv_fwd, _tile_conv_bwd)


def _gather_children(x: jax.Array, children: jax.Array) -> jax.Array:
  """[M_c, 8 C_in]: the features of each coarse voxel's 8 children (zeros where none)."""
  return _pad_row(x)[children].reshape(children.shape[0], -1)


@jax.custom_vjp
def _conv_down(x, children, child_slot, kernel):
  return _gather_children(x, children) @ kernel.reshape(-1, kernel.shape[2])


def _conv_down_fwd(x, children, child_slot, kernel):
  # The gathered children ([M_c, 8 C_in], smaller than a stride-1 gather of the fine level)
  # are kept for the weight gradient.
  cols = _gather_children(x, children)
  return cols @ kernel.reshape(-1, kernel.shape[2]), (cols, child_slot, kernel)


def _conv_down_bwd(residuals, g):
  cols, child_slot, kernel = residuals
  c_in = kernel.shape[1]
  # d cols = g kernel^T: row p, block o belongs to the fine voxel at child_slot 8 p + o.
  dcols = (g @ kernel.reshape(8 * c_in, -1).T).reshape(-1, c_in)
  dx = _pad_row(dcols)[child_slot]
  return dx, None, None, (cols.T @ g).reshape(kernel.shape)


_conv_down.defvjp(_conv_down_fwd, _conv_down_bwd)


def conv_down(features: jax.Array, smap: "StrideMap | StridePairs",
              kernel: jax.Array) -> jax.Array:
  """2x2x2 stride-2 sparse convolution from a level to the next coarser one.

  Args:
    features: [M_f, C_in] of the fine level.
    smap: the `StrideMap` from `coarsen` (all 8 children of every coarse voxel), or its
      `stride_pairs` (only the children that exist).
    kernel: [8, C_in, C_out].

  Returns:
    [M_c, C_out] at the coarse voxels; 0 in padding rows.
  """
  _check_kernel(kernel, 8, features.shape[1])
  features, kernel = _match_vma(features, kernel.astype(features.dtype), smap)
  if isinstance(smap, StridePairs):
    return _tile_conv(features, smap.fine_rows, smap.coarse_rows, smap.tile_offset, kernel,
                      smap.num_coarse)
  return _conv_down(features, smap.children, smap.child_slot, kernel)


def _up(x, child_slot, kernel):
  c_in, c_out = kernel.shape[1:]
  y = x @ jnp.swapaxes(kernel, 0, 1).reshape(c_in, 8 * c_out)
  return _pad_row(y.reshape(-1, c_out))[child_slot]


@jax.custom_vjp
def _conv_up(x, children, child_slot, kernel):
  return _up(x, child_slot, kernel)


def _conv_up_fwd(x, children, child_slot, kernel):
  return _up(x, child_slot, kernel), (x, children, kernel)


def _conv_up_bwd(residuals, g):
  x, children, kernel = residuals
  c_in, c_out = kernel.shape[1:]
  dy = _pad_row(g)[children].reshape(-1, 8 * c_out)  # [M_c, 8 C_out]
  dx = dy @ jnp.swapaxes(kernel, 0, 1).reshape(c_in, 8 * c_out).T
  dkernel = jnp.swapaxes((x.T @ dy).reshape(c_in, 8, c_out), 0, 1)
  return dx, None, None, dkernel


_conv_up.defvjp(_conv_up_fwd, _conv_up_bwd)


def conv_up(features: jax.Array, smap: "StrideMap | StridePairs",
            kernel: jax.Array) -> jax.Array:
  """2x2x2 stride-2 transposed sparse convolution back onto the finer level's voxels.

  Args:
    features: [M_c, C_in] of the coarse level.
    smap: the `StrideMap` from `coarsen` (the finer level's coordinates are reused), or its
      `stride_pairs` (one matmul row per fine voxel instead of 8 per coarse voxel).
    kernel: [8, C_in, C_out].

  Returns:
    [M_f, C_out]; 0 in padding rows and at fine voxels whose parent did not fit.
  """
  _check_kernel(kernel, 8, features.shape[1])
  features, kernel = _match_vma(features, kernel.astype(features.dtype), smap)
  if isinstance(smap, StridePairs):
    return _tile_conv(features, smap.coarse_rows, smap.fine_rows, smap.tile_offset, kernel,
                      smap.num_fine)
  return _conv_up(features, smap.children, smap.child_slot, kernel)
