"""PointNet++ (Qi et al. 2017) on `pointops`: the point-based 3D student, with masks.

Set abstraction (single- or multi-scale grouping) and feature propagation keep static shapes:
every level has a fixed number of centres, and `point_mask` marks real points. Padding never
influences a valid output: padded points are zeroed on entry, never sampled as centres or
neighbours, never interpolated from, and excluded from BatchNorm statistics.

Permutation behaviour, exactly: per-point outputs follow a permutation of the input points if
(1) farthest point sampling starts from the same point (`fps_start` follows the permutation)
and (2) no ball holds more than `nsample` points. Ball query keeps the first `nsample` points
in index order, as in PointNet++, so with fuller balls the kept neighbours depend on the order.
"""

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from p2p_jax import pointops
from p2p_jax.models.layers import MaskedBatchNorm, PointwiseDense


class SALevel(NamedTuple):
  """One set abstraction level: `npoint` centres, one (radius, nsample, mlp) per scale."""
  npoint: int
  radii: tuple[float, ...]
  nsamples: tuple[int, ...]
  mlps: tuple[tuple[int, ...], ...]


class SharedMLP(nn.Module):
  """Pointwise Dense -> BatchNorm -> ReLU layers; BatchNorm statistics only over `mask`.

  See `layers` for why the Dense and BatchNorm have hand-written gradients.

  Attributes:
    widths: output channels of each layer.
    bn_axis_name: pmap/shard_map axis for cross-device BatchNorm statistics, or None.
  """
  widths: Sequence[int]
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    for width in self.widths:
      x = PointwiseDense(width, use_bias=False)(x)
      x = MaskedBatchNorm(relu=True, axis_name=self.bn_axis_name)(x, mask, train=train)
    return x


class SetAbstraction(nn.Module):
  """Samples centres by FPS and pools each ball's neighbours with a shared MLP and max.

  Attributes:
    level: the level's configuration; several radii make it multi-scale (MSG).
    bn_axis_name: see `SharedMLP`.
  """
  level: SALevel
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, points, features, point_mask, *, train: bool, fps_start: int = 0):
    """Args: points [B, N, 3], features [B, N, C] or None, point_mask [B, N].

    Returns:
      (centres [B, S, 3], pooled features [B, S, sum of last widths], centre mask [B, S],
       centre indices [B, S] into the N points).
    """
    idx, center_mask = pointops.farthest_point_sample(points, self.level.npoint, mask=point_mask,
                                                      start_index=fps_start)
    centers = pointops.gather_points(points, idx)
    pooled = []
    for radius, nsample, widths in zip(self.level.radii, self.level.nsamples, self.level.mlps):
      nbr, nbr_mask = pointops.ball_query(points, centers, radius, nsample, mask=point_mask)
      grouped = pointops.group(points, centers, nbr, features)
      valid = nbr_mask & center_mask[..., None]
      x = SharedMLP(widths, self.bn_axis_name)(grouped, valid, train=train)
      pooled.append(pointops.masked_max(x, valid[..., None], axis=2))
    return centers, jnp.concatenate(pooled, axis=-1), center_mask, idx


class FeaturePropagation(nn.Module):
  """Interpolates coarse features to finer points (3-NN), concatenates the skip, shared MLP.

  Attributes:
    widths: MLP output channels.
    bn_axis_name: see `SharedMLP`.
  """
  widths: Sequence[int]
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, fine_points, fine_features, fine_mask, coarse_points, coarse_features,
               coarse_mask, *, train: bool):
    x = pointops.interpolate(fine_points, coarse_points, coarse_features, source_mask=coarse_mask)
    if fine_features is not None:
      x = jnp.concatenate([x, fine_features], axis=-1)
    return SharedMLP(self.widths, self.bn_axis_name)(x, fine_mask, train=train)


class PointNet2(nn.Module):
  """PointNet++ segmentation backbone: per-point features for every input point.

  Attributes:
    sa_levels: set abstraction levels, finest first.
    fp_mlps: feature propagation widths, coarsest first (one per SA level).
    bn_axis_name: see `SharedMLP`.
  """
  sa_levels: Sequence[SALevel]
  fp_mlps: Sequence[Sequence[int]]
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, points: jax.Array, features: jax.Array | None = None,
               point_mask: jax.Array | None = None, *, train: bool = False, fps_start: int = 0):
    """Computes per-point features.

    Args:
      points: [B, N, 3] coordinates (metres).
      features: optional [B, N, C] input features (e.g. rgb, normals, normalised xyz).
      point_mask: optional [B, N] bool, True for real points.
      train: BatchNorm in training mode (batch statistics) or inference mode.
      fps_start: index of the first FPS centre at the first level.

    Returns:
      ([B, N, fp_mlps[-1][-1]] features, zero at padded points, aux) with aux holding each
      level's "sa{i}_points", "sa{i}_features", "sa{i}_mask", "sa{i}_index" and "fp{i}".
    """
    if len(self.fp_mlps) != len(self.sa_levels):
      raise ValueError(f"{len(self.sa_levels)} SA levels need as many FP MLPs, "
                       f"got {len(self.fp_mlps)}")
    points = jnp.asarray(points, jnp.float32)
    if point_mask is None:
      point_mask = jnp.ones(points.shape[:2], bool)
    # Zero the padding so that garbage (even NaN) cannot reach values or gradients.
    points = jnp.where(point_mask[..., None], points, 0.0)
    if features is not None:
      features = jnp.where(point_mask[..., None], jnp.asarray(features, jnp.float32), 0.0)

    aux = {}
    levels = [(points, features, point_mask)]
    for i, level in enumerate(self.sa_levels, start=1):
      centers, pooled, center_mask, idx = SetAbstraction(level, self.bn_axis_name,
                                                         name=f"sa{i}")(
          *levels[-1], train=train, fps_start=fps_start if i == 1 else 0)
      levels.append((centers, pooled, center_mask))
      aux.update({f"sa{i}_points": centers, f"sa{i}_features": pooled, f"sa{i}_mask": center_mask,
                  f"sa{i}_index": idx})

    coarse_points, x, coarse_mask = levels[-1]
    for i, widths in enumerate(self.fp_mlps, start=1):
      fine_points, fine_features, fine_mask = levels[-1 - i]
      skip = fine_features if i < len(self.fp_mlps) else None  # level 0: no skip (as in S3DIS)
      x = FeaturePropagation(widths, self.bn_axis_name, name=f"fp{i}")(
          fine_points, skip, fine_mask, coarse_points, x, coarse_mask, train=train)
      aux[f"fp{i}"] = x
      coarse_points, coarse_mask = fine_points, fine_mask
    return jnp.where(point_mask[..., None], x, 0.0), aux


# The classic 4-level PointNet++ semantic segmentation network (S3DIS / ScanNet).
S3DIS_SA_LEVELS = (
    SALevel(1024, (0.1,), (32,), ((32, 32, 64),)),
    SALevel(256, (0.2,), (32,), ((64, 64, 128),)),
    SALevel(64, (0.4,), (32,), ((128, 128, 256),)),
    SALevel(16, (0.8,), (32,), ((256, 256, 512),)),
)
S3DIS_FP_MLPS = ((256, 256), (256, 256), (256, 128), (128, 128, 128))


def PointNet2Seg(**kwargs) -> PointNet2:  # noqa: N802 (a named variant, like a class)
  """The classic 4-level S3DIS segmentation backbone; 128 features per point."""
  return PointNet2(sa_levels=S3DIS_SA_LEVELS, fp_mlps=S3DIS_FP_MLPS, **kwargs)


def PointNet2Small(**kwargs) -> PointNet2:  # noqa: N802
  """A 3-level backbone for CPU-sized studies (2-4k points per cloud, radii for rooms in
  metres); 64 features per point."""
  levels = (SALevel(512, (0.2,), (16,), ((32, 32, 64),)),
            SALevel(128, (0.4,), (16,), ((64, 64, 128),)),
            SALevel(32, (0.8,), (16,), ((128, 128, 256),)))
  return PointNet2(sa_levels=levels, fp_mlps=((256, 128), (128, 128), (64, 64)), **kwargs)


def PointNet2Tiny(**kwargs) -> PointNet2:  # noqa: N802
  """A two-level test variant, with a multi-scale first level."""
  levels = (SALevel(32, (0.2, 0.4), (8, 16), ((8, 16), (8, 16))),
            SALevel(8, (0.6,), (8,), ((32,),)))
  return PointNet2(sa_levels=levels, fp_mlps=((32,), (16, 16)), **kwargs)
