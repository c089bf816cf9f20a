"""Detection: samples and their boxes, size templates, VoteNet's per-class proposals, and the
`runlocal` detection run end to end (its loss falls and its mAP beats random proposals)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import detection_scannet, detection_synthetic
from p2p_jax import boxes as boxes_lib
from p2p_jax.configs import detection as schema
from p2p_jax.tasks import detection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_scene(seed=0):
  """A room of 3 boxy objects (instances 1-3, each with a box) and a floor (instance 0)."""
  rng = np.random.default_rng(seed)
  parts, instances = [], []
  floor = np.column_stack([rng.uniform(0, 6, 800), rng.uniform(0, 4, 800), np.zeros(800)])
  parts.append(floor)
  instances.append(np.zeros(800, np.int32))
  boxes = []
  for i, (lo, hi) in enumerate([((0.5, 0.5, 0.0), (1.5, 1.2, 0.8)),
                                ((3.0, 2.0, 0.0), (4.5, 3.5, 0.5)),
                                ((5.0, 0.2, 0.0), (5.6, 0.9, 1.9))], start=1):
    lo, hi = np.array(lo), np.array(hi)
    pts = rng.uniform(lo, hi, (300, 3))
    pts[:8] = [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    parts.append(pts)
    instances.append(np.full(300, i, np.int32))
    boxes.append(np.concatenate([(lo + hi) / 2, hi - lo, [0.0]]))
  points = np.concatenate(parts).astype(np.float32)
  return {"points": points, "colors": rng.integers(0, 256, (len(points), 3), dtype=np.uint8),
          "instances": np.concatenate(instances), "boxes": np.array(boxes, np.float32),
          "box_classes": np.array([2, 4, 8], np.int32),
          "box_instances": np.array([1, 2, 3], np.int32), "scene": "scene_test"}


def cfg(**overrides):
  values = dict(num_points=2048, max_boxes=8, flip=True, max_rotation=math.pi / 36,
                scale_range=(1.0, 1.0), colors=True) | overrides
  return detection.SampleConfig(**values)


def instance_bounds(sample):
  """The axis-aligned bound of each box's sampled points: [M, 2, 3]."""
  out = []
  for b in range(int(sample["gt_mask"].sum())):
    pts = sample["points"][sample["point_mask"] & (sample["point_instance_box"] == b)]
    out.append((pts.min(axis=0), pts.max(axis=0)))
  return np.array(out)


def test_samples_have_fixed_shapes_and_masks():
  scene = make_scene()
  s = detection.sample_scene(scene, np.random.default_rng(0), cfg(num_points=4000),
                             augment=False)
  assert s["points"].shape == (4000, 3) and s["gt_boxes"].shape == (8, 7)
  assert s["point_mask"].sum() == len(scene["points"]) == 1700
  assert (s["point_instance_box"][~s["point_mask"]] == -1).all()
  assert s["gt_mask"].sum() == 3 and (s["gt_boxes"][3:] == 0).all()
  np.testing.assert_array_equal(s["gt_classes"][:3], [2, 4, 8])
  # Floor points have no box; every object point has its own.
  valid = s["point_mask"]
  counts = np.bincount(s["point_instance_box"][valid] + 1, minlength=4)
  np.testing.assert_array_equal(counts, [800, 300, 300, 300])


@pytest.mark.parametrize("seed", range(6))
def test_flipped_samples_keep_boxes_exactly_on_their_points(seed):
  """Without rotation, a (flipped) box is exactly its instance's extent, whose corners the
  scene holds; so is a box of an unaugmented sample."""
  scene = make_scene()
  for augment in (False, True):
    s = detection.sample_scene(scene, np.random.default_rng(seed),
                               cfg(num_points=4000, max_rotation=0.0), augment=augment)
    bounds = instance_bounds(s)
    boxes = s["gt_boxes"][:3]
    np.testing.assert_allclose(boxes[:, :3], bounds.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(boxes[:, 3:6], bounds[:, 1] - bounds[:, 0], atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_rotated_samples_have_the_aligned_bounds_of_their_rotated_boxes(seed):
  """After a rotation, each box is the axis-aligned bound of the rotated box (VoteNet): it
  holds every point of its instance, and its corners are those of the rotated original."""
  scene = make_scene()
  s = detection.sample_scene(scene, np.random.default_rng(seed),
                             cfg(num_points=4000, max_rotation=0.3), augment=True)
  bounds = instance_bounds(s)
  lo = s["gt_boxes"][:3, :3] - s["gt_boxes"][:3, 3:6] / 2
  hi = s["gt_boxes"][:3, :3] + s["gt_boxes"][:3, 3:6] / 2
  assert (bounds[:, 0] >= lo - 1e-4).all() and (bounds[:, 1] <= hi + 1e-4).all()
  # Brute force: the sample's points are the scene's points (all drawn, in the order of the
  # sample's first draw) under one affine map; fit it, and move the original boxes' corners.
  idx = np.random.default_rng(seed).choice(len(scene["points"]), len(scene["points"]),
                                           replace=False)
  source = np.hstack([scene["points"][idx], np.ones((len(idx), 1))])
  fit, *_ = np.linalg.lstsq(source, s["points"][s["point_mask"]], rcond=None)
  corners = boxes_lib.corners(scene["boxes"].astype(np.float64))  # [3, 8, 3]
  moved = corners.reshape(-1, 3) @ fit[:3] + fit[3]
  moved = moved.reshape(3, 8, 3)
  np.testing.assert_allclose(lo, moved.min(axis=1), atol=1e-4)
  np.testing.assert_allclose(hi, moved.max(axis=1), atol=1e-4)


def test_mean_sizes_by_hand():
  a = {"boxes": np.array([[0, 0, 0, 1, 2, 3, 0], [0, 0, 0, 3, 2, 1, 0]], np.float32),
       "box_classes": np.array([0, 0])}
  b = {"boxes": np.array([[0, 0, 0, 2, 2, 2, 0]], np.float32), "box_classes": np.array([1])}
  sizes = detection.mean_sizes([a, b], num_classes=3)
  assert sizes[0] == (2.0, 2.0, 2.0) and sizes[1] == (2.0, 2.0, 2.0)
  assert sizes[2] == pytest.approx((2.0, 2.0, 2.0))  # no box: the mean over all boxes
  a["boxes"][1, 3:6] = (5, 2, 1)
  sizes = detection.mean_sizes([a, b], num_classes=3)
  assert sizes[0] == (3.0, 2.0, 2.0) and sizes[2] == pytest.approx((8 / 3, 2.0, 2.0))


def test_per_class_proposals_by_hand():
  """Each kept proposal once per class, scored objectness x class probability."""
  detections = {
      "boxes": np.arange(2 * 3 * 7, dtype=np.float32).reshape(2, 3, 7),
      "objectness": np.array([[0.9, 0.5, 0.2], [0.4, 0.3, 0.1]]),
      "class_probs": np.array([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]],
                               [[1.0, 0.0], [0.3, 0.7], [0.6, 0.4]]]),
      "keep": np.array([[True, False, True], [False, False, False]]),
  }
  (b0, c0, s0), (b1, c1, s1) = detection.per_class_predictions(detections)
  np.testing.assert_array_equal(c0, [0, 1, 0, 1])
  np.testing.assert_allclose(s0, [0.45, 0.45, 0.04, 0.16])
  np.testing.assert_array_equal(b0, detections["boxes"][0][[0, 0, 2, 2]])
  assert len(b1) == len(c1) == len(s1) == 0


def test_too_many_boxes_is_an_error_naming_the_scene_and_key():
  scene = make_scene()
  with pytest.raises(ValueError, match=r"boxes.max_boxes = 2: 1 train scene\(s\) .*scene_test"):
    detection.check_max_boxes([scene], 2, "train")


@pytest.mark.parametrize("module", [detection_scannet, detection_synthetic])
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_configs_pass_their_checks(module, arg):
  schema.check(module.get_config(arg))


def test_runlocal_detection_learns_and_beats_random_proposals(tmp_path):
  """The script on its `runlocal` config, from a pretraining checkpoint of its student: the
  loss falls, every val box is evaluated, the scores are in [0, 1], and the mAP on the
  held-out rooms beats every draw of random proposals."""
  import jax
  import test_checkpoints

  from p2p_jax import models
  from p2p_jax.models import student as student_lib

  config = detection_synthetic.get_config("runlocal")
  pretrained = student_lib.PointModel(models.backbone(config.student),
                                      student_lib.ProjectionHead(16))
  saved = jax.jit(pretrained.init)(jax.random.key(3), np.zeros((1, 256, 3), np.float32),
                                   np.zeros((1, 256, 3), np.float32), np.ones((1, 256), bool))
  test_checkpoints.save_student(str(tmp_path / "pretrain"), dict(saved))
  workdir = tmp_path / "work"
  done = subprocess.run(
      [sys.executable, "-m", "experiments.finetune_detection", "--config",
       "experiments/configs/detection_synthetic.py:runlocal", "--workdir", str(workdir),
       f"--config.data.manual_dir={tmp_path}/rooms", f"--config.data.data_dir={tmp_path}/tfds",
       f"--config.init.checkpoint={tmp_path}/pretrain"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "| **mean** |" in done.stdout and f"VoteNet from {tmp_path}/pretrain" in done.stdout
  results = json.load(open(workdir / "results.json"))
  assert results["init_step"] == 7
  losses = results["train_loss"]
  assert len(losses) == config.total_steps
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
  config.data.data_dir = f"{tmp_path}/tfds"
  val = detection.load_split(config.data, "val")
  assert results["num_val_boxes"] == sum(len(s["boxes"]) for s in val) > 0
  for key in ("mAP@0.25", "mAP@0.5", "mAR@0.25", "mAR@0.5"):
    assert 0.0 <= results[key] <= 1.0, (key, results[key])
  chance = results["random_proposals"]
  assert chance["per_scene"] == config.model.num_proposals * len(detection.CLASS_NAMES)
  assert len(chance["mAP@0.25/draws"]) == chance["draws"] >= 10
  assert results["mAP@0.25"] > max(chance["mAP@0.25/draws"]), (results["mAP@0.25"], chance)
  assert "Random proposals (4608 per scene" in done.stdout
  labelled = json.load(open(workdir / "label_lists.json"))
  assert labelled["scenes"] == results["labelled_scenes"]


def _heading_wrap(h):
  return np.pi - np.mod(np.pi - h, 2 * np.pi)


@pytest.mark.parametrize("seed", range(6))
def test_oriented_boxes_turn_with_their_points(seed):
  """SUN RGB-D-style boxes (with headings): after flips and a rotation every point of an
  object is still inside its box (a point-in-oriented-box test written here), and the box
  keeps its size."""
  rng = np.random.default_rng(100 + seed)
  boxes, parts, instances = [], [], []
  for i, (centre, size, heading) in enumerate([((1.0, 1.0, 0.5), (1.2, 0.4, 1.0), 0.5),
                                                ((3.0, 2.0, 0.4), (0.6, 1.6, 0.8), -1.2)], 1):
    local = rng.uniform(-0.5, 0.5, (400, 3)) * size
    c, s = np.cos(heading), np.sin(heading)
    parts.append(local @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + centre)
    instances.append(np.full(400, i, np.int32))
    boxes.append((*centre, *size, heading))
  scene = {"points": np.concatenate(parts).astype(np.float32),
           "colors": np.zeros((800, 3), np.uint8), "instances": np.concatenate(instances),
           "boxes": np.array(boxes, np.float32), "box_classes": np.array([0, 1], np.int32),
           "box_instances": np.array([1, 2], np.int32), "scene": "oriented"}
  s = detection.sample_scene(scene, np.random.default_rng(seed),
                             cfg(num_points=800, max_rotation=math.pi, oriented=True),
                             augment=True)
  for b in range(2):
    box = s["gt_boxes"][b]
    np.testing.assert_allclose(box[3:6], scene["boxes"][b, 3:6], rtol=1e-6)
    assert -np.pi < box[6] <= np.pi
    pts = s["points"][s["point_mask"] & (s["point_instance_box"] == b)] - box[:3]
    c, s_ = np.cos(box[6]), np.sin(box[6])
    local = np.stack([c * pts[:, 0] + s_ * pts[:, 1], -s_ * pts[:, 0] + c * pts[:, 1],
                      pts[:, 2]], axis=1)
    assert (np.abs(local) <= box[3:6] / 2 + 1e-4).all()


def test_aligned_bounds_of_rotated_boxes_hold_their_corners():
  rng = np.random.default_rng(0)
  boxes = np.concatenate([rng.uniform(-3, 3, (20, 3)), rng.uniform(0.1, 2, (20, 3)),
                          rng.uniform(-np.pi, np.pi, (20, 1))], axis=1)
  bounds = np.asarray(detection.aligned_bounds(boxes))
  corners = boxes_lib.corners(boxes)
  np.testing.assert_allclose(bounds[:, :3], boxes[:, :3], atol=1e-5)
  np.testing.assert_allclose(bounds[:, 3:6], corners.max(1) - corners.min(1), atol=1e-5)
  assert (bounds[:, 6] == 0).all()


@pytest.mark.parametrize("student", ["sr_unet_tiny"])  # PointNet++: the runlocal test
def test_votenet_takes_a_pretrained_student_backbone_with_fresh_heads(tmp_path, student):
  """The sparse student under VoteNet: the backbone's variables come from a pretraining
  checkpoint (exactly), the voting and proposal modules stay as initialised, and the network
  runs on a sample with finite outputs and loss."""
  import jax
  import ml_collections
  import test_checkpoints

  from p2p_jax import models
  from p2p_jax.configs import common
  from p2p_jax.models import student as student_lib
  from p2p_jax.models import votenet

  kwargs = models.backbone_kwargs(student, common.sparse())
  pretrained = student_lib.PointModel(models.backbone(student, **kwargs),
                                      student_lib.ProjectionHead(16))
  saved = jax.jit(pretrained.init)(jax.random.key(3), np.zeros((1, 256, 3), np.float32),
                                   np.zeros((1, 256, 3), np.float32), np.ones((1, 256), bool))
  saved = jax.tree.map(lambda x: x + 0.01, dict(saved))  # not the initial values
  test_checkpoints.save_student(str(tmp_path), saved)
  spec = votenet.DetectionSpec(num_classes=18, mean_sizes=((1.0, 1.0, 1.0),) * 18,
                               num_heading_bins=1)
  model_config = ml_collections.ConfigDict(dict(num_seeds=64, num_proposals=16,
                                                vote_radius=0.3, vote_nsample=8, hidden=16))
  model = detection.make_model(student, spec, model_config, **kwargs)
  fresh = detection.init_variables(model, jax.random.key(0), 512)
  loaded, step = __import__("p2p_jax.checkpoints").checkpoints.load_student_backbone(
      str(tmp_path), model, fresh)
  assert step == 7
  for collection in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(loaded[collection]["backbone"]),
                    jax.tree.leaves(saved[collection]["backbone"]), strict=True):
      np.testing.assert_array_equal(a, b)
  for part in ("voting", "proposal"):
    for a, b in zip(jax.tree.leaves(loaded["params"][part]),
                    jax.tree.leaves(fresh["params"][part]), strict=True):
      np.testing.assert_array_equal(a, b)
  sample = detection.sample_scene(make_scene(), np.random.default_rng(0),
                                  cfg(num_points=512), augment=True)
  batch = {k: v[None] for k, v in sample.items()}
  outputs, _ = jax.jit(model.apply)(loaded, batch["points"], batch["colors"],
                                    batch["point_mask"])
  total, terms = jax.jit(votenet.loss, static_argnums=2)(outputs, detection.targets(batch), spec)
  assert np.isfinite(float(total)), terms
  assert np.isfinite(np.asarray(outputs["center"])).all()
