"""S3DIS rooms (Stanford Large-Scale 3D Indoor Spaces, v1.2 aligned) as a TFDS dataset.

The manual dir holds the dataset as it unpacks:

    Stanford3dDataset_v1.2_Aligned_Version/Area_<n>/<room>/<room>.txt
    Stanford3dDataset_v1.2_Aligned_Version/Area_<n>/<room>/Annotations/<class>_<i>.txt

one point per line, `x y z r g b`. As in the standard preparation, a room's points are the
union of its annotation files, each point labelled by its file's class (13 classes; `stairs`
counts as clutter) and given the file's instance index; `<room>.txt` is only compared with
that union by its number of points. One example per room, one split per area ("area_1", ...).
Written as array_record, readable as numpy with `tfds.data_source` and no TensorFlow.

Known defects are repaired and everything changed or left out is logged with its file (and
line) and counted in the dataset's metadata; the README next to the builder in
`datasets/s3dis/` gives the policy for each.
"""

import io
import logging
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from p2p_jax.data import export

ROOT = "Stanford3dDataset_v1.2_Aligned_Version"
ANNOTATIONS = "Annotations"

# The 13 classes, in the order of their label ids 0..12.
CLASSES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair",
           "sofa", "bookcase", "board", "clutter")
NUM_CLASSES = len(CLASSES)
# Annotation classes read as one of CLASSES.
CLASS_ALIASES = {"stairs": "clutter"}

HOMEPAGE = "http://buildingparser.stanford.edu/dataset.html"
S3DIS_CITATION = r"""@inproceedings{armeni2016s3dis,
  title     = {{3D} Semantic Parsing of Large-Scale Indoor Spaces},
  author    = {Armeni, Iro and Sener, Ozan and Zamir, Amir R. and Jiang, Helen and
               Brilakis, Ioannis and Fischer, Martin and Savarese, Silvio},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition
               (CVPR)},
  pages     = {1534--1543},
  year      = {2016}
}
"""

# Why a room is skipped.
NO_ANNOTATIONS = "no annotations"  # Annotations/ missing, or without any .txt file
NO_POINTS = "no points"  # nothing left in the annotation files

# What was repaired or left out of a written room; the unit counted is in brackets.
STRAY_CHARACTERS = "non-numeric characters removed"  # [lines]
BAD_LINE = "malformed line dropped"  # [lines]
UNKNOWN_CLASS = "annotation file of unknown class dropped"  # [files]
EMPTY_ANNOTATION = "empty annotation file"  # [files]
IGNORED_FILE = "non-annotation file ignored"  # [files] in Annotations/, not *.txt
COUNT_MISMATCH = "room file disagrees with annotations"  # [rooms]
NO_ROOM_FILE = "room file missing"  # [rooms]

# How many offending lines a note quotes; its count covers all of them.
QUOTED_LINES = 5

_AREA = re.compile(r"Area_(\d+)")
_ANNOTATION = re.compile(r"([A-Za-z]+)_(\d+)\.txt")
_NUMBER = rb"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
_LINE = re.compile(rb"\s*" + rb"\s+".join([_NUMBER] * 6) + rb"\s*")  # x y z r g b
_NOT_NUMERIC = re.compile(rb"[^0-9eE.+\-\s]")

logger = logging.getLogger(__name__)


class RoomError(Exception):
  """A room that cannot be used: `reason` is NO_ANNOTATIONS or NO_POINTS, `path` the file."""

  def __init__(self, reason: str, path: str, detail: str = ""):
    super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
    self.reason = reason
    self.path = path


def _valid(values: np.ndarray) -> np.ndarray:
  """[N] whether each row has finite coordinates and integer colours in 0..255."""
  rgb = values[:, 3:]
  return (np.isfinite(values[:, :3]).all(1)
          & ((rgb >= 0) & (rgb <= 255) & (rgb == np.round(rgb))).all(1))


def _quote(path: str, lines: list[tuple[int, str]]) -> str:
  shown = "; ".join(f"{path}:{number}: {text}" for number, text in lines[:QUOTED_LINES])
  more = f"; ... ({len(lines) - QUOTED_LINES} more)" if len(lines) > QUOTED_LINES else ""
  return shown + more


def _parse_lines(path: str, data: bytes) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """The slow path: line by line, repairing stray characters and dropping what is left bad."""
  rows, numbers, texts, repaired, dropped = [], [], [], {}, []
  for number, line in enumerate(data.split(b"\n"), start=1):
    if not line.strip():
      continue
    match = _LINE.fullmatch(line)
    if match is None:
      cleaned = _NOT_NUMERIC.sub(b"", line)
      match = _LINE.fullmatch(cleaned) if cleaned != line else None
      if match is None:
        dropped.append((number, f"not six numbers: {line.strip()!r}"))
        continue
      repaired[number] = f"{line.strip()!r} -> {cleaned.strip().decode()!r}"
    rows.append(match.groups())
    numbers.append(number)
    texts.append(line)
  values = np.array(rows, np.float64).reshape(-1, 6)
  valid = _valid(values)
  for i in np.flatnonzero(~valid):
    repaired.pop(numbers[i], None)
    dropped.append((numbers[i], f"non-finite coordinate or colour not an integer in 0..255: "
                                f"{texts[i].strip()!r}"))
  notes = []
  if repaired:
    notes.append(export.note(STRAY_CHARACTERS, path, f"repaired {len(repaired)} line(s) with "
                       f"non-numeric characters: {_quote(path, list(repaired.items()))}",
                       len(repaired)))
  if dropped:
    dropped.sort()
    notes.append(export.note(BAD_LINE, path, f"dropped {len(dropped)} line(s) that are not "
                       f"`x y z r g b`: {_quote(path, dropped)}", len(dropped)))
  return values[valid], notes


def read_points(path: str) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
  """Reads an S3DIS point file (`x y z r g b` per line, LF or CRLF line endings).

  A file that parses cleanly takes the fast path (`np.loadtxt`). Otherwise it is read line by
  line: a line with characters that cannot be part of a number is repaired by removing them
  if it then reads as six valid values; a line that still does not (wrong number of values,
  non-finite coordinates, colours not integers in 0..255) is dropped. Both are noted.

  Args:
    path: the file.

  Returns:
    (points float32 [N, 3], colors uint8 [N, 3], notes): each note a dict {"kind", "path",
    "count", "detail"} with `kind` STRAY_CHARACTERS or BAD_LINE, `count` the number of lines,
    and `detail` quoting them as `path:line`.
  """
  with open(path, "rb") as f:
    data = f.read()
  values, notes = np.zeros((0, 6)), []
  if data.strip():
    values = None
    if data.count(b"\r") == data.count(b"\r\n"):  # lines end at \n (an \r before it is fine)
      try:
        values = np.loadtxt(io.BytesIO(data), dtype=np.float64, comments=None, ndmin=2,
                            encoding="latin-1")
      except ValueError:
        values = None
      if values is not None and (values.shape[1] != 6 or not _valid(values).all()):
        values = None
    if values is None:
      values, notes = _parse_lines(path, data)
  return values[:, :3].astype(np.float32), values[:, 3:].astype(np.uint8), notes


def _count_lines(path: str) -> int:
  with open(path, "rb") as f:
    return sum(1 for line in f.read().split(b"\n") if line.strip())


def _annotation_order(name: str) -> tuple[str, int, str]:
  """ceiling_1 < ceiling_2 < ceiling_10 < chair_1; other names after, by name."""
  match = _ANNOTATION.fullmatch(name)
  return (match[1], int(match[2]), "") if match else ("\x7f", 0, name)


def read_room(room_dir: str) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
  """Reads one room: the union of its annotation files, labelled by their file names.

  Annotation files `<class>_<i>.txt` are read in class order and then by `i` (ceiling_2 before
  ceiling_10); each file with points becomes the next instance, 0, 1, .... A file of a class
  that is neither in CLASSES nor in CLASS_ALIASES, or not named `<class>_<i>.txt`, is dropped;
  one without points is passed over; other files in Annotations/ are ignored. `<room>.txt`
  is only compared with the union by its number of points. All of this is noted (and logged).

  Args:
    room_dir: `.../Area_<n>/<room>`.

  Returns:
    ({"points" float32 [P, 3], "colors" uint8 [P, 3], "labels" int32 [P] in 0..12,
      "instances" int32 [P]}, notes); notes as `read_points` gives them, plus UNKNOWN_CLASS,
    EMPTY_ANNOTATION, IGNORED_FILE (count: files), COUNT_MISMATCH and NO_ROOM_FILE (count 1).

  Raises:
    RoomError: NO_ANNOTATIONS if Annotations/ is missing or holds no .txt file, NO_POINTS if
      no annotation file gives a point.
  """
  room = os.path.basename(os.path.normpath(room_dir))
  folder = os.path.join(room_dir, ANNOTATIONS)
  if not os.path.isdir(folder):
    raise RoomError(NO_ANNOTATIONS, folder, "the folder is missing")
  notes = []
  names = []
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if name.endswith(".txt") and os.path.isfile(path):
      names.append(name)
    else:
      notes.append(export.note(IGNORED_FILE, path, f"{path}: not an annotation file (*.txt)"))
  if not names:
    raise RoomError(NO_ANNOTATIONS, folder, "no <class>_<i>.txt files")
  parts = []  # (values, class id)
  for name in sorted(names, key=_annotation_order):
    path = os.path.join(folder, name)
    match = _ANNOTATION.fullmatch(name)
    name_class = CLASS_ALIASES.get(match[1], match[1]) if match else None
    if name_class not in CLASSES:
      why = f"class {match[1]!r} is not one of {CLASSES}" if match else (
          "not named <class>_<i>.txt")
      notes.append(export.note(UNKNOWN_CLASS, path, f"{path}: {why}; its points are left out"))
      continue
    points, colors, file_notes = read_points(path)
    notes.extend(file_notes)
    if not len(points):
      notes.append(export.note(EMPTY_ANNOTATION, path, f"{path}: no points"))
      continue
    parts.append((points, colors, CLASSES.index(name_class)))
  if not parts:
    raise RoomError(NO_POINTS, folder, "no annotation file gives a point")
  sizes = [len(p) for p, _, _ in parts]
  total = sum(sizes)
  room_file = os.path.join(room_dir, room + ".txt")
  if not os.path.isfile(room_file):
    notes.append(export.note(NO_ROOM_FILE, room_file, f"{room_file}: missing; the annotations "
                       f"give {total} points"))
  else:
    listed = _count_lines(room_file)
    if listed != total:
      notes.append(export.note(COUNT_MISMATCH, room_file, f"{room_file}: room file has {listed} "
                         f"points, annotations {total}; using the annotations"))
  return {
      "points": np.concatenate([p for p, _, _ in parts]),
      "colors": np.concatenate([c for _, c, _ in parts]),
      "labels": np.repeat(np.array([k for _, _, k in parts], np.int32), sizes),
      "instances": np.repeat(np.arange(len(parts), dtype=np.int32), sizes),
  }, notes


def find_rooms(manual_dir: str) -> tuple[dict[int, list[str]], list[str]]:
  """The room directories of each area under `<manual_dir>/<ROOT>/`.

  Args:
    manual_dir: the TFDS manual dir.

  Returns:
    ({area number: sorted room names}, sorted paths of other entries, which are ignored:
    files such as `.DS_Store` beside the areas or rooms, and folders not named Area_<n>).

  Raises:
    ValueError: naming the folder, if the root is missing, holds no Area_<n> folder, or an
      area holds no room folder.
  """
  root = os.path.join(manual_dir, ROOT)
  if not os.path.isdir(root):
    raise ValueError(f"{root}: missing; expected {ROOT}/Area_<n>/<room>/ in the manual dir")
  areas, ignored = {}, []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    match = _AREA.fullmatch(name)
    if not match or not os.path.isdir(path):
      ignored.append(path)
      continue
    rooms = []
    for room in sorted(os.listdir(path)):
      if os.path.isdir(os.path.join(path, room)):
        rooms.append(room)
      else:
        ignored.append(os.path.join(path, room))
    if not rooms:
      raise ValueError(f"{path}: no room directories")
    areas[int(match[1])] = rooms
  if not areas:
    raise ValueError(f"{root}: no Area_<n> directories")
  return areas, ignored


def split_name(area: int) -> str:
  """The split of an area: 5 -> "area_5"."""
  return f"area_{area}"


class S3dis(tfds.core.GeneratorBasedBuilder):
  """S3DIS rooms: points, colours, 13-class labels and instances, one split per area."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Request and download Stanford3dDataset_v1.2_Aligned_Version.zip from {HOMEPAGE} and
  unpack it into the manual dir, giving `<manual_dir>/{ROOT}/Area_<n>/<room>/<room>.txt`
  and `.../<room>/Annotations/<class>_<i>.txt` (lines `x y z r g b`). Each Area_<n> present
  becomes the split "area_<n>". The synthetic rooms of this project
  (`p2p_jax.data.synthetic.s3dis_writer`) are written in the same layout.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "points": tfds.features.Tensor(shape=(None, 3), dtype=np.float32, encoding="zlib"),
            "colors": tfds.features.Tensor(shape=(None, 3), dtype=np.uint8, encoding="zlib"),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding="zlib"),
            "instances": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding="zlib"),
            "scene": tfds.features.Text(),
        }),
        homepage=HOMEPAGE,
        citation=S3DIS_CITATION,
        disable_shuffling=True,  # rooms in name order; TFDS then keys them by position
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(
      self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[tuple[str, dict]]]:
    """Finds the areas and their rooms (checking the layout) before any split is written."""
    manual_dir = os.fspath(dl_manager.manual_dir)
    areas, ignored = find_rooms(manual_dir)
    for path in ignored:
      logger.info("%s: ignored %r (not an Area_<n>/<room> folder)", self.info.full_name, path)
    self.info.metadata.update(ignored_files=ignored, splits={}, repairs={})
    root = os.path.join(manual_dir, ROOT)
    return {split_name(area): self._generate_examples(split_name(area), root,
                                                      f"Area_{area}", rooms)
            for area, rooms in areas.items()}

  def _generate_examples(self, split: str, root: str, area: str,
                         rooms: list[str]) -> Iterator[tuple[str, dict]]:
    """Yields (scene, example) in room order; skips rooms without annotated points."""
    tally = export.SkipTally(self.info.full_name, split, "rooms")
    repairs = export.NoteTally(self.info.full_name, split, "repairs in written rooms",
                                 "repairs")
    tally.listed = len(rooms)
    for room in rooms:
      try:
        example, notes = read_room(os.path.join(root, area, room))
      except RoomError as e:
        tally.skip(e.reason, e.path, str(e))
        continue
      repairs.notes.extend(notes)
      tally.written += 1
      scene = f"{area}/{room}"
      yield scene, {**example, "scene": scene}
    self.info.metadata["splits"][split] = tally.finish()
    self.info.metadata["repairs"][split] = repairs.finish()
    tally.require_written()


def build_s3dis(manual_dir: str, data_dir: str) -> S3dis:
  """Builds (or reuses) the dataset as array_record files under `data_dir`.

  Args:
    manual_dir: the folder holding `Stanford3dDataset_v1.2_Aligned_Version/`.
    data_dir: the TFDS data dir to write to.

  Returns:
    The prepared builder; `builder.info.metadata` holds the skips ("splits") and repairs.
  """
  builder = S3dis(data_dir=data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def load_scenes(data_dir: str, areas: Sequence[int]) -> list[dict[str, Any]]:
  """The rooms of some areas of a built dataset, as numpy arrays (no TensorFlow needed).

  Args:
    data_dir: the TFDS data dir the dataset was built into.
    areas: area numbers, e.g. [1, 2, 3, 4, 6] for training and [5] for testing.

  Returns:
    [{"points" float32 [P, 3], "colors" uint8 [P, 3], "labels" int32 [P], "scene" str}] for
    the rooms of the areas in the order given, each area's rooms in name order.

  Raises:
    FileNotFoundError: if the dataset is not built (the message gives the command).
    ValueError: if an area has no split in the built dataset.
  """
  builder = S3dis(data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{builder.data_path}: not built; run python -m datasets.s3dis.build "
        f"--manual_dir <folder holding {ROOT}> --data_dir {data_dir}")
  built = sorted(builder.info.splits)
  missing = [area for area in areas if split_name(area) not in builder.info.splits]
  if missing:
    raise ValueError(f"{builder.data_path}: no split for area(s) {missing} (Area_<n> was not "
                     f"in the manual dir when the dataset was built); built: {built}")
  scenes = []
  for area in areas:
    source = builder.as_data_source(split=split_name(area))
    scenes.extend(export.scene_arrays(source[i]) for i in range(len(source)))
  return scenes
