"""3D bounding boxes for indoor object detection: IoU, NMS and VoteNet-style average precision.

Box convention (one box is 7 floats, arrays are `boxes [..., 7]`):

    (cx, cy, cz, dx, dy, dz, heading)

the centre, the full size along the box's own x, y and z axes (sizes >= 0), and the heading:
the rotation about +z in radians, counter-clockwise seen from above, 0 for a box whose axes
are the world axes. Boxes only ever turn about z (gravity-aligned rooms: ScanNet, SUN RGB-D).

Which functions run where:

    corners             NumPy  [..., 7] -> [..., 8, 3]
    iou_aligned         JAX    [N, 7] x [M, 7] -> [N, M], heading ignored; runs under jit
    iou_aligned_numpy   NumPy  the same in float64, for evaluation on the host
    iou_oriented        NumPy  [N, 7] x [M, 7] -> [N, M], boxes turned by their headings
    nms                 JAX    greedy 3D NMS with static output shapes; runs under jit
    average_precision   NumPy  VOC 2010+ AP per class over a dataset (VoteNet's `eval_det`)
    evaluate            NumPy  mAP / mAR at several IoU thresholds as one flat dict

The evaluation protocol is VoteNet's (Qi et al. 2019, `eval_det`), itself the PASCAL VOC
2010+ protocol: axis-aligned IoU for ScanNet (`iou_fn=iou_aligned_numpy`), oriented IoU for
SUN RGB-D (`iou_fn=iou_oriented`).
"""

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Box-local corner offsets in units of the size: the bottom face (z = -dz/2) counter-clockwise
# seen from above starting at (+x, +y), then the top face in the same order.
_CORNER_SIGNS = 0.5 * np.array([[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
                                [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]], np.float64)
# Box pairs clipped at once by `iou_oriented`: a few MiB of float64 work arrays per chunk.
_PAIR_CHUNK = 1 << 14


def _check_boxes_numpy(name: str, boxes) -> np.ndarray:
  boxes = np.asarray(boxes, np.float64)
  if boxes.ndim != 2 or boxes.shape[-1] != 7:
    raise ValueError(f"{name} must have shape [N, 7], got {boxes.shape}")
  if np.any(boxes[:, 3:6] < 0):
    raise ValueError(f"{name} has negative sizes")
  return boxes


def _check_boxes_jax(name: str, boxes) -> jax.Array:
  boxes = jnp.asarray(boxes, jnp.float32)
  if boxes.ndim != 2 or boxes.shape[-1] != 7:
    raise ValueError(f"{name} must have shape [N, 7], got {boxes.shape}")
  return boxes


def corners(boxes) -> np.ndarray:
  """The 8 corners of each box.

  Corners 0-3 are the bottom face (z = cz - dz/2), counter-clockwise seen from above and
  starting at the box's local (+dx/2, +dy/2); corners 4-7 are the top face in the same order.
  So `corners(boxes)[..., :4, :2]` is the bird's-eye-view footprint, counter-clockwise.

  Args:
    boxes: [..., 7] (see the module docstring).

  Returns:
    float64 [..., 8, 3].
  """
  boxes = np.asarray(boxes, np.float64)
  if boxes.ndim < 1 or boxes.shape[-1] != 7:
    raise ValueError(f"boxes must have shape [..., 7], got {boxes.shape}")
  local = boxes[..., None, 3:6] * _CORNER_SIGNS  # [..., 8, 3]
  cos, sin = np.cos(boxes[..., 6:7]), np.sin(boxes[..., 6:7])  # [..., 1]: broadcast over corners
  x = cos * local[..., 0] - sin * local[..., 1] + boxes[..., 0:1]
  y = sin * local[..., 0] + cos * local[..., 1] + boxes[..., 1:2]
  z = local[..., 2] + boxes[..., 2:3]
  return np.stack([x, y, z], axis=-1)


def _iou_aligned(a, b, xp):
  """Axis-aligned IoU of [N, 7] x [M, 7] in the array namespace `xp` (numpy or jax.numpy)."""
  lo_a, hi_a = a[:, None, :3] - a[:, None, 3:6] / 2, a[:, None, :3] + a[:, None, 3:6] / 2
  lo_b, hi_b = b[None, :, :3] - b[None, :, 3:6] / 2, b[None, :, :3] + b[None, :, 3:6] / 2
  overlap = xp.maximum(xp.minimum(hi_a, hi_b) - xp.maximum(lo_a, lo_b), 0)
  inter = xp.prod(overlap, axis=-1)
  union = xp.prod(a[:, 3:6], axis=-1)[:, None] + xp.prod(b[:, 3:6], axis=-1)[None, :] - inter
  # Two empty boxes have no union: IoU 0, not NaN.
  return xp.where(union > 0, inter / xp.where(union > 0, union, 1), 0)


def iou_aligned(a: jax.Array, b: jax.Array) -> jax.Array:
  """Axis-aligned 3D IoU of every pair, ignoring the headings (JAX, float32, jit-able).

  Each box is taken as the axis-aligned cuboid of its centre and sizes, which is how VoteNet
  scores ScanNet (whose boxes have no heading). Empty boxes have IoU 0 with everything.

  Args:
    a: [N, 7] boxes.
    b: [M, 7] boxes.

  Returns:
    float32 [N, M].
  """
  return _iou_aligned(_check_boxes_jax("a", a), _check_boxes_jax("b", b), jnp)


def iou_aligned_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`iou_aligned` in NumPy float64: no tracing or compiling per shape, for evaluation.

  Args:
    a: [N, 7] boxes.
    b: [M, 7] boxes.

  Returns:
    float64 [N, M].
  """
  return _iou_aligned(_check_boxes_numpy("a", a), _check_boxes_numpy("b", b), np)


def _clip_half_plane(poly: np.ndarray, count: np.ndarray, start: np.ndarray,
                     end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One Sutherland-Hodgman step, vectorised over P polygons.

  Keeps the part of each polygon left of the directed line start -> end (the inside of a
  counter-clockwise clip polygon).

  Args:
    poly: [P, K, 2] vertices in order; only the first `count` of each row are real.
    count: [P] int vertex counts.
    start: [P, 2] a point of each clip line.
    end: [P, 2] a second point; the kept side is on the left.

  Returns:
    The clipped polygons [P, K', 2] and their vertex counts [P], K' the largest count.
  """
  num, width = poly.shape[:2]
  slot = np.arange(width)
  real = slot < count[:, None]
  following = np.where(slot + 1 < count[:, None], slot + 1, 0)
  nxt = np.take_along_axis(poly, following[..., None], axis=1)
  edge = (end - start)[:, None, :]

  def side(p):  # > 0 left of the line, < 0 right of it
    rel = p - start[:, None, :]
    return edge[..., 0] * rel[..., 1] - edge[..., 1] * rel[..., 0]

  d_cur, d_nxt = side(poly), side(nxt)
  in_cur, in_nxt = d_cur >= 0, d_nxt >= 0
  crossing = real & (in_cur != in_nxt)
  # The sides differ strictly in sign where the edge crosses, so the denominator is not 0.
  t = d_cur / np.where(crossing, d_cur - d_nxt, 1.0)
  hit = poly + t[..., None] * (nxt - poly)
  # Each input vertex emits itself if inside, then the crossing of its outgoing edge if any.
  candidates = np.stack([poly, hit], axis=2).reshape(num, 2 * width, 2)
  emitted = np.stack([real & in_cur, crossing], axis=2).reshape(num, 2 * width)
  new_count = emitted.sum(axis=1)
  order = np.argsort(~emitted, axis=1, kind="stable")[:, :max(int(new_count.max()), 1)]
  return np.take_along_axis(candidates, order[..., None], axis=1), new_count


def _polygon_area(poly: np.ndarray, count: np.ndarray) -> np.ndarray:
  """Shoelace area of P counter-clockwise polygons [P, K, 2] with `count` real vertices."""
  slot = np.arange(poly.shape[1])
  following = np.where(slot + 1 < count[:, None], slot + 1, 0)
  nxt = np.take_along_axis(poly, following[..., None], axis=1)
  cross = poly[..., 0] * nxt[..., 1] - poly[..., 1] * nxt[..., 0]
  area = 0.5 * np.sum(np.where(slot < count[:, None], cross, 0.0), axis=1)
  return np.where(count >= 3, np.maximum(area, 0.0), 0.0)


def _footprint_intersection(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
  """Areas of the intersections of P pairs of convex counter-clockwise quadrilaterals [P, 4, 2]."""
  poly, count = subject, np.full(len(subject), 4)
  for e in range(4):
    poly, count = _clip_half_plane(poly, count, clip[:, e], clip[:, (e + 1) % 4])
  return _polygon_area(poly, count)


def iou_oriented(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """3D IoU of every pair of boxes turned about z by their headings (NumPy, float64).

  The intersection is the bird's-eye-view overlap of the two footprints (convex polygon
  clipping, Sutherland-Hodgman) times the overlap of the z extents; the union is the sum of
  the volumes minus the intersection. This is the IoU VoteNet scores SUN RGB-D with. Pairs
  whose bounding circles or z extents do not meet are 0 without clipping.

  Args:
    a: [N, 7] boxes.
    b: [M, 7] boxes.

  Returns:
    float64 [N, M]; 0 for pairs of empty boxes.
  """
  a, b = _check_boxes_numpy("a", a), _check_boxes_numpy("b", b)
  z_overlap = np.maximum(
      np.minimum(a[:, None, 2] + a[:, None, 5] / 2, b[None, :, 2] + b[None, :, 5] / 2)
      - np.maximum(a[:, None, 2] - a[:, None, 5] / 2, b[None, :, 2] - b[None, :, 5] / 2), 0.0)
  radius_a, radius_b = np.hypot(a[:, 3], a[:, 4]) / 2, np.hypot(b[:, 3], b[:, 4]) / 2
  centre_dist = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
  touching = (z_overlap > 0) & (centre_dist <= radius_a[:, None] + radius_b[None, :])
  area = np.zeros((len(a), len(b)))
  rows, cols = np.nonzero(touching)
  footprint_a, footprint_b = corners(a)[:, :4, :2], corners(b)[:, :4, :2]
  for s in range(0, len(rows), _PAIR_CHUNK):
    i, j = rows[s:s + _PAIR_CHUNK], cols[s:s + _PAIR_CHUNK]
    # Coordinates relative to b's centre keep the shoelace sums away from cancellation.
    origin = b[j, None, :2]
    area[i, j] = _footprint_intersection(footprint_a[i] - origin, footprint_b[j] - origin)
  inter = area * z_overlap
  union = np.prod(a[:, 3:6], axis=-1)[:, None] + np.prod(b[:, 3:6], axis=-1)[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: jax.Array,
        scores: jax.Array,
        valid: jax.Array,
        *,
        iou_threshold: float,
        max_boxes: int,
        classes: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Greedy 3D non-maximum suppression with axis-aligned IoU (JAX, jit-able).

  Repeatedly keeps the highest-scoring remaining valid box (equal scores: the lower index
  first) and drops every remaining box whose `iou_aligned` with it is > `iou_threshold`
  (VoteNet's `nms_3d_faster` keeps IoU <= threshold). With `classes`, a box only suppresses
  boxes of its own class (per-class NMS, VoteNet's `nms_3d_faster_samecls`). Invalid boxes are
  never kept and suppress nothing. Runs `max_boxes` steps of O(N) each, without an N x N matrix.

  Args:
    boxes: [N, 7].
    scores: [N] float.
    valid: [N] bool, False for padding or boxes to drop.
    iou_threshold: suppression threshold.
    max_boxes: K, the static number of output slots (static under jit).
    classes: optional [N] int class of each box.

  Returns:
    keep_idx: [K] int32 indices into the N boxes, in the order kept (descending score);
      padding slots hold 0.
    keep_mask: [K] bool, True for kept boxes, False for padding (fewer than K survive).
  """
  boxes = _check_boxes_jax("boxes", boxes)
  num = boxes.shape[0]
  scores, valid = jnp.asarray(scores), jnp.asarray(valid, bool)
  classes = jnp.zeros(num, jnp.int32) if classes is None else jnp.asarray(classes)
  for name, x in (("scores", scores), ("valid", valid), ("classes", classes)):
    if x.shape != (num,):
      raise ValueError(f"{name} must have shape [{num}], got {x.shape}")
  if not isinstance(max_boxes, int) or max_boxes < 0:
    raise ValueError(f"max_boxes must be a non-negative int, got {max_boxes!r}")
  if num == 0:
    return jnp.zeros(max_boxes, jnp.int32), jnp.zeros(max_boxes, bool)

  order = jnp.argsort(-scores, stable=True).astype(jnp.int32)
  boxes, classes, alive = boxes[order], classes[order], valid[order]
  position = jnp.arange(num)

  def body(k, carry):
    alive, keep_idx, keep_mask = carry
    best = jnp.argmax(alive)  # the first alive box in score order
    found = alive[best]
    iou = _iou_aligned(boxes[best][None], boxes, jnp)[0]
    suppressed = ((iou > iou_threshold) & (classes == classes[best])) | (position == best)
    # With nothing alive, `alive` is all False and stays so.
    return (alive & ~suppressed, keep_idx.at[k].set(jnp.where(found, order[best], 0)),
            keep_mask.at[k].set(found))

  init = (alive, jnp.zeros(max_boxes, jnp.int32), jnp.zeros(max_boxes, bool))
  _, keep_idx, keep_mask = lax.fori_loop(0, max_boxes, body, init)
  return keep_idx, keep_mask


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
  """Area under the interpolated precision-recall curve, VOC 2010+ (`voc_ap`, 07 metric off).

  Precision is made non-increasing from the right (the interpolated precision at recall r is
  the best precision at any recall >= r), then summed over the steps where recall changes.
  """
  mrec = np.concatenate([[0.0], recall, [1.0]])
  mpre = np.concatenate([[0.0], precision, [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  steps = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _match_scene(iou: np.ndarray, iou_threshold: float) -> np.ndarray:
  """VOC matching in one scene: [P, G] IoU of score-sorted predictions -> [P] bool true positives.

  Each prediction, in order, looks at the ground-truth box it overlaps most (the first on
  ties), matched or not. Above the threshold and unmatched, it is a true positive and takes
  the box; otherwise (duplicate, or too little overlap) it is a false positive.
  """
  tp = np.zeros(iou.shape[0], bool)
  if iou.shape[1] == 0:
    return tp
  best = np.argmax(iou, axis=1)
  best_iou = iou[np.arange(len(best)), best]
  matched = np.zeros(iou.shape[1], bool)
  for p in np.flatnonzero(best_iou > iou_threshold):
    if not matched[best[p]]:
      matched[best[p]] = tp[p] = True
  return tp


def _check_scene(s: int, pred, gt) -> tuple[np.ndarray, ...]:
  pred_boxes, pred_classes, pred_scores = (np.asarray(x) for x in pred)
  gt_boxes, gt_classes = (np.asarray(x) for x in gt)
  for name, box, cls in (("prediction", pred_boxes, pred_classes),
                         ("ground-truth", gt_boxes, gt_classes)):
    if box.shape != (len(cls), 7) or cls.ndim != 1:
      raise ValueError(f"scene {s}: {name} boxes {box.shape} and classes {cls.shape} must be "
                       f"[n, 7] and [n]")
  if pred_scores.shape != pred_classes.shape:
    raise ValueError(f"scene {s}: scores {pred_scores.shape} do not match classes "
                     f"{pred_classes.shape}")
  if np.isnan(pred_scores).any():
    raise ValueError(f"scene {s}: NaN scores")
  return pred_boxes, pred_classes, pred_scores, gt_boxes, gt_classes


def average_precision(predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
                      iou_threshold: float,
                      *,
                      iou_fn: Callable = iou_aligned_numpy) -> dict[str, object]:
  """Per-class average precision and recall over a dataset (PASCAL VOC 2010+, VoteNet).

  For each class, all predictions of that class in all scenes are ranked by score (equal
  scores: earlier scene, then lower index, first). Going down the ranking, a prediction is a
  true positive if the ground-truth box of its class in its scene that it overlaps most has
  IoU > `iou_threshold` (strictly, as VOC and VoteNet's `eval_det`) and has not been matched
  by a higher-ranked prediction; otherwise it is a false positive, so duplicates count
  against precision. Recall is TP / (ground-truth boxes of the class), precision
  TP / (TP + FP), both cumulative down the ranking; AP is the area under the interpolated
  curve (VOC 2010+, `voc_ap(use_07_metric=False)`), AR the recall after the last prediction.

  Classes are those that occur in the predictions or the ground truth:
    * a class with ground truth but no prediction has AP 0 and AR 0 and counts in the means;
    * a class with predictions but no ground truth has no defined recall: AP and AR are NaN
      (what VoteNet's 0 / 0 yields) and it is left out of mAP and mAR (VoteNet's mean would
      turn NaN; here it follows `p2p_jax.metrics`, whose means cover classes present in the
      ground truth). mAP and mAR are NaN when no class has ground truth.

  Args:
    predictions: per scene, (boxes [P, 7], classes [P] int, scores [P] float).
    ground_truth: per scene, in the same order, (boxes [G, 7], classes [G] int).
    iou_threshold: e.g. 0.25 or 0.5.
    iou_fn: pairwise IoU [P, 7] x [G, 7] -> [P, G]: `iou_aligned_numpy` (ScanNet protocol,
      the default), `iou_oriented` (SUN RGB-D), or `iou_aligned` (float32; jit it, or every
      new shape compiles its operations one by one).

  Returns:
    {"ap": {class: AP}, "ar": {class: AR}, "num_gt": {class: ground-truth boxes},
     "map": mean AP, "mar": mean AR}, classes in increasing order.
  """
  if len(predictions) != len(ground_truth):
    raise ValueError(f"{len(predictions)} scenes of predictions but {len(ground_truth)} of "
                     f"ground truth")
  scenes = [_check_scene(s, p, g) for s, (p, g) in enumerate(zip(predictions, ground_truth))]
  all_classes = set()
  for _, pred_classes, _, _, gt_classes in scenes:
    all_classes.update(pred_classes.tolist())
    all_classes.update(gt_classes.tolist())

  ap, ar, num_gt = {}, {}, {}
  for c in sorted(all_classes):
    scores, tps, npos = [], [], 0
    for pred_boxes, pred_classes, pred_scores, gt_boxes, gt_classes in scenes:
      gt = gt_boxes[gt_classes == c]
      npos += len(gt)
      mine = pred_classes == c
      # A scene's predictions in the order of the global ranking, so the matching is the same.
      order = np.argsort(-pred_scores[mine], kind="stable")
      boxes = pred_boxes[mine][order]
      iou = np.zeros((len(boxes), len(gt)))
      if iou.size:
        iou = np.asarray(iou_fn(boxes, gt))
      scores.append(pred_scores[mine][order])
      tps.append(_match_scene(iou, iou_threshold))
    ranking = np.argsort(-np.concatenate(scores), kind="stable")
    tp = np.concatenate(tps)[ranking]
    num_gt[c] = npos
    if npos == 0:
      ap[c] = ar[c] = float("nan")
      continue
    tp_cum = np.cumsum(tp)
    recall = tp_cum / npos
    precision = tp_cum / np.arange(1, len(tp) + 1)  # TP + FP = predictions so far
    ap[c] = _voc_ap(recall, precision)
    ar[c] = float(recall[-1]) if len(recall) else 0.0

  present = [c for c in ap if num_gt[c] > 0]
  mean = lambda d: float(np.mean([d[c] for c in present])) if present else float("nan")
  return {"ap": ap, "ar": ar, "num_gt": num_gt, "map": mean(ap), "mar": mean(ar)}


def evaluate(predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
             ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
             thresholds: Sequence[float] = (0.25, 0.5),
             class_names: Sequence[str] | Mapping[int, str] | None = None,
             *,
             iou_fn: Callable = iou_aligned_numpy) -> dict[str, float]:
  """`average_precision` at several IoU thresholds, as one flat dict for logging.

  Args:
    predictions, ground_truth, iou_fn: as for `average_precision`.
    thresholds: IoU thresholds; VoteNet reports 0.25 and 0.5.
    class_names: name of each class id (a sequence indexed by id, or a mapping); by default
      the id itself.

  Returns:
    {"mAP@0.25": ..., "mAR@0.25": ..., "AP@0.25/<class>": ..., "AR@0.25/<class>": ..., then
     the same for each further threshold}, the threshold written with `:g`.
  """
  out = {}
  for t in thresholds:
    result = average_precision(predictions, ground_truth, t, iou_fn=iou_fn)
    out[f"mAP@{t:g}"], out[f"mAR@{t:g}"] = result["map"], result["mar"]
    for c in result["ap"]:
      name = str(c) if class_names is None else class_names[c]
      out[f"AP@{t:g}/{name}"] = result["ap"][c]
      out[f"AR@{t:g}/{name}"] = result["ar"][c]
  return out
