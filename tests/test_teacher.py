"""2D teacher training: scene splits, crops, the model, and the script end to end on its
runlocal config, with a checkpoint that pretraining can load."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import teacher_synthetic
from p2p_jax.configs import teacher as teacher_schema
from p2p_jax.data import teacher_frames
from p2p_jax.models import convert, resnet
from p2p_jax.models.segmentation_2d import SegmentationNet
from p2p_jax.tasks import segmentation
from p2p_jax.train import teacher
from p2p_jax.train.config import check_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_config_builds_and_has_only_known_keys():
  assert "python -m experiments.train_teacher" in teacher_synthetic.__doc__
  for arg in (None, "runlocal"):
    config = teacher_synthetic.get_config(arg)
    check_config(config, teacher_schema.base())
    assert config.arch in resnet.VARIANTS and config.data.frames_config.endswith("_labels")
  with pytest.raises(ValueError, match="unknown config argument"):
    teacher_synthetic.get_config("bogus")


def test_held_out_scenes_are_disjoint_and_seeded():
  scenes = [f"scene{i:04d}_00" for i in range(10)]
  train, held_out = teacher_frames.split_teacher_scenes(scenes, 0.2, seed=0)
  assert len(held_out) == 2 and sorted(train + held_out) == scenes
  assert not set(train) & set(held_out)
  assert teacher_frames.split_teacher_scenes(scenes[::-1], 0.2, seed=0) == (train, held_out)
  assert teacher_frames.split_teacher_scenes(scenes[:2], 0.01, seed=0)[1] != []
  with pytest.raises(ValueError, match="at least 2 scenes"):
    teacher_frames.split_teacher_scenes(scenes[:1], 0.2, seed=0)


def test_crops_keep_labels_exact():
  rng = np.random.default_rng(0)
  label = rng.integers(-1, 20, (12, 16)).astype(np.int32)
  image = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
  # Identity box and size: nothing changes; a flip mirrors both.
  same_image, same_label = teacher.resize_example(image, label, (0, 0, 12, 16), (12, 16))
  np.testing.assert_array_equal(same_label, label)
  np.testing.assert_array_equal(same_image, image)
  _, flipped = teacher.resize_example(image, label, (0, 0, 12, 16), (12, 16), flip=True)
  np.testing.assert_array_equal(flipped, label[:, ::-1])
  # Halving a crop takes every other pixel of it (the one under each target centre).
  _, half = teacher.resize_example(image, label, (2, 4, 8, 12), (4, 6))
  np.testing.assert_array_equal(half, label[3:10:2, 5:16:2])
  frames = {"image": np.stack([image] * 3), "label": np.stack([label] * 3)}
  batch = teacher.training_batch(frames, 0, 5, 4, teacher.AugmentConfig(image_hw=(6, 8)))
  assert batch["image"].shape == (4, 6, 8, 3) and batch["label"].shape == (4, 6, 8)
  assert set(np.unique(batch["label"])) <= set(np.unique(label))


def test_segmentation_net_logits_at_input_resolution():
  model = SegmentationNet(resnet.ResNetTiny(), num_classes=5,
                          head_layers=("layer4", "layer3"))
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 40, 56, 3)))
  logits, aux = jax.eval_shape(model.apply, variables, jnp.ones((2, 40, 56, 3)))
  assert logits.shape == (2, 40, 56, 5) and "layer4" in aux
  assert set(variables["params"]) == {"backbone", "head_layer4", "head_layer3"}


def test_missing_teacher_list_is_explained(tmp_path):
  os.makedirs(tmp_path / "scans")
  with pytest.raises(FileNotFoundError, match="teacher_fraction > 0"):
    teacher_frames.teacher_split(str(tmp_path), str(tmp_path / "tfds"), 0.2, 0)


def test_a_held_out_curve_off_the_logged_steps_is_refused_by_name(tmp_path):
  config = teacher_synthetic.get_config("runlocal")
  config.log_every, config.eval.every = 4, 6
  with pytest.raises(ValueError, match="eval.every=6 must be a multiple of log_every=4"):
    teacher.train(config, str(tmp_path))


def test_script_runlocal_trains_and_its_checkpoint_loads(tmp_path):
  workdir = str(tmp_path / "work")
  config = teacher_synthetic.get_config("runlocal")
  done = subprocess.run(
      [sys.executable, "-m", "experiments.train_teacher", "--config",
       "experiments/configs/teacher_synthetic.py:runlocal", "--workdir", workdir,
       f"--config.data.manual_dir={tmp_path}/rooms", f"--config.data.data_dir={tmp_path}/tfds"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "pixel accuracy" in done.stdout and "teacher checkpoint" in done.stdout
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["loss"] for r in records]
  assert len(losses) == config.total_steps
  assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert 0 <= results["pixel_accuracy"] <= 1 and results["holdout_frames"] > 0
  # The teacher's scenes are the generator's teacher split, disjoint from train and val.
  listed = lambda name: set(open(tmp_path / "rooms" / name).read().split())
  ours = set(results["train_scenes"]) | set(results["holdout_scenes"])
  assert ours == listed("scannetv2_teacher.txt")
  assert not ours & (listed("scannetv2_train.txt") | listed("scannetv2_val.txt"))
  # Pretraining loads the checkpoint as its teacher.
  model = resnet.VARIANTS[config.arch]()
  variables = convert.load_teacher_checkpoint(results["checkpoint"], model)
  features, _ = resnet.frozen_features(model, variables, jnp.zeros((1, 48, 64, 3)))
  assert features.shape == (1, 2, 2, model.feature_dim)
  assert np.isfinite(np.asarray(features)).all()


def test_class_weights_are_median_frequency_balancing_by_hand():
  # Pixel counts 6, 3, 1 of classes 0, 1, 2 (and ignored pixels): frequencies .6, .3, .1,
  # median .3, so full balancing gives .5, 1, 3 and power .5 their square roots.
  labels = np.array([0] * 6 + [1] * 3 + [2] + [-1] * 4)
  np.testing.assert_allclose(teacher.class_weights(labels, 1.0, num_classes=4),
                             [0.5, 1.0, 3.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(teacher.class_weights(labels, 0.5, num_classes=4),
                             np.sqrt([0.5, 1.0, 3.0, 0.0]), rtol=1e-6)
  np.testing.assert_array_equal(teacher.class_weights(labels, 0.0, num_classes=4), [1, 1, 1, 0])
  # The weighted loss is the weighted mean of the per-pixel losses.
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(14, 4)), jnp.float32)
  per_pixel = -jax.nn.log_softmax(logits)[np.arange(14), np.clip(labels, 0, None)]
  w = np.array([0.5, 1.0, 3.0, 0.0])[np.clip(labels, 0, None)] * (labels >= 0)
  loss, accuracy = segmentation.cross_entropy(
      logits, jnp.asarray(labels), class_weights=jnp.asarray([0.5, 1.0, 3.0, 0.0]))
  np.testing.assert_allclose(loss, np.sum(w * per_pixel) / w.sum(), rtol=1e-5)
  assert accuracy == np.mean(np.argmax(logits[:10], -1) == labels[:10])
  with pytest.raises(ValueError, match="no labelled pixel"):
    teacher.class_weights(np.full(3, -1), 1.0)
