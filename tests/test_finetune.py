"""Fine-tuning and linear probing: label subsets, crops, evaluation cover, checkpoint loading,
the frozen backbone of the probe, and the script end to end on its runlocal config."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import test_checkpoints

from experiments.configs import finetune_s3dis, finetune_scannet, finetune_synthetic
from p2p_jax.configs import finetune as finetune_schema
from p2p_jax.tasks import segmentation
from p2p_jax.train import finetune
from p2p_jax.train import state as state_lib
from p2p_jax.train.config import check_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP = segmentation.CropConfig(num_points=128, size=1.0)
OPTIMIZER = state_lib.OptimizerConfig(learning_rate=1e-2, total_steps=10)


@pytest.mark.parametrize("module", [finetune_synthetic, finetune_s3dis, finetune_scannet])
def test_every_config_builds_and_has_only_known_keys(module):
  assert "python -m experiments.finetune" in module.__doc__
  for arg in (None, "runlocal"):
    check_config(module.get_config(arg), finetune_schema.base())
  with pytest.raises(ValueError, match="unknown config argument"):
    module.get_config("bogus")


def test_the_papers_s3dis_and_scannet_settings():
  c = finetune_s3dis.get_config()
  assert (c.data.dataset, c.data.val_area, c.student, c.sparse.voxel_size) == (
      "s3dis", 5, "sr_unet34c", 0.05)
  assert segmentation.s3dis_areas(c.data, "train") == [1, 2, 3, 4, 6]
  assert segmentation.s3dis_areas(c.data, "val") == [5]
  o = c.optimizer
  assert (o.name, o.learning_rate, o.momentum, o.dampening, o.weight_decay, o.schedule,
          o.power, c.total_steps, c.batch_size) == ("sgd", 0.1, 0.9, 0.1, 1e-4, "poly", 0.9,
                                                    15_000, 32)
  assert len(segmentation.class_names(c.data)) == 13
  c = finetune_scannet.get_config()
  assert (c.student, c.sparse.voxel_size, len(segmentation.class_names(c.data))) == (
      "sr_unet34c", 0.02, 20)
  model = segmentation.make_model(c.student, "finetune", **segmentation.student_kwargs(c))
  assert model.backbone.voxel_size == 0.02 and model.backbone.conv_impl == "pairs"
  c.data.dataset = "kitti"
  with pytest.raises(ValueError, match="data.dataset: unknown dataset 'kitti'"):
    segmentation.class_names(c.data)


def test_limited_points_are_nested_reproducible_and_only_labelled_points():
  scenes = [make_scene(num_points=500, seed=i) for i in range(3)]
  counts = (20, 50, 100, 200)
  kept = [segmentation.limited_points(scenes, n, seed=1) for n in counts]
  for scene in scenes:
    name, labelled = scene["scene"], np.flatnonzero(scene["labels"] >= 0)
    for n, k in zip(counts, kept):
      assert len(k[name]) == n and len(set(k[name])) == n
      assert set(k[name]) <= set(labelled)  # never an unlabelled point
    for small, large in zip(kept, kept[1:]):
      assert set(small[name]) < set(large[name])
    # Reproducible from the seed and the scene's name alone, whatever the other scenes.
    alone = segmentation.limited_points([scene], 50, seed=1)
    np.testing.assert_array_equal(alone[name], kept[1][name])
  assert any(set(segmentation.limited_points(scenes, 50, seed=2)[s["scene"]])
             != set(kept[1][s["scene"]]) for s in scenes)
  # A scene with fewer labelled points keeps all of them; the others become ignored.
  tiny = dict(scenes[0], labels=np.full(500, -1, np.int32))
  tiny["labels"][[3, 7]] = [4, 5]
  only = segmentation.limited_points([tiny], 20, seed=0)[tiny["scene"]]
  np.testing.assert_array_equal(only, [3, 7])
  masked = segmentation.keep_labels(scenes[0], kept[0][scenes[0]["scene"]])
  assert (masked["labels"] >= 0).sum() == 20
  np.testing.assert_array_equal(masked["labels"][kept[0][scenes[0]["scene"]]],
                                scenes[0]["labels"][kept[0][scenes[0]["scene"]]])


def test_vertex_evaluation_by_hand():
  """Per-vertex predictions through the evaluation path, scored against matrices by hand.

  Six vertices in a row; the labeller predicts class 1 where a vertex's red channel is bright
  and 2 elsewhere, so the colour carries the prediction each vertex's voxel would get. Vertex 5
  is unlabelled.
  """
  points = np.array([[0.1, 0.1, 0], [0.5, 0.2, 0], [0.9, 0.1, 0], [1.2, 0.1, 0],
                     [1.6, 0.2, 0], [1.9, 0.1, 0]], np.float32)
  labels = np.array([1, 1, 2, 2, 2, -1], np.int32)

  def confusion(red, crop):
    colors = np.zeros((6, 3), np.uint8)
    colors[:, 0] = red
    scene = {"points": points, "colors": colors, "labels": labels, "scene": "s"}
    prepared = segmentation.prepare_eval_scene(scene, crop)
    labeller = lambda p, c, m: np.where(np.asarray(c)[..., 0] > 0.5, 1, 2)
    return segmentation.spread_confusion(
        [prepared], segmentation.map_blocks(labeller, [prepared], 3), num_classes=3)

  # Every vertex drawn: each keeps its own prediction, [1, 2, 1, 2, 2, 1].
  got = confusion([255, 0, 255, 0, 0, 255], segmentation.CropConfig(num_points=16, size=10.0))
  np.testing.assert_array_equal(got, [[0, 0, 0], [0, 1, 1], [0, 1, 2]])
  # Two cells of three vertices (x < 1 and x > 1), two drawn in each: the third takes a drawn
  # neighbour's prediction, the same in its cell: [1, 1, 1, 2, 2, 2].
  got = confusion([255, 255, 255, 0, 0, 0], segmentation.CropConfig(num_points=2, size=1.0))
  np.testing.assert_array_equal(got, [[0, 0, 0], [0, 2, 0], [0, 1, 2]])


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


@pytest.mark.parametrize("name", ["finetune_s3dis", "finetune_scannet"])
def test_sr_unet_runlocal_configs_fine_tune_and_evaluate_every_point(tmp_path, name):
  """The S3DIS and ScanNet configs end to end with sr_unet_tiny on generated rooms (S3DIS
  layout / ScanNet layout): the loss falls and every labelled point of the val scenes counts."""
  workdir = str(tmp_path / "work")
  module = {"finetune_s3dis": finetune_s3dis, "finetune_scannet": finetune_scannet}[name]
  config = module.get_config("runlocal")
  done = subprocess.run(
      [sys.executable, "-m", "experiments.finetune", "--config",
       f"experiments/configs/{name}.py:runlocal", "--workdir", workdir,
       f"--config.data.manual_dir={tmp_path}/data", f"--config.data.data_dir={tmp_path}/tfds"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "capacity overflow" not in done.stderr
  results = json.load(open(os.path.join(workdir, "results.json")))
  losses = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert len(losses) == config.total_steps
  assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
  assert results["student"] == "sr_unet_tiny" and results["dataset"] == config.data.dataset
  assert len(results["per_class_iou"]) == len(segmentation.class_names(config.data))
  val = segmentation.load_split(_with_dirs(config.data, f"{tmp_path}/tfds"), "val")
  assert results["eval_points"] == sum(int((s["labels"] >= 0).sum()) for s in val)
  lists = json.load(open(os.path.join(workdir, "label_lists.json")))
  assert lists["scenes"] == results["labelled_scenes"]
  if config.labels.points_per_scene:
    assert sorted(lists["points"]) == lists["scenes"]
    assert all(len(v) == config.labels.points_per_scene for v in lists["points"].values())
  if name == "finetune_s3dis":
    assert all(s["scene"].startswith("Area_5/") for s in val)
    assert not any(s.startswith("Area_5/") for s in results["labelled_scenes"])


def _with_dirs(data, data_dir):
  data = data.copy_and_resolve_references()
  data.data_dir = data_dir
  return data


def test_sigterm_during_setup_stops_the_script_cleanly_without_results(tmp_path):
  """A stop while the script prepares its data ends it with exit 0 before its first step,
  naming the stop; no results.json is written for a run that never trained."""
  workdir = tmp_path / "work"
  log_path = tmp_path / "log.txt"
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.finetune", "--config",
         "experiments/configs/finetune_synthetic.py:runlocal", "--workdir", str(workdir),
         f"--config.data.manual_dir={tmp_path}/rooms",
         f"--config.data.data_dir={tmp_path}/tfds"],
        cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while "SIGTERM handler installed" not in open(log_path).read() and time.time() < deadline:
      assert proc.poll() is None, open(log_path).read()[-3000:]
      time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
  output = open(log_path).read()
  assert proc.returncode == 0, output[-3000:]
  assert "SIGTERM: fine-tuning stopped after step 0" in output, output[-3000:]
  assert not (workdir / "results.json").exists()
