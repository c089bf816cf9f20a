"""The scannet_boxes TFDS builder (3D detection) and the ScanNet instance and meta readers.

Expected boxes come from outside the implementation: the generator's own meshes of the
synthetic objects, hand-computed values of a hand-written scene, and the boxes of a scene
before a known rigid transform. Each defect of the instance annotation or the axis alignment
is written into a scene of its own and must be counted under its reason.
"""

import glob
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_scannet_builders import captured_log

from datasets.scannet_boxes import build as boxes_cli
from p2p_jax.data import labels, scannet
from p2p_jax.data import scannet_boxes as boxes_lib
from p2p_jax.data.synthetic import writer

SEED = 3
NUM_SCENES = 5  # one room of each type: every detection class appears
# NYU40 ids of the 18 detection classes, in box class order (VoteNet's OBJ_CLASS_IDS).
DETECTION_NYU40 = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]
# Surface samples at 1000 per m^2 come within 2 cm of every extreme of the generated objects
# (thin curtains at 300 per m^2 miss theirs by 14 cm).
SAMPLING_TOLERANCE = 0.05


def examples(source) -> dict[str, dict]:
  return {ex["scene"].decode(): ex for ex in (source[i] for i in range(len(source)))}


def box_corners(boxes):
  boxes = np.asarray(boxes, np.float64)
  return boxes[:, :3] - boxes[:, 3:6] / 2, boxes[:, :3] + boxes[:, 3:6] / 2


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
  """Generated rooms (train and val) and the dataset built from them."""
  root = tmp_path_factory.mktemp("rooms")
  manual_dir, data_dir = str(root / "manual"), str(root / "data")
  writer.generate(manual_dir, num_scenes=NUM_SCENES, frames_per_scene=1, height=24, width=32,
                  seed=SEED, val_fraction=0.2, points_per_m2=1000.0, workers=1)
  builder = boxes_lib.build_boxes(manual_dir, data_dir)
  scenes = {}
  for split in ("train", "val"):
    scenes.update(examples(boxes_lib.load_boxes(data_dir, split)))
  return manual_dir, data_dir, builder, scenes


def test_detection_classes_are_the_benchmark_without_wall_and_floor():
  assert [nyu40 for nyu40, _ in boxes_lib.DETECTION_CLASSES] == DETECTION_NYU40
  assert boxes_lib.DETECTION_CLASSES == tuple(
      c for c in labels.SCANNET20 if c[1] not in ("wall", "floor"))
  np.testing.assert_array_equal(boxes_lib.nyu40_to_detection([1, 2, 3, 39, 22, 0, 41, -1]),
                                [-1, -1, 0, 17, -1, -1, -1, -1])


def test_boxes_are_the_extents_of_the_generated_objects(rooms):
  _, _, _, scenes = rooms
  assert sorted(scenes) == [writer.scene_name(i) for i in range(NUM_SCENES)]
  seen = set()
  for index in range(NUM_SCENES):
    ex = scenes[writer.scene_name(index)]
    room = writer.scene_room(SEED, index)
    expected = [i for i in range(1, len(room.instance_labels))
                if room.instance_labels[i] in DETECTION_NYU40]
    np.testing.assert_array_equal(ex["box_instances"], expected)  # no wall, floor, ceiling
    low, high = box_corners(ex["boxes"])
    for k, instance in enumerate(ex["box_instances"]):
      nyu40 = int(room.instance_labels[instance])
      assert ex["box_classes"][k] == DETECTION_NYU40.index(nyu40)
      seen.add(nyu40)
      corners = room.mesh.triangles[room.face_instances == instance].reshape(-1, 3)
      extent_low, extent_high = corners.min(0), corners.max(0)
      # Samples lie on the object's triangles, so the box lies inside their extent ...
      assert np.all(low[k] >= extent_low - 1e-5) and np.all(high[k] <= extent_high + 1e-5)
      # ... and reaches it up to the sampling density.
      np.testing.assert_allclose(low[k], extent_low, atol=SAMPLING_TOLERANCE)
      np.testing.assert_allclose(high[k], extent_high, atol=SAMPLING_TOLERANCE)
    np.testing.assert_array_equal(ex["boxes"][:, 6], 0)
    assert ex["boxes"].dtype == np.float32
    assert ex["box_classes"].dtype == ex["box_instances"].dtype == np.int32
  assert sorted(seen) == DETECTION_NYU40


def test_points_labels_and_instances_follow_the_export(rooms):
  manual_dir, _, builder, scenes = rooms
  for scene, ex in scenes.items():
    scene_dir = os.path.join(manual_dir, "scans", scene)
    mesh = scannet.read_mesh(scene_dir, scene)
    np.testing.assert_array_equal(ex["points"], mesh["points"])  # no axisAlignment: as is
    np.testing.assert_array_equal(ex["colors"], mesh["colors"])
    np.testing.assert_array_equal(ex["labels"], labels.nyu40_to_scannet20(mesh["labels"]))
    np.testing.assert_array_equal(ex["axis_alignment"], np.eye(4))
    # The generator's vertex instances, and each one's class is its vertices' label.
    with open(os.path.join(scene_dir, scene + writer.SEGS_SUFFIX)) as f:
      np.testing.assert_array_equal(ex["instances"], json.load(f)["segIndices"])
    room = writer.scene_room(SEED, int(scene[5:9]))
    np.testing.assert_array_equal(room.instance_labels[ex["instances"]], mesh["labels"])
    assert ex["points"].dtype == np.float32 and ex["instances"].dtype == np.int32
  meta = builder.info.metadata
  for split, count in (("train", 4), ("val", 1)):
    assert meta["splits"][split]["listed"] == meta["splits"][split]["written"] == count
    # The synthetic rooms have no <scene>.txt: kept in their own frame, and counted.
    assert meta["notes"][split]["counts"] == {boxes_lib.NO_AXIS_ALIGNMENT: count}


def test_the_axis_alignment_undoes_a_rigid_transform(rooms, tmp_path):
  manual_dir, _, _, scenes = rooms
  scene = writer.scene_name(1)
  angle = np.deg2rad(33.0)
  transform = np.eye(4)
  transform[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
  transform[:3, 3] = [-5.3, 2.25, 0.4]
  moved = str(tmp_path / "manual")
  source = os.path.join(manual_dir, "scans", scene)
  target = os.path.join(moved, "scans", scene)
  shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.ply"))
  shutil.copy(os.path.join(manual_dir, scannet.LABEL_MAP_FILE), moved)
  mesh = scannet.read_mesh(source, scene)
  points = mesh["points"].astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]
  scannet.write_mesh(target, scene, points, mesh["colors"], mesh["labels"])
  scannet.write_meta(os.path.join(target, scene + ".txt"), np.linalg.inv(transform),
                     {"colorHeight": "968", "sceneType": "Living room / Lounge"})
  data_dir = str(tmp_path / "data")
  boxes_lib.build_boxes(moved, data_dir)
  got = examples(boxes_lib.load_boxes(data_dir, "train"))[scene]
  want = scenes[scene]
  np.testing.assert_allclose(got["points"], want["points"], atol=1e-4)
  np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-4)
  np.testing.assert_array_equal(got["box_classes"], want["box_classes"])
  np.testing.assert_array_equal(got["box_instances"], want["box_instances"])
  np.testing.assert_allclose(got["axis_alignment"], np.linalg.inv(transform), atol=1e-6)
  # The transform matters: the boxes of the moved vertices themselves are other boxes.
  moved_low = np.array([points[want["instances"] == i].min(0) for i in want["box_instances"]])
  assert np.abs(moved_low - box_corners(want["boxes"])[0]).max() > 1.0


def test_the_meta_file_reads_as_scannet_writes_it(tmp_path):
  path = str(tmp_path / "scene0000_00.txt")
  with open(path, "w") as f:
    f.write("axisAlignment = 0.945519 0.325568 0.000000 -5.384390 -0.325568 0.945519 "
            "0.000000 -2.871780 0.000000 0.000000 1.000000 -0.064350 0.000000 0.000000 "
            "0.000000 1.000000 \ncolorHeight = 968\ncolorToDepthExtrinsics = 0.999973 "
            "0.006791 0.003179 -0.037285\nnumColorFrames = 5578\nsceneType = Apartment\n")
  np.testing.assert_array_equal(scannet.read_axis_alignment(path), [
      [0.945519, 0.325568, 0, -5.384390], [-0.325568, 0.945519, 0, -2.871780],
      [0, 0, 1, -0.064350], [0, 0, 0, 1]])
  with open(path, "w") as f:
    f.write("colorHeight = 968\nsceneType = Apartment\n")  # a test scene: no alignment
  assert scannet.read_axis_alignment(path) is None
  assert scannet.read_axis_alignment(str(tmp_path / "absent.txt")) is None


ROTATE = "1 0 0 0 0 1 0 0 0 0 1 0"
MALFORMED_ALIGNMENTS = {
    "15_values": "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0",
    "17_values": f"{ROTATE} 0 0 0 1 1",
    "not_a_number": f"{ROTATE} 0 0 0 one",
    "nan": "1 0 0 nan 0 1 0 0 0 0 1 0 0 0 0 1",
    "scaled": "2 0 0 0 0 2 0 0 0 0 2 0 0 0 0 1",
    "mirrored": "-1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1",
    "projective": f"{ROTATE} 0 0 0.5 1",
}


@pytest.mark.parametrize("values", MALFORMED_ALIGNMENTS.values(), ids=MALFORMED_ALIGNMENTS)
def test_a_malformed_axis_alignment_names_file_and_field(tmp_path, values):
  path = str(tmp_path / "scene0000_00.txt")
  with open(path, "w") as f:
    f.write(f"colorHeight = 968\naxisAlignment = {values}\n")
  with pytest.raises(ValueError, match=re.escape(path) + ".*axisAlignment"):
    scannet.read_axis_alignment(path)


def test_an_axis_alignment_given_twice_is_malformed(tmp_path):
  path = str(tmp_path / "scene0000_00.txt")
  identity = "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"
  with open(path, "w") as f:
    f.write(f"axisAlignment = {identity}\naxisAlignment = {identity}\n")
  with pytest.raises(ValueError, match=re.escape(path) + ".*axisAlignment.*2 times"):
    scannet.read_axis_alignment(path)


LABEL_MAP = ("id\traw_category\tcategory\tcount\tnyu40id\tnyu40class\n"
             "1\twall\twall\t8277\t1\twall\n"
             "2\toffice chair\tchair\t4646\t5\tchair\n"
             "7\tkitchen cabinets\tcabinet\t300\t3\tcabinet\n"
             "40\tceiling\tceiling\t806\t22\tceiling\n")


def test_raw_categories_map_to_nyu40(tmp_path):
  path = str(tmp_path / scannet.LABEL_MAP_FILE)
  with open(path, "w") as f:
    f.write(LABEL_MAP)
  assert scannet.read_raw_category_map(path) == {
      "wall": 1, "office chair": 5, "kitchen cabinets": 3, "ceiling": 22}
  with open(path, "a") as f:
    f.write("41\toffice chair\tchair\t1\t6\tsofa\n")
  with pytest.raises(ValueError, match=re.escape(path) + ":6: raw_category 'office chair'"):
    scannet.read_raw_category_map(path)
  with open(path, "w") as f:
    f.write("id\tnyu40id\n1\t1\n")
  with pytest.raises(ValueError, match="raw_category"):
    scannet.read_raw_category_map(path)


# The hand-written scene: 7 vertices in 5 segments; objects 0 and 1 get boxes, the wall and
# vertex 5 (in no group) do not.
HAND_VERTICES = [[0, 0, 0], [1, 2, 0.5], [0.5, -1, 2], [3, 3, 3], [4, 3.5, 3], [5, 5, 5],
                 [-1, 0, 0]]
HAND_NYU40 = [5, 5, 5, 3, 3, 0, 1]
HAND_SEGMENTS = [10, 10, 11, 12, 12, 13, 14]
HAND_GROUPS = [{"id": 0, "objectId": 0, "segments": [10, 11], "label": "office chair"},
               {"id": 1, "objectId": 1, "segments": [12], "label": "kitchen cabinets"},
               {"id": 2, "objectId": 2, "segments": [14], "label": "wall"}]
# A quarter turn about z, then a shift: (x, y, z) -> (10 - y, x, z - 1).
HAND_ALIGNMENT = ("axisAlignment = 0.000000 -1.000000 0.000000 10.000000 1.000000 0.000000 "
                  "0.000000 0.000000 0.000000 0.000000 1.000000 -1.000000 0.000000 0.000000 "
                  "0.000000 1.000000 ")
HAND_META = f"{HAND_ALIGNMENT}\ncolorHeight = 968\nsceneType = Bedroom / Hotel\n"
HAND_ALIGNED = [[10, 0, -1], [8, 1, -0.5], [11, 0.5, 1], [7, 3, 2], [6.5, 4, 2], [5, 5, 4],
                [10, -1, -1]]
# Chair: vertices 0-2, aligned min (8, 0, -1), max (11, 1, 1); cabinets: vertices 3-4,
# min (6.5, 3, 2), max (7, 4, 2).
HAND_BOXES = [[9.5, 0.5, 0, 3, 1, 2, 0], [6.75, 3.5, 2, 0.5, 1, 0, 0]]


def write_scene(scans, scene, vertices=HAND_VERTICES, segments=HAND_SEGMENTS,
                groups=HAND_GROUPS, meta=HAND_META):
  """Writes a scene in the export layout; None leaves a file out, a string is its text."""
  scene_dir = os.path.join(scans, scene)
  scannet.write_mesh(scene_dir, scene, np.array(vertices), np.full((len(vertices), 3), 128),
                     np.array(HAND_NYU40[:len(vertices)]))
  for suffix, content in ((writer.SEGS_SUFFIX, {"sceneId": scene, "segIndices": segments}),
                          (writer.AGGREGATION_SUFFIX, {"sceneId": f"scannet.{scene}",
                                                       "segGroups": groups}),
                          (".txt", meta)):
    if content is not None:
      with open(os.path.join(scene_dir, scene + suffix), "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))
  return scene_dir


def path_of(scans, scene, suffix):
  return os.path.join(scans, scene, scene + suffix)


# Scene -> (defect written into it, reason it is skipped for or kind of note it gets, the file
# named, the text its message must hold).
AGG, SEGS, META = writer.AGGREGATION_SUFFIX, writer.SEGS_SUFFIX, ".txt"
DEFECTS = {
    "scene0001_00": ("corrupt_json", boxes_lib.MALFORMED_INSTANCES, AGG, "not valid JSON"),
    "scene0002_00": ("length_mismatch", boxes_lib.MALFORMED_INSTANCES, SEGS, "segIndices"),
    "scene0003_00": ("bad_group", boxes_lib.MALFORMED_INSTANCES, AGG, "segGroups[1].segments"),
    "scene0004_00": ("malformed_alignment", boxes_lib.MALFORMED_AXIS_ALIGNMENT, META,
                     "axisAlignment"),
    "scene0005_00": ("non_rigid_alignment", boxes_lib.MALFORMED_AXIS_ALIGNMENT, META,
                     "axisAlignment"),
    "scene0006_00": ("missing_segs", scannet.MISSING_FILE, SEGS, "missing"),
    "scene0007_00": ("missing_aggregation", scannet.MISSING_FILE, AGG, "missing"),
    "scene0008_00": ("missing_labels_mesh", scannet.MISSING_FILE, scannet.LABELS_SUFFIX,
                     "missing"),
    "scene0009_00": ("unknown_segment", boxes_lib.UNKNOWN_SEGMENT, AGG, "objectId 1"),
    "scene0010_00": ("double_claim", boxes_lib.VERTEX_CLAIMED_TWICE, AGG, "objectId 2"),
    "scene0011_00": ("unknown_category", boxes_lib.UNKNOWN_CATEGORY, AGG, "flux capacitor"),
    "scene0012_00": ("empty_instance", boxes_lib.EMPTY_INSTANCE, AGG, "objectId 3"),
    "scene0013_00": ("no_meta_file", boxes_lib.NO_AXIS_ALIGNMENT, META, "no such file"),
    "scene0014_00": ("no_alignment_line", boxes_lib.NO_AXIS_ALIGNMENT, META, "axisAlignment"),
}
SKIPPED = {s for s, (_, reason, _, _) in DEFECTS.items() if reason in (
    boxes_lib.MALFORMED_INSTANCES, boxes_lib.MALFORMED_AXIS_ALIGNMENT, scannet.MISSING_FILE)}


def write_defect(scans, scene, defect):
  group = lambda object_id, segments, label: {"objectId": object_id, "segments": segments,
                                              "label": label}
  if defect == "corrupt_json":
    write_scene(scans, scene)
    with open(path_of(scans, scene, AGG), "r+") as f:
      f.truncate(40)
  elif defect == "length_mismatch":
    write_scene(scans, scene, segments=HAND_SEGMENTS[:-1])
  elif defect == "bad_group":
    write_scene(scans, scene, groups=[HAND_GROUPS[0], group(1, "12", "kitchen cabinets")])
  elif defect == "malformed_alignment":
    write_scene(scans, scene, meta=HAND_META.replace(" 1.000000 \n", "\n"))  # 15 values
  elif defect == "non_rigid_alignment":
    write_scene(scans, scene, meta="axisAlignment = 1 0 0 0 0 1 0 0 0 0 3 0 0 0 0 1\n")
  elif defect.startswith("missing"):
    write_scene(scans, scene)
    suffix = {"missing_segs": SEGS, "missing_aggregation": AGG,
              "missing_labels_mesh": scannet.LABELS_SUFFIX}[defect]
    os.remove(path_of(scans, scene, suffix))
  elif defect == "unknown_segment":  # segment 99 does not exist; 12 still makes the box
    write_scene(scans, scene, groups=[HAND_GROUPS[0], group(1, [99, 12], "kitchen cabinets"),
                                      HAND_GROUPS[2]])
  elif defect == "double_claim":  # objectId 2 claims segment 10 (2 vertices) of objectId 0
    write_scene(scans, scene, groups=[*HAND_GROUPS[:2], group(2, [14, 10], "wall")])
  elif defect == "unknown_category":
    write_scene(scans, scene, groups=[group(0, [10, 11], "flux capacitor"), HAND_GROUPS[2]])
  elif defect == "empty_instance":  # an object annotated without segments
    write_scene(scans, scene, groups=[*HAND_GROUPS, group(3, [], "kitchen cabinets")])
  elif defect == "no_meta_file":
    write_scene(scans, scene, meta=None)
  elif defect == "no_alignment_line":
    write_scene(scans, scene, meta="colorHeight = 968\nsceneType = Bathroom\n")
  else:
    raise ValueError(defect)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """The hand-written scene0000_00 and one scene per defect, built into one split."""
  root = tmp_path_factory.mktemp("corpus")
  manual_dir = str(root / "manual")
  scans = os.path.join(manual_dir, "scans")
  write_scene(scans, "scene0000_00")
  for scene, (defect, *_) in DEFECTS.items():
    write_defect(scans, scene, defect)
  with open(os.path.join(manual_dir, scannet.LABEL_MAP_FILE), "w") as f:
    f.write(LABEL_MAP)
  with captured_log() as log:
    builder = boxes_lib.build_boxes(manual_dir, str(root / "data"))
  return scans, builder, examples(builder.as_data_source(split="train")), log


def test_hand_computed_boxes(corpus):
  _, _, scenes, _ = corpus
  ex = scenes["scene0000_00"]
  np.testing.assert_allclose(ex["points"], HAND_ALIGNED, atol=1e-6)
  np.testing.assert_allclose(ex["boxes"], HAND_BOXES, atol=1e-6)
  np.testing.assert_array_equal(ex["box_classes"], [2, 0])  # chair, cabinet
  np.testing.assert_array_equal(ex["box_instances"], [1, 2])
  np.testing.assert_array_equal(ex["instances"], [1, 1, 1, 2, 2, 0, 3])
  np.testing.assert_array_equal(ex["labels"], [4, 4, 4, 2, 2, -1, 0])
  np.testing.assert_array_equal(ex["axis_alignment"], [[0, -1, 0, 10], [1, 0, 0, 0],
                                                       [0, 0, 1, -1], [0, 0, 0, 1]])


def test_defects_keep_the_rest_of_the_scene(corpus):
  _, _, scenes, _ = corpus
  assert sorted(scenes) == sorted({"scene0000_00", *DEFECTS} - SKIPPED)
  # Unknown segment: cabinets keep their box from segment 12.
  np.testing.assert_allclose(scenes["scene0009_00"]["boxes"], HAND_BOXES, atol=1e-6)
  # Double claim: vertices 0 and 1 stay with the chair, its box is unchanged.
  np.testing.assert_array_equal(scenes["scene0010_00"]["instances"], [1, 1, 1, 2, 2, 0, 3])
  np.testing.assert_allclose(scenes["scene0010_00"]["boxes"], HAND_BOXES, atol=1e-6)
  # Unknown category: the object is an instance without a box; no box at all in the scene.
  unknown = scenes["scene0011_00"]
  np.testing.assert_array_equal(unknown["instances"], [1, 1, 1, 0, 0, 0, 3])
  assert unknown["boxes"].shape == (0, 7) and unknown["box_classes"].shape == (0,)
  # Empty instance: the duplicate gets no vertices and no box.
  np.testing.assert_array_equal(scenes["scene0012_00"]["box_instances"], [1, 2])
  # No alignment: the scene in its own frame.
  np.testing.assert_allclose(scenes["scene0013_00"]["points"], HAND_VERTICES, atol=1e-6)
  np.testing.assert_array_equal(scenes["scene0014_00"]["axis_alignment"], np.eye(4))


@pytest.mark.parametrize("scene", sorted(DEFECTS), ids=[d[0] for _, d in sorted(
    DEFECTS.items())])
def test_each_defect_is_counted_under_its_reason_and_names_its_file(corpus, scene):
  scans, builder, _, log = corpus
  _, reason, suffix, text = DEFECTS[scene]
  path = path_of(scans, scene, suffix)
  meta = builder.info.metadata
  if scene in SKIPPED:
    entries = [s for s in meta["splits"]["train"]["skipped_files"] if scene in s["path"]]
    assert [(s["reason"], s["path"]) for s in entries] == [(reason, path)]
  else:
    entries = [n for n in meta["notes"]["train"]["notes"] if scene in n["path"]]
    assert [(n["kind"], n["path"]) for n in entries] == [(reason, path)]
  assert text in entries[0]["detail"] and path in entries[0]["detail"]
  assert any(path in line and reason in line for line in log)


def test_skips_and_notes_add_up(corpus):
  _, builder, scenes, log = corpus
  train = builder.info.metadata["splits"]["train"]
  assert train["listed"] == 1 + len(DEFECTS)
  assert train["written"] == len(scenes) == 1 + len(DEFECTS) - len(SKIPPED)
  assert train["listed"] == train["written"] + sum(train["skipped"].values())
  assert train["skipped"] == {boxes_lib.MALFORMED_INSTANCES: 3,
                              boxes_lib.MALFORMED_AXIS_ALIGNMENT: 2, scannet.MISSING_FILE: 3}
  # Counted in segment references, vertices, instances, instances and scenes.
  assert builder.info.metadata["notes"]["train"]["counts"] == {
      boxes_lib.UNKNOWN_SEGMENT: 1, boxes_lib.VERTEX_CLAIMED_TWICE: 2,
      boxes_lib.UNKNOWN_CATEGORY: 1, boxes_lib.EMPTY_INSTANCE: 1,
      boxes_lib.NO_AXIS_ALIGNMENT: 2}
  assert any("15 scenes listed, 7 written, 8 skipped" in line for line in log)


def test_a_missing_label_map_stops_the_build_before_anything_is_written(tmp_path):
  manual_dir = str(tmp_path / "manual")
  write_scene(os.path.join(manual_dir, "scans"), "scene0000_00")
  data_dir = str(tmp_path / "data")
  with pytest.raises(ValueError, match=re.escape(
      os.path.join(manual_dir, scannet.LABEL_MAP_FILE))):
    boxes_lib.build_boxes(manual_dir, data_dir)
  assert not glob.glob(os.path.join(data_dir, "**", "*.array_record*"), recursive=True)


def test_the_cli_builds_the_same_dataset(rooms, tmp_path, capsys):
  manual_dir, data_dir, _, scenes = rooms
  again = str(tmp_path / "again")
  assert boxes_cli.main(["--manual_dir", manual_dir, "--data_dir", again]) == 0
  assert "scannet_boxes/1.0.0 val: 1 scenes, skipped {}" in capsys.readouterr().out
  rebuilt = {}
  for split in ("train", "val"):
    rebuilt.update(examples(boxes_lib.load_boxes(again, split)))
  assert rebuilt.keys() == scenes.keys()
  for scene, ex in scenes.items():
    assert ex.keys() == rebuilt[scene].keys()
    for name in ex:
      np.testing.assert_array_equal(ex[name], rebuilt[scene][name])


def test_loading_an_unbuilt_dataset_says_how_to_build_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="datasets.scannet_boxes.build"):
    boxes_lib.load_boxes(str(tmp_path), "train")


def test_tfds_finds_the_builder_in_its_datasets_folder():
  folder = os.path.join(os.path.dirname(__file__), "..", "datasets")
  with tfds.core.utils.add_sys_path(folder):
    builder = tfds.core.community.builder_cls_from_module(
        "scannet_boxes.scannet_boxes_dataset_builder")
  assert issubclass(builder, boxes_lib.ScannetBoxes) and builder.name == "scannet_boxes"
  assert "dai2017scannet" in builder.get_metadata().citation
  assert tfds.builder_cls("scannet_boxes") is boxes_lib.ScannetBoxes
