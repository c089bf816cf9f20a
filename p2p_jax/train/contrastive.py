"""The shared end of PPKT's and PointContrast's pmapped steps: scale, differentiate, update.

Each device's loss is its share of the global mean over the pairs of all devices, times the
device count, so `lax.pmean` of the gradients is the gradient of the mean over all pairs; the
pmapped step on D devices therefore equals the one-device step on the same global batch. The
same holds under `jax.jit(jax.shard_map(...))` with shard_map's default checks (tested).
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from p2p_jax import losses
from p2p_jax.collectives import match_vma
from p2p_jax.train.loop import global_norm
from p2p_jax.train.parallel import AXIS
from p2p_jax.train.state import TrainState


def contrastive_update(state: TrainState, pair_losses, *, tx: optax.GradientTransformation,
                       schedule: Callable[[jax.Array], jax.Array], where: jax.Array,
                       global_negatives: bool):
  """One optimisation step of a contrastive loss, under `jax.pmap` or `jax.shard_map` over
  `AXIS`.

  Args:
    state: this device's replica (under shard_map: replicated, in_specs `P()`).
    pair_losses: (params, negatives axis name or None) -> (per-pair losses [K], (new
      batch_stats, anchors [..., D], positives [..., D])).
    tx: the optimiser.
    schedule: the learning-rate schedule, for logging.
    where: [K] bool, this device's real pairs.
    global_negatives: negatives from the pairs of every device (else the device's own).

  Returns:
    (new state, metrics): gradients averaged over `AXIS`, one optimiser update, and the loss,
    contrastive diagnostics ("positive_similarity", "negative_similarity", "pair_accuracy"),
    "pairs" (over all devices), "learning_rate" and gradient/parameter/update norms.
  """
  devices = lax.psum(1, AXIS)
  total = jnp.maximum(lax.psum(jnp.sum(where), AXIS), 1)
  negatives_axis = AXIS if global_negatives else None
  flat = lambda x: x.reshape((-1, x.shape[-1]))

  def loss_fn(params):
    per_pair, aux = pair_losses(params, negatives_axis)
    return jnp.sum(per_pair) * devices / total, aux

  # Under shard_map the replicated parameters are invariant, and the gradient of an invariant
  # input is summed over the devices before `pmean` could average it. Cast to vary like this
  # device's pairs: the gradients stay per-device, as under pmap (where this is a no-op).
  params = match_vma(state.params, where)
  (loss, (batch_stats, anchors, positives)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(params)
  grads = lax.pmean(grads, AXIS)
  new_state, updates = state.apply_gradients(grads, batch_stats, tx)
  stats = losses.contrastive_metrics(flat(anchors), flat(positives), where=where,
                                     axis_name=negatives_axis)
  metrics = {
      "loss": lax.pmean(loss, AXIS),
      **{k: lax.psum(jnp.sum(v), AXIS) / total for k, v in stats.items()},
      "pairs": total,
      "learning_rate": schedule(state.step),
      "grad_norm": global_norm(grads),
      "param_norm": global_norm(new_state.params),
      "update_norm": global_norm(updates),
  }
  metrics["pair_accuracy"] = metrics.pop("correct")
  return new_state, metrics


def pmap_step(train_step, devices=None, **kwargs):
  """`train_step(state, *inputs, **kwargs)` pmapped over `devices` (default: all local
  ones) along `AXIS`, with the state donated. With several processes pass all devices
  (`jax.devices()`); each process then feeds arrays whose leading axis holds its own."""
  return jax.pmap(functools.partial(train_step, **kwargs), axis_name=AXIS, devices=devices,
                  donate_argnums=(0,))
