"""Training a 2D teacher for PPKT: a ResNet with a per-pixel ScanNet-20 segmentation head.

PPKT transfers the features of a 2D network trained on rich 2D labels. Without ImageNet
weights (or on synthetic rooms, whose classes ImageNet never saw) this trains one: a ResNet
from `resnet.VARIANTS` and a light head (a 1x1 convolution on layer4, optionally also on
layer3, each upsampled bilinearly to the input size and summed) learn the 2D semantic labels
of the frames of the *teacher scenes*: scenes the synthetic generator lists in
`scannetv2_teacher.txt` (`teacher_fraction`), disjoint from the pretraining and fine-tuning
scenes (train, val). Training the head on layer4 puts the semantics where PPKT's projection
layer reads the teacher's features.

Data: the teacher scenes, split by scene into training and held-out scenes
(`p2p_jax.data.teacher_frames`; `p2p_jax.data.prepare.teacher` builds them), read into memory
once.

Training: torchvision's random resized crop (area `crop_scale`, aspect `crop_ratio`) of each
frame resized to `image_hw` (bilinear for the image, nearest for the labels), horizontal flip,
colour changes (brightness, contrast, saturation, channel order, grey), ImageNet
normalisation, cross-entropy over labelled pixels (`IGNORE_LABEL` left out), AdamW or SGD on
a cosine schedule, BatchNorm in training mode; classes may be weighted towards the rare
ones (`class_weight_power`), since the reported mIoU averages over classes. Evaluation: whole
held-out frames resized to `image_hw`, BatchNorm in inference mode; pixel accuracy, mIoU and
mAcc over the classes present (`p2p_jax.metrics`).

Output: `convert.save_teacher_checkpoint` of the ResNet's {"params", "batch_stats"} alone, so
pretraining loads it with `--config.ppkt.teacher.checkpoint=<path>` and `ppkt.teacher.arch`
set to the same variant.
"""

import dataclasses
import functools
import itertools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from p2p_jax import metrics as metrics_lib
from p2p_jax.data import labels as labels_lib
from p2p_jax.data import pipeline, teacher_frames
from p2p_jax.models import convert, resnet
from p2p_jax.models.segmentation_2d import SegmentationNet
from p2p_jax.tasks import segmentation
from p2p_jax.train import config as config_lib
from p2p_jax.train import loop
from p2p_jax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The training crops: size, random resized crop, flip and colour changes.

  Attributes:
    image_hw: output size.
    crop_scale: range of the crop's area as a fraction of the frame.
    crop_ratio: range of the crop's aspect ratio relative to `image_hw`'s (log-uniform).
    flip_probability: probability of a horizontal flip.
    color_jitter: brightness, contrast and saturation factors drawn from [1 - s, 1 + s].
    channel_shuffle_probability: probability of a random permutation of the RGB channels.
    grayscale_probability: probability of a grey image.
  """
  image_hw: tuple[int, int] = (96, 128)
  crop_scale: tuple[float, float] = (0.35, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_probability: float = 0.5
  color_jitter: float = 0.4
  channel_shuffle_probability: float = 0.5
  grayscale_probability: float = 0.2


# ---------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------


def load_teacher_frames(data: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """The teacher's frames and 2D labels, in memory (`p2p_jax.data.teacher_frames.load`).

  Args:
    data: the `data` field of a teacher config, prepared by `p2p_jax.data.prepare.teacher`.
  """
  root, train, held_out = teacher_frames.teacher_split(data.manual_dir, data.data_dir,
                                                       data.holdout_fraction, data.holdout_seed)
  return teacher_frames.load(root, data.frames_config, train, held_out)


def _nearest_indices(start: int, length: int, size: int) -> np.ndarray:
  """Source rows of a nearest-neighbour resize of [start, start + length) to `size` rows."""
  rows = start + np.floor((np.arange(size) + 0.5) * (length / size)).astype(np.int64)
  return np.minimum(rows, start + length - 1)


def resize_example(image: np.ndarray, label: np.ndarray, box: tuple[int, int, int, int],
                   hw: tuple[int, int], flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Crops (top, left, height, width) and resizes: image bilinear, labels nearest."""
  top, left, h, w = box
  resized = np.asarray(Image.fromarray(image).resize(
      (hw[1], hw[0]), Image.BILINEAR, box=(left, top, left + w, top + h)))
  lab = label[_nearest_indices(top, h, hw[0])[:, None], _nearest_indices(left, w, hw[1])[None]]
  if flip:
    resized, lab = resized[:, ::-1], lab[:, ::-1]
  return np.ascontiguousarray(resized), np.ascontiguousarray(lab)


def color_augment(image: np.ndarray, rng: np.random.Generator,
                  augment: AugmentConfig) -> np.ndarray:
  """Brightness, contrast, saturation, channel order and grey, drawn from `rng`.

  Object colours of the synthetic rooms are drawn per instance, so colour says little about
  the class; changing colours keeps the teacher from memorising the training instances'.
  """
  x = image.astype(np.float32)
  s = augment.color_jitter
  grey = lambda y: (y @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
  x = x * rng.uniform(1 - s, 1 + s)  # brightness
  x = (x - x.mean()) * rng.uniform(1 - s, 1 + s) + x.mean()  # contrast
  x = grey(x) + (x - grey(x)) * rng.uniform(1 - s, 1 + s)  # saturation
  if rng.uniform() < augment.channel_shuffle_probability:
    x = x[..., rng.permutation(3)]
  if rng.uniform() < augment.grayscale_probability:
    x = np.repeat(grey(x), 3, axis=-1)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def training_batch(frames: dict[str, np.ndarray], seed: int, step: int, batch_size: int,
                   augment: AugmentConfig) -> dict[str, np.ndarray]:
  """Batch `step`: random frames, crops, flips and colours; a function of (seed, step)."""
  rng = np.random.default_rng((seed, step))
  crop = pipeline.PairConfig(image_hw=augment.image_hw, crop_scale=augment.crop_scale,
                             crop_ratio=augment.crop_ratio)
  images, labels = [], []
  for i in rng.integers(len(frames["image"]), size=batch_size):
    box = pipeline.random_crop(rng, frames["image"].shape[1:3], crop)
    image, label = resize_example(frames["image"][i], frames["label"][i], box, augment.image_hw,
                                  flip=bool(rng.uniform() < augment.flip_probability))
    images.append(color_augment(image, rng, augment))
    labels.append(label)
  return {"image": np.stack(images), "label": np.stack(labels)}


def eval_frames(frames: dict[str, np.ndarray], hw: tuple[int, int]) -> dict[str, np.ndarray]:
  """Whole frames resized to `hw` (image bilinear, labels nearest)."""
  full = (0, 0) + frames["image"].shape[1:3]
  pairs = [resize_example(i, l, full, hw) for i, l in zip(frames["image"], frames["label"])]
  return {"image": np.stack([p[0] for p in pairs]), "label": np.stack([p[1] for p in pairs])}


# ---------------------------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------------------------


def class_weights(labels: np.ndarray, power: float,
                  num_classes: int = labels_lib.NUM_CLASSES) -> np.ndarray:
  """Per-class loss weights (median frequency / frequency) ** power of the labelled pixels.

  Median-frequency balancing (Eigen & Fergus 2015) with an exponent: 0 weighs every pixel
  alike, 1 is the full balancing. Classes absent from `labels` get weight 0.
  """
  counts = np.bincount(labels[labels != labels_lib.IGNORE_LABEL].ravel(),
                       minlength=num_classes)[:num_classes].astype(np.float64)
  present = counts > 0
  if not present.any():
    raise ValueError("no labelled pixel to weigh classes by")
  freq = counts / counts.sum()
  weights = np.zeros(num_classes)
  weights[present] = (np.median(freq[present]) / freq[present]) ** power
  return weights.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("model", "tx"), donate_argnums=(0,))
def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], weights: jax.Array, *,
               model: SegmentationNet,
               tx: optax.GradientTransformation,
               ) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One step on a batch of uint8 images and int32 labels, with [C] class weights."""

  def loss_fn(params):
    (logits, _), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, resnet.preprocess(batch["image"]),
        train=True, mutable=["batch_stats"])
    loss, accuracy = segmentation.cross_entropy(logits, batch["label"], class_weights=weights)
    return loss, (updates["batch_stats"], accuracy)

  (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  new_state, _ = state.apply_gradients(grads, batch_stats, tx)
  return new_state, {"loss": loss, "pixel_accuracy": accuracy}


@functools.partial(jax.jit, static_argnames=("model",))
def predict(variables: dict, images: jax.Array, *, model: SegmentationNet) -> jax.Array:
  """Per-pixel classes int32 [B, H, W] in inference mode."""
  logits, _ = model.apply(variables, resnet.preprocess(images), train=False)
  return jnp.argmax(logits, -1).astype(jnp.int32)


def evaluate(model: SegmentationNet, variables: dict, frames: dict[str, np.ndarray],
             batch_size: int, num_classes: int = labels_lib.NUM_CLASSES) -> np.ndarray:
  """The [C, C] confusion matrix over every labelled pixel of `frames`."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  count = len(frames["image"])
  for start in range(0, count, batch_size):
    idx = np.arange(start, start + batch_size) % count  # a full last batch: one compile
    out = np.asarray(predict(variables, frames["image"][idx], model=model))
    keep = slice(0, min(batch_size, count - start))
    confusion += metrics_lib.confusion_matrix(frames["label"][idx][keep], out[keep], num_classes)
  return confusion


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


def augment_config(config: ml_collections.ConfigDict) -> AugmentConfig:
  a = config.augment
  return AugmentConfig(image_hw=tuple(config.image_hw), crop_scale=tuple(a.crop_scale),
                       crop_ratio=tuple(a.crop_ratio), flip_probability=a.flip_probability,
                       color_jitter=a.color_jitter,
                       channel_shuffle_probability=a.channel_shuffle_probability,
                       grayscale_probability=a.grayscale_probability)


def make_model(config: ml_collections.ConfigDict) -> SegmentationNet:
  if config.arch not in resnet.VARIANTS:
    raise ValueError(f"unknown arch {config.arch!r}; expected one of {sorted(resnet.VARIANTS)}")
  return SegmentationNet(resnet.VARIANTS[config.arch](), head_layers=tuple(config.head_layers))


def train(config: ml_collections.ConfigDict, workdir: str, *,
          template: ml_collections.ConfigDict | None = None,
          progress: bool = True) -> dict[str, Any]:
  """Trains the teacher, evaluates it on the held-out frames and saves its checkpoint.

  Args:
    config: a teacher config (experiments/configs/teacher_synthetic.py).
    workdir: gets `teacher/` (the checkpoint, replaced if present), `metrics.jsonl` and
      `results.json`.
    template: the config schema; keys of `config` missing from it are an error.
    progress: show a progress bar.

  Returns:
    The results (also in `results.json`): "checkpoint" (the path for
    `config.ppkt.teacher.checkpoint`), "arch", "pixel_accuracy", "miou", "macc" (fractions, on the
    held-out frames), "per_class_iou", "iou_table" (Markdown), "train_loss" (every
    `log_every`-th step), "curve" (step, loss, pixel accuracy and, every `eval.every` steps,
    the held-out mIoU), the scenes and frame counts, and "seconds".
  """
  # Setup.
  start_time = time.perf_counter()
  if template is not None:
    config_lib.check_config(config, template)
  if config.eval.every and config.eval.every % config.log_every:
    raise ValueError(f"eval.every={config.eval.every} must be a multiple of log_every="
                     f"{config.log_every}: the held-out mIoU is measured on logged steps")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  augment = augment_config(config)

  # Data.
  frames = load_teacher_frames(config.data)
  holdout = eval_frames(frames["holdout"], augment.image_hw)

  # Model and optimiser.
  model = make_model(config)
  key = jax.random.key(config.seed)
  example = jnp.zeros((1,) + augment.image_hw + (3,))
  variables = jax.jit(functools.partial(model.init, train=False))(key, example)
  if config.init.checkpoint:  # e.g. converted ImageNet weights (experiments/convert_weights.py)
    backbone = convert.load_teacher_checkpoint(config.init.checkpoint, model.backbone)
    variables = {"params": {**variables["params"], "backbone": backbone["params"]},
                 "batch_stats": {"backbone": backbone["batch_stats"]}}
  tx = state_lib.make_optimizer(
      state_lib.OptimizerConfig.from_config(config.optimizer, config.total_steps))

  weights = (class_weights(frames["train"]["label"], config.class_weight_power)
             if config.class_weight_power else None)

  # Loop. Batches depend on the step alone, so a resumed run continues bitwise.
  last_eval = None  # (step, held-out confusion matrix)

  def held_out(step, metrics, state):
    nonlocal last_eval
    if not (config.eval.every and step % config.eval.every == 0):
      return {}
    last_eval = (step, evaluate(model, {"params": state.params, "batch_stats": state.batch_stats},
                                holdout, config.eval.batch_size))
    return {"holdout_miou": metrics_lib.segmentation_scores(last_eval[1])["miou"]}

  init = lambda: state_lib.TrainState.create(variables, tx)
  result = loop.run(
      workdir=workdir, total_steps=config.total_steps, init=init,
      abstract_state=loop.abstract_state(init),
      step=lambda state, batch: train_step(state, batch, weights, model=model, tx=tx),
      batches=lambda start: (training_batch(frames["train"], config.seed, step,
                                            config.batch_size, augment)
                             for step in itertools.count(start)),
      log_every=config.log_every, on_log=held_out, desc="teacher", progress=progress)
  state, train_seconds = result.state, result.seconds
  history = {k: [r.get(k) for r in result.records]
             for k in ("step", "loss", "pixel_accuracy", "holdout_miou")}
  loop.raise_if_stopped(result, "teacher training", workdir)

  # Evaluation and checkpoint.
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  confusion = (last_eval[1] if last_eval and last_eval[0] == config.total_steps
               else evaluate(model, variables, holdout, config.eval.batch_size))
  scores = metrics_lib.segmentation_scores(confusion)
  checkpoint = convert.save_teacher_checkpoint(
      os.path.join(workdir, "teacher"),
      {"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]},
      overwrite=True)
  names = labels_lib.SCANNET20_NAMES
  results = {
      "checkpoint": checkpoint,
      "arch": config.arch,
      "pixel_accuracy": loop.json_float(scores["oa"]),
      "miou": loop.json_float(scores["miou"]),
      "macc": loop.json_float(scores["macc"]),
      "per_class_iou": {n: loop.json_float(v) for n, v in zip(names, scores["iou"])},
      "iou_table": metrics_lib.iou_table(scores, names),
      "train_scenes": frames["train"]["scenes"],
      "holdout_scenes": frames["holdout"]["scenes"],
      "train_frames": len(frames["train"]["image"]),
      "holdout_frames": len(frames["holdout"]["image"]),
      "train_loss": history["loss"],
      "curve": history,
      "seconds": {"train": train_seconds, "total": time.perf_counter() - start_time},
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  return results
