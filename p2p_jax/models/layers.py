"""Layers shared by the point networks: a pointwise Dense and BatchNorm over valid rows.

Point networks apply small matrices to very many rows ([B, S, nsample, C] after grouping), so
their cost is memory traffic, and two hand-written VJPs remove most of it on CPU:

- `masked_batch_norm` normalises with statistics of the rows where `mask` is True, in one
  reduction pass forward (sum and sum of squares) and one backward (sum of the gradient and
  of gradient times normalised input), where automatic differentiation of the textbook
  formula makes several.
- `PointwiseDense` computes its weight gradient as x^T g with x transposed explicitly: left
  to itself, XLA:CPU transposes the (larger, freshly computed) gradient instead, fusing the
  whole BatchNorm backward into a strided transposed write.

Together they take the first PointNet++ set abstraction MLP (4 x 1024 x 32 rows) from 132 ms
to about 75 ms per forward and backward pass on a 2-core CPU.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from p2p_jax.collectives import match_vma


def _psum(x, axis_name):
  return x if axis_name is None else lax.psum(x, axis_name)


def _statistics(x, mask, axis_name):
  """Mean, biased variance and count of the masked rows of x [R, C], over devices too."""
  m = mask.astype(x.dtype)[:, None]
  xm = x * m
  total, total_sq, count = _psum((jnp.sum(xm, 0), jnp.sum(xm * x, 0), jnp.sum(m)), axis_name)
  count = jnp.maximum(count, 1.0)
  mean = total / count
  var = jnp.maximum(total_sq / count - mean * mean, 0.0)
  return mean, var, count


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _bn(x, mask, scale, bias, epsilon, relu, axis_name):
  return _bn_fwd(x, mask, scale, bias, epsilon, relu, axis_name)[0]


def _bn_fwd(x, mask, scale, bias, epsilon, relu, axis_name):
  mean, var, count = _statistics(x, mask, axis_name)
  inv = lax.rsqrt(var + epsilon)
  y = (x - mean) * (inv * scale) + bias
  if relu:
    y = jnp.maximum(y, 0.0)
  return (y, mean, var), (x, mask, scale, bias, mean, inv, count)


def _bn_bwd(epsilon, relu, axis_name, residuals, cotangents):
  del epsilon
  x, mask, scale, bias, mean, inv, count = residuals
  g = cotangents[0]  # mean and var are outputs for the running averages only: no gradient
  if relu:  # the same expression as the forward pass, so the same rows pass the ReLU
    g = jnp.where((x - mean) * (inv * scale) + bias > 0, g, 0.0)
  x_hat = (x - mean) * inv
  # Parameters see every row; the statistics are functions of the masked rows (of all
  # devices), and every row's output depends on them:
  # dL/dx = inv scale (g - m / n (sum(g) + x_hat sum(g x_hat))), sums over all rows.
  d_bias = jnp.sum(g, 0)
  d_scale = jnp.sum(g * x_hat, 0)
  sum_g, sum_g_xhat = _psum((d_bias, d_scale), axis_name)
  m = mask.astype(x.dtype)[:, None]
  dx = (inv * scale) * (g - m * ((sum_g + x_hat * sum_g_xhat) / count))
  return lax.optimization_barrier(dx), None, d_scale, d_bias


_bn.defvjp(_bn_fwd, _bn_bwd)


def masked_batch_norm(x: jax.Array, mask: jax.Array, scale: jax.Array, bias: jax.Array, *,
                      epsilon: float = 1e-5, relu: bool = False,
                      axis_name: str | None = None):
  """Training-mode BatchNorm whose statistics use only the rows where `mask` is True.

  y = (x - mean) / sqrt(var + epsilon) * scale + bias (then ReLU if `relu`), with mean and the
  biased variance over the masked rows, and over every device of `axis_name` if given.
  Every row is normalised; padded rows just do not influence the statistics.

  Args:
    x: [..., C].
    mask: [...] bool.
    scale: [C].
    bias: [C].
    epsilon: added to the variance.
    relu: apply a ReLU to the output (fused into the same passes).
    axis_name: pmap / shard_map axis for cross-device statistics.

  Returns:
    (y [..., C], batch mean [C], batch biased variance [C]); the statistics carry no
    gradient and serve the running averages.
  """
  shape = x.shape
  flat = x.reshape(-1, shape[-1])
  mask = jnp.broadcast_to(mask, shape[:-1]).reshape(-1)
  # Under shard_map, parameters passed in replicated (invariant) meet a device's rows: cast
  # them to vary like the rows, so the backward pass's per-device sums match their type and
  # the cast's transpose adds them up over the devices.
  flat, scale, bias = match_vma((flat, scale, bias), flat, mask, scale, bias)
  y, mean, var = _bn(flat, mask, scale, bias, epsilon, relu, axis_name)
  return y.reshape(shape), lax.stop_gradient(mean), lax.stop_gradient(var)


@jax.custom_vjp
def _pointwise_matmul(x, kernel):
  return x @ kernel


def _pointwise_matmul_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _pointwise_matmul_bwd(residuals, g):
  x, kernel = residuals
  rows_x = x.reshape(-1, x.shape[-1])
  rows_g = g.reshape(-1, g.shape[-1])
  return g @ kernel.T, rows_x.T @ rows_g


_pointwise_matmul.defvjp(_pointwise_matmul_fwd, _pointwise_matmul_bwd)


class PointwiseDense(nn.Module):
  """`nn.Dense` over the last axis (same variables: `kernel` [C_in, C_out], `bias`), with the
  weight gradient computed as x^T g (see the module docstring).

  Attributes:
    features: output channels.
    use_bias: add a bias (leave it out before BatchNorm).
  """
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    y = _pointwise_matmul(*match_vma((x, kernel), x, kernel))  # see `masked_batch_norm`
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


class MaskedBatchNorm(nn.Module):
  """BatchNorm over the valid rows, with the variables of `flax.linen.BatchNorm`.

  Parameters `scale`, `bias` and batch statistics `mean`, `var` carry the same names and
  meanings as in `nn.BatchNorm` (running average `momentum * old + (1 - momentum) * new`, the
  biased batch variance), so checkpoints are interchangeable.

  Attributes:
    momentum: running-average decay (0.9 = PyTorch's momentum 0.1).
    epsilon: added to the variance.
    relu: fuse a ReLU after the normalisation.
    axis_name: pmap / shard_map axis for cross-device statistics.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  relu: bool = False
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    """Args: x [..., C]; mask [...] bool, True where a row counts for the statistics."""
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,))
    if not train:
      y = (x - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return jnp.maximum(y, 0.0) if self.relu else y
    y, mean, var = masked_batch_norm(x, mask, scale, bias, epsilon=self.epsilon, relu=self.relu,
                                     axis_name=self.axis_name)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
