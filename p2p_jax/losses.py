"""Contrastive losses between paired features: PPKT's pixel-to-point InfoNCE and friends.

Pure functions of feature arrays; they import nothing but jax (and `p2p_jax.collectives`,
itself jax only), so other projects can reuse them. Each returns per-pair values and takes a
`where=` mask; the caller reduces, e.g.

    loss = pixel_to_point_info_nce(point_feats, pixel_feats, where=pair_mask)
    loss = loss.sum() / jnp.maximum(pair_mask.sum(), 1)

Memory and speed: the K x M logit matrix is never materialised. Rows are processed in blocks
whose logits fit in cache, the forward pass keeps only each row's log-sum-exp, and the
backward pass recomputes one block of logits at a time (a custom VJP, as in memory-efficient
attention). Memory is O((K + M) C) instead of O(K M), which matters once negatives are gathered
from many devices. Reverse mode only (jax.grad, jax.vjp); forward-mode jvp is not defined.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from p2p_jax.collectives import match_vma

# Logits per row block: 2^21 floats = 8 MiB.
_BLOCK_ELEMENTS = 1 << 21
# Stand-in for -inf on masked logits; finite so that fully masked rows stay NaN-free.
_MASKED = -1e30


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along `axis`, with finite gradients at x = 0.

  The square root is never taken of 0 (the sum of squares is clamped first), so padding
  rows of zeros give zero gradients instead of NaN.
  """
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * lax.rsqrt(jnp.maximum(sq, eps * eps))


def _dot_nt(a, b, precision):
  """a [R, C] . b [M, C]^T -> [R, M]."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision)


def _row_blocks(num_rows: int, num_cols: int) -> tuple[int, int]:
  """(block rows, number of blocks) so one block holds about _BLOCK_ELEMENTS logits."""
  rows = min(num_rows, max(8, _BLOCK_ELEMENTS // max(num_cols, 1)))
  return rows, -(-num_rows // rows)


def _split_rows(x: jax.Array, rows: int, num_blocks: int) -> jax.Array:
  pad = rows * num_blocks - x.shape[0]
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((num_blocks, rows) + x.shape[1:])


def _masked_logits(q_block, keys, key_valid, precision):
  return jnp.where(key_valid[None, :], _dot_nt(q_block, keys, precision), _MASKED)


def _log_sum_exp_rows(q, keys, key_valid, precision):
  rows, num_blocks = _row_blocks(q.shape[0], keys.shape[0])

  def block(q_block):
    logits = _masked_logits(q_block, keys, key_valid, precision)
    top = jnp.max(logits, axis=-1, keepdims=True)
    return (top + jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True)))[:, 0]

  return lax.map(block, _split_rows(q, rows, num_blocks)).reshape(-1)[:q.shape[0]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _nce_rows(q, keys, offset, row_valid, key_valid, precision):
  """Per-row cross-entropy: loss_i = logsumexp_j(q_i . k_j) - q_i . k_{offset + i}."""
  return _nce_rows_fwd(q, keys, offset, row_valid, key_valid, precision)[0]


def _nce_rows_fwd(q, keys, offset, row_valid, key_valid, precision):
  lse = _log_sum_exp_rows(q, keys, key_valid, precision)
  positive = lax.dynamic_slice_in_dim(keys, offset, q.shape[0])
  loss = jnp.where(row_valid, lse - jnp.sum(q * positive, axis=-1), 0.0)
  return loss, (q, keys, offset, row_valid, key_valid, lse)


def _nce_rows_bwd(precision, residuals, g):
  q, keys, offset, row_valid, key_valid, lse = residuals
  num_rows, channels = q.shape
  g = jnp.where(row_valid, g, 0.0)
  rows, num_blocks = _row_blocks(num_rows, keys.shape[0])

  def block(keys_grad_t, xs):
    q_block, g_block, lse_block = xs
    logits = _masked_logits(q_block, keys, key_valid, precision)
    weights = jnp.exp(logits - lse_block[:, None]) * g_block[:, None]  # g_i softmax_ij
    q_grad = jnp.dot(weights, keys, precision=precision)
    keys_grad_t = keys_grad_t + jnp.dot(q_block.T, weights, precision=precision)
    return keys_grad_t, q_grad

  # Under shard_map the carry picks up the axes the blocks vary over (q's, keys' ...); the
  # initial zeros must vary over them too.
  init = match_vma(jnp.zeros((channels, keys.shape[0]), q.dtype), q, keys, key_valid, g, lse)
  keys_grad_t, q_grad = lax.scan(
      block, init,
      (_split_rows(q, rows, num_blocks), _split_rows(g, rows, num_blocks),
       _split_rows(lse, rows, num_blocks)))
  positive = lax.dynamic_slice_in_dim(keys, offset, num_rows)
  q_grad = q_grad.reshape(-1, channels)[:num_rows] - g[:, None] * positive
  keys_grad = keys_grad_t.T
  own = lax.dynamic_slice_in_dim(keys_grad, offset, num_rows) - g[:, None] * q
  keys_grad = lax.dynamic_update_slice_in_dim(keys_grad, own, offset, axis=0)
  return q_grad, keys_grad, None, None, None


_nce_rows.defvjp(_nce_rows_fwd, _nce_rows_bwd)


def _check_pairs(anchors, positives, where):
  anchors = jnp.asarray(anchors)
  positives = jnp.asarray(positives)
  if anchors.ndim != 2 or anchors.shape != positives.shape:
    raise ValueError("features must be [K, C] arrays of one shape (flatten batch axes first), "
                     f"got {anchors.shape} and {positives.shape}")
  if where is None:
    where = jnp.ones(anchors.shape[:1], bool)
  where = jnp.asarray(where, bool)
  if where.shape != anchors.shape[:1]:
    raise ValueError(f"where must have shape [K] = {anchors.shape[:1]}, got {where.shape}")
  dtype = jnp.result_type(anchors.dtype, positives.dtype, jnp.float32)  # bf16 -> f32, f64 kept
  return anchors.astype(dtype), positives.astype(dtype), where


def _gather_keys(keys, key_valid, axis_name):
  """Candidates for every anchor: local, or from all devices along `axis_name`."""
  if axis_name is None:
    return keys, key_valid, 0
  offset = lax.axis_index(axis_name) * keys.shape[0]
  return (lax.all_gather(keys, axis_name, tiled=True),
          lax.all_gather(key_valid, axis_name, tiled=True), offset)


def _one_way(anchors, positives, where, temperature, axis_name, precision):
  keys, key_valid, offset = _gather_keys(positives, where, axis_name)
  # One type for the custom VJP's inputs and cotangents under shard_map: an invariant input
  # gets the psum of its varying cotangent through the cast's transpose.
  q, keys = match_vma((anchors / temperature, keys), anchors, keys, where, key_valid, offset)
  return _nce_rows(q, keys, offset, where, key_valid, precision)


def info_nce(anchors: jax.Array,
             positives: jax.Array,
             *,
             temperature: float | jax.Array = 0.07,
             where: jax.Array | None = None,
             axis_name: str | None = None,
             symmetric: bool = False,
             precision: lax.Precision | None = None) -> jax.Array:
  """InfoNCE over matched pairs: each anchor's positive is its pair, every other pair a negative.

  loss_i = -log( exp(a_i . p_i / t) / sum_j exp(a_i . p_j / t) ),   j over valid pairs,

  the cross-entropy of the logits a @ p^T / t with the diagonal as target (van den Oord et al.
  2018). Padding pairs (`where` False) are neither anchors nor negatives and get loss 0; with
  every pair padding the result is all zeros, with zero gradients.

  Args:
    anchors: [K, C] features, L2-normalised for the usual cosine similarity.
    positives: [K, C] features of the matched items, row i paired with anchor i.
    temperature: t > 0; may be a traced array (a learnt temperature gets its gradient).
    where: optional [K] bool mask of real pairs.
    axis_name: if set (inside pmap or shard_map), negatives come from the pairs of every
      device on that axis; the result equals the one-device loss on the concatenated pairs,
      and so do the gradients of the summed loss.
    symmetric: average with the reverse direction (positives as anchors).
    precision: matmul precision (e.g. `lax.Precision.HIGHEST` for float32 on TPU).

  Returns:
    [K] per-pair losses (float32, or float64 for float64 inputs), 0 where `where` is False.
  """
  anchors, positives, where = _check_pairs(anchors, positives, where)
  loss = _one_way(anchors, positives, where, temperature, axis_name, precision)
  if symmetric:
    loss = 0.5 * (loss + _one_way(positives, anchors, where, temperature, axis_name, precision))
  return loss


def pixel_to_point_info_nce(point_feats: jax.Array,
                            pixel_feats: jax.Array,
                            *,
                            temperature: float | jax.Array = 0.07,
                            where: jax.Array | None = None,
                            axis_name: str | None = None,
                            symmetric: bool = False,
                            precision: lax.Precision | None = None) -> jax.Array:
  """PPKT's pixel-to-point contrastive loss (PP-NCE, Liu et al. 2021, Eq. 2).

  Logits = point_feats @ pixel_feats^T / temperature; for each point the matched pixel is the
  positive and the pixels of all other pairs (across frames of the batch, and across devices
  with `axis_name`) are negatives. The paper uses temperature 0.04; 0.07 is the common default
  of its reimplementations. See `info_nce` for the arguments.

  Args:
    point_feats: [K, C] 3D student features of the paired points, L2-normalised.
    pixel_feats: [K, C] projected 2D teacher features of the paired pixels, L2-normalised.
    temperature: softmax temperature.
    where: optional [K] bool mask of real pairs.
    axis_name: device axis to gather negatives over, or None for per-device negatives.
    symmetric: also contrast each pixel against all points and average the two directions.
    precision: matmul precision.

  Returns:
    [K] float32 per-pair losses, 0 for padding pairs.
  """
  return info_nce(point_feats, pixel_feats, temperature=temperature, where=where,
                  axis_name=axis_name, symmetric=symmetric, precision=precision)


def point_info_nce(feats_a: jax.Array,
                   feats_b: jax.Array,
                   *,
                   temperature: float | jax.Array = 0.07,
                   where: jax.Array | None = None,
                   axis_name: str | None = None,
                   symmetric: bool = False,
                   precision: lax.Precision | None = None) -> jax.Array:
  """PointInfoNCE of PointContrast (Xie et al. 2020, Eq. 1) between matched points of two views.

  For matched point pair (i in view A, i in view B), the positive of a_i is b_i and the other
  matched points of view B are negatives. PointContrast used temperature 0.07 in the paper and
  0.4 in its released scripts. See `info_nce` for the arguments.

  Args:
    feats_a: [K, C] features of the matched points in view A, L2-normalised.
    feats_b: [K, C] features of their matches in view B, L2-normalised.
    temperature: softmax temperature.
    where: optional [K] bool mask of real matches.
    axis_name: device axis to gather negatives over.
    symmetric: average both directions.
    precision: matmul precision.

  Returns:
    [K] float32 per-pair losses, 0 for padding pairs.
  """
  return info_nce(feats_a, feats_b, temperature=temperature, where=where,
                  axis_name=axis_name, symmetric=symmetric, precision=precision)


def contrastive_metrics(anchors: jax.Array,
                        positives: jax.Array,
                        *,
                        where: jax.Array | None = None,
                        axis_name: str | None = None,
                        precision: lax.Precision | None = None) -> dict[str, jax.Array]:
  """Per-pair diagnostics of an InfoNCE problem (no gradient), blockwise like the loss.

  Args:
    anchors: [K, C].
    positives: [K, C].
    where: optional [K] bool mask of real pairs.
    axis_name: gather candidates across devices, as in `info_nce`.
    precision: matmul precision.

  Returns:
    A dict of [K] arrays, 0 for padding pairs:
      positive_similarity: a_i . p_i.
      negative_similarity: mean of a_i . p_j over the valid negatives j != i.
      correct: 1.0 where the positive scores strictly above every negative (top-1 accuracy).
  """
  anchors, positives, where = _check_pairs(anchors, positives, where)
  anchors, positives = lax.stop_gradient(anchors), lax.stop_gradient(positives)
  keys, key_valid, offset = _gather_keys(positives, where, axis_name)
  num_rows = anchors.shape[0]
  rows, num_blocks = _row_blocks(num_rows, keys.shape[0])
  positive_sim = jnp.sum(anchors * positives, axis=-1)
  first_rows = offset + jnp.arange(num_blocks)[:, None] * rows + jnp.arange(rows)[None, :]

  def block(xs):
    q_block, own_col = xs
    sim = _dot_nt(q_block, keys, precision)
    negative = key_valid[None, :] & (jnp.arange(keys.shape[0])[None, :] != own_col[:, None])
    count = jnp.sum(negative, axis=-1)
    mean = jnp.sum(jnp.where(negative, sim, 0.0), axis=-1) / jnp.maximum(count, 1)
    best = jnp.max(jnp.where(negative, sim, -jnp.inf), axis=-1)
    return mean, best

  neg_mean, neg_best = lax.map(block, (_split_rows(anchors, rows, num_blocks), first_rows))
  neg_mean = neg_mean.reshape(-1)[:num_rows]
  neg_best = neg_best.reshape(-1)[:num_rows]
  zero = jnp.zeros_like(positive_sim)
  return {
      "positive_similarity": jnp.where(where, positive_sim, zero),
      "negative_similarity": jnp.where(where, neg_mean, zero),
      "correct": jnp.where(where & (positive_sim > neg_best), 1.0, 0.0),
  }
