"""The scannet_frames and scannet_scenes TFDS builders on generated ScanNet exports.

Each dataset is built into a temporary dir as array_record and read back with
`as_data_source` (numpy, no TensorFlow); values are checked against what was written.
"""

import contextlib
import glob
import logging
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from datasets.scannet_frames import build as frames_cli
from datasets.scannet_frames import dummy_data
from datasets.scannet_scenes import build as scenes_cli
from p2p_jax import geometry
from p2p_jax.data import labels, scannet
from p2p_jax.data import s3dis as s3dis_lib
from p2p_jax.data import scannet_frames as frames_lib
from p2p_jax.data import scannet_scenes as scenes_lib

SPLITS = {"train": ["scene0000_00", "scene0001_00"], "val": ["scene0002_00"]}
FRAMES = [0, 1, 25, 49, 50]  # skip25 keeps 0, 25, 50


@contextlib.contextmanager
def captured_log():
  """Collects the text of every log record of the builders (caplog is per test)."""
  lines = []
  handler = logging.Handler(logging.INFO)
  handler.emit = lambda record: lines.append(record.getMessage())
  logger = logging.getLogger("p2p_jax.data")
  logger.addHandler(handler)
  level = logger.level
  logger.setLevel(logging.INFO)
  try:
    yield lines
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)


def examples(source) -> list[dict]:
  return [source[i] for i in range(len(source))]


def array_record_files(data_dir) -> list[str]:
  return glob.glob(os.path.join(str(data_dir), "**", "*.array_record*"), recursive=True)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  manual_dir = str(root / "manual")
  truth = dummy_data.write_export(manual_dir, SPLITS, FRAMES)
  data_dir = str(root / "data")
  frames_lib.build_frames(manual_dir, data_dir, "skip25_labels")
  frames_lib.build_frames(manual_dir, data_dir, "skip1")
  scenes_lib.build_scenes(manual_dir, data_dir)
  return manual_dir, data_dir, truth


def reference_bilinear(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Antialiased bilinear resize in float64: a triangle filter widened by the shrink factor,
  centred on (i + 0.5) * scale in source pixel units whose centres are at j + 0.5."""
  out = image.astype(np.float64)
  for axis, size in enumerate(hw):
    scale = out.shape[axis] / size
    support = max(scale, 1.0)
    centres = (np.arange(size) + 0.5) * scale
    taps = np.arange(out.shape[axis]) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / support)
    weights /= weights.sum(1, keepdims=True)
    out = np.moveaxis(np.tensordot(weights, np.moveaxis(out, axis, 0), axes=1), 0, axis)
  return out


def expected_scannet20(raw: np.ndarray) -> np.ndarray:
  """Raw id -> NYU40 (label map) -> benchmark index, by lookup in the class list."""
  benchmark = [nyu40 for nyu40, _ in labels.SCANNET20]
  out = np.full(raw.shape, labels.IGNORE_LABEL, np.int32)
  for raw_id in np.unique(raw):
    nyu40 = dummy_data.LABEL_MAP.get(int(raw_id), (None, 0))[1]
    if nyu40 in benchmark:
      out[raw == raw_id] = benchmark.index(nyu40)
  return out


def test_frames_round_trip(export):
  manual_dir, data_dir, truth = export
  for split, scenes in SPLITS.items():
    source = frames_lib.load_frames(data_dir, split, config="skip25_labels")
    got = examples(source)
    assert [(ex["scene"].decode(), ex["frame"]) for ex in got] == [
        (scene, frame) for scene in scenes for frame in (0, 25, 50)]
    for ex in got:
      scene = ex["scene"].decode()
      scene_truth, frame_truth = truth[scene], truth[scene]["frames"][ex["frame"]]
      np.testing.assert_array_equal(ex["depth"], frame_truth["depth"])
      assert ex["depth"].dtype == np.uint16
      np.testing.assert_array_equal(ex["cam_to_world"], frame_truth["cam_to_world"])
      np.testing.assert_array_equal(ex["depth_intrinsics"], scene_truth["depth_intrinsics"])
      color = np.asarray(Image.open(
          os.path.join(manual_dir, "scans", scene, "color", f"{ex['frame']}.jpg")))
      np.testing.assert_array_equal(ex["image"], np.asarray(
          Image.fromarray(color).resize((32, 24), Image.Resampling.BILINEAR)))
      assert np.abs(ex["image"] - reference_bilinear(color, (24, 32))).max() <= 1.01
      np.testing.assert_array_equal(ex["color_intrinsics"], geometry.resize_intrinsics(
          scene_truth["color_intrinsics"], color.shape[:2], (24, 32)))
      np.testing.assert_array_equal(ex["color_from_depth"], np.eye(4))
      # Nearest neighbour: the source pixel under each target pixel's centre.
      hc, wc = color.shape[:2]
      rows = ((np.arange(24) + 0.5) * hc / 24).astype(int)
      cols = ((np.arange(32) + 0.5) * wc / 32).astype(int)
      raw = frame_truth["label"][np.ix_(rows, cols)]
      np.testing.assert_array_equal(ex["label"], expected_scannet20(raw))
      np.testing.assert_array_equal(ex["instance"], frame_truth["instance"][np.ix_(rows, cols)])
      assert ex["label"].dtype == ex["instance"].dtype == np.int32


def test_resize_conventions_on_hand_computed_values():
  # Shrinking by 2 averages each 2-pixel block and its neighbours with weights 1/8, 3/8, 3/8,
  # 1/8 (borders renormalised); nearest takes the second pixel of each block.
  row = np.array([0, 80, 160, 240], np.uint8)
  image = np.repeat(np.repeat(row[None, :, None], 2, 0), 3, 2)
  out = frames_lib.resize_bilinear(image, (1, 2))[0, :, 0]
  np.testing.assert_array_equal(out, np.round([(0 * 3 + 80 * 3 + 160) / 7,
                                               (80 + 160 * 3 + 240 * 3) / 7]))
  np.testing.assert_array_equal(frames_lib.resize_nearest(np.arange(6)[None], (1, 3)),
                                [[1, 3, 5]])
  np.testing.assert_array_equal(frames_lib.resize_nearest(np.arange(5)[None], (1, 2)),
                                [[1, 3]])  # centres at 1.25 and 3.75


def test_color_from_depth_follows_the_extrinsics(tmp_path):
  rng = np.random.default_rng(1)
  scene_dir = str(tmp_path / "s")
  dummy_data.write_scene(scene_dir, "s", [0], (24, 32), rng)
  e_color, e_depth = dummy_data.random_pose(rng), dummy_data.random_pose(rng)
  k = scannet.read_intrinsics(scene_dir)
  scannet.write_intrinsics(scene_dir, k.color, k.depth, e_color, e_depth)
  ex = frames_lib.frame_example(scene_dir, 0, scannet.read_intrinsics(scene_dir), None)
  np.testing.assert_allclose(e_color.astype(np.float64) @ ex["color_from_depth"], e_depth,
                             atol=1e-5)
  assert "label" not in ex


def test_frame_skip_is_honoured(export):
  manual_dir, data_dir, truth = export
  every = examples(frames_lib.load_frames(data_dir, "train", config="skip1"))
  assert [(ex["scene"].decode(), ex["frame"]) for ex in every] == [
      (scene, frame) for scene in SPLITS["train"] for frame in FRAMES]
  assert "label" not in every[0]
  skip25 = examples(frames_lib.load_frames(data_dir, "train", config="skip25_labels"))
  kept = [ex for ex in every if ex["frame"] % 25 == 0]
  for a, b in zip(kept, skip25, strict=True):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


def test_metadata_counts_and_reloading_from_directory(export):
  _, data_dir, _ = export
  path = os.path.join(data_dir, "scannet_frames", "skip25_labels", "1.0.0")
  builder = tfds.builder_from_directory(path)
  meta = builder.info.metadata
  assert meta["frame_skip"] == 25 and meta["labels"] is True
  for split in SPLITS:
    assert meta["splits"][split] == {"listed": 3 * len(SPLITS[split]),
                                     "written": 3 * len(SPLITS[split]), "skipped": {},
                                     "skipped_files": []}
    assert builder.info.splits[split].num_examples == 3 * len(SPLITS[split])
    assert len(builder.as_data_source(split=split)) == 3 * len(SPLITS[split])
  # A slice through the loader.
  assert len(frames_lib.load_frames(data_dir, "train[:2]", config="skip25_labels")) == 2


def test_scenes_round_trip(export):
  _, data_dir, truth = export
  for split, scenes in SPLITS.items():
    got = examples(scenes_lib.load_scenes(data_dir, split))
    assert [ex["scene"].decode() for ex in got] == scenes
    for ex in got:
      mesh = truth[ex["scene"].decode()]["mesh"]
      np.testing.assert_array_equal(ex["points"], mesh["points"])
      np.testing.assert_array_equal(ex["colors"], mesh["colors"])
      np.testing.assert_array_equal(ex["labels"], labels.nyu40_to_scannet20(mesh["labels"]))
      benchmark = [nyu40 for nyu40, _ in labels.SCANNET20]
      for nyu40, label in zip(mesh["labels"], ex["labels"]):
        assert label == (benchmark.index(nyu40) if nyu40 in benchmark else -1)


def test_two_builds_are_identical_and_the_cli_works(export, tmp_path, capsys):
  manual_dir, data_dir, _ = export
  again = str(tmp_path / "again")
  assert frames_cli.main(["--manual_dir", manual_dir, "--data_dir", again,
                          "--config", "skip25_labels"]) == 0
  assert scenes_cli.main(["--manual_dir", manual_dir, "--data_dir", again]) == 0
  out = capsys.readouterr().out
  assert "scannet_frames/skip25_labels/1.0.0 train: 6 frames, skipped {}" in out
  assert "scannet_scenes/1.0.0 val: 1 scenes, skipped {}" in out
  for split in SPLITS:
    for first, second in [
        (frames_lib.load_frames(data_dir, split, "skip25_labels"),
         frames_lib.load_frames(again, split, "skip25_labels")),
        (scenes_lib.load_scenes(data_dir, split), scenes_lib.load_scenes(again, split))]:
      assert len(first) == len(second)
      for a, b in zip(examples(first), examples(second)):
        assert a.keys() == b.keys()
        for name in a:
          np.testing.assert_array_equal(a[name], b[name])


def test_all_scenes_go_to_train_without_split_lists(tmp_path):
  manual_dir = str(tmp_path / "manual")
  dummy_data.write_export(manual_dir, {"train": ["b_scene", "a_scene"]}, [0],
                          split_lists=False)
  builder = scenes_lib.build_scenes(manual_dir, str(tmp_path / "data"))
  assert list(builder.info.splits) == ["train"]
  source = scenes_lib.load_scenes(str(tmp_path / "data"), "train")
  assert [ex["scene"] for ex in examples(source)] == [b"a_scene", b"b_scene"]


def test_scenes_in_no_split_list_are_reported(tmp_path):
  manual_dir = str(tmp_path / "manual")
  dummy_data.write_export(manual_dir, SPLITS, [0])
  dummy_data.write_scene(os.path.join(manual_dir, "scans", "scene0999_00"), "scene0999_00",
                         [0], (24, 32), np.random.default_rng(2))
  with captured_log() as log:
    builder = scenes_lib.build_scenes(manual_dir, str(tmp_path / "data"))
  assert builder.info.metadata["scenes_in_no_split"] == ["scene0999_00"]
  assert any("scene0999_00" in line and "no split list" in line for line in log)


# Frame -> damage, in a train scene; frame 0 stays good, and a damaged frame 310 is not a
# multiple of 25, so it is neither read nor counted.
DAMAGED = {25 * (i + 1): kind for i, kind in enumerate(sorted(dummy_data.FRAME_DAMAGE))}


@pytest.fixture(scope="module")
def bad_build(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad")
  manual_dir = str(root / "manual")
  splits = {"train": ["scene0000_00"], "val": ["scene0001_00"]}
  dummy_data.write_export(manual_dir, splits, [0, *DAMAGED, 310])
  scans = os.path.join(manual_dir, "scans")
  damage = {kind: dummy_data.damage_frame(os.path.join(scans, "scene0000_00"), frame, kind)
            for frame, kind in DAMAGED.items()}
  dummy_data.damage_frame(os.path.join(scans, "scene0000_00"), 310, "inf_pose")
  # Val: every listed frame but 0 has lost tracking.
  val_damage = [dummy_data.damage_frame(os.path.join(scans, "scene0001_00"), frame,
                                        "inf_pose") for frame in DAMAGED]
  with captured_log() as log:
    builder = frames_lib.build_frames(manual_dir, str(root / "data"), "skip25_labels")
  return builder, damage, val_damage, log


@pytest.mark.parametrize("kind", sorted(dummy_data.FRAME_DAMAGE))
def test_bad_frame_is_skipped_counted_and_named(bad_build, kind):
  builder, damage, _, log = bad_build
  reason, path = damage[kind]
  skipped = builder.info.metadata["splits"]["train"]["skipped_files"]
  assert [s["reason"] for s in skipped if s["path"] == path] == [reason]
  assert any(path in line and reason in line for line in log)


def test_bad_frames_add_up_and_are_summarised(bad_build):
  builder, damage, val_damage, log = bad_build
  train = builder.info.metadata["splits"]["train"]
  expected = {}
  for reason, _ in damage.values():
    expected[reason] = expected.get(reason, 0) + 1
  assert train["skipped"] == expected
  assert train["listed"] == 1 + len(DAMAGED)  # frame 310 is not listed
  assert train["written"] == 1 == builder.info.splits["train"].num_examples
  val = builder.info.metadata["splits"]["val"]
  assert val["skipped"] == {scannet.BAD_POSE: len(DAMAGED)}
  assert [s["path"] for s in val["skipped_files"]] == [path for _, path in val_damage]
  for split in ("train", "val"):
    meta = builder.info.metadata["splits"][split]
    assert meta["listed"] == meta["written"] + sum(meta["skipped"].values())
    assert meta["written"] == len(builder.as_data_source(split=split))
  summaries = [line for line in log if "frames listed" in line]
  assert len(summaries) == 2
  n = len(DAMAGED)
  assert f"split train: {n + 1} frames listed, 1 written, {n} skipped" in summaries[0]
  assert f"{scannet.MISSING_FILE}: 4" in summaries[0]
  assert f"{scannet.CORRUPT_IMAGE}: 5" in summaries[0]
  assert f"{scannet.MALFORMED_POSE}: 4" in summaries[0]
  assert f"{scannet.DEPTH_NOT_16BIT}: 1" in summaries[0]
  assert f"{scannet.DEPTH_SIZE}: 1" in summaries[0]
  assert f"{scannet.BAD_POSE}: {n}: " in summaries[1] and f"({n - 3} more)" in summaries[1]
  good = builder.as_data_source(split="train")[0]
  assert (good["scene"], good["frame"]) == (b"scene0000_00", 0)


@pytest.mark.parametrize("problem", ["malformed_intrinsics", "missing_intrinsics",
                                     "missing_label_map", "malformed_label_map"])
def test_scene_level_problems_raise_before_anything_is_written(tmp_path, problem):
  manual_dir = str(tmp_path / "manual")
  dummy_data.write_export(manual_dir, SPLITS, [0])
  intrinsic = os.path.join(manual_dir, "scans", "scene0002_00", "intrinsic")  # a val scene
  path = {"malformed_intrinsics": os.path.join(intrinsic, "intrinsic_depth.txt"),
          "missing_intrinsics": os.path.join(intrinsic, "intrinsic_color.txt"),
          "missing_label_map": os.path.join(manual_dir, scannet.LABEL_MAP_FILE),
          "malformed_label_map": os.path.join(manual_dir, scannet.LABEL_MAP_FILE)}[problem]
  if problem.startswith("missing"):
    os.remove(path)
  else:
    with open(path, "w") as f:
      f.write("1 2 3\n")
  data_dir = str(tmp_path / "data")
  with pytest.raises(ValueError, match=re.escape(path)):
    frames_lib.build_frames(manual_dir, data_dir, "skip25_labels")
  assert not array_record_files(data_dir)
  if "label_map" in problem:
    frames_lib.build_frames(manual_dir, data_dir, "skip25")  # not needed without labels


@pytest.mark.parametrize("content, match", [
    ("scene0000_00\nscene0404_00\n", "scene0404_00 does not exist"),
    ("scene0000_00\nscene0000_00\n", "more than once"),
    ("\n", "names no scenes"),
    ("scene0002_00\n", "also listed"),
], ids=["unknown_scene", "repeated_scene", "empty", "scene_in_both_lists"])
def test_bad_split_lists_raise_before_anything_is_written(tmp_path, content, match):
  manual_dir = str(tmp_path / "manual")
  dummy_data.write_export(manual_dir, SPLITS, [0])
  path = os.path.join(manual_dir, "scannetv2_train.txt")
  with open(path, "w") as f:
    f.write(content)
  with pytest.raises(ValueError, match=match) as info:
    scenes_lib.build_scenes(manual_dir, str(tmp_path / "data"))
  assert path in str(info.value)
  assert not array_record_files(tmp_path / "data")


def test_a_split_with_every_input_skipped_fails_with_the_counts(tmp_path):
  manual_dir = str(tmp_path / "manual")
  dummy_data.write_export(manual_dir, SPLITS, [0])
  scene_dir = os.path.join(manual_dir, "scans", "scene0002_00")
  dummy_data.damage_frame(scene_dir, 0, "zero_depth")
  with pytest.raises(ValueError, match=r"split val: all 1 frames were skipped .*all-zero"):
    frames_lib.build_frames(manual_dir, str(tmp_path / "data"), "skip25")
  dummy_data.damage_mesh(scene_dir, "scene0002_00", "missing_labels")
  with pytest.raises(ValueError, match=r"split val: all 1 scenes were skipped .*missing file"):
    scenes_lib.build_scenes(manual_dir, str(tmp_path / "data"))


def test_bad_meshes_are_skipped_counted_and_named(tmp_path):
  manual_dir = str(tmp_path / "manual")
  kinds = sorted(dummy_data.MESH_DAMAGE)
  scenes = [f"scene{i:04d}_00" for i in range(len(kinds) + 1)]
  dummy_data.write_export(manual_dir, {"train": scenes}, [0], split_lists=False)
  damage = {kind: dummy_data.damage_mesh(os.path.join(manual_dir, "scans", scene), scene, kind)
            for kind, scene in zip(kinds, scenes[1:])}
  with captured_log() as log:
    builder = scenes_lib.build_scenes(manual_dir, str(tmp_path / "data"))
  meta = builder.info.metadata["splits"]["train"]
  assert meta["listed"] == len(scenes) and meta["written"] == 1
  assert [ex["scene"] for ex in examples(builder.as_data_source(split="train"))] == [
      scenes[0].encode()]
  assert [(s["reason"], s["path"]) for s in meta["skipped_files"]] == list(damage.values())
  for reason, path in damage.values():
    assert any(path in line and reason in line for line in log)
  summary = next(line for line in log if "scenes listed" in line)
  assert "6 skipped" in summary and f"{scannet.MISSING_FILE}: 2" in summary


def test_loading_an_unbuilt_dataset_says_how_to_build_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="datasets.scannet_frames.build"):
    frames_lib.load_frames(str(tmp_path), "train")
  with pytest.raises(FileNotFoundError, match="datasets.scannet_scenes.build"):
    scenes_lib.load_scenes(str(tmp_path), "train")


@pytest.mark.parametrize("name,cls,citation", [
    ("scannet_frames", frames_lib.ScannetFrames, "dai2017scannet"),
    ("scannet_scenes", scenes_lib.ScannetScenes, "dai2017scannet"),
    ("s3dis", s3dis_lib.S3dis, "armeni2016s3dis")])
def test_tfds_finds_each_builder_in_its_datasets_folder(name, cls, citation):
  # As `tfds build datasets/<name>` loads it: the folder's module, this folder's citation.
  folder = os.path.join(os.path.dirname(__file__), "..", "datasets")
  with tfds.core.utils.add_sys_path(folder):
    builder = tfds.core.community.builder_cls_from_module(f"{name}.{name}_dataset_builder")
  assert issubclass(builder, cls) and builder.name == cls.name == name
  assert citation in builder.get_metadata().citation
  assert tfds.builder_cls(name) is cls  # the package's class stays the registered one
