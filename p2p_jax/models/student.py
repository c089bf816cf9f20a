"""A 3D student: any backbone of `p2p_jax.models.STUDENTS` with a head.

The backbone protocol, which every student follows:

    backbone(points [B, N, 3], features [B, N, C] | None, point_mask [B, N] bool | None, *,
             train: bool) -> (features [B, N, D], zero at padded points,
                              aux: a dict of diagnostics and intermediate features)

`features` are the per-point inputs (colours, or constant grey without them); `point_mask`
marks real points among the padding, which must never influence a real point's output; `train`
switches BatchNorm to batch statistics. The heads map the backbone's features pointwise.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from p2p_jax.losses import l2_normalize
from p2p_jax.models.pointnet2 import SharedMLP


class ProjectionHead(nn.Module):
  """Pretraining head: a pointwise linear map to `features` channels, L2-normalised."""
  features: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, point_mask: jax.Array, *, train: bool = False):
    del train
    y = l2_normalize(nn.Dense(self.features)(x))
    return jnp.where(point_mask[..., None], y, 0.0)


class SegmentationHead(nn.Module):
  """PointNet++ segmentation head: Dense -> BatchNorm -> ReLU -> Dropout -> Dense (logits)."""
  num_classes: int
  hidden: int = 128
  dropout_rate: float = 0.5
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, point_mask: jax.Array, *, train: bool = False):
    x = SharedMLP((self.hidden,), self.bn_axis_name)(x, point_mask, train=train)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


class LinearHead(nn.Module):
  """Linear probe: a single pointwise Dense layer to class logits."""
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, point_mask: jax.Array, *, train: bool = False):
    del point_mask, train
    return nn.Dense(self.num_classes)(x)


class PointModel(nn.Module):
  """A backbone with a head. Params are {"backbone": ..., "head": ...}, so the backbone's can
  be saved and loaded alone (pretrain with `ProjectionHead`, fine-tune with another head).
  """
  backbone: nn.Module
  head: nn.Module

  @nn.compact
  def __call__(self, points, features=None, point_mask=None, *, train: bool = False):
    """Returns (head output [B, N, ...], aux with the backbone's aux and "features")."""
    if point_mask is None:
      point_mask = jnp.ones(jnp.shape(points)[:2], bool)
    feats, aux = self.backbone(points, features, point_mask, train=train)
    return self.head(feats, point_mask, train=train), {**aux, "features": feats}


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_variables(model: nn.Module, key: jax.Array, num_points: int) -> dict:
  """Random {"params", "batch_stats"} of a point network called as `model(points, features,
  point_mask, train=...)` (a `PointModel`, VoteNet), for clouds of `num_points` points.

  Compiled once per (model, num_points): a study that builds the same model for each of its
  runs initialises it without compiling again.
  """
  points = jnp.zeros((1, num_points, 3))
  return model.init(key, points, jnp.zeros((1, num_points, 3)), jnp.ones((1, num_points), bool),
                    train=False)
