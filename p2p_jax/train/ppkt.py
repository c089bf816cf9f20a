"""PPKT pretraining: the trainable model, the optimisers and the pmapped pixel-to-point step.

The frozen 2D teacher lives outside the trainable state: its variables are a separate,
replicated argument of the step, read in inference mode under `stop_gradient`, so no
optimiser state is kept for it and no update can reach it. What trains is the upsampling
projection layer (UPL) on the teacher's layer4 and the 3D student with its projection head.

Per step and device: `make_pairs` turns the host batch into points and pixel-point pairs, the
teacher encodes the augmented images, the UPL samples pixel features at the K pairs, the
student gives point features, and PP-NCE contrasts them with negatives from every device
(`global_negatives`) or from the device's own pairs. Each device's loss is its share of the
global mean, scaled by the device count, so `lax.pmean` of the gradients is the gradient of
the mean over all pairs of all devices; the student's BatchNorm statistics are also taken over
all devices. The pmapped step on D devices therefore equals the one-device step on the same
global batch (tested).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from p2p_jax import losses, pointops
from p2p_jax.data import pipeline
from p2p_jax.models import resnet

AXIS = "batch"


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """PP-NCE settings.

  Attributes:
    temperature: softmax temperature (0.04 in the paper, 0.07 in reimplementations).
    global_negatives: negatives from the pairs of every device (else only the device's own).
    symmetric: also contrast each pixel against all points and average both directions.
  """
  temperature: float = 0.07
  global_negatives: bool = True
  symmetric: bool = False


class PPKTModel(nn.Module):
  """The trainable part of PPKT: UPL on the teacher's features, 3D student with its head.

  Attributes:
    projector: an `UpsamplingProjector`.
    student: a `PointModel` whose head is a `ProjectionHead` of the projector's width.
  """
  projector: nn.Module
  student: nn.Module

  def __call__(self, layer4: jax.Array, batch: dict[str, jax.Array], *, train: bool,
               image_hw: tuple[int, int] | None = None):
    """Pair features of a batch of `make_pairs` outputs.

    Args:
      layer4: [B, h, w, C] teacher features of the teacher's images.
      batch: `make_pairs` outputs with one leading batch axis.
      train: BatchNorm of the student in training mode.
      image_hw: the teacher's input size, which the pair pixels index (default: that of
        `batch["image"]`).

    Returns:
      (point features [B, K, D], pixel features [B, K, D]), both L2-normalised.
    """
    image_hw = batch["image"].shape[1:3] if image_hw is None else image_hw
    pixel_feats, _ = self.projector(layer4, image_hw, batch["pair_pixels"])
    point_out, _ = self.student(batch["points"], batch["point_colors"], batch["point_mask"],
                                train=train)
    return pointops.gather_points(point_out, batch["pair_points"]), pixel_feats


@flax.struct.dataclass
class TrainState:
  """Everything that changes in training (in PPKT, the teacher does not); also the state of
  PointContrast, fine-tuning and teacher training."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def make_optimizer(name: str, *, learning_rate: float, weight_decay: float, total_steps: int,
                   warmup_steps: int = 0, momentum: float = 0.9) -> optax.GradientTransformation:
  """SGD with momentum or AdamW, both on a (warm-up then) cosine schedule.

  Args:
    name: "sgd" (the paper: lr 0.5, momentum 0.9, weight decay 1e-4) or "adamw".
    learning_rate: peak learning rate.
    weight_decay: L2 weight decay (added to the gradient for SGD, decoupled for AdamW).
    total_steps: length of the schedule.
    warmup_steps: linear warm-up from 0.
    momentum: SGD momentum.

  Returns:
    The optax transformation; `schedule(step)` is available as `make_schedule(...)`.
  """
  schedule = make_schedule(learning_rate, total_steps, warmup_steps)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=momentum))
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=weight_decay)
  raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adamw'")


def make_schedule(learning_rate: float, total_steps: int, warmup_steps: int = 0):
  """Linear warm-up to `learning_rate`, then cosine decay to 0 at `total_steps`."""
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                            max(total_steps, warmup_steps + 1))


def init_state(model: PPKTModel, tx: optax.GradientTransformation, key: jax.Array,
               layer4: jax.Array, batch: dict[str, jax.Array],
               image_hw: tuple[int, int] | None = None) -> TrainState:
  """Initial state from example inputs (shapes matter, values do not)."""
  variables = model.init(key, layer4, batch, train=False, image_hw=image_hw)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(variables["params"]))


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def train_step(state: TrainState, teacher_variables: Any, host_batch: dict[str, jax.Array], *,
               model: PPKTModel, teacher: resnet.ResNet, tx: optax.GradientTransformation,
               pair_config: pipeline.PairConfig, loss_config: LossConfig,
               schedule: Callable[[jax.Array], jax.Array], teacher_layer: str = "layer4"):
  """One optimisation step on one device's share of the batch; run it under `jax.pmap`
  with axis name `AXIS` (see `make_train_step`).

  Args:
    state: this device's replica of the state.
    teacher_variables: the frozen teacher's {"params", "batch_stats"}.
    host_batch: this device's [per_device, ...] host batch from `pipeline.pretrain_dataset`;
      with a teacher cache it carries the "teacher_features" and the teacher is not run.
    model: the trainable model (its student's BatchNorm must use `bn_axis_name=AXIS`).
    teacher: the teacher network.
    tx: the optimiser.
    pair_config: the pipeline configuration (shapes of points and pairs).
    loss_config: the PP-NCE settings.
    schedule: the learning-rate schedule, for logging.
    teacher_layer: the teacher's feature map the UPL reads: "layer4" (stride 32, the
      paper's) or a finer stage ("layer3", stride 16) for low-resolution images.

  Returns:
    (new state, metrics): the metrics are means over all devices' pairs.
  """
  batch = pipeline.make_pairs(host_batch, pair_config)
  if "teacher_features" in host_batch:  # from a cache (p2p_jax.data.teacher_cache)
    layer4 = host_batch["teacher_features"].astype(jnp.float32)
  else:
    _, stages = resnet.frozen_features(teacher, teacher_variables,
                                       resnet.preprocess(batch["image"]))
    layer4 = stages[teacher_layer]
  layer4 = lax.stop_gradient(layer4)
  where = batch["pair_mask"].reshape(-1)
  devices = lax.psum(1, AXIS)
  total = jnp.maximum(lax.psum(jnp.sum(where), AXIS), 1)
  negatives_axis = AXIS if loss_config.global_negatives else None
  flat = lambda x: x.reshape((-1, x.shape[-1]))

  def loss_fn(params):
    (point_feats, pixel_feats), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, layer4, batch, train=True,
        mutable=["batch_stats"], image_hw=pair_config.image_hw)
    per_pair = losses.pixel_to_point_info_nce(
        flat(point_feats), flat(pixel_feats), temperature=loss_config.temperature, where=where,
        axis_name=negatives_axis, symmetric=loss_config.symmetric)
    # This device's share of the global mean, times the device count: pmean of these losses
    # (and of their gradients) is the mean (and its gradient) over every pair of every device.
    loss = jnp.sum(per_pair) * devices / total
    return loss, (updates["batch_stats"], point_feats, pixel_feats)

  return contrastive_update(state, loss_fn, tx=tx, schedule=schedule, where=where,
                            total=total, negatives_axis=negatives_axis)


def contrastive_update(state: TrainState, loss_fn, *, tx: optax.GradientTransformation,
                       schedule: Callable[[jax.Array], jax.Array], where: jax.Array,
                       total: jax.Array, negatives_axis: str | None):
  """The shared end of a contrastive step under `jax.pmap` (PPKT's and PointContrast's).

  Args:
    state: this device's replica.
    loss_fn: params -> (this device's scaled loss share, (new batch_stats, anchors [..., D],
      positives [..., D])).
    tx: the optimiser.
    schedule: the learning-rate schedule, for logging.
    where: [K] bool, this device's real pairs.
    total: the number of real pairs over all devices.
    negatives_axis: the loss's `axis_name` (None: negatives from this device only).

  Returns:
    (new state, metrics): gradients averaged over `AXIS`, one optimiser update, and the loss,
    contrastive diagnostics, pair count, learning rate and gradient/parameter/update norms.
  """
  flat = lambda x: x.reshape((-1, x.shape[-1]))
  (loss, (batch_stats, anchors, positives)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  stats = losses.contrastive_metrics(flat(anchors), flat(positives), where=where,
                                     axis_name=negatives_axis)
  metrics = {
      "loss": lax.pmean(loss, AXIS),
      **{k: lax.psum(jnp.sum(v), AXIS) / total for k, v in stats.items()},
      "pairs": total,
      "learning_rate": schedule(state.step),
      "grad_norm": _global_norm(grads),
      "param_norm": _global_norm(params),
      "update_norm": _global_norm(updates),
  }
  metrics["pair_accuracy"] = metrics.pop("correct")
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


def make_train_step(devices=None, **kwargs):
  """`train_step` pmapped over `devices` (default: all local ones) with the state donated.

  Args:
    devices: the devices of the step; with several processes, all of them (`jax.devices()`),
      each process passing arrays whose leading axis holds its own devices.
    **kwargs: the keyword arguments of `train_step` (model, teacher, tx, configs, schedule).

  Returns:
    step(state, teacher_variables, host_batch) -> (state, metrics), all replicated or
    sharded along a leading device axis.
  """
  def step(state, teacher_variables, host_batch):
    return train_step(state, teacher_variables, host_batch, **kwargs)
  return jax.pmap(step, axis_name=AXIS, devices=devices, donate_argnums=(0,))


def replicate(tree: Any, devices) -> Any:
  """One copy of a pytree per device along a new leading axis, placed as `jax.pmap` places
  its outputs: a pmapped step then sees the same input sharding at every call and compiles
  once (a host-stacked copy would differ from the step's own output and force a second
  compilation). Works for arrays on any devices, e.g. fresh from a checkpoint.

  Args:
    tree: the pytree, the same in every process.
    devices: the devices of the pmapped step; with several processes, all of them
      (`jax.devices()`). Each process gets copies on its own devices among them.
  """
  local = sum(d.process_index == jax.process_index() for d in devices)
  stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (local,) + np.shape(x)), tree)
  # `+ 0` makes every output a computed value: pmap forwards bare inputs unchanged.
  return jax.pmap(lambda t: jax.tree.map(lambda x: x + jnp.zeros_like(x), t), axis_name=AXIS,
                  devices=devices)(stacked)
