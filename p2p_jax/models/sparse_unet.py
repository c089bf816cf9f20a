"""SR-UNet (MinkowskiEngine's Res16UNet family) on `p2p_jax.sparse`: the paper's 3D student.

PPKT (Liu et al. 2021) pretrains SR-UNet34, MinkowskiEngine's Res16UNet34C at 2.5 cm voxels,
for segmentation. The networks follow `res16unet.py` of the MinkowskiEngine / PointContrast
code: a stem convolution, four stride-2 2x2x2 convolutions each followed by a stage of
BasicBlocks, then four stride-2 transposed convolutions, each concatenated with the encoder
features of its level and followed by a stage of BasicBlocks:

    level (tensor stride)  1        2          4          8          16
    encoder                conv0    block1     block2     block3     block4
    decoder                block8   block7     block6     block5
    channels (34C)         32 / 96  32 / 96    64 / 128   128 / 256  256

PLANES and LAYERS are MinkowskiEngine's; INIT_DIM 32. All convolutions have no bias and are
followed by BatchNorm (statistics over occupied voxels only, across devices with
`bn_axis_name`); a BasicBlock's shortcut is a 1x1 convolution + BatchNorm where its width
changes. The stem kernel (`conv0_kernel_size`, MinkowskiEngine's `conv1_kernel_size`) is 3
by default, as in PointContrast's configurations, or 5 as in MinkowskiEngine's examples. The
final 1x1 convolution to `out_features` (with bias) is optional: without it the student gives
the 96 channels of block8, and the `PointModel` head maps them.

As a student the network takes points: it voxelises them (features averaged per voxel), runs
on the voxels and reads each point's features back from its voxel, so it plugs into
`student.PointModel` exactly like PointNet++. Shapes are static: every level has a capacity
of voxels per cloud (level 0: `capacity`, default N; coarser levels a fraction of it); voxels
that do not fit are counted in aux["overflow"] and, with `warn_on_overflow`, reported by a
host warning. Padded points never influence valid outputs: they get no voxel, and padding
rows are excluded from kernel maps and BatchNorm statistics. Per-point outputs follow any
permutation of the points (voxels are ordered by coordinates, not by point order).
"""

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from p2p_jax import sparse
from p2p_jax.models.layers import MaskedBatchNorm, PointwiseDense

# MinkowskiEngine initialises sparse kernels [K^3, C_in, C_out] with kaiming_normal_(mode=
# "fan_out"), i.e. std sqrt(2 / (K^3 C_out)).
_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class SparseConv(nn.Module):
  """Stride-1 sparse convolution on a level's `KernelMap` or `PairMap` (kernel
  [K^3, C_in, features])."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, kmap: sparse.KernelMap | sparse.PairMap) -> jax.Array:
    num_offsets = (kmap.num_offsets if isinstance(kmap, sparse.PairMap)
                   else kmap.neighbours.shape[1])
    kernel = self.param("kernel", _kernel_init, (num_offsets, x.shape[-1], self.features))
    return sparse.conv(x, kmap, kernel)


class SparseConvDown(nn.Module):
  """2x2x2 stride-2 sparse convolution (kernel [8, C_in, features])."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, smap: sparse.StrideMap | sparse.StridePairs) -> jax.Array:
    kernel = self.param("kernel", _kernel_init, (8, x.shape[-1], self.features))
    return sparse.conv_down(x, smap, kernel)


class SparseConvUp(nn.Module):
  """2x2x2 stride-2 transposed sparse convolution (kernel [8, C_in, features])."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, smap: sparse.StrideMap | sparse.StridePairs) -> jax.Array:
    kernel = self.param("kernel", _kernel_init, (8, x.shape[-1], self.features))
    return sparse.conv_up(x, smap, kernel)


class BasicBlock(nn.Module):
  """ResNet BasicBlock on voxels: conv-BN-ReLU-conv-BN + shortcut, ReLU.

  Attributes:
    planes: output channels.
    bn_axis_name: pmap / shard_map axis for cross-device BatchNorm statistics, or None.
  """
  planes: int
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, kmap: sparse.KernelMap | sparse.PairMap, mask, *, train: bool):
    bn = functools.partial(MaskedBatchNorm, axis_name=self.bn_axis_name)
    out = SparseConv(self.planes, name="conv1")(x, kmap)
    out = bn(relu=True, name="norm1")(out, mask, train=train)
    out = SparseConv(self.planes, name="conv2")(out, kmap)
    out = bn(name="norm2")(out, mask, train=train)
    if x.shape[-1] != self.planes:
      x = PointwiseDense(self.planes, use_bias=False, name="downsample_conv")(x)
      x = bn(name="downsample_norm")(x, mask, train=train)
    return jax.nn.relu(out + x)


class Levels(NamedTuple):
  """The voxel pyramid of a batch and its kernel maps (see `build_levels`)."""
  tensor: sparse.SparseTensor
  point_rows: jax.Array
  masks: list[jax.Array]
  kmaps: list[sparse.KernelMap | sparse.PairMap]
  smaps: list[sparse.StrideMap | sparse.StridePairs]
  stem_map: sparse.KernelMap | sparse.PairMap
  overflow: jax.Array
  num_voxels: jax.Array


def build_levels(points, features, point_mask, voxel_size: float, capacities: Sequence[int],
                 stem_kernel_size: int = 3,
                 pair_capacities: Sequence[int] | None = None) -> Levels:
  """Voxelises points and builds every level's kernel maps, once for the whole network.

  Args:
    points: [B, N, 3], zero (or anything finite) at padded points.
    features: [B, N, C].
    point_mask: [B, N] bool.
    voxel_size: level-0 voxel edge.
    capacities: voxels per cloud of each level (static), finest first.
    stem_kernel_size: kernel size of the stem convolution (its own map if not 3).
    pair_capacities: non-centre pair slots of each level for the whole batch (static, see
      `sparse.pair_capacity`): the levels' 3x3x3 maps become `PairMap`s and the stride-2
      maps `StridePairs`; None keeps the dense `KernelMap`s and `StrideMap`s. A 5x5x5 stem
      keeps its dense map (3 input channels: cheap).

  Returns:
    `Levels` with the level-0 tensor, each point's row, per-level masks, 3x3x3 kernel maps,
    stride-2 maps between consecutive levels, the stem's map, overflow [B] (voxels dropped
    at any level, pairs that did not fit and key-range failures) and num_voxels [B, L]
    (occupied, before capacity).
  """
  batch = points.shape[0]
  tensor, point_rows, overflow = sparse.voxelize(points, features, point_mask, voxel_size,
                                                 capacities[0])
  coords, masks, kmaps, smaps = [tensor.coords], [tensor.mask], [], []
  num_voxels = [jnp.sum(tensor.mask.reshape(batch, -1), axis=1) + overflow]
  for level in range(len(capacities)):
    kmap, key_overflow = sparse.kernel_map(coords[level], masks[level], batch, 3)
    kmaps.append(kmap)
    overflow = overflow + key_overflow
    if level + 1 < len(capacities):
      c, m, smap, ovf = sparse.coarsen(coords[level], masks[level], batch, capacities[level + 1])
      coords.append(c)
      masks.append(m)
      smaps.append(smap)
      overflow = overflow + ovf
      num_voxels.append(jnp.sum(m.reshape(batch, -1), axis=1) + ovf)
  stem_map = kmaps[0]
  if pair_capacities is not None:
    for level, capacity in enumerate(pair_capacities):
      kmaps[level], dropped = sparse.pair_map(kmaps[level], batch, capacity)
      overflow = overflow + dropped
    smaps = [sparse.stride_pairs(smap) for smap in smaps]
    stem_map = kmaps[0]
  if stem_kernel_size != 3:
    stem_map, key_overflow = sparse.kernel_map(coords[0], masks[0], batch, stem_kernel_size)
    overflow = overflow + key_overflow
  return Levels(tensor, point_rows, masks, kmaps, smaps, stem_map, overflow,
                jnp.stack(num_voxels, axis=1))


def _warn(overflow):
  sparse.report_overflow(overflow)


class SparseUNet(nn.Module):
  """Res16UNet on points: voxelise -> sparse UNet -> per-point features.

  Attributes:
    planes: MinkowskiEngine's PLANES (8 stages: block1..block8).
    layers: MinkowskiEngine's LAYERS (BasicBlocks per stage).
    init_dim: INIT_DIM, the stem's width.
    conv0_kernel_size: stem kernel size (3 or 5).
    voxel_size: voxel edge in metres.
    capacity: voxels per cloud at level 0 (default: the number of points N, never overflows).
    coarse_capacity_ratios: capacities of levels 1-4 as fractions of `capacity` (surfaces
      shrink about 4x per level, so the defaults leave room to spare).
    out_features: width of an optional final 1x1 convolution with bias; None: planes[7].
    bn_axis_name: pmap / shard_map axis for cross-device BatchNorm statistics, or None.
    conv_impl: "pairs" (per-offset pair lists of the occupied pairs, for CPU and GPU) or
      "dense" (all 27 offsets of every voxel, the candidate on TPU); see `sparse.conv`.
    pairs_per_voxel: pair slots of levels 0-4 per voxel slot of the level ("pairs" only):
      non-centre neighbours a voxel may have on average, at most 26. Surfaces have about 2-3
      at level 0 and more at coarser levels; pairs that do not fit are counted in
      aux["overflow"] like voxels.
    warn_on_overflow: emit a host warning (via `jax.debug.callback`) when voxels were dropped.
  """
  planes: Sequence[int] = (32, 64, 128, 256, 256, 128, 96, 96)
  layers: Sequence[int] = (2, 3, 4, 6, 2, 2, 2, 2)
  init_dim: int = 32
  conv0_kernel_size: int = 3
  voxel_size: float = 0.025
  capacity: int | None = None
  coarse_capacity_ratios: Sequence[float] = (0.5, 0.25, 0.125, 0.0625)
  out_features: int | None = None
  bn_axis_name: str | None = None
  conv_impl: str = "pairs"
  pairs_per_voxel: Sequence[float] = (4.0, 8.0, 11.0, 12.0, 14.0)
  warn_on_overflow: bool = True

  @property
  def output_width(self) -> int:
    """Channels of the per-point features."""
    return self.out_features or self.planes[7]

  def capacities(self, num_points: int) -> tuple[int, ...]:
    """Voxel slots per cloud at levels 0-4 for clouds of `num_points` points."""
    base = self.capacity or num_points
    return (base,) + tuple(max(8, 8 * math.ceil(base * r / 8)) for r in
                           self.coarse_capacity_ratios)

  def pair_capacities(self, batch_size: int, num_points: int) -> tuple[int, ...] | None:
    """Pair slots of levels 0-4 for a batch ("pairs"), or None ("dense")."""
    if self.conv_impl == "dense":
      return None
    if self.conv_impl != "pairs":
      raise ValueError(f"conv_impl must be 'pairs' or 'dense', got {self.conv_impl!r}")
    if len(self.pairs_per_voxel) != 5:
      raise ValueError(f"pairs_per_voxel needs 5 entries, got {self.pairs_per_voxel}")
    return tuple(sparse.pair_capacity(min(r, 26) * batch_size * c) for r, c in
                 zip(self.pairs_per_voxel, self.capacities(num_points)))

  @nn.compact
  def __call__(self, points: jax.Array, features: jax.Array | None = None,
               point_mask: jax.Array | None = None, *, train: bool = False):
    """Computes per-point features.

    Args:
      points: [B, N, 3] coordinates (metres).
      features: optional [B, N, C] input features (e.g. colours); ones if None.
      point_mask: optional [B, N] bool, True for real points.
      train: BatchNorm in training mode (batch statistics) or inference mode.

    Returns:
      ([B, N, output_width] features, zero at padded points, aux) with aux holding
      "overflow" [B] int32 (voxels dropped at any level, plus key-range failures),
      "num_voxels" [B, 5] occupied voxels per level (before capacity), "point_rows" [B, N]
      voxel row of each point, and the level features "p1", "b1p2", "b2p4", "b3p8", "b4p16",
      "b5p8", "b6p4", "b7p2", "b8p1" ([B * capacity_l, C] rows).
    """
    if len(self.planes) != 8 or len(self.layers) != 8 or len(self.coarse_capacity_ratios) != 4:
      raise ValueError("planes and layers need 8 entries, coarse_capacity_ratios 4")
    points = jnp.asarray(points, jnp.float32)
    if points.ndim != 3 or points.shape[-1] != 3:
      raise ValueError(f"points must have shape [B, N, 3], got {points.shape}")
    batch, num = points.shape[:2]
    if point_mask is None:
      point_mask = jnp.ones((batch, num), bool)
    if features is None:
      features = jnp.ones((batch, num, 1), jnp.float32)
    point_mask = jnp.asarray(point_mask, bool)
    points = jnp.where(point_mask[..., None], points, 0.0)

    levels = build_levels(points, features, point_mask, self.voxel_size,
                          self.capacities(num), self.conv0_kernel_size,
                          self.pair_capacities(batch, num))
    tensor, masks, kmaps, smaps = levels.tensor, levels.masks, levels.kmaps, levels.smaps
    overflow = levels.overflow
    if self.warn_on_overflow:
      jax.debug.callback(_warn, overflow)

    bn = functools.partial(MaskedBatchNorm, axis_name=self.bn_axis_name)

    def stage(x, level, index):
      for i in range(self.layers[index]):
        x = BasicBlock(self.planes[index], self.bn_axis_name, name=f"block{index + 1}_{i}")(
            x, kmaps[level], masks[level], train=train)
      return x

    # Encoder.
    x = SparseConv(self.init_dim, name="conv0p1s1")(tensor.features, levels.stem_map)
    out_p1 = bn(relu=True, name="bn0")(x, masks[0], train=train)
    x = out_p1
    skips = [out_p1]
    for level in range(1, 5):
      x = SparseConvDown(x.shape[-1], name=f"conv{level}p{2 ** (level - 1)}s2")(
          x, smaps[level - 1])
      x = bn(relu=True, name=f"bn{level}")(x, masks[level], train=train)
      x = stage(x, level, level - 1)
      skips.append(x)
    aux = {"p1": out_p1, "b1p2": skips[1], "b2p4": skips[2], "b3p8": skips[3],
           "b4p16": skips[4]}

    # Decoder: up, concatenate the encoder features of the level, stage.
    for level in range(3, -1, -1):
      stage_index = 7 - level  # block5 at level 3 ... block8 at level 0
      up = 4 + (3 - level)  # PLANES[4] at the first transposed convolution ...
      x = SparseConvUp(self.planes[up], name=f"convtr{up}p{2 ** (level + 1)}s2")(
          x, smaps[level])
      x = bn(relu=True, name=f"bntr{up}")(x, masks[level], train=train)
      x = jnp.concatenate([x, skips[level]], axis=-1)
      x = stage(x, level, stage_index)
      aux[f"b{stage_index + 1}p{2 ** level}"] = x
    if self.out_features is not None:
      x = PointwiseDense(self.out_features, name="final")(x)

    out = sparse.devoxelize(x, levels.point_rows)
    aux.update(overflow=overflow, num_voxels=levels.num_voxels, point_rows=levels.point_rows)
    return jnp.where(point_mask[..., None], out, 0.0), aux


def SparseUNet14A(**kwargs) -> SparseUNet:  # noqa: N802 (a named variant, like a class)
  """MinkowskiEngine's Res16UNet14A: one BasicBlock per stage."""
  return SparseUNet(planes=(32, 64, 128, 256, 128, 128, 96, 96), layers=(1,) * 8, **kwargs)


def SparseUNet18A(**kwargs) -> SparseUNet:  # noqa: N802
  """MinkowskiEngine's Res16UNet18A: two BasicBlocks per stage."""
  return SparseUNet(planes=(32, 64, 128, 256, 128, 128, 96, 96), layers=(2,) * 8, **kwargs)


def SparseUNet34C(**kwargs) -> SparseUNet:  # noqa: N802
  """MinkowskiEngine's Res16UNet34C (SR-UNet34), PPKT's segmentation student."""
  return SparseUNet(planes=(32, 64, 128, 256, 256, 128, 96, 96), layers=(2, 3, 4, 6, 2, 2, 2, 2),
                    **kwargs)


def SparseUNetTiny(**kwargs) -> SparseUNet:  # noqa: N802
  """A narrow test variant with the same five levels, one block per stage, for small clouds
  (10 cm voxels; sparse samples shrink little per level, so coarse levels keep more room)."""
  kwargs.setdefault("voxel_size", 0.1)
  kwargs.setdefault("coarse_capacity_ratios", (1.0, 1.0, 0.5, 0.5))
  return SparseUNet(planes=(8, 8, 16, 16, 16, 8, 8, 8), layers=(1,) * 8, init_dim=8, **kwargs)

