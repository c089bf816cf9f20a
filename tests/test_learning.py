"""Checks that catch a broken or starved pipeline: each network can overfit a tiny problem, the
evaluation scores a perfect prediction as perfect, and the cached-feature linear probe equals
the probe on the network's own features."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from p2p_jax import metrics
from p2p_jax.data import labels as labels_lib
from p2p_jax.data import synthetic
from p2p_jax.models import resnet
from p2p_jax.models.segmentation_2d import SegmentationNet
from p2p_jax.tasks import segmentation
from p2p_jax.train import finetune, teacher
from p2p_jax.train import probe as probe_lib
from p2p_jax.train import state as state_lib


def structured_scene(num_points=256, seed=0):
  """A 2 x 2 m room corner whose labels follow its geometry: floor, two walls, a box."""
  rng = np.random.default_rng(seed)
  points = rng.uniform((0, 0, 0), (2, 2, 2), (num_points, 3)).astype(np.float32)
  kind = rng.integers(0, 4, num_points)
  points[kind == 0, 2] = 0.0                 # floor
  points[kind == 1, 0] = 0.0                 # wall at x = 0
  points[kind == 2, 1] = 0.0                 # wall at y = 0
  box = kind == 3                            # a 0.6 m cube standing in the middle
  points[box] = rng.uniform((0.8, 0.8, 0.0), (1.4, 1.4, 0.6), (box.sum(), 3))
  labels = np.array([1, 0, 0, 4])[kind].astype(np.int32)  # floor, wall, wall, chair
  colors = rng.integers(0, 256, (num_points, 3)).astype(np.uint8)  # colour says nothing
  return {"points": points, "colors": colors, "labels": labels, "scene": f"corner{seed}"}


def test_the_student_overfits_one_tiny_scene():
  crop = segmentation.CropConfig(num_points=256, size=4.0, max_rotation=0.0, scale_range=(1, 1),
                             jitter_sigma=0.0)
  optimizer = state_lib.OptimizerConfig(learning_rate=1e-2, total_steps=120)
  model = segmentation.make_model("pointnet2_tiny", "finetune", head_hidden=32, head_dropout=0.0)
  variables = segmentation.init_variables(model, jax.random.key(0), crop.num_points)
  state = state_lib.TrainState.create(variables, state_lib.make_optimizer(optimizer))
  scenes = [structured_scene()]
  accuracy = []
  for step in range(optimizer.total_steps):
    batch = segmentation.training_batch(scenes, 0, step, 2, crop)
    state, m = finetune.train_step(state, batch, jax.random.key(step), model=model,
                                   optimizer=optimizer)
    accuracy.append(float(m["accuracy"]))
  assert np.mean(accuracy[-10:]) >= 0.95, accuracy[-10:]
  assert np.mean(accuracy[:5]) < 0.8  # it learnt it: chance is 0.5 at best


def test_the_teacher_overfits_a_handful_of_frames():
  room = synthetic.scene_room(0, 0)
  intrinsics = synthetic.intrinsics_for(48, 64)
  poses = synthetic.camera_trajectory(room, np.random.default_rng(1), 4)
  rendered = [synthetic.render(room, pose, intrinsics, 48, 64, np.random.default_rng(i))
              for i, pose in enumerate(poses)]
  frames = {"image": np.stack([r["color"] for r in rendered]),
            "label": np.stack([labels_lib.nyu40_to_scannet20(r["label"]) for r in rendered])}
  assert len(np.unique(frames["label"])) >= 3  # more than one class to learn
  augment = teacher.AugmentConfig(image_hw=(48, 64), crop_scale=(1.0, 1.0),
                                  crop_ratio=(1.0, 1.0), flip_probability=0.0,
                                  color_jitter=0.0, channel_shuffle_probability=0.0,
                                  grayscale_probability=0.0)
  model = SegmentationNet(resnet.ResNet18(), head_layers=("layer1", "layer2", "layer3", "layer4"))
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.zeros((1, 48, 64, 3)))
  tx = state_lib.make_optimizer(state_lib.OptimizerConfig(
      "adamw", learning_rate=2e-3, weight_decay=0.0, total_steps=150))
  state = state_lib.TrainState.create(variables, tx)
  for step in range(150):
    batch = teacher.training_batch(frames, 0, step, 4, augment)
    state, m = teacher.train_step(state, batch, None, model=model, tx=tx)
  confusion = teacher.evaluate(model, {"params": state.params, "batch_stats": state.batch_stats},
                               frames, batch_size=4)
  assert metrics.segmentation_scores(confusion)["oa"] >= 0.95, float(m["pixel_accuracy"])


def test_a_perfect_prediction_scores_100_and_spreading_is_exact_when_every_point_is_drawn():
  scene = structured_scene(num_points=900, seed=3)
  scene["labels"][::7] = labels_lib.IGNORE_LABEL
  # Every cell holds at most 1024 points, so every point is drawn.
  crop = segmentation.CropConfig(num_points=1024, size=1.0)
  prepared = segmentation.prepare_eval_scene(scene, crop)
  assert all(b["point_mask"].sum() == len(c) for b, c in zip(prepared.blocks, prepared.cells))
  truth = {(0, j): b["labels"].clip(0) for j, b in enumerate(prepared.blocks)}
  confusion = segmentation.spread_confusion([prepared], truth)
  assert confusion.sum() == (scene["labels"] >= 0).sum()
  assert np.count_nonzero(confusion - np.diag(np.diag(confusion))) == 0
  scores = metrics.segmentation_scores(confusion)
  assert scores["miou"] == 1.0 and scores["oa"] == 1.0
  # A wrong class on one block's points costs exactly those points.
  wrong = dict(truth)
  wrong[0, 0] = np.where(prepared.blocks[0]["point_mask"], 7, 0)
  bad = segmentation.spread_confusion([prepared], wrong)
  lost = (scene["labels"][prepared.cells[0]] >= 0) & (scene["labels"][prepared.cells[0]] != 7)
  assert np.trace(bad) == np.trace(confusion) - lost.sum()


def test_the_cached_probe_reads_the_backbone_features_of_every_drawn_point():
  crop = segmentation.CropConfig(num_points=128, size=1.0)
  model = segmentation.make_model("pointnet2_tiny", "linear_probe")
  variables = segmentation.init_variables(model, jax.random.key(1), crop.num_points)
  scenes = [segmentation.prepare_eval_scene(structured_scene(300, seed=s), crop) for s in (0, 1)]
  features, labels = probe_lib.drawn_features(model, variables, scenes, batch_size=3)
  expected_f, expected_l = [], []
  for s in scenes:  # one block at a time, straight through the model
    for b in s.blocks:
      _, aux = model.apply(variables, b["points"][None], b["colors"][None],
                           b["point_mask"][None], train=False)
      expected_f.append(np.asarray(aux["features"][0])[b["point_mask"]])
      expected_l.append(b["labels"][b["point_mask"]])
  np.testing.assert_allclose(features, np.concatenate(expected_f), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(labels, np.concatenate(expected_l))


def test_the_linear_probe_separates_separable_features_and_ignores_unlabelled_points():
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 3, (5, 8))
  labels = rng.integers(0, 5, 4000).astype(np.int32)
  features = (centres[labels] + rng.normal(0, 0.3, (4000, 8)) + 10).astype(np.float32)
  labels[:500] = labels_lib.IGNORE_LABEL   # unlabelled points with a misleading class
  features[:500] = centres[0] + 10
  batches = rng.integers(500, 4000, (200, 256)).astype(np.int32)
  optimizer = state_lib.OptimizerConfig(learning_rate=0.05, total_steps=200)
  probe, losses = probe_lib.fit_linear_probe(features, labels, batches, num_classes=20,
                                             optimizer=optimizer)
  predicted = np.argmax(np.asarray(probe_lib.probe_logits(probe, features[500:])), -1)
  assert (predicted == labels[500:]).mean() > 0.99
  assert float(losses[-1]) < 0.1 * float(losses[0])
  # Standardisation uses the labelled points only.
  np.testing.assert_allclose(probe["mean"], features[500:].mean(0), rtol=1e-4)
