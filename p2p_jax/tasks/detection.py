"""3D object detection on scene point clouds (VoteNet): data, samples, model and evaluation.

Data. Scenes come from `scannet_boxes`: points (axis-aligned by the scene's `axisAlignment`),
colours, instance ids and the axis-aligned boxes of the 18 benchmark classes. Limited
annotations label a nested, seeded subset of the training scenes (`segmentation.
labelled_subset`: the 1% subset lies inside the 5% one, and so on); only those scenes are
trained on, and the size templates (`mean_sizes`) come from their boxes alone.

Samples, as VoteNet's ScanNet loader: each scene is centred horizontally on its bounding
box, `num_points` points are drawn at random (all of them, padded and masked, when fewer);
training samples are flipped in x and in y with probability 1/2 each and rotated about z by
up to `max_rotation` (5 degrees in VoteNet), and each axis-aligned box becomes the
axis-aligned bound of its rotated corners. Oriented boxes (SUN RGB-D's, with
`model.num_heading_bins` > 1) turn with the points instead: a mirror in x maps heading h to
pi - h, one in y to -h, and a rotation adds its angle. The input features are the colours in [0, 1]
(constant grey without colours), as in pretraining and segmentation. A point's vote target
is the centre of its instance's box (`votenet.vote_targets` with `point_instance_box`).

Evaluation, as VoteNet's on ScanNet: every val scene is sampled once without augmentation;
proposals with objectness above `conf_threshold` go through per-class 3D NMS (IoU 0.25 on
the predicted class), and each kept proposal is reported once per class with score
objectness x that class's probability (`per_class_proposal`). Average precision (VOC 2010+,
`p2p_jax.boxes`) at IoU 0.25 and 0.5 is computed against every box of the val scenes, with
axis-aligned IoU (ScanNet) or the IoU of boxes rotated about z (oriented boxes; their NMS
compares the boxes' axis-aligned bounds, as VoteNet's).

A SUN RGB-D reader is one dataset module returning scenes in the form `load_split` returns
(points, colours, instances or none, boxes with headings, classes), with its class names.
"""

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from p2p_jax import boxes as boxes_lib
from p2p_jax import models
from p2p_jax.data import prepare as prepare_lib
from p2p_jax.data import scannet_boxes
from p2p_jax.models import student as student_lib
from p2p_jax.models import votenet

DATASETS = ("scannet",)  # scannet_boxes: ScanNet, or the synthetic rooms in its layout
CLASS_NAMES = scannet_boxes.DETECTION_NAMES


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """How a scene becomes a fixed-shape sample (see the module docstring)."""
  num_points: int
  max_boxes: int
  flip: bool
  max_rotation: float
  scale_range: tuple[float, float]
  colors: bool
  oriented: bool = False  # boxes with headings (SUN RGB-D); else axis-aligned (ScanNet)


def sample_config(config: ml_collections.ConfigDict) -> SampleConfig:
  p = config.points
  return SampleConfig(num_points=p.num_points, max_boxes=config.boxes.max_boxes, flip=p.flip,
                      max_rotation=p.max_rotation, scale_range=tuple(p.scale_range),
                      colors=p.colors, oriented=config.model.num_heading_bins > 1)


def prepare(data: ml_collections.ConfigDict) -> None:
  """Writes (synthetic rooms if asked and) scannet_boxes: `p2p_jax.data.prepare.boxes`."""
  if data.dataset not in DATASETS:
    raise ValueError(f"data.dataset: {data.dataset!r}; expected one of {DATASETS}")
  prepare_lib.boxes(data)


def load_split(data: ml_collections.ConfigDict, split: str) -> list[dict[str, Any]]:
  """The scenes of a prepared split as numpy: {"points", "colors", "instances", "boxes",
  "box_classes", "box_instances", "scene" (str)}."""
  if data.dataset not in DATASETS:
    raise ValueError(f"data.dataset: {data.dataset!r}; expected one of {DATASETS}")
  source = scannet_boxes.load_boxes(data.data_dir, split)
  keys = ("points", "colors", "instances", "boxes", "box_classes", "box_instances")
  out = []
  for i in range(len(source)):
    example = source[i]
    scene = {k: np.asarray(example[k]) for k in keys}
    name = example["scene"]
    scene["scene"] = name.decode() if isinstance(name, bytes) else str(name)
    out.append(scene)
  return out


def check_max_boxes(scenes: Sequence[dict[str, Any]], max_boxes: int, split: str) -> None:
  """Every box is kept: a scene with more than `max_boxes` is an error naming it."""
  over = [(s["scene"], len(s["boxes"])) for s in scenes if len(s["boxes"]) > max_boxes]
  if over:
    raise ValueError(f"boxes.max_boxes = {max_boxes}: {len(over)} {split} scene(s) have more "
                     f"boxes, e.g. {over[:3]}; raise it to at least {max(n for _, n in over)}")


def mean_sizes(scenes: Sequence[dict[str, Any]],
               num_classes: int = len(CLASS_NAMES)) -> tuple[tuple[float, float, float], ...]:
  """Each class's mean box size over `scenes` (VoteNet's size templates); a class without a
  box takes the mean over all boxes (1 m cubes if there are none)."""
  sizes = [s["boxes"][:, 3:6] for s in scenes if len(s["boxes"])]
  classes = [s["box_classes"] for s in scenes if len(s["boxes"])]
  if not sizes:
    return tuple((1.0, 1.0, 1.0) for _ in range(num_classes))
  sizes, classes = np.concatenate(sizes).astype(np.float64), np.concatenate(classes)
  overall = sizes.mean(axis=0)
  return tuple(tuple(float(v) for v in (sizes[classes == c].mean(axis=0)
                                        if np.any(classes == c) else overall))
               for c in range(num_classes))


def _rotate_aligned_boxes(boxes: np.ndarray, rotation: np.ndarray) -> np.ndarray:
  """The axis-aligned bounds of axis-aligned boxes [M, 7] rotated by `rotation` [3, 3] about
  the origin (VoteNet's `rotate_aligned_boxes`)."""
  if not len(boxes):
    return boxes
  signs = np.array([[sx, sy] for sx in (-1, 1) for sy in (-1, 1)], np.float32)  # [4, 2]
  corners = boxes[:, None, :2] + signs[None] * boxes[:, None, 3:5] / 2  # [M, 4, 2]
  rotated = corners @ rotation[:2, :2].T
  low, high = rotated.min(axis=1), rotated.max(axis=1)
  out = boxes.copy()
  out[:, :2] = (low + high) / 2
  out[:, 3:5] = high - low
  out[:, 2] = boxes[:, 2]  # z is unchanged by a rotation about z
  return out


def sample_scene(scene: dict[str, Any], rng: np.random.Generator, cfg: SampleConfig, *,
                 augment: bool) -> dict[str, np.ndarray]:
  """A fixed-shape sample of `scene` (see the module docstring).

  Returns:
    "points" float32 [N, 3], "colors" float32 [N, 3], "point_mask" bool [N],
    "point_instance_box" int32 [N] (index of the point's box, -1 for none), "gt_boxes"
    float32 [M, 7], "gt_classes" int32 [M], "gt_mask" bool [M], with N = num_points and
    M = max_boxes.
  """
  n, m = cfg.num_points, cfg.max_boxes
  count = min(len(scene["points"]), n)
  if len(scene["boxes"]) > m:
    raise ValueError(f"{scene['scene']}: {len(scene['boxes'])} boxes > boxes.max_boxes = {m}")
  idx = rng.choice(len(scene["points"]), count, replace=False)
  lo, hi = scene["points"].min(axis=0), scene["points"].max(axis=0)
  shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 0.0], np.float32)
  points = scene["points"][idx] - shift
  boxes = scene["boxes"].astype(np.float32).copy()
  boxes[:, :3] -= shift
  if augment:
    for axis in (0, 1) if cfg.flip else ():
      if rng.random() < 0.5:
        points[:, axis] = -points[:, axis]
        boxes[:, axis] = -boxes[:, axis]
        # A mirror turns a heading h into pi - h (x) or -h (y).
        boxes[:, 6] = (math.pi if axis == 0 else 0.0) - boxes[:, 6]
    angle = rng.uniform(-cfg.max_rotation, cfg.max_rotation)
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], np.float32)
    points = points @ rotation.T
    if cfg.oriented:
      boxes[:, :3] = boxes[:, :3] @ rotation.T
      boxes[:, 6] += angle
    else:
      boxes = _rotate_aligned_boxes(boxes, rotation)
    scale = np.float32(rng.uniform(*cfg.scale_range))
    points = points * scale
    boxes[:, :6] *= scale
  box_of_instance = {int(i): b for b, i in enumerate(scene["box_instances"])}
  instance_box = np.array([box_of_instance.get(int(i), -1) for i in scene["instances"][idx]],
                          np.int32) if count else np.zeros((0,), np.int32)
  out = {"points": np.zeros((n, 3), np.float32), "colors": np.full((n, 3), 0.5, np.float32),
         "point_mask": np.zeros((n,), bool), "point_instance_box": np.full((n,), -1, np.int32),
         "gt_boxes": np.zeros((m, 7), np.float32), "gt_classes": np.zeros((m,), np.int32),
         "gt_mask": np.zeros((m,), bool)}
  out["points"][:count] = points
  if cfg.colors:
    out["colors"][:count] = scene["colors"][idx].astype(np.float32) / 255.0
  out["point_mask"][:count] = True
  out["point_instance_box"][:count] = instance_box
  k = len(boxes)
  if cfg.oriented:  # headings in (-pi, pi]
    boxes[:, 6] = np.pi - np.mod(np.pi - boxes[:, 6], 2 * np.pi)
  out["gt_boxes"][:k] = boxes
  out["gt_classes"][:k] = scene["box_classes"]
  out["gt_mask"][:k] = True
  return out


def training_batch(scenes: Sequence[dict[str, Any]], seed: int, step: int, batch_size: int,
                   cfg: SampleConfig) -> dict[str, np.ndarray]:
  """Batch `step` of a run: a function of (seed, step) alone, so runs are reproducible."""
  rng = np.random.default_rng((seed, step))
  samples = [sample_scene(scenes[rng.integers(len(scenes))], rng, cfg, augment=True)
             for _ in range(batch_size)]
  return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def eval_samples(scenes: Sequence[dict[str, Any]], cfg: SampleConfig,
                 seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Each val scene sampled once, without augmentation, with a generator of its index."""
  return [sample_scene(s, np.random.default_rng((seed, i)), cfg, augment=False)
          for i, s in enumerate(scenes)]


def make_model(student: str, spec: votenet.DetectionSpec, model: ml_collections.ConfigDict,
               **backbone_kwargs) -> votenet.VoteNet:
  """VoteNet on the student backbone `student` (a key of `p2p_jax.models.STUDENTS`)."""
  return votenet.VoteNet(models.backbone(student, **backbone_kwargs), spec,
                         num_seeds=model.num_seeds, num_proposals=model.num_proposals,
                         vote_radius=model.vote_radius, vote_nsample=model.vote_nsample,
                         hidden=model.hidden)


# Random {"params", "batch_stats"} of a model for `num_points` points, compiled once per model.
init_variables = student_lib.init_variables


def targets(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The loss targets of a batch: its boxes and each point's vote (its box's centre)."""
  offsets, valid = votenet.vote_targets(batch["points"], batch["point_mask"],
                                        batch["gt_boxes"], batch["gt_mask"],
                                        batch["point_instance_box"])
  return {"gt_boxes": batch["gt_boxes"], "gt_classes": batch["gt_classes"],
          "gt_mask": batch["gt_mask"], "vote_offsets": offsets, "vote_valid": valid}


@functools.partial(jax.jit, static_argnames=("model", "nms_iou", "conf_threshold"))
def detect(variables: dict, points: jax.Array, colors: jax.Array, point_mask: jax.Array, *,
           model: votenet.VoteNet, nms_iou: float, conf_threshold: float) -> dict[str, jax.Array]:
  """The network's boxes after per-class 3D NMS, batched.

  Returns:
    "boxes" [B, K, 7], "objectness" [B, K], "class_probs" [B, K, C] and "keep" [B, K] bool:
    the proposals that pass the objectness threshold and survive NMS on their class.
  """
  outputs, _ = model.apply(variables, points, colors, point_mask, train=False)
  boxes, objectness, classes = votenet.decode_boxes(outputs, model.spec)
  # A size residual can overshoot its template below zero: such a box is empty, not inverted.
  boxes = boxes.at[..., 3:6].set(jnp.maximum(boxes[..., 3:6], 0.0))
  valid = outputs["proposal_mask"] & (objectness > conf_threshold)
  k = boxes.shape[1]
  nms = functools.partial(boxes_lib.nms, iou_threshold=nms_iou, max_boxes=k)
  keep_idx, keep_mask = jax.vmap(lambda b, s, v, c: nms(b, s, v, classes=c))(
      aligned_bounds(boxes), objectness, valid, classes)
  keep = jnp.zeros(boxes.shape[:2], bool)
  keep = jax.vmap(lambda kp, i, m: kp.at[i].max(m))(keep, keep_idx, keep_mask)
  return {"boxes": boxes, "objectness": objectness,
          "class_probs": jax.nn.softmax(outputs["sem_logits"], axis=-1), "keep": keep}


def aligned_bounds(boxes: jax.Array) -> jax.Array:
  """The axis-aligned bounds [..., 7] (heading 0) of boxes rotated about z: what VoteNet's
  3D NMS compares (the extent of each box's corners)."""
  c, s = jnp.abs(jnp.cos(boxes[..., 6])), jnp.abs(jnp.sin(boxes[..., 6]))
  dx, dy = boxes[..., 3], boxes[..., 4]
  return jnp.concatenate([boxes[..., :3], jnp.stack([c * dx + s * dy, s * dx + c * dy], -1),
                          boxes[..., 5:6], jnp.zeros_like(boxes[..., 6:])], axis=-1)


def per_class_predictions(detections: dict[str, np.ndarray],
                          ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """VoteNet's `per_class_proposal`: each kept proposal once per class, scored by objectness
  x that class's probability; one (boxes [P, 7], classes [P], scores [P]) per scene."""
  out = []
  num_classes = detections["class_probs"].shape[-1]
  for b in range(detections["boxes"].shape[0]):
    kept = np.flatnonzero(detections["keep"][b])
    boxes = np.repeat(detections["boxes"][b][kept], num_classes, axis=0)
    classes = np.tile(np.arange(num_classes), len(kept))
    scores = (detections["objectness"][b][kept, None]
              * detections["class_probs"][b][kept]).reshape(-1)
    out.append((boxes, classes, scores))
  return out


def ground_truth(samples: Sequence[dict[str, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
  """Each sample's valid boxes and classes: what `p2p_jax.boxes.evaluate` scores against."""
  return [(s["gt_boxes"][s["gt_mask"]], s["gt_classes"][s["gt_mask"]]) for s in samples]


def evaluate(model: votenet.VoteNet, variables: dict, samples: Sequence[dict[str, np.ndarray]],
             *, batch_size: int, nms_iou: float,
             conf_threshold: float, thresholds: Sequence[float] = (0.25, 0.5),
             oriented: bool = False) -> tuple[dict[str, float], list]:
  """mAP / AR of `model` on the val scenes (module docstring), and the predictions.

  Args:
    samples: `eval_samples(val scenes, ...)`; each carries every box of its scene, the
      ground truth (shifted as its points are).
    oriented: score with the IoU of boxes rotated about z (SUN RGB-D), else axis-aligned
      IoU (ScanNet; predicted headings are ignored).
  """
  predictions = []
  for start in range(0, len(samples), batch_size):
    chunk = list(samples[start:start + batch_size])
    pad = batch_size - len(chunk)  # one shape: one compilation
    batch = {k: np.stack([s[k] for s in chunk] + [chunk[0][k]] * pad) for k in chunk[0]}
    detections = jax.device_get(detect(variables, batch["points"], batch["colors"],
                                       batch["point_mask"], model=model, nms_iou=nms_iou,
                                       conf_threshold=conf_threshold))
    predictions += per_class_predictions(detections)[:len(chunk)]
  scores = boxes_lib.evaluate(
      predictions, ground_truth(samples), thresholds=tuple(thresholds), class_names=CLASS_NAMES,
      iou_fn=boxes_lib.iou_oriented if oriented else boxes_lib.iou_aligned_numpy)
  return scores, predictions


def random_predictions(samples: Sequence[dict[str, np.ndarray]], per_scene: int,
                       seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Random proposals in each sample's extent (random sizes up to 2 m, classes and scores):
  the chance level of the evaluation."""
  rng = np.random.default_rng(seed)
  out = []
  for s in samples:
    pts = s["points"][s["point_mask"]]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centres = rng.uniform(lo, hi, (per_scene, 3))
    sizes = rng.uniform(0.1, 2.0, (per_scene, 3))
    boxes = np.concatenate([centres, sizes, np.zeros((per_scene, 1))], axis=1)
    out.append((boxes, rng.integers(len(CLASS_NAMES), size=per_scene),
                rng.random(per_scene)))
  return out


def chance_level(samples: Sequence[dict[str, np.ndarray]], per_scene: int, *, draws: int = 10,
                 thresholds: Sequence[float] = (0.25, 0.5),
                 oriented: bool = False) -> dict[str, Any]:
  """The scores of random proposals (`random_predictions`) on the samples a model is
  evaluated on: what a model must beat to have learned anything.

  Args:
    samples: `eval_samples(...)`, as given to `evaluate`.
    per_scene: proposals per scene; the model's (num_proposals x classes, as
      `per_class_predictions` reports each kept proposal once per class) is the fair count.
    draws: independent draws (seeds 0..draws-1).

  Returns:
    "mAP@<t>" and "mAR@<t>": the mean over the draws; "mAP@<t>/draws": each draw's;
    "draws" and "per_scene".
  """
  iou_fn = boxes_lib.iou_oriented if oriented else boxes_lib.iou_aligned_numpy
  truth = ground_truth(samples)
  runs = [boxes_lib.evaluate(random_predictions(samples, per_scene, seed=d), truth,
                             thresholds=tuple(thresholds), class_names=CLASS_NAMES,
                             iou_fn=iou_fn) for d in range(draws)]
  out: dict[str, Any] = {"draws": draws, "per_scene": per_scene}
  for t in thresholds:
    for metric in ("mAP", "mAR"):
      key = f"{metric}@{t:g}"
      out[key] = float(np.mean([r[key] for r in runs]))
    out[f"mAP@{t:g}/draws"] = [float(r[f"mAP@{t:g}"]) for r in runs]
  return out
