"""PointContrast pretraining: the 3D-to-3D baseline's model and its pmapped step.

PointContrast (Xie et al., ECCV 2020) pretrains a 3D network by contrasting matched points of
two overlapping views of one scene with PointInfoNCE (their Eq. 1). Each view is moved by its
own random transform, so the network must give a point the same feature whatever its pose.

Per step and device: `frame_pairs.make_matches` turns the host batch of frame pairs into two
augmented point clouds per pair and K matches, the student encodes both views (as one batch of
2 x per_device clouds, so its BatchNorm sees both), and PointInfoNCE contrasts each match's
view-0 feature with its view-1 feature against the view-1 features of every other match of the
batch, and of every device with `global_negatives`. As in `ppkt`, each device's loss is its
share of the global mean times the device count, gradients are averaged with `lax.pmean` and
BatchNorm statistics are taken over all devices, so the pmapped step on D devices equals the
one-device step on the same global batch (tested). The optimiser, schedule, state and
replication are `ppkt`'s.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from p2p_jax import losses, pointops
from p2p_jax.data import frame_pairs
from p2p_jax.train import ppkt

AXIS = ppkt.AXIS
TrainState = ppkt.TrainState
make_optimizer = ppkt.make_optimizer
make_schedule = ppkt.make_schedule
replicate = ppkt.replicate
# The host half of the data, so that a trainer needs this module only.
pointcontrast_dataset = frame_pairs.pointcontrast_dataset


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """PointInfoNCE settings.

  Attributes:
    temperature: softmax temperature (0.07 in the paper, 0.4 in its released scripts).
    global_negatives: negatives from the matches of every device (else only the device's own).
    symmetric: also contrast each view-1 feature against the view-0 features and average.
  """
  temperature: float = 0.07
  global_negatives: bool = True
  symmetric: bool = False


class PointContrastModel(nn.Module):
  """The trainable part of PointContrast: the 3D student with its projection head.

  Params are {"student": ...}, as in `ppkt.PPKTModel`, so the student's variables are saved and
  loaded downstream the same way.

  Attributes:
    student: a `PointModel` whose head is a `ProjectionHead` (L2-normalised features).
  """
  student: nn.Module

  def __call__(self, batch: dict[str, jax.Array], *, train: bool):
    """Features of the matched points of a batch of `make_matches` outputs.

    Args:
      batch: `make_matches` outputs with one leading batch axis B.
      train: BatchNorm of the student in training mode.

    Returns:
      (view-0 features [B, K, D], view-1 features [B, K, D]) of the K matches.
    """
    points = batch["points"]
    batch_size, views, num_points = points.shape[:3]
    merge = lambda x: x.reshape((batch_size * views, num_points) + x.shape[3:])
    out, _ = self.student(merge(points), merge(batch["point_colors"]),
                          merge(batch["point_mask"]), train=train)
    out = out.reshape((batch_size, views, num_points) + out.shape[2:])
    return (pointops.gather_points(out[:, 0], batch["pair_points"][..., 0]),
            pointops.gather_points(out[:, 1], batch["pair_points"][..., 1]))


def init_state(model: PointContrastModel, tx: optax.GradientTransformation, key: jax.Array,
               batch: dict[str, jax.Array]) -> TrainState:
  """Initial state from an example batch of `make_matches` outputs with one leading batch
  axis (shapes matter, values do not)."""
  variables = model.init(key, batch, train=False)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(variables["params"]))


def train_step(state: TrainState, host_batch: dict[str, jax.Array], *,
               model: PointContrastModel, tx: optax.GradientTransformation,
               match_config: frame_pairs.MatchConfig, loss_config: LossConfig,
               schedule: Callable[[jax.Array], jax.Array]):
  """One optimisation step on one device's share of the batch; run it under `jax.pmap`
  with axis name `AXIS` (see `make_train_step`).

  Args:
    state: this device's replica of the state.
    host_batch: this device's [per_device, 2, ...] host batch from
      `frame_pairs.pointcontrast_dataset`.
    model: the trainable model (its student's BatchNorm must use `bn_axis_name=AXIS`).
    tx: the optimiser.
    match_config: the correspondence pipeline's configuration.
    loss_config: the PointInfoNCE settings.
    schedule: the learning-rate schedule, for logging.

  Returns:
    (new state, metrics): "loss", "positive_similarity", "negative_similarity",
    "pair_accuracy" (means over all devices' matches), "pairs" (matches in the global batch),
    "learning_rate", "grad_norm", "param_norm", "update_norm".
  """
  batch = frame_pairs.make_matches(host_batch, match_config)
  where = batch["pair_mask"].reshape(-1)
  devices = lax.psum(1, AXIS)
  total = jnp.maximum(lax.psum(jnp.sum(where), AXIS), 1)
  negatives_axis = AXIS if loss_config.global_negatives else None
  flat = lambda x: x.reshape((-1, x.shape[-1]))

  def loss_fn(params):
    (feats_a, feats_b), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, batch, train=True,
        mutable=["batch_stats"])
    per_pair = losses.point_info_nce(
        flat(feats_a), flat(feats_b), temperature=loss_config.temperature, where=where,
        axis_name=negatives_axis, symmetric=loss_config.symmetric)
    # This device's share of the global mean, times the device count: pmean of these losses
    # (and of their gradients) is the mean (and its gradient) over every match of every device.
    loss = jnp.sum(per_pair) * devices / total
    return loss, (updates["batch_stats"], feats_a, feats_b)

  return ppkt.contrastive_update(state, loss_fn, tx=tx, schedule=schedule, where=where,
                                 total=total, negatives_axis=negatives_axis)


def make_train_step(devices=None, **kwargs):
  """`train_step` pmapped over `devices` (default: all local ones) with the state donated.

  Args:
    devices: the devices of the leading batch axis.
    **kwargs: the keyword arguments of `train_step` (model, tx, configs, schedule).

  Returns:
    step(state, host_batch) -> (state, metrics), both sharded or replicated along a leading
    device axis.
  """
  def step(state, host_batch):
    return train_step(state, host_batch, **kwargs)
  return jax.pmap(step, axis_name=AXIS, devices=devices, donate_argnums=(0,))
