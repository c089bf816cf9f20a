"""The S3DIS reader, its TFDS builder and the synthetic rooms in the S3DIS layout.

Rooms are written by hand (a few lines each, known labels) with the defects of the real
data; the expected values are spelled out here, not computed by the reader.
"""

import collections
import logging
import os
import re
import types

import numpy as np
import pytest

from datasets.s3dis import build as s3dis_cli
from p2p_jax.configs import common
from p2p_jax.data import prepare
from p2p_jax.data import s3dis as s3dis_lib
from p2p_jax.data.synthetic import s3dis_writer

ROOT = "Stanford3dDataset_v1.2_Aligned_Version"
ORDER = ["ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair",
         "sofa", "bookcase", "board", "clutter"]

# A room as its annotation files hold it, listed out of order on purpose.
OFFICE = {
    "wall_1.txt": ["0.000 0.000 0.000 10 20 30", "0.000 1.000 0.000 11 21 31"],
    "chair_10.txt": ["1.500 1.000 0.450 200 0 0"],
    "ceiling_1.txt": ["0.000 0.000 3.000 250 250 250"],
    "chair_2.txt": ["1.000 1.000 0.450 100 0 0", "1.000 1.100 -0.450 101 0 0"],
    "stairs_1.txt": ["2.000 2.000 0.200 5 5 5"],
}
# Read in the order ceiling_1, chair_2, chair_10, stairs_1, wall_1.
OFFICE_POINTS = [[0, 0, 3], [1, 1, 0.45], [1, 1.1, -0.45], [1.5, 1, 0.45], [2, 2, 0.2],
                 [0, 0, 0], [0, 1, 0]]
OFFICE_COLORS = [[250, 250, 250], [100, 0, 0], [101, 0, 0], [200, 0, 0], [5, 5, 5],
                 [10, 20, 30], [11, 21, 31]]
OFFICE_LABELS = [0, 8, 8, 8, 12, 2, 2]  # ceiling, chair x3, stairs -> clutter, wall x2
OFFICE_INSTANCES = [0, 1, 1, 2, 3, 4, 4]

CONFERENCE = {"table_1.txt": ["5.000 5.000 0.750 1 2 3"],
              "board_1.txt": ["4.000 6.000 1.500 7 8 9", "4.000 6.100 1.500 7 8 10"]}


def write_file(path, lines, newline="\n"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write("".join(line + newline for line in lines).encode("latin-1"))


def write_room(room_dir, annotations, room_file="union", newline="\n"):
  """Annotations/<name> per entry; the room file holds their union unless given or None."""
  for name, lines in annotations.items():
    write_file(os.path.join(room_dir, "Annotations", name), lines, newline)
  if room_file == "union":
    room_file = [line for lines in annotations.values() for line in lines]
  if room_file is not None:
    write_file(os.path.join(room_dir, os.path.basename(room_dir) + ".txt"), room_file, newline)
  return room_dir


def f32(values):
  return np.array(values, np.float64).astype(np.float32)


def kinds(notes):
  return [(n["kind"], n["path"], n["count"]) for n in notes]


def test_labels_and_instances_follow_the_annotation_files(tmp_path):
  room, notes = s3dis_lib.read_room(write_room(str(tmp_path / "office_1"), OFFICE))
  assert notes == []
  np.testing.assert_array_equal(room["points"], f32(OFFICE_POINTS))
  np.testing.assert_array_equal(room["colors"], np.array(OFFICE_COLORS, np.uint8))
  np.testing.assert_array_equal(room["labels"], OFFICE_LABELS)
  np.testing.assert_array_equal(room["instances"], OFFICE_INSTANCES)
  assert room["points"].dtype == np.float32 and room["colors"].dtype == np.uint8
  assert room["labels"].dtype == room["instances"].dtype == np.int32


def test_class_ids_are_the_s3dis_order(tmp_path):
  assert s3dis_lib.CLASSES == tuple(ORDER) and s3dis_lib.NUM_CLASSES == 13
  # Each file's single point carries the id its class should get in its red channel.
  files = {f"{name}_1.txt": [f"{i}.000 0.000 0.000 {i} 0 0"] for i, name in enumerate(ORDER)}
  files["stairs_1.txt"] = ["99.000 0.000 0.000 12 0 0"]
  room, notes = s3dis_lib.read_room(write_room(str(tmp_path / "storage_1"), files))
  assert notes == [] and len(room["labels"]) == 14
  np.testing.assert_array_equal(room["labels"], room["colors"][:, 0])
  assert sorted(room["instances"].tolist()) == list(range(14))


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_a_stray_character_is_removed_counted_and_logged(tmp_path, caplog, newline):
  files = {"ceiling_1.txt": ["0.000 0.000 3.000 1 1 1", "1.0 2.0 3.\x100 10 20 30",
                             "22.7\x1045 -1.000 2.900 7 8 9"],
           "floor_1.txt": ["0.000 0.000 0.000 2 2 2"]}
  room_dir = write_room(str(tmp_path / "hallway_6"), files, newline=newline)
  path = os.path.join(room_dir, "Annotations", "ceiling_1.txt")
  with caplog.at_level(logging.WARNING, logger="p2p_jax.data.s3dis"):
    room, notes = s3dis_lib.read_room(room_dir)
  np.testing.assert_array_equal(room["points"], f32([[0, 0, 3], [1, 2, 3], [22.745, -1, 2.9],
                                                     [0, 0, 0]]))
  np.testing.assert_array_equal(room["colors"], [[1, 1, 1], [10, 20, 30], [7, 8, 9], [2, 2, 2]])
  np.testing.assert_array_equal(room["labels"], [0, 0, 0, 1])
  assert kinds(notes) == [(s3dis_lib.STRAY_CHARACTERS, path, 2)]
  assert f"{path}:2:" in notes[0]["detail"] and f"{path}:3:" in notes[0]["detail"]
  assert any(f"{path}:2:" in r.getMessage() and "non-numeric" in r.getMessage()
             for r in caplog.records)


def test_crlf_and_lf_files_read_identically(tmp_path):
  lf, lf_notes = s3dis_lib.read_room(write_room(str(tmp_path / "lf" / "office_1"), OFFICE))
  crlf, crlf_notes = s3dis_lib.read_room(
      write_room(str(tmp_path / "crlf" / "office_1"), OFFICE, newline="\r\n"))
  with open(tmp_path / "crlf" / "office_1" / "Annotations" / "wall_1.txt", "rb") as f:
    assert f.read().count(b"\r\n") == 2
  assert lf_notes == crlf_notes == []
  for name in lf:
    np.testing.assert_array_equal(lf[name], crlf[name])
  np.testing.assert_array_equal(crlf["points"], f32(OFFICE_POINTS))


def test_a_file_without_a_final_newline_loses_nothing(tmp_path):
  path = str(tmp_path / "wall_1.txt")
  with open(path, "wb") as f:
    f.write(b"1.000 2.000 3.000 4 5 6\n7.000 8.000 9.000 10 11 12")
  points, colors, notes = s3dis_lib.read_points(path)
  np.testing.assert_array_equal(points, f32([[1, 2, 3], [7, 8, 9]]))
  np.testing.assert_array_equal(colors, [[4, 5, 6], [10, 11, 12]])
  assert notes == []


def test_malformed_lines_are_dropped_counted_and_named(tmp_path, caplog):
  lines = ["1.000 1.000 1.000 1 1 1",
           "2.000 2.000 2.000 2 2",  # 5 columns
           "3.000 3.000 3.000 256 3 3",  # colour out of range
           "4.000 4.000 4.000 4 4 4 4",  # 7 columns
           "nan 5.000 5.000 5 5 5",
           "6.000 6.000 6.000 -1 6 6",
           "7.000 7.000 7.000 7 7 7"]
  path = str(tmp_path / "table_1.txt")
  write_file(path, lines)
  with caplog.at_level(logging.WARNING, logger="p2p_jax.data.s3dis"):
    points, colors, notes = s3dis_lib.read_points(path)
  np.testing.assert_array_equal(points, f32([[1, 1, 1], [7, 7, 7]]))
  np.testing.assert_array_equal(colors, [[1, 1, 1], [7, 7, 7]])
  assert kinds(notes) == [(s3dis_lib.BAD_LINE, path, 5)]
  for number in (2, 3, 4, 5):  # the first five are quoted; this one has five
    assert f"{path}:{number}:" in notes[0]["detail"]
  assert f"{path}:6:" in notes[0]["detail"] and f"{path}:1:" not in notes[0]["detail"]
  assert any(f"{path}:2:" in r.getMessage() for r in caplog.records)


def test_a_count_mismatch_is_noted_and_the_room_kept(tmp_path):
  room_file = [line for lines in OFFICE.values() for line in lines] + ["9 9 9 9 9 9"]
  room_dir = write_room(str(tmp_path / "office_1"), OFFICE, room_file=room_file)
  room, notes = s3dis_lib.read_room(room_dir)
  path = os.path.join(room_dir, "office_1.txt")
  assert kinds(notes) == [(s3dis_lib.COUNT_MISMATCH, path, 1)]
  assert "room file has 8 points, annotations 7" in notes[0]["detail"]
  np.testing.assert_array_equal(room["points"], f32(OFFICE_POINTS))


def test_a_missing_room_file_is_noted(tmp_path):
  room_dir = write_room(str(tmp_path / "office_1"), OFFICE, room_file=None)
  room, notes = s3dis_lib.read_room(room_dir)
  assert kinds(notes) == [(s3dis_lib.NO_ROOM_FILE, os.path.join(room_dir, "office_1.txt"), 1)]
  np.testing.assert_array_equal(room["labels"], OFFICE_LABELS)


def test_unknown_classes_and_odd_files_are_left_out_and_noted(tmp_path):
  files = {"lamp_1.txt": ["9.000 9.000 9.000 9 9 9"], "ceiling.txt": ["8 8 8 8 8 8"],
           "wall_1.txt": ["1.000 1.000 1.000 1 1 1"], "door_1.txt": []}
  room_dir = write_room(str(tmp_path / "WC_1"), files, room_file=["1 1 1 1 1 1"])
  write_file(os.path.join(room_dir, "Annotations", ".DS_Store"), ["x"])
  room, notes = s3dis_lib.read_room(room_dir)
  folder = os.path.join(room_dir, "Annotations")
  assert sorted(kinds(notes)) == sorted([
      (s3dis_lib.IGNORED_FILE, os.path.join(folder, ".DS_Store"), 1),
      (s3dis_lib.UNKNOWN_CLASS, os.path.join(folder, "lamp_1.txt"), 1),
      (s3dis_lib.UNKNOWN_CLASS, os.path.join(folder, "ceiling.txt"), 1),
      (s3dis_lib.EMPTY_ANNOTATION, os.path.join(folder, "door_1.txt"), 1)])
  np.testing.assert_array_equal(room["points"], f32([[1, 1, 1]]))
  np.testing.assert_array_equal(room["labels"], [2])
  np.testing.assert_array_equal(room["instances"], [0])


@pytest.mark.parametrize("case", ["no_folder", "empty_folder", "no_points"])
def test_rooms_without_annotated_points_are_refused_with_the_path(tmp_path, case):
  room_dir = str(tmp_path / "office_9")
  write_file(os.path.join(room_dir, "office_9.txt"), ["1 1 1 1 1 1"])
  folder = os.path.join(room_dir, "Annotations")
  if case == "empty_folder":
    os.makedirs(folder)
  if case == "no_points":
    write_file(os.path.join(folder, "chair_1.txt"), [" ", ""])
    write_file(os.path.join(folder, "chair_2.txt"), ["1.0 2.0 x y z"])
  with pytest.raises(s3dis_lib.RoomError) as info:
    s3dis_lib.read_room(room_dir)
  reason = s3dis_lib.NO_POINTS if case == "no_points" else s3dis_lib.NO_ANNOTATIONS
  assert (info.value.reason, info.value.path) == (reason, folder)
  assert folder in str(info.value)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Two areas: Area_1 with a repaired, a skipped and a clean room; Area_3 with a room
  without a room file and one without points; stray files beside them."""
  manual_dir = str(tmp_path_factory.mktemp("s3dis") / "manual")
  root = os.path.join(manual_dir, ROOT)
  area_1, area_3 = os.path.join(root, "Area_1"), os.path.join(root, "Area_3")
  write_room(os.path.join(area_1, "office_1"), OFFICE)
  wc = {"ceiling_1.txt": ["0.000 0.000 2.500 1 2 3", "0.5\x100 0.000 2.500 4 5 6"],
        "floor_1.txt": ["0.000 0.000 0.000 7 8 9"]}
  write_room(os.path.join(area_1, "WC_1"), wc, room_file=["0 0 2.5 1 2 3", "0 0 0 7 8 9"])
  write_file(os.path.join(area_1, "hallway_2", "hallway_2.txt"), ["1 1 1 1 1 1"])
  write_room(os.path.join(area_3, "conferenceRoom_1"), CONFERENCE, room_file=None)
  write_room(os.path.join(area_3, "lobby_1"), {"floor_1.txt": []})
  write_file(os.path.join(root, ".DS_Store"), ["x"])
  write_file(os.path.join(area_1, "Icon\r"), [])
  data_dir = str(tmp_path_factory.mktemp("s3dis") / "data")
  builder = s3dis_lib.build_s3dis(manual_dir, data_dir)
  return manual_dir, data_dir, builder


def test_listed_rooms_are_written_or_skipped_with_a_reason(built):
  manual_dir, _, builder = built
  root = os.path.join(manual_dir, ROOT)
  meta = builder.info.metadata
  assert sorted(builder.info.splits) == ["area_1", "area_3"]
  area_1, area_3 = meta["splits"]["area_1"], meta["splits"]["area_3"]
  assert (area_1["listed"], area_1["written"], area_1["skipped"]) == (
      3, 2, {s3dis_lib.NO_ANNOTATIONS: 1})
  assert [s["path"] for s in area_1["skipped_files"]] == [
      os.path.join(root, "Area_1", "hallway_2", "Annotations")]
  assert (area_3["listed"], area_3["written"], area_3["skipped"]) == (
      2, 1, {s3dis_lib.NO_POINTS: 1})
  for split in ("area_1", "area_3"):
    counts = meta["splits"][split]
    assert counts["listed"] == counts["written"] + sum(counts["skipped"].values())
    assert counts["written"] == builder.info.splits[split].num_examples
  assert meta["ignored_files"] == [os.path.join(root, ".DS_Store"),
                                   os.path.join(root, "Area_1", "Icon\r")]


def test_repairs_of_written_rooms_are_counted_in_the_metadata(built):
  manual_dir, _, builder = built
  wc = os.path.join(manual_dir, ROOT, "Area_1", "WC_1")
  repairs = builder.info.metadata["repairs"]
  assert repairs["area_1"]["counts"] == {s3dis_lib.STRAY_CHARACTERS: 1,
                                         s3dis_lib.COUNT_MISMATCH: 1}
  assert [(n["kind"], n["path"]) for n in repairs["area_1"]["notes"]] == [
      (s3dis_lib.STRAY_CHARACTERS, os.path.join(wc, "Annotations", "ceiling_1.txt")),
      (s3dis_lib.COUNT_MISMATCH, os.path.join(wc, "WC_1.txt"))]
  # lobby_1's empty file is not counted: the room was skipped, not written.
  assert repairs["area_3"]["counts"] == {s3dis_lib.NO_ROOM_FILE: 1}


def test_load_scenes_returns_the_hand_written_rooms(built):
  _, data_dir, _ = built
  scenes = s3dis_lib.load_scenes(data_dir, [3, 1])
  assert [s["scene"] for s in scenes] == ["Area_3/conferenceRoom_1", "Area_1/WC_1",
                                          "Area_1/office_1"]
  conference, wc, office = scenes
  assert set(office) == {"points", "colors", "labels", "scene"}
  np.testing.assert_array_equal(office["points"], f32(OFFICE_POINTS))
  np.testing.assert_array_equal(office["colors"], np.array(OFFICE_COLORS, np.uint8))
  np.testing.assert_array_equal(office["labels"], OFFICE_LABELS)
  np.testing.assert_array_equal(wc["points"], f32([[0, 0, 2.5], [0.5, 0, 2.5], [0, 0, 0]]))
  np.testing.assert_array_equal(wc["labels"], [0, 0, 1])
  np.testing.assert_array_equal(conference["points"], f32([[4, 6, 1.5], [4, 6.1, 1.5],
                                                           [5, 5, 0.75]]))
  np.testing.assert_array_equal(conference["colors"], [[7, 8, 9], [7, 8, 10], [1, 2, 3]])
  np.testing.assert_array_equal(conference["labels"], [11, 11, 7])  # board, board, table
  for scene in scenes:
    assert scene["points"].dtype == np.float32 and scene["labels"].dtype == np.int32
  instances = built[2].as_data_source(split="area_1")[1]["instances"]  # office_1
  np.testing.assert_array_equal(instances, OFFICE_INSTANCES)


def test_load_scenes_names_a_missing_area_and_an_unbuilt_dataset(built, tmp_path):
  _, data_dir, _ = built
  with pytest.raises(ValueError, match=r"area\(s\) \[2\].*'area_1', 'area_3'"):
    s3dis_lib.load_scenes(data_dir, [1, 2])
  with pytest.raises(FileNotFoundError, match="python -m datasets.s3dis.build"):
    s3dis_lib.load_scenes(str(tmp_path), [1])


def test_the_cli_builds_the_same_dataset(built, tmp_path, capsys):
  manual_dir, data_dir, _ = built
  again = str(tmp_path / "again")
  assert s3dis_cli.main(["--manual_dir", manual_dir, "--data_dir", again]) == 0
  out = capsys.readouterr().out
  assert "s3dis/1.0.0 area_1: 2 rooms, skipped {'no annotations': 1}" in out
  assert "s3dis/1.0.0 area_3: 1 rooms, skipped {'no points': 1}" in out
  first, second = (s3dis_lib.load_scenes(d, [1, 3]) for d in (data_dir, again))
  assert len(first) == len(second) == 3
  for a, b in zip(first, second):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


def test_an_area_with_every_room_skipped_fails_with_the_counts(tmp_path):
  manual_dir = str(tmp_path / "manual")
  write_room(os.path.join(manual_dir, ROOT, "Area_1", "office_1"), OFFICE)
  write_file(os.path.join(manual_dir, ROOT, "Area_2", "office_1", "office_1.txt"), ["1 1 1 1 1 1"])
  with pytest.raises(ValueError, match=r"split area_2: all 1 rooms were skipped .*no annotations"):
    s3dis_lib.build_s3dis(manual_dir, str(tmp_path / "data"))


def test_layout_problems_raise_naming_the_folder(tmp_path):
  manual_dir = str(tmp_path / "manual")
  root = os.path.join(manual_dir, ROOT)
  write_file(os.path.join(manual_dir, "Stanford3dDataset_v1.2_Aligned_Version.zip"), [])
  with pytest.raises(ValueError, match=re.escape(root) + ": missing"):
    s3dis_lib.build_s3dis(manual_dir, str(tmp_path / "data"))
  os.makedirs(os.path.join(root, "Area_4"))
  with pytest.raises(ValueError, match=re.escape(os.path.join(root, "Area_4")) + ": no room"):
    s3dis_lib.build_s3dis(manual_dir, str(tmp_path / "data"))
  os.rmdir(os.path.join(root, "Area_4"))
  os.makedirs(os.path.join(root, "extra"))
  with pytest.raises(ValueError, match="no Area_<n> directories"):
    s3dis_lib.build_s3dis(manual_dir, str(tmp_path / "data"))


LINE = re.compile(r"-?\d+\.\d{3} -?\d+\.\d{3} -?\d+\.\d{3} \d{1,3} \d{1,3} \d{1,3}\n")


def tree(root):
  """{relative path: bytes} of every file under root."""
  files = {}
  for folder, _, names in os.walk(root):
    for name in names:
      with open(os.path.join(folder, name), "rb") as f:
        files[os.path.relpath(os.path.join(folder, name), root)] = f.read()
  return files


def test_synthetic_rooms_follow_the_layout_and_read_back(tmp_path):
  out = str(tmp_path / "a")
  result = s3dis_writer.write_rooms(out, 2, 2, seed=3, points_per_m2=20.0)
  assert os.listdir(out) == [ROOT]  # nothing left of the staging folder
  rooms = result["rooms"]
  assert [r.split("/")[0] for r in rooms] == ["Area_1", "Area_1", "Area_2", "Area_2"]
  assert sorted(os.listdir(os.path.join(out, ROOT))) == ["Area_1", "Area_2"]
  total = 0
  for scene in rooms:
    room_dir = os.path.join(out, ROOT, scene)
    name = os.path.basename(room_dir)
    assert re.fullmatch(r"[A-Za-z]+_\d+", name)
    with open(os.path.join(room_dir, name + ".txt")) as f:
      room_lines = f.readlines()
    annotated, per_class = [], collections.Counter()
    for file in os.listdir(os.path.join(room_dir, "Annotations")):
      match = re.fullmatch(r"([a-z]+)_\d+\.txt", file)
      assert match and match[1] in ORDER and match[1] not in ("beam", "column"), file
      with open(os.path.join(room_dir, "Annotations", file), newline="") as f:
        lines = f.readlines()
      assert lines and all(LINE.fullmatch(line) for line in lines), file
      annotated += lines
      per_class[ORDER.index(match[1])] += len(lines)
    assert {ORDER.index(c) for c in ("ceiling", "floor", "wall")} <= set(per_class)
    assert collections.Counter(annotated) == collections.Counter(room_lines)
    assert 300 < len(room_lines) < 20000
    room, notes = s3dis_lib.read_room(room_dir)
    assert notes == []
    assert dict(collections.Counter(room["labels"].tolist())) == dict(per_class)
    assert 0 <= room["labels"].min() and room["labels"].max() < 13
    total += len(room_lines)
  assert result["points"] == total
  with pytest.raises(ValueError, match="exists"):
    s3dis_writer.write_rooms(out, 1, 1, seed=3, points_per_m2=20.0)
  builder = s3dis_lib.build_s3dis(out, str(tmp_path / "data"))
  assert {split: meta["written"] for split, meta in builder.info.metadata["splits"].items()} == {
      "area_1": 2, "area_2": 2}


def test_synthetic_rooms_are_a_function_of_the_seed(tmp_path):
  for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
    s3dis_writer.write_rooms(str(tmp_path / name), 1, 2, seed=seed, points_per_m2=10.0)
  a, b, c = (tree(str(tmp_path / name)) for name in "abc")
  assert a == b and a.keys() and a != c
  s3dis_writer.write_rooms(str(tmp_path / "a"), 1, 1, seed=4, points_per_m2=10.0,
                           overwrite=True)
  assert len(tree(str(tmp_path / "a"))) < len(a)  # replaced, not merged


def test_prepare_spreads_synthetic_rooms_over_the_areas_and_builds(tmp_path):
  data = types.SimpleNamespace(manual_dir=str(tmp_path / "manual"),
                               data_dir=str(tmp_path / "data"),
                               synthetic=common.synthetic(scenes=7, points_per_m2=5.0))
  prepare.s3dis(data)
  root = os.path.join(data.manual_dir, ROOT)
  assert [len(os.listdir(os.path.join(root, f"Area_{a}"))) for a in range(1, 7)] == [
      2, 1, 1, 1, 1, 1]
  scenes = s3dis_lib.load_scenes(data.data_dir, [5])
  assert len(scenes) == 1 and scenes[0]["scene"].startswith("Area_5/")
  # Present: neither written again nor an error.
  assert not s3dis_writer.generate_if_asked(data.manual_dir, data.synthetic)
  assert not s3dis_writer.generate_if_asked(str(tmp_path / "other"), {"scenes": 0})
  with pytest.raises(ValueError, match="at least one room per area"):
    s3dis_writer.generate_if_asked(str(tmp_path / "other"), {"scenes": 3})
  with pytest.raises(ValueError, match="unknown settings"):
    s3dis_writer.generate_if_asked(str(tmp_path / "other"), {"scenes": 6, "rooms": 2})
  assert not os.path.exists(tmp_path / "other" / ROOT)
