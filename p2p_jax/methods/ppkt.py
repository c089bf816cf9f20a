"""PPKT (Liu et al., 2021): pixel-to-point contrast against a frozen 2D teacher.

The frozen 2D teacher lives outside the trainable state: its variables are a separate,
replicated argument of the step, read in inference mode under `stop_gradient`, so no
optimiser state is kept for it and no update can reach it. What trains is the upsampling
projection layer (UPL) on the teacher's features and the 3D student with its projection head.

Per step and device: `make_pairs` turns the host batch into points and pixel-point pairs, the
teacher encodes the augmented images, the UPL samples pixel features at the K pairs, the
student gives point features, and PP-NCE contrasts them with negatives from every device
(`global_negatives`) or from the device's own pairs. Each device's loss is its share of the
global mean (`p2p_jax.train.contrastive`); the student's BatchNorm statistics are also taken
over all devices. The pmapped step on D devices equals the one-device step on the same global
batch (tested).

    prepare(config, workdir)   builds the teacher cache when `teacher.cache` asks for one
    setup(...)                 the pretraining loop's data, initial state and pmapped step
"""

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax
from jax.experimental import multihost_utils

from p2p_jax import losses, pointops
from p2p_jax.data import pipeline, scannet_frames, teacher_cache
from p2p_jax.models import convert, projector, resnet
from p2p_jax.train import parallel
from p2p_jax.train.contrastive import contrastive_update, pmap_step
from p2p_jax.train.state import TrainState


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

  def __call__(self, teacher_features: jax.Array, batch: dict[str, jax.Array], *, train: bool,
               image_hw: tuple[int, int] | None = None):
    """Pair features of a batch of `make_pairs` outputs.

    Args:
      teacher_features: [B, h, w, C] teacher features of the teacher's images.
      batch: `make_pairs` outputs with one leading batch axis.
      train: BatchNorm of the student in training mode.
      image_hw: the teacher's input size, which the pair pixels index (default: that of
        `batch["image"]`).

    Returns:
      (point features [B, K, D], pixel features [B, K, D]), both L2-normalised.
    """
    image_hw = batch["image"].shape[1:3] if image_hw is None else image_hw
    pixel_feats, _ = self.projector(teacher_features, image_hw, batch["pair_pixels"])
    point_out, _ = self.student(batch["points"], batch["point_colors"], batch["point_mask"],
                                train=train)
    return pointops.gather_points(point_out, batch["pair_points"]), pixel_feats


def init_state(model: PPKTModel, tx: optax.GradientTransformation, key: jax.Array,
               teacher_features: jax.Array, batch: dict[str, jax.Array],
               image_hw: tuple[int, int] | None = None) -> TrainState:
  """Initial state from example inputs (shapes matter, values do not)."""
  variables = model.init(key, teacher_features, batch, train=False, image_hw=image_hw)
  return TrainState.create(variables, tx)


def train_step(state: TrainState, teacher_variables: Any, host_batch: dict[str, jax.Array], *,
               model: PPKTModel, teacher: resnet.ResNet, tx: optax.GradientTransformation,
               pair_config: pipeline.PairConfig, loss_config: LossConfig,
               schedule: Callable[[jax.Array], jax.Array], teacher_layer: str = "layer4"):
  """One optimisation step on one device's share of the batch; run it under `jax.pmap`
  with axis name `AXIS` (see `contrastive.pmap_step`).

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
    teacher_features = host_batch["teacher_features"].astype(jnp.float32)
  else:
    _, stages = resnet.frozen_features(teacher, teacher_variables,
                                       resnet.preprocess(batch["image"]))
    teacher_features = stages[teacher_layer]
  teacher_features = lax.stop_gradient(teacher_features)
  where = batch["pair_mask"].reshape(-1)
  flat = lambda x: x.reshape((-1, x.shape[-1]))

  def pair_losses(params, negatives_axis):
    (point_feats, pixel_feats), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, teacher_features, batch,
        train=True, mutable=["batch_stats"], image_hw=pair_config.image_hw)
    per_pair = losses.pixel_to_point_info_nce(
        flat(point_feats), flat(pixel_feats), temperature=loss_config.temperature, where=where,
        axis_name=negatives_axis, symmetric=loss_config.symmetric)
    return per_pair, (updates["batch_stats"], point_feats, pixel_feats)

  return contrastive_update(state, pair_losses, tx=tx, schedule=schedule, where=where,
                            global_negatives=loss_config.global_negatives)


# ---------------------------------------------------------------------------------------------
# Setup from an experiment config.
# ---------------------------------------------------------------------------------------------


def config() -> ml_collections.ConfigDict:
  """PPKT's part of a pretraining config (`config.ppkt`), with the paper's values.

  num_pairs is per frame; the loss contrasts the pairs of the whole batch (of every device
  with loss.global_negatives), so K = num_pairs x global batch. The points of each frame are
  the shared `config.points`.
  """
  return ml_collections.ConfigDict(dict(
      image_hw=(240, 320), num_pairs=512, crop_scale=(0.5, 1.0), flip_probability=0.5,
      views_per_frame=0,  # 0: a fresh crop every use; V > 0: V fixed views (cacheable)
      jitter_sigma=0.005, jitter_clip=0.02,
      teacher=ml_collections.ConfigDict(dict(
          arch="resnet50",
          checkpoint="",  # from experiments/convert_weights.py; empty = random (warns)
          layer="layer4",  # the map the UPL reads (the paper's); "layer3" is stride 16
          # The teacher's features of every view computed once (needs views_per_frame > 0),
          # in cache_dir (default <workdir>/teacher_cache); the step then skips the teacher.
          cache=False,
          cache_dir="",
      )),
  ))


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """The frozen 2D teacher: `resnet.VARIANTS[arch]` from `checkpoint` ("" = random init),
  read at `layer`, its features optionally cached once in `cache_dir`."""
  arch: str
  checkpoint: str
  layer: str
  cache: bool
  cache_dir: str


def teacher_config(config: ml_collections.ConfigDict) -> TeacherConfig:
  t = config.ppkt.teacher
  return TeacherConfig(arch=t.arch, checkpoint=t.checkpoint, layer=t.layer, cache=t.cache,
                       cache_dir=t.cache_dir)


def pair_config(config: ml_collections.ConfigDict) -> pipeline.PairConfig:
  p, points = config.ppkt, config.points
  return pipeline.PairConfig(
      image_hw=tuple(p.image_hw), num_points=points.num_points, num_pairs=p.num_pairs,
      crop_scale=tuple(p.crop_scale), flip_probability=p.flip_probability,
      views_per_frame=p.views_per_frame, max_rotation=points.max_rotation,
      scale_range=tuple(points.scale_range),
      jitter_sigma=p.jitter_sigma, jitter_clip=p.jitter_clip, colors=points.colors)


def load_teacher(t: TeacherConfig, image_hw, seed: int):
  teacher = resnet.VARIANTS[t.arch]()
  if t.checkpoint:
    return teacher, convert.load_teacher_checkpoint(t.checkpoint, teacher)
  logging.warning("ppkt.teacher.checkpoint is empty: the teacher is randomly initialised, "
                  "which exercises the code but transfers no knowledge")
  images = jnp.zeros((1,) + tuple(image_hw) + (3,))
  return teacher, jax.jit(teacher.init)(jax.random.key(seed + 1), images)


def teacher_features(teacher: resnet.ResNet, variables: Any,
                     layer: str = "layer4") -> Callable[[np.ndarray], jax.Array]:
  """A jitted uint8 images [B, h, w, 3] -> the frozen teacher's `layer` [B, h', w', C]: what
  `teacher_cache.build_cache` stores."""
  return jax.jit(lambda images: resnet.frozen_features(
      teacher, variables, resnet.preprocess(images))[1][layer])


def _cache(config: ml_collections.ConfigDict, workdir: str, source, pairs: pipeline.PairConfig,
           t: TeacherConfig) -> tuple[str, dict[str, Any]]:
  """(directory, expected metadata) of the run's teacher cache."""
  if not pairs.views_per_frame:
    raise ValueError("ppkt.teacher.cache needs ppkt.views_per_frame > 0: the cache holds the "
                     "features of fixed views, and fresh random crops cannot be cached")
  directory = t.cache_dir or os.path.join(os.path.abspath(workdir), "teacher_cache")
  metadata = teacher_cache.cache_metadata(
      teacher=t.arch, num_frames=len(source), seed=config.seed, config=pairs, layer=t.layer,
      checkpoint=os.path.abspath(t.checkpoint) if t.checkpoint else
      f"random init, seed {config.seed + 1}",
      data=[os.path.abspath(config.data.data_dir), config.data.frames_config, config.data.split])
  return directory, metadata


def _frames(config: ml_collections.ConfigDict):
  d = config.data
  return scannet_frames.load_frames(d.data_dir, d.split, config=d.frames_config)


def prepare(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Builds the teacher cache (process 0) when `ppkt.teacher.cache` asks for one and it is
  missing."""
  t = teacher_config(config)
  if not t.cache:
    return
  source, pairs = _frames(config), pair_config(config)
  directory, metadata = _cache(config, workdir, source, pairs, t)
  if jax.process_index() == 0 and not os.path.exists(
      os.path.join(directory, teacher_cache.METADATA)):
    teacher, teacher_variables = load_teacher(t, pairs.image_hw, config.seed)
    teacher_cache.build_cache(directory, source,
                              teacher_features(teacher, teacher_variables, t.layer), pairs,
                              seed=config.seed, metadata=metadata)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("teacher cache built")


def setup(config: ml_collections.ConfigDict, workdir: str, *, student: nn.Module,
          tx: optax.GradientTransformation, schedule, devices):
  """PPKT's part of a pretraining run (after `prepare`).

  Returns:
    (dataset of this process's host batches, init(key) -> TrainState,
     step(state, host_batch) -> (state, metrics) pmapped over `devices`).
  """
  source, pairs, t = _frames(config), pair_config(config), teacher_config(config)
  teacher, teacher_variables = load_teacher(t, pairs.image_hw, config.seed)
  cache = None
  if t.cache:  # the teacher's features of fixed views, computed once
    cache = teacher_cache.TeacherCache(*_cache(config, workdir, source, pairs, t))
  dataset = pipeline.pretrain_dataset(source, pairs, seed=config.seed,
                                      num_devices=jax.local_device_count(),
                                      per_device_batch=config.per_device_batch, cache=cache)
  model = PPKTModel(projector=projector.UpsamplingProjector(features=config.projection_dim),
                    student=student)
  # Initialisation needs only shapes: one device's share of a batch, and its teacher features.
  first = dataset[0]
  example = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), jax.eval_shape(
      lambda b: pipeline.make_pairs(b, pairs), first))
  if cache is None:
    features = jax.eval_shape(lambda v, x: teacher.apply(v, x)[1][t.layer],
                              teacher_variables, resnet.preprocess(example["image"])).shape
    teacher_variables = parallel.replicate(teacher_variables, devices)
  else:
    features = first["teacher_features"].shape[1:]
    teacher_variables = {}  # the step reads the cache instead
  init = lambda key: init_state(model, tx, key, jnp.zeros(features), example,
                                image_hw=pairs.image_hw)
  loss = LossConfig(temperature=config.loss.temperature,
                    global_negatives=config.loss.global_negatives,
                    symmetric=config.loss.symmetric)
  step = pmap_step(train_step, devices, model=model, teacher=teacher, tx=tx, pair_config=pairs,
                   schedule=schedule, teacher_layer=t.layer, loss_config=loss)
  return dataset, init, lambda state, batch: step(state, teacher_variables, batch)
