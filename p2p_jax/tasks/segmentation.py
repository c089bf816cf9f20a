"""3D semantic segmentation on scene point clouds: data, crops, models and evaluation.

The task every downstream run of the 3D student shares (fine-tuning, linear probing):

Data. Scenes come from `scannet_scenes` (mesh vertices, colours, ScanNet-20 labels, -1 =
ignore) or from `s3dis` (room points, 13 classes; one area held out). Limited annotations
follow the data-efficient benchmark of the field, both nested and fixed by `labels.seed`:
limited scenes label the first max(1, round(fraction x n)) scenes of a seeded permutation of
the training scene names (the 1% subset lies inside the 5% subset, and so on); limited points
keep, in each such scene, the first `points_per_scene` points of a seeded permutation of its
labelled points (the 20 inside the 50, and so on) and ignore the others.

Training crops are square columns of `crop.size` metres (all heights) around a random point
of a random labelled scene, randomly subsampled to `crop.num_points` points (padded and masked
when fewer), centred horizontally like the pretraining clouds (z stays the height above the
floor), rotated about z, scaled and jittered. Inputs are the coordinates and the colours in
[0, 1] (constant grey without colours), as in pretraining.

Evaluation covers every point of every "val" scene. Each scene is tiled in x and y into equal
cells no larger than `crop.size`; from each cell up to `crop.num_points` points are drawn
(all of them if fewer), without augmentation, and labelled by the network; every point of the
cell then takes the prediction of its nearest drawn point (1-NN in 3D within the cell). The
confusion matrix is accumulated over all points; mIoU and mAcc average over the classes
present in the ground truth (see `p2p_jax.metrics`).
"""

import dataclasses
import functools
import math
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.spatial

from p2p_jax import metrics as metrics_lib
from p2p_jax import models
from p2p_jax.data import export, s3dis, scannet_scenes
from p2p_jax.data import labels as labels_lib
from p2p_jax.data import prepare as prepare_lib
from p2p_jax.models import student as student_lib

MODES = ("finetune", "linear_probe")


@dataclasses.dataclass(frozen=True)
class CropConfig:
  """Shapes and augmentation of the point crops.

  Attributes:
    num_points: N points per crop (padded and masked when a crop holds fewer).
    size: side in metres of the square xy column of a crop, and the largest evaluation cell.
    max_rotation: rotation about z, uniform in [-max, max] radians (training only).
    scale_range: isotropic scaling, uniform in the range (training only).
    jitter_sigma: standard deviation of Gaussian jitter in metres (training only).
    jitter_clip: jitter is clipped to [-clip, clip].
    colors: False gives the student no colour: every point's colour input is a constant grey
      (0.5), in training and evaluation alike.
  """
  num_points: int = 4096
  size: float = 3.0
  max_rotation: float = math.pi
  scale_range: tuple[float, float] = (0.9, 1.1)
  jitter_sigma: float = 0.005
  jitter_clip: float = 0.02
  colors: bool = True


def crop_config(config: ml_collections.ConfigDict) -> CropConfig:
  c = config.crop
  return CropConfig(num_points=c.num_points, size=c.size, max_rotation=c.max_rotation,
                    scale_range=tuple(c.scale_range), jitter_sigma=c.jitter_sigma,
                    jitter_clip=c.jitter_clip, colors=c.colors)


DATASETS = ("scannet", "s3dis")


def class_names(data: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The class names of the config's dataset, in label order (checks `dataset`, `val_area`)."""
  if data.val_area not in range(1, 7):
    raise ValueError(f"data.val_area: {data.val_area!r} is not an S3DIS area (1-6)")
  if data.dataset == "s3dis":
    return tuple(s3dis.CLASSES)
  if data.dataset == "scannet":
    return tuple(labels_lib.SCANNET20_NAMES)
  raise ValueError(f"data.dataset: unknown dataset {data.dataset!r}; expected one of "
                   f"{DATASETS}")


def prepare(data: ml_collections.ConfigDict) -> None:
  """Writes (synthetic rooms if asked and) the config's dataset: `p2p_jax.data.prepare`."""
  class_names(data)  # checks the name
  (prepare_lib.s3dis if data.dataset == "s3dis" else prepare_lib.scenes)(data)


def s3dis_areas(data: ml_collections.ConfigDict, split: str) -> list[int]:
  """The S3DIS areas of a split: `val_area` for "val", the other five for "train"."""
  if data.val_area not in range(1, 7):
    raise ValueError(f"data.val_area: {data.val_area!r} is not an S3DIS area (1-6)")
  return [data.val_area] if split == "val" else [a for a in range(1, 7) if a != data.val_area]


def load_split(data: ml_collections.ConfigDict, split: str) -> list[dict[str, Any]]:
  """The scenes of a prepared split (`prepare`), as numpy arrays.

  Args:
    data: the `data` field of a fine-tuning config.
    split: "train" or "val".

  Returns:
    [{"points" float32 [P, 3], "colors" uint8 [P, 3], "labels" int32 [P], "scene" str}].
  """
  class_names(data)
  if data.dataset == "s3dis":
    return s3dis.load_scenes(data.data_dir, s3dis_areas(data, split))
  source = scannet_scenes.load_scenes(data.data_dir, split)
  return [export.scene_arrays(source[i]) for i in range(len(source))]


def labelled_subset(names: Sequence[str], fraction: float, seed: int) -> list[str]:
  """The labelled training scenes: nested in `fraction` at a fixed seed, at least one.

  Args:
    names: the training scene names (any order; duplicates are an error).
    fraction: share of scenes labelled, in (0, 1].
    seed: seeds the permutation; the same seed gives nested subsets for growing fractions.

  Returns:
    The first max(1, round(fraction x n)) names of the seeded permutation of the sorted names,
    sorted.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
  ordered = sorted(names)
  if len(set(ordered)) != len(ordered):
    raise ValueError("scene names must be unique")
  if not ordered:
    raise ValueError("no training scenes")
  order = np.random.default_rng(seed).permutation(len(ordered))
  count = max(1, int(round(fraction * len(ordered))))
  return sorted(ordered[i] for i in order[:count])


def limited_points(scenes: Sequence[dict[str, Any]], count: int,
                   seed: int) -> dict[str, np.ndarray]:
  """The labelled points of each scene under "limited points" (`count` per scene).

  Args:
    scenes: {"scene", "labels"} of the labelled training scenes.
    count: labelled points kept per scene (a scene with fewer keeps all of its own).
    seed: with the scene's name, seeds a permutation of the scene's labelled points; the
      first `count` are kept, so growing counts give nested subsets.

  Returns:
    {scene name: sorted int64 indices of its kept points}.
  """
  if count < 1:
    raise ValueError(f"labels.points_per_scene must be positive here, got {count}")
  kept = {}
  for scene in scenes:
    labelled = np.flatnonzero(scene["labels"] != labels_lib.IGNORE_LABEL)
    name_seed = zlib.crc32(scene["scene"].encode())
    order = np.random.default_rng((seed, name_seed)).permutation(len(labelled))
    kept[scene["scene"]] = np.sort(labelled[order[:count]])
  return kept


def keep_labels(scene: dict[str, Any], indices: np.ndarray) -> dict[str, Any]:
  """A copy of `scene` whose labels are `IGNORE_LABEL` except at `indices`."""
  labels = np.full_like(scene["labels"], labels_lib.IGNORE_LABEL)
  labels[indices] = scene["labels"][indices]
  return {**scene, "labels": labels}


def _pack(scene: dict[str, Any], idx: np.ndarray, center_xy: np.ndarray, crop: CropConfig,
          rng: np.random.Generator | None) -> dict[str, np.ndarray]:
  """Fixed-shape crop of `scene` at `idx`, centred at `center_xy`, augmented if `rng`."""
  n = crop.num_points
  count = len(idx)
  points = scene["points"][idx] - np.array([center_xy[0], center_xy[1], 0.0], np.float32)
  if rng is not None:
    angle = rng.uniform(-crop.max_rotation, crop.max_rotation)
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], np.float32)
    points = points @ rotation.T * np.float32(rng.uniform(*crop.scale_range))
    jitter = rng.normal(0.0, crop.jitter_sigma, points.shape).astype(np.float32)
    points = points + np.clip(jitter, -crop.jitter_clip, crop.jitter_clip)
  out = {"points": np.zeros((n, 3), np.float32), "colors": np.zeros((n, 3), np.float32),
         "labels": np.full((n,), labels_lib.IGNORE_LABEL, np.int32),
         "point_mask": np.zeros((n,), bool)}
  out["points"][:count] = points
  out["colors"][:count] = (scene["colors"][idx].astype(np.float32) / 255.0 if crop.colors
                           else 0.5)
  out["labels"][:count] = scene["labels"][idx]
  out["point_mask"][:count] = True
  return out


def sample_crop(scene: dict[str, Any], rng: np.random.Generator,
                crop: CropConfig) -> dict[str, np.ndarray]:
  """One augmented training crop (see the module docstring).

  Args:
    scene: {"points", "colors", "labels"} of one scene.
    rng: the crop's generator.
    crop: the crop settings.

  Returns:
    "points" float32 [N, 3], "colors" float32 [N, 3] in [0, 1], "labels" int32 [N] (-1 at
    padding), "point_mask" bool [N].
  """
  points = scene["points"]
  center = points[rng.integers(len(points)), :2]
  half = crop.size / 2
  # Column by column: several times faster than a reduction over a [P, 2] array.
  inside = np.flatnonzero((np.abs(points[:, 0] - center[0]) <= half)
                          & (np.abs(points[:, 1] - center[1]) <= half))
  if len(inside) > crop.num_points:
    inside = rng.choice(inside, crop.num_points, replace=False)
  return _pack(scene, inside, center, crop, rng)


def training_batch(scenes: Sequence[dict[str, Any]], seed: int, step: int, batch_size: int,
                   crop: CropConfig) -> dict[str, np.ndarray]:
  """Batch `step` of a run: a function of (seed, step) alone, so runs are reproducible."""
  rng = np.random.default_rng((seed, step))
  crops = [sample_crop(scenes[rng.integers(len(scenes))], rng, crop) for _ in range(batch_size)]
  return {k: np.stack([c[k] for c in crops]) for k in crops[0]}


@dataclasses.dataclass
class EvalScene:
  """A held-out scene cut into fixed-shape blocks, and how to spread their predictions.

  Attributes:
    scene: the scene's name.
    labels: int32 [P] ground truth of every point.
    blocks: per cell, a `_pack`ed block (unaugmented).
    cells: per cell, int64 indices of the scene's points in it.
    nearest: per cell, for each of its points the index of the nearest drawn point in the
      block.
  """
  scene: str
  labels: np.ndarray
  blocks: list[dict[str, np.ndarray]]
  cells: list[np.ndarray]
  nearest: list[np.ndarray]


def prepare_eval_scene(scene: dict[str, Any], crop: CropConfig, seed: int = 0) -> EvalScene:
  """Tiles a scene into cells no larger than `crop.size` and draws each cell's block.

  Args:
    scene: {"points", "colors", "labels", "scene"}.
    crop: the crop settings (`num_points`, `size`).
    seed: seeds the choice of points of cells holding more than `num_points`.

  Returns:
    The scene's `EvalScene`: every point lies in exactly one cell.
  """
  rng = np.random.default_rng(seed)
  points = scene["points"]
  lo, hi = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
  counts = np.maximum(1, np.ceil((hi - lo) / crop.size - 1e-6)).astype(np.int64)
  step = np.maximum(hi - lo, 1e-6) / counts
  cell_xy = np.minimum(((points[:, :2] - lo) / step).astype(np.int64), counts - 1)
  cell_id = cell_xy[:, 0] * counts[1] + cell_xy[:, 1]
  order = np.argsort(cell_id, kind="stable")
  ids, starts = np.unique(cell_id[order], return_index=True)
  blocks, cells, nearest = [], [], []
  for cell, members in zip(ids, np.split(order, starts[1:])):
    chosen = members
    if len(members) > crop.num_points:
      chosen = np.sort(rng.choice(members, crop.num_points, replace=False))
    center = lo + (np.array([cell // counts[1], cell % counts[1]]) + 0.5) * step
    blocks.append(_pack(scene, chosen, center.astype(np.float32), crop, None))
    if len(chosen) == len(members):
      nearest.append(np.arange(len(members)))
    else:
      nearest.append(scipy.spatial.cKDTree(points[chosen]).query(points[members])[1])
    cells.append(members)
  return EvalScene(str(scene.get("scene", "")), scene["labels"], blocks, cells, nearest)


@dataclasses.dataclass
class SceneData:
  """Everything a run reads, loaded once: reuse it across runs of one study.

  Attributes:
    train: the training scenes (`load_split`).
    val: the held-out scenes prepared for evaluation.
    crop: the crop settings `val` was prepared with.
    train_tiles: training scenes tiled like `val` (for linear probes), filled on first use.
  """
  train: list[dict[str, Any]]
  val: list[EvalScene]
  crop: CropConfig
  train_tiles: dict[str, EvalScene] = dataclasses.field(default_factory=dict)

  def tiles(self, names: Sequence[str]) -> list[EvalScene]:
    """The named training scenes tiled without augmentation, as the val scenes are."""
    for i, scene in enumerate(self.train):
      if scene["scene"] in names and scene["scene"] not in self.train_tiles:
        self.train_tiles[scene["scene"]] = prepare_eval_scene(scene, self.crop, seed=i)
    return [self.train_tiles[n] for n in names]


def load_data(config: ml_collections.ConfigDict) -> SceneData:
  """Loads the training scenes and prepares the held-out ones, as `config` says."""
  crop = crop_config(config)
  val = [prepare_eval_scene(s, crop, seed=i) for i, s in enumerate(load_split(config.data, "val"))]
  return SceneData(train=load_split(config.data, "train"), val=val, crop=crop)


def student_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The backbone's keyword arguments from a fine-tuning config (`sparse` for SR-UNets)."""
  return models.backbone_kwargs(config.student, config.sparse)


def make_model(student: str, mode: str, *, num_classes: int = labels_lib.NUM_CLASSES,
               head_hidden: int = 128, head_dropout: float = 0.5,
               **backbone_kwargs) -> student_lib.PointModel:
  """The student backbone with a segmentation head ("finetune") or a linear one (probe)."""
  if mode == "finetune":
    head = student_lib.SegmentationHead(num_classes, hidden=head_hidden,
                                        dropout_rate=head_dropout)
  elif mode == "linear_probe":
    head = student_lib.LinearHead(num_classes)
  else:
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
  return student_lib.PointModel(models.backbone(student, **backbone_kwargs), head)


# Random {"params", "batch_stats"} of a model for `num_points` points, compiled once per model.
init_variables = student_lib.init_variables


def cross_entropy(logits: jax.Array, labels: jax.Array, where: jax.Array | None = None,
                  class_weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy and accuracy over the labelled entries (labels != IGNORE_LABEL) in `where`.

  Args:
    logits: [..., C] float, per point or per pixel.
    labels: [...] int, `IGNORE_LABEL` for unlabelled entries.
    where: optional [...] bool, e.g. the point mask.
    class_weights: optional [C] weight of each class's entries; the loss is then the weighted
      mean (sum of w_label x CE over sum of w_label), so the weights' scale does not matter.

  Returns:
    (loss, unweighted accuracy), each a scalar; 0 when no entry counts.
  """
  valid = labels != labels_lib.IGNORE_LABEL
  if where is not None:
    valid = where & valid
  safe = jnp.where(valid, labels, 0)
  per_entry = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  count = jnp.maximum(jnp.sum(valid), 1)
  if class_weights is None:
    loss = jnp.sum(jnp.where(valid, per_entry, 0.0)) / count
  else:
    weight = valid.astype(per_entry.dtype) * class_weights[safe]
    loss = jnp.sum(weight * per_entry) / jnp.maximum(jnp.sum(weight), 1e-9)
  correct = (jnp.argmax(logits, -1) == labels) & valid
  return loss, jnp.sum(correct) / count


@functools.partial(jax.jit, static_argnames=("model",))
def predict(variables: dict, points: jax.Array, colors: jax.Array, point_mask: jax.Array, *,
            model: student_lib.PointModel) -> jax.Array:
  """Class predictions int32 [B, N] of the model in inference mode."""
  logits, _ = model.apply(variables, points, colors, point_mask, train=False)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model",))
def backbone_features(variables: dict, points: jax.Array, colors: jax.Array,
                      point_mask: jax.Array, *, model: student_lib.PointModel) -> jax.Array:
  """The backbone's per-point features [B, N, C] in inference mode (the probe's input)."""
  _, aux = model.apply(variables, points, colors, point_mask, train=False)
  return aux["features"]


def map_blocks(fn, scenes: Sequence[EvalScene], batch_size: int) -> dict[tuple[int, int], Any]:
  """`fn(points, colors, point_mask)` on every block of `scenes`, in batches of `batch_size`.

  Returns:
    {(scene index, block index): fn's output row for that block, as numpy}.
  """
  blocks = [(i, j) for i, s in enumerate(scenes) for j in range(len(s.blocks))]
  out = {}
  for start in range(0, len(blocks), batch_size):
    chunk = blocks[start:start + batch_size]
    # A short last batch is padded with copies of its first block: one shape, one compile.
    padded = chunk + [chunk[0]] * (batch_size - len(chunk))
    stacked = {k: np.stack([scenes[i].blocks[j][k] for i, j in padded])
               for k in ("points", "colors", "point_mask")}
    rows = np.asarray(fn(stacked["points"], stacked["colors"], stacked["point_mask"]))
    for row, key in enumerate(chunk):
      out[key] = rows[row]
  return out


def spread_confusion(scenes: Sequence[EvalScene], block_predictions: dict[tuple[int, int], Any],
                     num_classes: int = labels_lib.NUM_CLASSES) -> np.ndarray:
  """The [C, C] confusion matrix over every point: each takes its nearest drawn point's class."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  for i, scene in enumerate(scenes):
    full = np.empty(len(scene.labels), np.int32)
    for j, (members, nearest) in enumerate(zip(scene.cells, scene.nearest)):
      full[members] = block_predictions[i, j][nearest]
    confusion += metrics_lib.confusion_matrix(scene.labels, full, num_classes)
  return confusion


def evaluate(model: student_lib.PointModel, variables: dict, scenes: Sequence[EvalScene], *,
             batch_size: int, num_classes: int = labels_lib.NUM_CLASSES) -> np.ndarray:
  """Labels every point of the prepared scenes; returns the [C, C] confusion matrix."""
  fn = functools.partial(predict, variables, model=model)
  return spread_confusion(scenes, map_blocks(fn, scenes, batch_size), num_classes)


