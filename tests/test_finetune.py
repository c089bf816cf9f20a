"""Fine-tuning and linear probing: label subsets, crops, evaluation cover, checkpoint loading,
the frozen backbone of the probe, and the script end to end on its runlocal config."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import test_checkpoints

from experiments.configs import finetune_synthetic
from p2p_jax.configs import finetune as finetune_schema
from p2p_jax.tasks import segmentation
from p2p_jax.train import finetune
from p2p_jax.train import state as state_lib
from p2p_jax.train.config import check_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP = segmentation.CropConfig(num_points=128, size=1.0)
OPTIMIZER = state_lib.OptimizerConfig(learning_rate=1e-2, total_steps=10)


def test_every_config_builds_and_has_only_known_keys():
  assert "python -m experiments.finetune" in finetune_synthetic.__doc__
  for arg in (None, "runlocal"):
    check_config(finetune_synthetic.get_config(arg), finetune_schema.base())
  with pytest.raises(ValueError, match="unknown config argument"):
    finetune_synthetic.get_config("bogus")


def test_label_subsets_are_nested_and_fixed_by_the_seed():
  names = [f"scene{i:04d}_00" for i in range(40)]
  fractions = (0.01, 0.05, 0.1, 0.25, 1.0)
  subsets = [segmentation.labelled_subset(names, f, seed=3) for f in fractions]
  assert [len(s) for s in subsets] == [1, 2, 4, 10, 40]
  for small, large in zip(subsets, subsets[1:]):
    assert set(small) < set(large)
  assert subsets[-1] == names
  # The order the scenes come in does not matter; the seed does.
  assert segmentation.labelled_subset(names[::-1], 0.25, seed=3) == subsets[3]
  assert segmentation.labelled_subset(names, 0.25, seed=4) != subsets[3]
  assert len(segmentation.labelled_subset(names[:3], 0.01, seed=0)) == 1
  with pytest.raises(ValueError, match="label fraction"):
    segmentation.labelled_subset(names, 0.0, seed=0)


def make_scene(num_points=3000, seed=0, size=(3.5, 2.2)):
  rng = np.random.default_rng(seed)
  points = rng.uniform((0, 0, 0), size + (2.5,), (num_points, 3)).astype(np.float32)
  labels = rng.integers(-1, 20, num_points).astype(np.int32)
  colors = rng.integers(0, 256, (num_points, 3)).astype(np.uint8)
  return {"points": points, "colors": colors, "labels": labels, "scene": f"scene{seed}"}


def test_crops_have_fixed_shapes_and_masks():
  scene = make_scene()
  crop = segmentation.sample_crop(scene, np.random.default_rng(0), CROP)
  assert crop["points"].shape == (128, 3) and crop["point_mask"].all()
  assert np.abs(crop["points"][:, :2]).max() <= 1.1 * CROP.size / 2 * np.sqrt(2) + 0.03
  sparse = make_scene(num_points=40)
  crop = segmentation.sample_crop(sparse, np.random.default_rng(0), CROP)
  count = crop["point_mask"].sum()
  assert 0 < count < 40
  assert (crop["labels"][count:] == -1).all() and (crop["points"][count:] == 0).all()
  assert crop["colors"].max() <= 1.0
  batch = segmentation.training_batch([scene, sparse], 7, 3, 4, CROP)
  again = segmentation.training_batch([scene, sparse], 7, 3, 4, CROP)
  assert batch["points"].shape == (4, 128, 3)
  for key in batch:
    np.testing.assert_array_equal(batch[key], again[key])


def test_crops_without_colours_are_grey_with_the_same_points_and_labels():
  scene = make_scene(num_points=100)
  crop = segmentation.sample_crop(scene, np.random.default_rng(5), CROP)
  grey = segmentation.sample_crop(scene, np.random.default_rng(5),
                              dataclasses.replace(CROP, colors=False))
  mask = crop["point_mask"]
  assert 0 < mask.sum() < 100
  # With colours: each point's own colour, found by matching the (unaugmented) labels' rows.
  rows = [np.flatnonzero((scene["labels"] == label) & np.all(
      np.isclose(scene["colors"] / 255.0, colour, atol=1e-6), axis=1))
      for label, colour in zip(crop["labels"][mask], crop["colors"][mask])]
  assert all(len(r) == 1 for r in rows)
  np.testing.assert_array_equal(grey["colors"][mask], 0.5)
  np.testing.assert_array_equal(grey["colors"][~mask], 0.0)
  for key in ("points", "labels", "point_mask"):
    np.testing.assert_array_equal(grey[key], crop[key])
  block = segmentation.prepare_eval_scene(scene, dataclasses.replace(CROP, colors=False)).blocks[0]
  np.testing.assert_array_equal(block["colors"][block["point_mask"]], 0.5)


def test_evaluation_cells_cover_every_point_once():
  scene = make_scene(num_points=5000)
  prepared = segmentation.prepare_eval_scene(scene, CROP)
  assert len(prepared.blocks) == 4 * 3  # ceil(3.5 / 1) x ceil(2.2 / 1) cells
  members = np.concatenate(prepared.cells)
  np.testing.assert_array_equal(np.sort(members), np.arange(5000))
  for block, cell, nearest in zip(prepared.blocks, prepared.cells, prepared.nearest):
    drawn = block["point_mask"].sum()
    assert drawn == min(len(cell), 128) and nearest.max() < drawn
    # Every drawn point is its own nearest drawn point (same height: blocks are only shifted
    # horizontally), so the network's prediction for it is kept as it is.
    assert (block["points"][nearest, 2] == scene["points"][cell, 2]).sum() >= drawn
  # Labels spread from the drawn points: exact at the drawn ones (128 of about 417 per cell).
  spread = np.concatenate([b["labels"][n] for b, n in zip(prepared.blocks, prepared.nearest)])
  assert (spread == scene["labels"][members]).mean() > 0.3


def test_linear_probe_runs_on_cached_features_of_the_frozen_backbone(tmp_path):
  """The probe run: the pretrained backbone is read, never changed, and every val point is
  labelled through the probe."""
  test_checkpoints.save_student(str(tmp_path / "pretrain"), test_checkpoints.pretrained_student())
  config = finetune_schema.base()
  config.update(student="pointnet2_tiny", mode="linear_probe", batch_size=2, total_steps=40,
                log_every=10)
  config.crop.num_points = 128
  config.crop.size = 1.0
  config.init.checkpoint = str(tmp_path / "pretrain")
  crop = segmentation.crop_config(config)
  train = [make_scene(seed=i) for i in range(3)]
  val = [segmentation.prepare_eval_scene(make_scene(seed=9), crop)]
  data = segmentation.SceneData(train=train, val=val, crop=crop)
  results = finetune.train_and_evaluate(config, str(tmp_path / "probe"), data=data,
                                        progress=False)
  assert results["mode"] == "linear_probe" and results["init_step"] == 7
  assert results["train_steps"] == [10, 20, 30, 40]
  assert results["eval_points"] == int((val[0].labels >= 0).sum())
  assert sorted(data.train_tiles) == sorted(s["scene"] for s in train)  # tiled once, kept


def test_script_runlocal_trains_and_evaluates_every_point(tmp_path):
  workdir = str(tmp_path / "work")
  config = finetune_synthetic.get_config("runlocal")
  test_checkpoints.save_student(str(tmp_path / "pretrain"), test_checkpoints.pretrained_student())
  done = subprocess.run(
      [sys.executable, "-m", "experiments.finetune", "--config",
       "experiments/configs/finetune_synthetic.py:runlocal", "--workdir", workdir,
       f"--config.data.manual_dir={tmp_path}/rooms", f"--config.data.data_dir={tmp_path}/tfds",
       f"--config.init.checkpoint={tmp_path}/pretrain"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "mIoU" in done.stdout and "| wall |" in done.stdout
  results = json.load(open(os.path.join(workdir, "results.json")))
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["loss"] for r in records]
  assert len(losses) == config.total_steps
  assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
  assert results["init_step"] == 7 and results["mode"] == "finetune"
  assert 0 <= results["miou"] <= 1 and 0 <= results["oa"] <= 1
  # Every labelled point of the val scenes is evaluated.
  from p2p_jax.data.scannet_scenes import load_scenes
  val = load_scenes(f"{tmp_path}/tfds", "val")
  assert results["eval_points"] == sum(int((val[i]["labels"] >= 0).sum())
                                       for i in range(len(val)))
