"""PointContrast (Xie et al., ECCV 2020): the 3D-to-3D baseline, on overlapping frame pairs.

PointContrast (Xie et al., ECCV 2020) pretrains a 3D network by contrasting matched points of
two overlapping views of one scene with PointInfoNCE (their Eq. 1). Each view is moved by its
own random transform, so the network must give a point the same feature whatever its pose.

Per step and device: `frame_pairs.make_matches` turns the host batch of frame pairs into two
augmented point clouds per pair and K matches, the student encodes both views (as one batch of
2 x per_device clouds, so its BatchNorm sees both), and PointInfoNCE contrasts each match's
view-0 feature with its view-1 feature against the view-1 features of every other match of the
batch, and of every device with `global_negatives`. As in `ppkt`, each device's loss is its
share of the global mean (`p2p_jax.train.contrastive`) and BatchNorm statistics are taken over
all devices, so the pmapped step on D devices equals the one-device step on the same global
batch (tested).

    prepare(config, workdir)   mines the overlapping frame pairs of the split (once)
    setup(...)                 the pretraining loop's data, initial state and pmapped step
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.experimental import multihost_utils

from p2p_jax import losses, pointops
from p2p_jax.data import frame_pairs, scannet_frames
from p2p_jax.train.contrastive import contrastive_update, pmap_step
from p2p_jax.train.state import TrainState


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
    return (pointops.gather_points(out[:, 0], batch["match_points"][..., 0]),
            pointops.gather_points(out[:, 1], batch["match_points"][..., 1]))


def init_state(model: PointContrastModel, tx: optax.GradientTransformation, key: jax.Array,
               batch: dict[str, jax.Array]) -> TrainState:
  """Initial state from an example batch of `make_matches` outputs with one leading batch
  axis (shapes matter, values do not)."""
  return TrainState.create(model.init(key, batch, train=False), tx)


def train_step(state: TrainState, host_batch: dict[str, jax.Array], *,
               model: PointContrastModel, tx: optax.GradientTransformation,
               match_config: frame_pairs.MatchConfig, loss_config: LossConfig,
               schedule: Callable[[jax.Array], jax.Array]):
  """One optimisation step on one device's share of the batch; run it under `jax.pmap`
  with axis name `AXIS` (see `contrastive.pmap_step`).

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
  where = batch["match_mask"].reshape(-1)
  flat = lambda x: x.reshape((-1, x.shape[-1]))

  def pair_losses(params, negatives_axis):
    (feats_a, feats_b), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, batch, train=True,
        mutable=["batch_stats"])
    per_pair = losses.point_info_nce(
        flat(feats_a), flat(feats_b), temperature=loss_config.temperature, where=where,
        axis_name=negatives_axis, symmetric=loss_config.symmetric)
    return per_pair, (updates["batch_stats"], feats_a, feats_b)

  return contrastive_update(state, pair_losses, tx=tx, schedule=schedule, where=where,
                            global_negatives=loss_config.global_negatives)


# ---------------------------------------------------------------------------------------------
# Setup from an experiment config.
# ---------------------------------------------------------------------------------------------


def config() -> ml_collections.ConfigDict:
  """PointContrast's part of a pretraining config (`config.pointcontrast`).

  Frame pairs whose clouds overlap by `min_overlap` (voxelised at `voxel_size`; a point
  matches within `match_radius_voxels` voxels of the other cloud), within
  `max_frame_distance` frame ids (0: any two frames of a scene); `num_matches` per pair. The
  points of each view are the shared `config.points`.
  """
  return ml_collections.ConfigDict(dict(
      voxel_size=0.05, match_radius_voxels=1.5, min_overlap=0.3, max_frame_distance=0,
      num_matches=512, full_rotation=False))


def overlap_config(config: ml_collections.ConfigDict) -> frame_pairs.OverlapConfig:
  c = config.pointcontrast
  return frame_pairs.OverlapConfig(
      voxel_size=c.voxel_size, match_radius_voxels=c.match_radius_voxels,
      min_overlap=c.min_overlap, max_frame_distance=c.max_frame_distance or None)


def prepare(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Mines (process 0) and stores the split's overlapping frame pairs, unless stored."""
  del workdir  # the pairs are stored with the dataset
  d = config.data
  if jax.process_index() == 0:
    frame_pairs.mine_pairs(d.data_dir, d.split, d.frames_config, overlap_config(config))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("frame pairs mined")


def setup(config: ml_collections.ConfigDict, workdir: str, *, student: nn.Module,
          tx: optax.GradientTransformation, schedule, devices):
  """PointContrast's part of a pretraining run (after `prepare`); returns what
  `ppkt.setup` returns."""
  del workdir
  c, d = config.pointcontrast, config.data
  source = scannet_frames.load_frames(d.data_dir, d.split, config=d.frames_config)
  pairs = frame_pairs.load_pairs(frame_pairs.pairs_path(d.data_dir, d.split, d.frames_config),
                                 source)
  if pairs.stats.get("config") != dataclasses.asdict(overlap_config(config)):
    raise ValueError(f"{frame_pairs.pairs_path(d.data_dir, d.split, d.frames_config)}: mined "
                     f"with {pairs.stats.get('config')}, not this run's overlap rule; prepare "
                     "the run first (p2p_jax.train.pretrain.prepare)")
  matches = frame_pairs.MatchConfig(
      num_points=config.points.num_points, num_matches=c.num_matches,
      match_radius=c.voxel_size * c.match_radius_voxels, max_rotation=config.points.max_rotation,
      full_rotation=c.full_rotation, scale_range=tuple(config.points.scale_range),
      colors=config.points.colors)
  dataset = frame_pairs.pointcontrast_dataset(
      source, pairs, matches, seed=config.seed, num_devices=jax.local_device_count(),
      per_device_batch=config.per_device_batch)
  model = PointContrastModel(student=student)
  example = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), jax.eval_shape(
      lambda b: frame_pairs.make_matches(b, matches), dataset[0]))
  init = lambda key: init_state(model, tx, key, example)
  loss = LossConfig(temperature=config.loss.temperature,
                    global_negatives=config.loss.global_negatives,
                    symmetric=config.loss.symmetric)
  step = pmap_step(train_step, devices, model=model, tx=tx, match_config=matches,
                   loss_config=loss, schedule=schedule)
  return dataset, init, step
