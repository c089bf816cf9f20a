"""The ScanNet export layout on disk: readers and writers shared by real and synthetic data.

A scene directory, as ScanNet's SensReader writes it with a frame skip, plus the meshes:

    scans/<scene>/
      color/<f>.jpg                  RGB, usually 1296x968
      depth/<f>.png                  uint16 millimetres, usually 640x480
      pose/<f>.txt                   4x4 camera-to-world; -inf or NaN where tracking was lost
      intrinsic/intrinsic_color.txt  4x4, the upper-left 3x3 is the pinhole matrix
      intrinsic/intrinsic_depth.txt
      intrinsic/extrinsic_color.txt  4x4 (optional, identity if absent)
      intrinsic/extrinsic_depth.txt
      label-filt/<f>.png             optional 2D labels: raw ScanNet category ids (uint16),
                                     mapped to NYU40 by scannetv2-labels.combined.tsv
      instance-filt/<f>.png          optional 2D instance ids (uint16)
      <scene>_vh_clean_2.ply         mesh vertices with colours
      <scene>_vh_clean_2.labels.ply  the same vertices with an NYU40 `label` property
      <scene>_vh_clean_2.0.010000.segs.json, <scene>.aggregation.json
                                     the instance annotation: a segment id per vertex, and
                                     objects as groups of segments with a raw category name
      <scene>.txt                    meta file; `axisAlignment = <16 numbers>` (train, val)

`<f>` is the absolute frame index. Per-frame problems raise `FrameError` with the offending
file and a short reason, so a builder can skip the frame and count it; problems that make a
whole scene unusable (a malformed intrinsics file) raise `ValueError` naming the file.
"""

import csv
import json
import os
from typing import Any, NamedTuple

import numpy as np
import plyfile
from PIL import Image

# Reasons a frame is skipped; builders report counts under these names.
MISSING_FILE = "missing file"
CORRUPT_IMAGE = "corrupt or truncated image"
BAD_POSE = "non-finite or malformed pose"
MALFORMED_POSE = "malformed pose"  # finite, but not a rigid camera-to-world transform
EMPTY_DEPTH = "all-zero depth"
DEPTH_NOT_16BIT = "depth not 16-bit"
DEPTH_SIZE = "depth size does not fit the depth intrinsics"

# Tolerance of a pose's rotation: |R^T R - I| and |det R - 1| (poses are written with about six
# significant digits, which keeps both near 1e-6).
POSE_TOLERANCE = 1e-3

MESH_SUFFIX = "_vh_clean_2.ply"
LABELS_SUFFIX = "_vh_clean_2.labels.ply"
LABEL_MAP_FILE = "scannetv2-labels.combined.tsv"


class FrameError(Exception):
  """A frame that cannot be used: `reason` is one of the constants above, `path` the file."""

  def __init__(self, reason: str, path: str, detail: str = ""):
    super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
    self.reason = reason
    self.path = path


class Intrinsics(NamedTuple):
  """Camera parameters of a scene: 3x3 pinhole matrices and 4x4 sensor extrinsics."""
  color: np.ndarray
  depth: np.ndarray
  color_extrinsic: np.ndarray
  depth_extrinsic: np.ndarray


def _frame_path(scene_dir: str, folder: str, frame: int, suffix: str) -> str:
  return os.path.join(scene_dir, folder, f"{frame}{suffix}")


def read_matrix(path: str) -> np.ndarray:
  """Reads a 4x4 whitespace-separated matrix; ValueError naming the file if it is not one."""
  try:
    matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable 4x4 matrix ({e})") from e
  if matrix.shape != (4, 4):
    raise ValueError(f"{path}: expected a 4x4 matrix, found shape {matrix.shape}")
  return matrix


def read_intrinsics(scene_dir: str) -> Intrinsics:
  """Reads intrinsic/ of a scene.

  Raises:
    ValueError: naming the file, if an intrinsics file is missing or malformed, or its
      pinhole matrix is not finite with positive focal lengths and last row (0, 0, 1).
  """
  folder = os.path.join(scene_dir, "intrinsic")
  mats = {}
  for name in ("intrinsic_color", "intrinsic_depth"):
    path = os.path.join(folder, f"{name}.txt")
    if not os.path.isfile(path):
      raise ValueError(f"{path}: missing intrinsics file")
    k = read_matrix(path)[:3, :3]
    if not (np.all(np.isfinite(k)) and k[0, 0] > 0 and k[1, 1] > 0
            and np.allclose(k[2], [0, 0, 1])):
      raise ValueError(f"{path}: not a pinhole matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] "
                       f"with fx, fy > 0: {k.tolist()}")
    mats[name] = k.astype(np.float32)
  extrinsics = {}
  for name in ("extrinsic_color", "extrinsic_depth"):
    path = os.path.join(folder, f"{name}.txt")
    extrinsics[name] = read_matrix(path).astype(np.float32) if os.path.isfile(path) else np.eye(
        4, dtype=np.float32)
  return Intrinsics(mats["intrinsic_color"], mats["intrinsic_depth"],
                    extrinsics["extrinsic_color"], extrinsics["extrinsic_depth"])


def frame_ids(scene_dir: str) -> list[int]:
  """Frame indices present in color/, depth/ or pose/ (the union, so a frame missing one
  file is still listed and reported by `read_frame` instead of vanishing)."""
  ids = set()
  for folder in ("color", "depth", "pose"):
    path = os.path.join(scene_dir, folder)
    if os.path.isdir(path):
      ids.update(int(os.path.splitext(f)[0]) for f in os.listdir(path)
                 if os.path.splitext(f)[0].isdigit())
  return sorted(ids)


def _open_image(path: str) -> Image.Image:
  if not os.path.isfile(path):
    raise FrameError(MISSING_FILE, path)
  try:
    image = Image.open(path)
    image.load()  # decodes now: truncated files raise here
  except (OSError, SyntaxError, ValueError) as e:
    raise FrameError(CORRUPT_IMAGE, path, str(e)) from e
  return image


def read_color(path: str) -> np.ndarray:
  """RGB image as uint8 [H, W, 3]."""
  return np.asarray(_open_image(path).convert("RGB"))


def read_uint16_png(path: str) -> np.ndarray:
  """A 16-bit PNG (depth in millimetres, label or instance ids) as uint16 [H, W]."""
  image = _open_image(path)
  array = np.asarray(image)
  if array.ndim != 2 or image.mode not in ("I;16", "I", "L"):
    raise FrameError(CORRUPT_IMAGE, path, f"expected a single-channel 16-bit PNG, got mode "
                     f"{image.mode} with shape {array.shape}")
  return array.astype(np.uint16)


def read_pose(path: str) -> np.ndarray:
  """Camera-to-world [4, 4] float32; FrameError for missing, malformed or non-finite poses,
  and for finite matrices that are not rigid transforms (orthonormal rotation with det +1,
  last row 0 0 0 1, within `POSE_TOLERANCE`): MALFORMED_POSE, e.g. an all-zero pose."""
  if not os.path.isfile(path):
    raise FrameError(MISSING_FILE, path)
  try:
    pose = read_matrix(path)
  except ValueError as e:
    raise FrameError(BAD_POSE, path, str(e)) from e
  if not np.all(np.isfinite(pose)):
    raise FrameError(BAD_POSE, path, "contains inf or NaN (tracking lost)")
  rotation = pose[:3, :3]
  if not np.allclose(pose[3], [0, 0, 0, 1], atol=POSE_TOLERANCE):
    raise FrameError(MALFORMED_POSE, path, f"last row {pose[3].tolist()}, not 0 0 0 1")
  orthonormal = np.abs(rotation.T @ rotation - np.eye(3)).max()
  det = np.linalg.det(rotation)
  if orthonormal > POSE_TOLERANCE or abs(det - 1) > POSE_TOLERANCE:
    raise FrameError(MALFORMED_POSE, path, f"rotation not orthonormal with det +1 "
                     f"(|R^T R - I| = {orthonormal:.3g}, det {det:.3g})")
  return pose.astype(np.float32)


def read_depth(path: str, depth_intrinsics: np.ndarray | None = None) -> np.ndarray:
  """A depth PNG as uint16 [H, W] millimetres.

  Args:
    path: the PNG.
    depth_intrinsics: the scene's 3x3 depth camera, or None; with it, the principal point must
      lie in the middle half of the image (a depth image of another size than the camera's,
      e.g. half the size, has its principal point at or beyond the border).

  Raises:
    FrameError: missing or corrupt file (as `read_uint16_png`), DEPTH_NOT_16BIT for any other
      sample format (an 8-bit PNG would read as at most 255 mm), DEPTH_SIZE for a size that
      does not fit the intrinsics.
  """
  image = _open_image(path)
  if image.mode not in ("I;16", "I;16B", "I"):
    raise FrameError(DEPTH_NOT_16BIT, path, f"PNG mode {image.mode}; depth must be 16-bit "
                     "millimetres")
  depth = read_uint16_png(path)
  if depth_intrinsics is not None:
    height, width = depth.shape
    cx, cy = float(depth_intrinsics[0, 2]), float(depth_intrinsics[1, 2])
    if not (0.25 * width <= cx <= 0.75 * width and 0.25 * height <= cy <= 0.75 * height):
      raise FrameError(DEPTH_SIZE, path, f"{width}x{height} pixels, principal point "
                       f"({cx:g}, {cy:g}) of intrinsic/intrinsic_depth.txt")
  return depth


def read_frame(scene_dir: str, frame: int, *, labels: bool = False,
               depth_intrinsics: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Reads one frame at the files' own resolutions.

  Args:
    scene_dir: `scans/<scene>`.
    frame: the frame index.
    labels: also read label-filt/ and instance-filt/.
    depth_intrinsics: the scene's depth camera, to check the depth image's size against; None
      reads `intrinsic/intrinsic_depth.txt` when the scene has it.

  Returns:
    {"color": uint8 [Hc, Wc, 3], "depth": uint16 [H, W], "cam_to_world": float32 [4, 4]},
    plus "label" and "instance" (uint16 [H', W'], raw ids) when `labels`.

  Raises:
    FrameError: a missing, corrupt or truncated file, a non-finite or non-rigid pose, depth
      that is not 16-bit, does not fit the depth intrinsics or is all zero.
  """
  if depth_intrinsics is None:
    path = os.path.join(scene_dir, "intrinsic", "intrinsic_depth.txt")
    if os.path.isfile(path):
      depth_intrinsics = read_matrix(path)[:3, :3]
  out = {
      "cam_to_world": read_pose(_frame_path(scene_dir, "pose", frame, ".txt")),
      "depth": read_depth(_frame_path(scene_dir, "depth", frame, ".png"), depth_intrinsics),
      "color": read_color(_frame_path(scene_dir, "color", frame, ".jpg")),
  }
  if not np.any(out["depth"]):
    raise FrameError(EMPTY_DEPTH, _frame_path(scene_dir, "depth", frame, ".png"))
  if labels:
    out["label"] = read_uint16_png(_frame_path(scene_dir, "label-filt", frame, ".png"))
    out["instance"] = read_uint16_png(_frame_path(scene_dir, "instance-filt", frame, ".png"))
  return out


def _write_matrix(path: str, matrix: np.ndarray) -> None:
  np.savetxt(path, np.asarray(matrix, np.float64).reshape(4, 4), fmt="%.9g")


def _write_uint16_png(path: str, array: np.ndarray) -> None:
  array = np.asarray(array)
  if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
    raise ValueError(f"{path}: values outside the uint16 range")
  Image.fromarray(array.astype(np.uint16)).save(path)


def write_intrinsics(scene_dir: str, color: np.ndarray, depth: np.ndarray,
                     color_extrinsic: np.ndarray | None = None,
                     depth_extrinsic: np.ndarray | None = None) -> None:
  """Writes intrinsic/ with 3x3 pinhole matrices padded to ScanNet's 4x4 files."""
  folder = os.path.join(scene_dir, "intrinsic")
  os.makedirs(folder, exist_ok=True)
  for name, k in (("intrinsic_color", color), ("intrinsic_depth", depth)):
    full = np.eye(4)
    full[:3, :3] = k
    _write_matrix(os.path.join(folder, f"{name}.txt"), full)
  for name, e in (("extrinsic_color", color_extrinsic), ("extrinsic_depth", depth_extrinsic)):
    _write_matrix(os.path.join(folder, f"{name}.txt"), np.eye(4) if e is None else e)


def write_frame(scene_dir: str, frame: int, *, color: np.ndarray, depth: np.ndarray,
                cam_to_world: np.ndarray, label: np.ndarray | None = None,
                instance: np.ndarray | None = None, jpeg_quality: int = 95) -> None:
  """Writes one frame in the layout above (colour as JPEG, the rest as 16-bit PNG / text)."""
  for folder in ("color", "depth", "pose") + (("label-filt",) if label is not None else ()) + (
      ("instance-filt",) if instance is not None else ()):
    os.makedirs(os.path.join(scene_dir, folder), exist_ok=True)
  Image.fromarray(np.asarray(color, np.uint8)).save(
      _frame_path(scene_dir, "color", frame, ".jpg"), quality=jpeg_quality)
  _write_uint16_png(_frame_path(scene_dir, "depth", frame, ".png"), depth)
  _write_matrix(_frame_path(scene_dir, "pose", frame, ".txt"), cam_to_world)
  if label is not None:
    _write_uint16_png(_frame_path(scene_dir, "label-filt", frame, ".png"), label)
  if instance is not None:
    _write_uint16_png(_frame_path(scene_dir, "instance-filt", frame, ".png"), instance)


def write_mesh(scene_dir: str, scene: str, vertices: np.ndarray, colors: np.ndarray,
               labels: np.ndarray | None = None, faces: np.ndarray | None = None) -> None:
  """Writes `<scene>_vh_clean_2.ply` (xyz + rgba) and, with labels, `.labels.ply` (+ label).

  Args:
    vertices: [V, 3] float.
    colors: [V, 3] uint8 RGB.
    labels: optional [V] NYU40 ids.
    faces: optional [F, 3] vertex indices; a point cloud when absent.
  """
  vertices = np.asarray(vertices, np.float32)
  colors = np.asarray(colors, np.uint8)
  fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
            ("blue", "u1"), ("alpha", "u1")]

  def vertex_element(extra):
    data = np.empty(len(vertices), fields + extra)
    for i, axis in enumerate("xyz"):
      data[axis] = vertices[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
      data[channel] = colors[:, i]
    data["alpha"] = 255
    return data

  elements = lambda vertex: [plyfile.PlyElement.describe(vertex, "vertex")] + (
      [] if faces is None else [plyfile.PlyElement.describe(
          np.array([(f,) for f in np.asarray(faces, np.int32)],
                   [("vertex_indices", "i4", (3,))]), "face")])
  os.makedirs(scene_dir, exist_ok=True)
  plyfile.PlyData(elements(vertex_element([]))).write(
      os.path.join(scene_dir, scene + MESH_SUFFIX))
  if labels is not None:
    vertex = vertex_element([("label", "u2")])
    vertex["label"] = np.asarray(labels, np.uint16)
    plyfile.PlyData(elements(vertex)).write(os.path.join(scene_dir, scene + LABELS_SUFFIX))


def read_mesh(scene_dir: str, scene: str) -> dict[str, np.ndarray]:
  """Reads a scene's mesh vertices, colours and (from the `.labels.ply`) NYU40 labels.

  Returns:
    {"points": float32 [V, 3], "colors": uint8 [V, 3], "labels": int32 [V] NYU40 ids}.

  Raises:
    ValueError: naming the file and the missing field if a mesh lacks a vertex property, or
      if the two files disagree on the vertex count.
  """
  out = {}
  for suffix, fields in ((MESH_SUFFIX, ("x", "y", "z", "red", "green", "blue")),
                         (LABELS_SUFFIX, ("label",))):
    path = os.path.join(scene_dir, scene + suffix)
    if not os.path.isfile(path):
      raise ValueError(f"{path}: missing mesh file")
    try:
      vertex = plyfile.PlyData.read(path)["vertex"].data
    except Exception as e:  # plyfile raises several types for malformed files
      raise ValueError(f"{path}: unreadable PLY ({e})") from e
    missing = [f for f in fields if f not in vertex.dtype.names]
    if missing:
      raise ValueError(f"{path}: vertex element lacks {missing}")
    if suffix == MESH_SUFFIX:
      out["points"] = np.stack([vertex[a] for a in "xyz"], -1).astype(np.float32)
      out["colors"] = np.stack([vertex[c] for c in ("red", "green", "blue")], -1).astype(np.uint8)
    else:
      if len(vertex) != len(out["points"]):
        raise ValueError(f"{path}: {len(vertex)} vertices, but {scene + MESH_SUFFIX} has "
                         f"{len(out['points'])}")
      out["labels"] = np.asarray(vertex["label"], np.int32)
  return out


def read_label_map(path: str) -> dict[int, int]:
  """Raw ScanNet category id -> NYU40 id, from scannetv2-labels.combined.tsv (`id`, `nyu40id`)."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: missing label map (scannetv2-labels.combined.tsv)")
  with open(path, newline="") as f:
    reader = csv.DictReader(f, delimiter="\t")
    if not reader.fieldnames or not {"id", "nyu40id"} <= set(reader.fieldnames):
      raise ValueError(f"{path}: needs the columns 'id' and 'nyu40id', found {reader.fieldnames}")
    try:
      return {int(row["id"]): int(row["nyu40id"]) for row in reader}
    except (TypeError, ValueError) as e:  # TypeError: a short row leaves a field as None
      raise ValueError(f"{path}: non-integer id or nyu40id ({e})") from e


def write_label_map(path: str, mapping: dict[int, tuple[str, int]]) -> None:
  """Writes a label map: raw id -> (category name, NYU40 id)."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, delimiter="\t")
    writer.writerow(["id", "raw_category", "nyu40id"])
    for raw, (name, nyu40) in sorted(mapping.items()):
      writer.writerow([raw, name, nyu40])


# The instance annotation and the scene's meta file, beside the meshes:
#   <scene>_vh_clean_2.0.010000.segs.json  {"segIndices": [segment id of each mesh vertex]}
#   <scene>.aggregation.json               {"segGroups": [{"objectId", "label", "segments"}]}
#   <scene>.txt                            `key = value` lines, among them (train and val
#                                          scenes) `axisAlignment = m00 m01 ... m33`
SEGS_SUFFIX = "_vh_clean_2.0.010000.segs.json"
AGGREGATION_SUFFIX = ".aggregation.json"
META_SUFFIX = ".txt"
AXIS_ALIGNMENT_KEY = "axisAlignment"


class SegGroup(NamedTuple):
  """One annotated object of `<scene>.aggregation.json`: its ScanNet `objectId` (0-based; the
  instance id is objectId + 1), raw category name and over-segmentation segment ids."""
  object_id: int
  label: str
  segments: list[int]


def rigid_transform_problem(matrix: np.ndarray) -> str | None:
  """Why a 4x4 matrix is not a rigid transform (last row 0 0 0 1, orthonormal rotation with
  det +1, within `POSE_TOLERANCE`: the test `read_pose` applies), or None if it is one."""
  matrix = np.asarray(matrix, np.float64)
  if not np.all(np.isfinite(matrix)):
    return "contains inf or NaN"
  if not np.allclose(matrix[3], [0, 0, 0, 1], atol=POSE_TOLERANCE):
    return f"last row {matrix[3].tolist()}, not 0 0 0 1"
  rotation = matrix[:3, :3]
  orthonormal = np.abs(rotation.T @ rotation - np.eye(3)).max()
  det = np.linalg.det(rotation)
  if orthonormal > POSE_TOLERANCE or abs(det - 1) > POSE_TOLERANCE:
    return (f"rotation not orthonormal with det +1 (|R^T R - I| = {orthonormal:.3g}, "
            f"det {det:.3g})")
  return None


def _read_json(path: str) -> Any:
  if not os.path.isfile(path):
    raise ValueError(f"{path}: missing file")
  try:
    with open(path, "rb") as f:
      return json.loads(f.read())
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def read_segments(path: str) -> np.ndarray:
  """The over-segmentation of a mesh: `segIndices` of `<scene>_vh_clean_2.0.010000.segs.json`.

  Returns:
    int64 [V]: the segment id of each mesh vertex.

  Raises:
    ValueError: naming the file (and the field `segIndices`), if the file is missing, is not
      JSON, or lacks a list of integers under `segIndices`.
  """
  data = _read_json(path)
  seg = data.get("segIndices") if isinstance(data, dict) else None
  if not isinstance(seg, list):
    raise ValueError(f"{path}: field 'segIndices' missing or not a list")
  bad = next((i for i, s in enumerate(seg) if not _is_int(s)), None)
  if bad is not None:
    raise ValueError(f"{path}: field 'segIndices' holds a non-integer at vertex {bad}: "
                     f"{seg[bad]!r}")
  return np.asarray(seg, np.int64).reshape(-1)


def read_aggregation(path: str) -> list[SegGroup]:
  """The annotated objects of `<scene>.aggregation.json`, in file order.

  Each entry of `segGroups` needs `objectId` (or, failing it, `id`): a non-negative integer
  unique in the file, `label`: the raw category name, and `segments`: a list of integer
  segment ids of the segs file. Whether those segments exist is the caller's to check.

  Raises:
    ValueError: naming the file and the field (e.g. `segGroups[3].segments`), if the file is
      missing, is not JSON or an entry lacks or mistypes a field, or an objectId repeats.
  """
  data = _read_json(path)
  entries = data.get("segGroups") if isinstance(data, dict) else None
  if not isinstance(entries, list):
    raise ValueError(f"{path}: field 'segGroups' missing or not a list")
  groups, seen = [], {}
  for i, entry in enumerate(entries):
    field = f"segGroups[{i}]"
    if not isinstance(entry, dict):
      raise ValueError(f"{path}: field '{field}' is not an object")
    object_id = entry.get("objectId", entry.get("id"))
    if not _is_int(object_id) or not 0 <= object_id < 2**31 - 1:
      raise ValueError(f"{path}: field '{field}.objectId' (or 'id') missing or not an "
                       f"integer in [0, 2^31 - 1): {object_id!r}")
    if object_id in seen:
      raise ValueError(f"{path}: field '{field}.objectId': objectId {object_id} repeats "
                       f"segGroups[{seen[object_id]}]")
    seen[object_id] = i
    label = entry.get("label")
    if not isinstance(label, str):
      raise ValueError(f"{path}: field '{field}.label' missing or not a string: {label!r}")
    segments = entry.get("segments")
    if not isinstance(segments, list) or not all(_is_int(s) for s in segments):
      raise ValueError(f"{path}: field '{field}.segments' missing or not a list of integers")
    groups.append(SegGroup(object_id, label, segments))
  return groups


def read_axis_alignment(path: str) -> np.ndarray | None:
  """The `axisAlignment` of a scene's meta file `<scene>.txt`, which rotates the scene about
  z and translates it so that its walls run along the axes (ScanNet gives it for the train and
  val scenes).

  Returns:
    float64 [4, 4], applied to homogeneous column vectors (`aligned = A @ [x y z 1]`); None if
    the file is missing or has no `axisAlignment` line.

  Raises:
    ValueError: naming the file and the field `axisAlignment`, if the file is not text, the
      line appears twice or does not hold 16 finite numbers (a row-major 4x4 matrix), or the
      matrix is not a rigid transform (`rigid_transform_problem`).
  """
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a text file ({e})") from e
  values = [value for key, sep, value in (line.partition("=") for line in lines)
            if sep and key.strip() == AXIS_ALIGNMENT_KEY]
  if not values:
    return None
  field = f"field '{AXIS_ALIGNMENT_KEY}'"
  if len(values) > 1:
    raise ValueError(f"{path}: {field} appears {len(values)} times")
  words = values[0].split()
  if len(words) != 16:
    raise ValueError(f"{path}: {field} holds {len(words)} values, not 16 (a row-major 4x4 "
                     "matrix)")
  try:
    matrix = np.array([float(w) for w in words], np.float64).reshape(4, 4)
  except ValueError as e:
    raise ValueError(f"{path}: {field} holds a non-number ({e})") from e
  problem = rigid_transform_problem(matrix)
  if problem:
    raise ValueError(f"{path}: {field} is not a rigid transform: {problem}")
  return matrix


def write_meta(path: str, axis_alignment: np.ndarray | None = None,
               fields: dict[str, str] | None = None) -> None:
  """Writes a scene's meta file `<scene>.txt`: `axisAlignment = ...` (row-major, when given)
  and then `key = value` per entry of `fields`, as ScanNet's files hold them."""
  lines = []
  if axis_alignment is not None:
    numbers = np.asarray(axis_alignment, np.float64).reshape(16)
    lines.append(f"{AXIS_ALIGNMENT_KEY} = " + " ".join(f"{v:.9g}" for v in numbers))
  lines.extend(f"{key} = {value}" for key, value in (fields or {}).items())
  with open(path, "w") as f:
    f.writelines(line + "\n" for line in lines)


def read_raw_category_map(path: str) -> dict[str, int]:
  """Raw ScanNet category name -> NYU40 id, from scannetv2-labels.combined.tsv
  (`raw_category`, `nyu40id`): how the `label` of an aggregation's segGroup is mapped.

  Raises:
    ValueError: naming the file, if it is missing, lacks the columns, has a non-integer
      nyu40id, or maps one raw category to two NYU40 ids.
  """
  if not os.path.isfile(path):
    raise ValueError(f"{path}: missing label map (scannetv2-labels.combined.tsv)")
  with open(path, newline="") as f:
    reader = csv.DictReader(f, delimiter="\t")
    if not reader.fieldnames or not {"raw_category", "nyu40id"} <= set(reader.fieldnames):
      raise ValueError(f"{path}: needs the columns 'raw_category' and 'nyu40id', found "
                       f"{reader.fieldnames}")
    mapping = {}
    for line, row in enumerate(reader, start=2):
      name = row["raw_category"]
      try:
        nyu40 = int(row["nyu40id"])
      except (TypeError, ValueError) as e:  # TypeError: a short row leaves a field as None
        raise ValueError(f"{path}:{line}: non-integer nyu40id ({e})") from e
      if name is None:
        raise ValueError(f"{path}:{line}: no raw_category")
      if mapping.get(name, nyu40) != nyu40:
        raise ValueError(f"{path}:{line}: raw_category {name!r} maps to nyu40id {nyu40} "
                         f"here and to {mapping[name]} above")
      mapping[name] = nyu40
  return mapping
