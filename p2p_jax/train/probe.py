"""Linear probing: a pointwise linear classifier on the frozen backbone's cached features.

The frozen backbone runs once per tile of the labelled scenes (unaugmented, inference mode);
each step then draws `batch_size x crop.num_points` labelled points of the cached features,
standardised by the labelled points' mean and scale. The probe is fitted with the run's
optimiser in one jitted scan.
"""

import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from p2p_jax.data import labels as labels_lib
from p2p_jax.models import student as student_lib
from p2p_jax.tasks import segmentation
from p2p_jax.tasks.segmentation import EvalScene
from p2p_jax.train import state as state_lib


def drawn_features(model: student_lib.PointModel, variables: dict, scenes: Sequence[EvalScene],
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Frozen backbone features and labels of every drawn (unpadded) point of `scenes`' blocks.

  Returns:
    (features float32 [P, C], labels int32 [P]), P the drawn points of all blocks.
  """
  fn = functools.partial(segmentation.backbone_features, variables, model=model)
  out = segmentation.map_blocks(fn, scenes, batch_size)
  feats, labels = [], []
  for (i, j), rows in sorted(out.items()):
    block = scenes[i].blocks[j]
    feats.append(rows[block["point_mask"]])
    labels.append(block["labels"][block["point_mask"]])
  return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("num_classes", "optimizer"))
def fit_linear_probe(features: jax.Array, labels: jax.Array, batches: jax.Array, *,
                     num_classes: int,
                     optimizer: state_lib.OptimizerConfig) -> tuple[dict, jax.Array]:
  """Softmax regression on standardised features, minibatch steps under one `lax.scan`.

  Args:
    features: float32 [P, C] frozen features.
    labels: int32 [P]; `IGNORE_LABEL` points never count.
    batches: int32 [steps, batch] rows of `features` drawn for each step.
    num_classes: classes of the head.
    optimizer: optimiser settings (`total_steps` should equal the number of steps).

  Returns:
    ({"mean", "scale", "kernel", "bias"}: logits = (x - mean) * scale @ kernel + bias, the
     loss of every step).
  """
  valid = labels != labels_lib.IGNORE_LABEL
  weight = valid.astype(jnp.float32)[:, None]
  count = jnp.maximum(weight.sum(), 1.0)
  mean = (features * weight).sum(0) / count
  var = (jnp.square(features - mean) * weight).sum(0) / count
  scale = jax.lax.rsqrt(var + 1e-6)
  params = {"kernel": jnp.zeros((features.shape[1], num_classes)),
            "bias": jnp.zeros((num_classes,))}
  tx = state_lib.make_optimizer(optimizer)

  def loss_fn(params, rows):
    x = (features[rows] - mean) * scale
    loss, _ = segmentation.cross_entropy(x @ params["kernel"] + params["bias"], labels[rows],
                                   jnp.ones(rows.shape, bool))
    return loss

  def step(carry, rows):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, rows)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), batches)
  return {"mean": mean, "scale": scale, **params}, losses


def probe_logits(probe: dict, features: jax.Array) -> jax.Array:
  """The fitted probe's logits [..., num_classes] of features [..., C]."""
  return ((features - probe["mean"]) * probe["scale"]) @ probe["kernel"] + probe["bias"]


@functools.partial(jax.jit, static_argnames=("model",))
def probe_predict(variables: dict, probe: dict, points: jax.Array, colors: jax.Array,
                  point_mask: jax.Array, *, model: student_lib.PointModel) -> jax.Array:
  """Class predictions int32 [B, N] of the fitted probe on the frozen backbone."""
  features = segmentation.backbone_features(variables, points, colors, point_mask, model=model)
  return jnp.argmax(probe_logits(probe, features), -1).astype(jnp.int32)


def fit(config, model, variables, tiles, crop, optimizer, workdir) -> dict[str, Any]:
  """Fits the probe on cached features of the labelled scenes' tiles; returns it and its curve.

  The frozen backbone runs once per tile (unaugmented, inference mode), not once per step:
  each step then draws `batch_size x crop.num_points` labelled points of the cached features.
  """
  features, labels = drawn_features(model, variables, tiles, config.eval.batch_size)
  rows = np.flatnonzero(labels != labels_lib.IGNORE_LABEL)
  if not len(rows):
    raise ValueError("the labelled scenes have no labelled point to probe")
  rng = np.random.default_rng((config.seed, 1))
  batches = rows[rng.integers(len(rows), size=(config.total_steps,
                                                config.batch_size * crop.num_points))]
  probe, losses = fit_linear_probe(features, labels, batches.astype(np.int32),
                                   num_classes=model.head.num_classes, optimizer=optimizer)
  accuracy = np.mean(np.argmax(np.asarray(probe_logits(probe, features[rows])), -1)
                     == labels[rows])
  losses = np.asarray(losses)
  if not np.isfinite(losses).all():
    raise FloatingPointError(f"non-finite probe loss at step {np.argmin(np.isfinite(losses)) + 1}")
  logged = [s for s in range(1, config.total_steps + 1)
            if s % config.log_every == 0 or s == config.total_steps]
  history = {"step": logged, "loss": [float(losses[s - 1]) for s in logged],
             "accuracy": [None] * (len(logged) - 1) + [float(accuracy)], "probe": probe}
  if workdir is not None:
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as log:
      for s, loss, acc in zip(logged, history["loss"], history["accuracy"]):
        log.write(json.dumps({"step": s, "loss": loss, "accuracy": acc}) + "\n")
  return history


