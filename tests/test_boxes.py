"""boxes.py against references written independently: voxel counting, shapely polygons, a plain
greedy NMS loop and a VOC evaluation that walks the ranked predictions one by one."""

import functools
import math

import jax
import numpy as np
import pytest
import shapely
import shapely.affinity

from p2p_jax import boxes

# ----------------------------------------------------------------------------------------------
# References


def lattice_boxes(rng, num, extent=8, max_size=5):
  """Axis-aligned boxes whose faces lie on the integer lattice of [0, extent]^3.

  Returns the boxes [num, 7] (heading 0) and their lower and upper corners [num, 3].
  """
  lo = rng.integers(0, extent - 1, size=(num, 3))
  hi = np.minimum(lo + rng.integers(1, max_size + 1, size=(num, 3)), extent)
  out = np.concatenate([(lo + hi) / 2, hi - lo, np.zeros((num, 1))], axis=1)
  return out, lo, hi


def voxel_iou(lo_a, hi_a, lo_b, hi_b, extent=8):
  """IoU by counting the unit cells inside each box: exact for boxes on the lattice."""
  centres = np.arange(extent) + 0.5

  def cells(lo, hi):  # [n, extent^3] occupancy
    inside = [(centres >= lo[:, d, None]) & (centres < hi[:, d, None]) for d in range(3)]
    grid = inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None]
    return grid.reshape(len(lo), -1).astype(np.float64)

  occ_a, occ_b = cells(lo_a, hi_a), cells(lo_b, hi_b)
  inter = occ_a @ occ_b.T
  return inter / (occ_a.sum(1)[:, None] + occ_b.sum(1)[None, :] - inter)


def ref_iou_aligned_pair(a, b):
  """One pair, explicit intervals in Python floats."""
  inter = 1.0
  for d in range(3):
    lo = max(a[d] - a[d + 3] / 2, b[d] - b[d + 3] / 2)
    hi = min(a[d] + a[d + 3] / 2, b[d] + b[d + 3] / 2)
    inter *= max(0.0, hi - lo)
  union = a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter
  return inter / union if union > 0 else 0.0


def footprint(box):
  """The bird's-eye-view rectangle of a box, built by shapely's own rotation."""
  cx, cy, _, dx, dy, _, heading = (float(v) for v in box)
  rect = shapely.box(-dx / 2, -dy / 2, dx / 2, dy / 2)
  rect = shapely.affinity.rotate(rect, heading, origin=(0, 0), use_radians=True)
  return shapely.affinity.translate(rect, cx, cy)


def ref_iou_oriented_pair(a, b):
  area = footprint(a).intersection(footprint(b)).area
  z = max(0.0, min(a[2] + a[5] / 2, b[2] + b[5] / 2) - max(a[2] - a[5] / 2, b[2] - b[5] / 2))
  inter = area * z
  union = a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter
  return inter / union if union > 0 else 0.0


def pairwise(pair_fn, a, b):
  return np.array([[pair_fn(x, y) for y in b] for x in a]).reshape(len(a), len(b))


def random_boxes(rng, num, *, oriented=False, spread=2.0):
  centres = rng.uniform(0, spread, size=(num, 3))
  sizes = rng.uniform(0.2, 1.5, size=(num, 3))
  heading = rng.uniform(-np.pi, np.pi, size=(num, 1)) if oriented else np.zeros((num, 1))
  return np.concatenate([centres, sizes, heading], axis=1)


def rotate_about(box_array, angle, pivot):
  """Turns whole boxes about a vertical axis through `pivot` [2]: centres and headings."""
  out = box_array.copy()
  rel = box_array[:, :2] - pivot
  c, s = math.cos(angle), math.sin(angle)
  out[:, 0] = c * rel[:, 0] - s * rel[:, 1] + pivot[0]
  out[:, 1] = s * rel[:, 0] + c * rel[:, 1] + pivot[1]
  out[:, 6] += angle
  return out


def box(x, y=0.0, z=0.0, dx=1.0, dy=1.0, dz=1.0, heading=0.0):
  return [x, y, z, dx, dy, dz, heading]


# ----------------------------------------------------------------------------------------------
# corners


def test_corners_hand_case():
  got = boxes.corners(np.array(box(1, 2, 3, dx=2, dy=1, dz=4, heading=np.pi / 2)))
  # Local (+1, +0.5) turned by 90 degrees is (-0.5, +1); the bottom is at z = 3 - 2.
  np.testing.assert_allclose(got[0], [0.5, 3, 1], atol=1e-12)
  np.testing.assert_allclose(got[6], [1.5, 1, 5], atol=1e-12)  # local (-1, -0.5), top


def test_corners_match_shapely_footprints():
  rng = np.random.default_rng(0)
  b = random_boxes(rng, 12, oriented=True).reshape(3, 4, 7)
  got = boxes.corners(b)
  assert got.shape == (3, 4, 8, 3)
  for box_, c in zip(b.reshape(-1, 7), got.reshape(-1, 8, 3)):
    bottom = shapely.Polygon(c[:4, :2])
    assert bottom.exterior.is_ccw
    assert bottom.symmetric_difference(footprint(box_)).area < 1e-12
    np.testing.assert_allclose(c[4:, :2], c[:4, :2])
    np.testing.assert_allclose(c[:4, 2], box_[2] - box_[5] / 2)
    np.testing.assert_allclose(c[4:, 2], box_[2] + box_[5] / 2)


# ----------------------------------------------------------------------------------------------
# IoU


@pytest.mark.parametrize("fn,tol", [(boxes.iou_aligned_numpy, 1e-12),
                                    (jax.jit(boxes.iou_aligned), 2e-6)])
def test_iou_aligned_vs_voxel_counting(fn, tol):
  rng = np.random.default_rng(1)
  a, lo_a, hi_a = lattice_boxes(rng, 40)
  b, lo_b, hi_b = lattice_boxes(rng, 30)
  b[:5], lo_b[:5], hi_b[:5] = a[:5], lo_a[:5], hi_a[:5]  # some identical pairs
  ref = voxel_iou(lo_a, hi_a, lo_b, hi_b)
  assert 0.1 < np.mean(ref > 0) < 0.9  # the test sees overlaps and disjoint pairs
  # Scaling and moving everything changes no IoU; headings are ignored.
  scale, shift = 0.37, np.array([1.3, -2.1, 0.4])
  for x in (a, b):
    x[:, :3] = x[:, :3] * scale + shift
    x[:, 3:6] *= scale
    x[:, 6] = rng.uniform(-3, 3, size=len(x))
  np.testing.assert_allclose(np.asarray(fn(a, b)), ref, atol=tol)


@pytest.mark.parametrize("fn", [boxes.iou_aligned_numpy, jax.jit(boxes.iou_aligned),
                                boxes.iou_oriented])
def test_iou_hand_cases(fn):
  a = np.array([box(0, dx=2), box(0, dx=2), box(0, dx=2), box(0, dx=2), box(0, dx=2, dy=2, dz=2),
                box(0, dx=0)])
  b = np.array([box(0, dx=2),   # identical: 1
                box(5),         # disjoint: 0
                box(1, dx=2),   # overlaps half of each: 1 / (2 + 2 - 1)
                box(1.5),       # touches a face: 0
                box(0),         # inside, 1/8 of the volume
                box(0, dx=0)])  # two empty boxes: 0, not NaN
  got = np.diag(np.asarray(fn(a, b)))
  np.testing.assert_allclose(got, [1, 0, 1 / 3, 0, 1 / 8, 0], atol=1e-6)
  assert np.asarray(fn(a[:0], b)).shape == (0, 6)
  assert np.asarray(fn(a, b[:0])).shape == (6, 0)


def test_iou_oriented_vs_shapely():
  rng = np.random.default_rng(2)
  a = random_boxes(rng, 40, oriented=True)
  b = random_boxes(rng, 30, oriented=True)
  b[:4] = a[:4]
  ref = pairwise(ref_iou_oriented_pair, a, b)
  assert 0.2 < np.mean(ref > 0) < 0.9
  np.testing.assert_allclose(boxes.iou_oriented(a, b), ref, atol=1e-12)


def test_iou_oriented_degenerate_cases():
  h = 0.7
  along = np.array([math.cos(h), math.sin(h)])  # the local x axis of a box with heading h
  base = box(0.3, -0.2, 0.1, dx=2, heading=h)
  shifted = lambda t: box(0.3 + t * along[0], -0.2 + t * along[1], 0.1, dx=2, heading=h)
  pairs = [
      (base, base, 1.0),
      (base, box(0.3, -0.2, 0.1, dx=2, heading=h + np.pi), 1.0),  # the same box turned around
      (base, box(0.3, -0.2, 0.1, dx=1, dy=2, heading=h + np.pi / 2), 1.0),  # sizes swapped
      (base, shifted(1.0), 1 / 3),  # half of each along the rotated axis
      (base, shifted(2.0), 0.0),    # sharing a face
      (base, shifted(5.0), 0.0),
      # A small box turned inside a large one.
      (box(0, dx=4, dy=4, dz=4, heading=0.3), box(0.2, 0.1, heading=1.1), 1 / 64),
      # A diamond inscribed in a square: its vertices lie on the square's edges.
      (box(0, dx=2, dy=2), box(0, dx=2 ** 0.5, dy=2 ** 0.5, heading=np.pi / 4), 0.5),
      # Diamonds touching a square at a vertex only.
      (box(0), box(0.5 + 0.5 ** 0.5, dx=1, heading=np.pi / 4), 0.0),
      (box(0, dx=0, heading=0.4), box(0, heading=0.4), 0.0),
  ]
  a, b, expected = (np.array(x) for x in zip(*pairs))
  got = np.diag(boxes.iou_oriented(a, b))
  np.testing.assert_allclose(got, expected, atol=1e-12)
  ref = [ref_iou_oriented_pair(x, y) for x, y in zip(a, b)]
  np.testing.assert_allclose(ref, expected, atol=1e-12)  # the reference agrees on each case


def test_iou_oriented_of_rotated_pairs_equals_axis_aligned_iou():
  rng = np.random.default_rng(3)
  a, lo_a, hi_a = lattice_boxes(rng, 25)
  b, lo_b, hi_b = lattice_boxes(rng, 20)
  ref = voxel_iou(lo_a, hi_a, lo_b, hi_b)
  for angle in (0.3, np.pi / 4, 2.0, -np.pi / 2):
    pivot = rng.uniform(-5, 5, size=2)
    got = boxes.iou_oriented(rotate_about(a, angle, pivot), rotate_about(b, angle, pivot))
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_iou_oriented_at_heading_zero_equals_aligned():
  rng = np.random.default_rng(4)
  a, b = random_boxes(rng, 30), random_boxes(rng, 35)
  np.testing.assert_allclose(boxes.iou_oriented(a, b), boxes.iou_aligned_numpy(a, b),
                             atol=1e-12)


@pytest.mark.parametrize("fn", [boxes.iou_aligned_numpy, boxes.iou_aligned, boxes.iou_oriented])
def test_iou_rejects_bad_shapes(fn):
  with pytest.raises(ValueError, match="shape"):
    fn(np.zeros((3, 6)), np.zeros((2, 7)))
  with pytest.raises(ValueError, match="shape"):
    fn(np.zeros((3, 7)), np.zeros((7,)))


# ----------------------------------------------------------------------------------------------
# NMS


def ref_nms(b, scores, valid, threshold, classes):
  """Walks the boxes by descending score (stable), keeping those no kept box overlaps."""
  order = sorted(range(len(b)), key=lambda i: (-float(scores[i]), i))
  kept = []
  for i in order:
    if valid[i] and not any(classes[k] == classes[i] and
                            ref_iou_aligned_pair(b[i], b[k]) > threshold for k in kept):
      kept.append(i)
  return kept


def nms_case(case, rng, num=48):
  b = random_boxes(rng, num, spread=1.0).astype(np.float32)
  scores = rng.uniform(size=num).astype(np.float32)
  valid = np.ones(num, bool)
  classes = None
  if case == "classes":
    classes = rng.integers(0, 3, size=num)
  if case == "invalid":
    valid = rng.uniform(size=num) < 0.6
    scores[~valid] += 1  # invalid boxes score highest: they must still be skipped
  if case == "ties":
    scores = np.round(scores * 4) / 4  # 5 score levels
    b[num // 2:] = b[:num // 2]        # duplicate boxes
  if case == "all_invalid":
    valid[:] = False
  return b, scores, valid, classes


jitted_nms = jax.jit(boxes.nms, static_argnames=("iou_threshold", "max_boxes"))


@pytest.mark.parametrize("case", ["plain", "classes", "invalid", "ties", "all_invalid"])
@pytest.mark.parametrize("max_boxes", [6, 48])
def test_nms_vs_greedy_loop(case, max_boxes):
  rng = np.random.default_rng(5)
  threshold = 0.25
  b, scores, valid, classes = nms_case(case, rng)
  idx, mask = jitted_nms(b, scores, valid, iou_threshold=threshold, max_boxes=max_boxes,
                         classes=classes)
  kept = ref_nms(b.astype(np.float64), scores, valid,
                 threshold, np.zeros(len(b)) if classes is None else classes)
  if case not in ("all_invalid",):
    assert 3 < len(kept) < len(b) * 0.8  # suppression happens
  kept = kept[:max_boxes]
  n = len(kept)
  assert idx.dtype == np.int32 and idx.shape == mask.shape == (max_boxes,)
  np.testing.assert_array_equal(mask, np.arange(max_boxes) < n)
  np.testing.assert_array_equal(idx[:n], kept)
  np.testing.assert_array_equal(idx[n:], 0)


def test_nms_jit_equals_eager_and_vmaps():
  rng = np.random.default_rng(6)
  cases = [nms_case("invalid", rng) for _ in range(3)]
  b, scores, valid = (np.stack(x) for x in zip(*[c[:3] for c in cases]))
  classes = rng.integers(0, 2, size=valid.shape)
  fn = functools.partial(boxes.nms, iou_threshold=0.3, max_boxes=20)
  idx, mask = jax.jit(jax.vmap(fn))(b, scores, valid, classes=classes)
  eager = fn(b[0], scores[0], valid[0], classes=classes[0])
  np.testing.assert_array_equal(idx[0], eager[0])
  np.testing.assert_array_equal(mask[0], eager[1])
  for s in range(3):
    kept = ref_nms(b[s].astype(np.float64), scores[s], valid[s], 0.3, classes[s])[:20]
    np.testing.assert_array_equal(np.asarray(idx[s])[np.asarray(mask[s])], kept)


def test_nms_threshold_is_strict():
  # The second box is half of the first: IoU exactly 0.5 (in float32 too).
  b = np.array([box(0, dx=2), box(-0.5)], np.float32)
  scores, valid = np.array([0.9, 0.8]), np.ones(2, bool)
  fn = jax.jit(boxes.nms, static_argnames="max_boxes")  # the threshold may be traced
  idx, mask = fn(b, scores, valid, iou_threshold=0.5, max_boxes=3)
  np.testing.assert_array_equal(idx, [0, 1, 0])
  np.testing.assert_array_equal(mask, [True, True, False])
  idx, mask = fn(b, scores, valid, iou_threshold=0.49, max_boxes=3)
  np.testing.assert_array_equal(mask, [True, False, False])
  idx, mask = boxes.nms(b[:0], scores[:0], valid[:0], iou_threshold=0.5, max_boxes=2)
  np.testing.assert_array_equal(mask, [False, False])


def test_nms_rejects_bad_shapes():
  b, scores, valid = np.zeros((4, 7)), np.zeros(4), np.ones(4, bool)
  with pytest.raises(ValueError, match="scores"):
    boxes.nms(b, scores[:3], valid, iou_threshold=0.5, max_boxes=2)
  with pytest.raises(ValueError, match="classes"):
    boxes.nms(b, scores, valid, iou_threshold=0.5, max_boxes=2, classes=np.zeros(5, int))
  with pytest.raises(ValueError, match="shape"):
    boxes.nms(b[:, :6], scores, valid, iou_threshold=0.5, max_boxes=2)


# ----------------------------------------------------------------------------------------------
# Average precision


def scene(pred, gt):
  """pred: [(box, class, score)], gt: [(box, class)] -> the per-scene tuples of the API."""
  pred_boxes = np.array([p[0] for p in pred], np.float64).reshape(-1, 7)
  gt_boxes = np.array([g[0] for g in gt], np.float64).reshape(-1, 7)
  return ((pred_boxes, np.array([p[1] for p in pred], int), np.array([p[2] for p in pred])),
          (gt_boxes, np.array([g[1] for g in gt], int)))


def dataset(*scenes):
  pairs = [scene(p, g) for p, g in scenes]
  return [p for p, _ in pairs], [g for _, g in pairs]


@pytest.mark.parametrize("iou_fn", [boxes.iou_aligned_numpy, jax.jit(boxes.iou_aligned),
                                    boxes.iou_oriented])
def test_ap_perfect_predictions(iou_fn):
  gt0 = [(box(0), 0), (box(3), 1)]
  gt1 = [(box(0), 0), (box(5, dx=2), 0)]
  preds, gts = dataset(([(b, c, 0.9 - 0.1 * i) for i, (b, c) in enumerate(gt0)], gt0),
                       ([(b, c, 0.5) for b, c in gt1], gt1))
  result = boxes.average_precision(preds, gts, 0.5, iou_fn=iou_fn)
  assert result["ap"] == {0: 1.0, 1: 1.0}
  assert result["ar"] == {0: 1.0, 1: 1.0}
  assert result["num_gt"] == {0: 3, 1: 1}
  assert result["map"] == result["mar"] == 1.0


def test_ap_all_wrong():
  gt = [(box(0), 0), (box(3), 1)]
  pred = [(box(10), 0, 0.9), (box(3), 0, 0.8),  # far away; on a box of another class
          (box(0), 1, 0.7), (box(3.9), 1, 0.6)]  # another class; barely touching
  result = boxes.average_precision(*dataset((pred, gt)), 0.25)
  assert result["ap"] == {0: 0.0, 1: 0.0}
  assert result["ar"] == {0: 0.0, 1: 0.0}
  assert result["map"] == result["mar"] == 0.0


def test_ap_duplicate_is_a_false_positive():
  gt = [(box(0), 0), (box(3), 0)]
  pred = [(box(0), 0, 0.9), (box(0.1), 0, 0.8), (box(3), 0, 0.7)]
  # Ranked: TP, FP (a second hit on the first box), TP.
  # recall 1/2, 1/2, 1; precision 1, 1/2, 2/3. Interpolated precision: 1 up to recall 1/2,
  # then 2/3 (the best precision at recall >= 1). AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
  result = boxes.average_precision(*dataset((pred, gt)), 0.5)
  assert result["ap"][0] == pytest.approx(5 / 6)
  assert result["ar"][0] == 1.0


def test_ap_ranking_across_scenes():
  # Scene 0 holds two boxes and one miss; scene 1 one box.
  gt0, gt1 = [(box(0), 0), (box(3), 0)], [(box(0), 0)]
  pred0 = [(box(0), 0, 0.9), (box(7), 0, 0.8)]  # TP, FP
  pred1 = [(box(0), 0, 0.7)]                    # TP
  # Ranked: TP, FP, TP over 3 boxes: recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3.
  # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9; AR = 2/3.
  result = boxes.average_precision(*dataset((pred0, gt0), (pred1, gt1)), 0.5)
  assert result["ap"][0] == pytest.approx(5 / 9)
  assert result["ar"][0] == pytest.approx(2 / 3)
  # The first prediction missing instead: FP, TP, TP; precision 0, 1/2, 2/3 -> AP 2/3 * 2/3.
  pred0 = [(box(7), 0, 0.9), (box(0), 0, 0.8)]
  result = boxes.average_precision(*dataset((pred0, gt0), (pred1, gt1)), 0.5)
  assert result["ap"][0] == pytest.approx(4 / 9)


def test_ap_matches_the_most_overlapped_box_even_if_taken():
  # VOC rule: the second prediction overlaps g1 most (IoU 0.75 / 1.25 = 0.6), g1 is taken, so
  # it is a false positive although it also overlaps the free g2 by 0.65 / 1.35 = 0.48 > 0.25.
  gt = [(box(0), 0), (box(0.6), 0)]
  pred = [(box(0), 0, 0.9), (box(0.25), 0, 0.8)]
  result = boxes.average_precision(*dataset((pred, gt)), 0.25)
  assert result["ap"][0] == pytest.approx(0.5)
  assert result["ar"][0] == pytest.approx(0.5)


def test_ap_threshold_is_strict():
  gt = [(box(0, dx=2), 0)]
  pred = [(box(-0.5), 0, 0.9)]  # IoU exactly 1/2
  assert boxes.average_precision(*dataset((pred, gt)), 0.5)["ap"][0] == 0.0
  assert boxes.average_precision(*dataset((pred, gt)), 0.49)["ap"][0] == 1.0


def test_ap_classes_without_ground_truth_or_predictions():
  gt = [(box(0), 0), (box(3), 1)]
  pred = [(box(0), 0, 0.9), (box(6), 2, 0.8)]  # class 1 never predicted, class 2 never true
  result = boxes.average_precision(*dataset((pred, gt)), 0.25)
  assert result["num_gt"] == {0: 1, 1: 1, 2: 0}
  assert result["ap"][0] == 1.0 and result["ap"][1] == 0.0 and np.isnan(result["ap"][2])
  assert result["ar"][0] == 1.0 and result["ar"][1] == 0.0 and np.isnan(result["ar"][2])
  assert result["map"] == result["mar"] == 0.5  # over classes 0 and 1
  empty = boxes.average_precision(*dataset(([(box(0), 2, 0.5)], [])), 0.25)
  assert np.isnan(empty["map"]) and np.isnan(empty["mar"])


def ref_average_precision(predictions, ground_truth, threshold, pair_iou):
  """VOC, written from the protocol: one ranked list per class over all scenes, one prediction
  at a time; AP as the sum over recall levels r of (r - previous r) x max precision at
  recall >= r."""
  classes = set()
  for (_, pc, _), (_, gc) in zip(predictions, ground_truth):
    classes |= {int(c) for c in pc} | {int(c) for c in gc}
  ap, ar = {}, {}
  for c in sorted(classes):
    ranked = sorted(((float(score), s, i)
                     for s, (_, pc, ps) in enumerate(predictions)
                     for i, (cls, score) in enumerate(zip(pc, ps)) if cls == c),
                    key=lambda t: -t[0])
    gt = [[g for g, cls in zip(gb, gc) if cls == c] for gb, gc in ground_truth]
    taken = [[False] * len(g) for g in gt]
    npos = sum(len(g) for g in gt)
    if npos == 0:
      ap[c] = ar[c] = float("nan")
      continue
    tp = fp = 0
    curve = []  # (recall, precision) after each prediction
    for _, s, i in ranked:
      overlaps = [pair_iou(predictions[s][0][i], g) for g in gt[s]]
      j = int(np.argmax(overlaps)) if overlaps else -1
      if j >= 0 and overlaps[j] > threshold and not taken[s][j]:
        taken[s][j] = True
        tp += 1
      else:
        fp += 1
      curve.append((tp / npos, tp / (tp + fp)))
    total, previous = 0.0, 0.0
    for level in sorted({r for r, _ in curve}):
      total += (level - previous) * max(p for r, p in curve if r >= level)
      previous = level
    ap[c], ar[c] = total, (curve[-1][0] if curve else 0.0)
  return ap, ar


def random_dataset(rng, *, oriented, num_scenes=10, num_classes=3):
  """Ground truth of classes 0..num_classes-1; predictions near most of it (some with the wrong
  class, some twice) plus random boxes, some of the class num_classes that has no ground truth."""
  predictions, ground_truth = [], []
  for _ in range(num_scenes):
    num_gt = int(rng.integers(2, 7))
    gt = random_boxes(rng, num_gt, oriented=oriented, spread=6.0)
    gt_classes = rng.integers(0, num_classes, size=num_gt)
    pred, pred_classes = [], []
    for g, c in zip(gt, gt_classes):
      for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
        p = g.copy()
        p[:3] += rng.normal(0, 0.12, size=3) * g[3:6]
        p[3:6] *= rng.uniform(0.8, 1.2, size=3)
        p[6] += rng.normal(0, 0.2) if oriented else 0.0
        pred.append(p)
        pred_classes.append(c if rng.uniform() < 0.85 else rng.integers(0, num_classes + 1))
    num_false = int(rng.integers(0, 4))
    pred.extend(random_boxes(rng, num_false, oriented=oriented, spread=6.0))
    pred_classes.extend(rng.integers(0, num_classes + 1, size=num_false))
    pred = np.array(pred).reshape(-1, 7)
    predictions.append((pred, np.array(pred_classes, int), rng.uniform(size=len(pred))))
    ground_truth.append((gt, gt_classes))
  return predictions, ground_truth


@pytest.mark.parametrize("oriented", [False, True])
@pytest.mark.parametrize("threshold", [0.25, 0.5])
def test_ap_vs_reference_on_random_scenes(oriented, threshold):
  rng = np.random.default_rng(7)
  predictions, ground_truth = random_dataset(rng, oriented=oriented)
  iou_fn = boxes.iou_oriented if oriented else boxes.iou_aligned_numpy
  pair_iou = ref_iou_oriented_pair if oriented else ref_iou_aligned_pair
  result = boxes.average_precision(predictions, ground_truth, threshold, iou_fn=iou_fn)
  ref_ap, ref_ar = ref_average_precision(predictions, ground_truth, threshold, pair_iou)
  assert list(result["ap"]) == list(ref_ap) == [0, 1, 2, 3]
  np.testing.assert_allclose(list(result["ap"].values()), list(ref_ap.values()), atol=1e-12)
  np.testing.assert_allclose(list(result["ar"].values()), list(ref_ar.values()), atol=1e-12)
  assert np.isnan(result["ap"][3])  # the class without ground truth
  values = [ref_ap[c] for c in range(3)]
  assert 0.05 < min(values) and max(values) < 0.95  # neither trivial case
  assert result["map"] == pytest.approx(np.mean(values))
  assert result["mar"] == pytest.approx(np.mean([ref_ar[c] for c in range(3)]))


def test_evaluate_flat_dict():
  rng = np.random.default_rng(8)
  predictions, ground_truth = random_dataset(rng, oriented=False)
  names = ["chair", "table", "sofa", "lamp"]
  flat = boxes.evaluate(predictions, ground_truth, class_names=names)
  for t in (0.25, 0.5):
    result = boxes.average_precision(predictions, ground_truth, t)
    assert flat[f"mAP@{t:g}"] == result["map"] and flat[f"mAR@{t:g}"] == result["mar"]
    for c, name in enumerate(names):
      np.testing.assert_equal(flat[f"AP@{t:g}/{name}"], result["ap"][c])
      np.testing.assert_equal(flat[f"AR@{t:g}/{name}"], result["ar"][c])
  assert "mAP@0.25" in flat and "AP@0.5/chair" in flat and len(flat) == 2 * (2 + 2 * 4)
  assert "AP@0.5/0" in boxes.evaluate(predictions, ground_truth)


def test_ap_rejects_bad_input():
  preds, gts = dataset(([(box(0), 0, 0.9)], [(box(0), 0)]))
  with pytest.raises(ValueError, match="scenes"):
    boxes.average_precision(preds, gts + gts, 0.5)
  bad = [(preds[0][0], preds[0][1], np.array([np.nan]))]
  with pytest.raises(ValueError, match="NaN"):
    boxes.average_precision(bad, gts, 0.5)
  bad = [(preds[0][0][:, :6], preds[0][1], preds[0][2])]
  with pytest.raises(ValueError, match="boxes"):
    boxes.average_precision(bad, gts, 0.5)
