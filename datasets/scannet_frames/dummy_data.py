"""Tiny ScanNet exports for testing the builders, and the damage real exports suffer.

`write_export` writes a manual dir with a few small scenes (depth 24x32, colour at a larger
size so the resize is exercised) through `p2p_jax.data.scannet`'s writers and returns what
it wrote. `damage_frame` and `damage_mesh` then break one input the way real exports break
(lost tracking, missing or truncated files, empty depth) and return the reason under which
the builders must count the skip and the file they must name.
"""

import os

import numpy as np
import plyfile
from PIL import Image

from p2p_jax.data import export, scannet

DEPTH_HW = (24, 32)

# Raw ScanNet category id -> (name, NYU40 id). Raw ids 0 and 7 appear in the label images
# but not here, so they must come out as IGNORE_LABEL; NYU40 22 and 18 are not benchmark
# classes.
LABEL_MAP = {1: ("wall", 1), 2: ("chair", 5), 3: ("ceiling", 22), 4: ("desk", 14),
             5: ("pillow", 18), 6: ("cabinet", 3), 40: ("bathtub", 36)}
RAW_IDS = (0, 1, 2, 3, 4, 5, 6, 7, 40)


def _pinhole(hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  h, w = hw
  return np.array([[rng.uniform(0.8, 1.2) * w, 0, rng.uniform(0.4, 0.6) * w],
                   [0, rng.uniform(0.8, 1.2) * w, rng.uniform(0.4, 0.6) * h],
                   [0, 0, 1]]).astype(np.float32)  # float32 values: exact text round trip


def random_pose(rng: np.random.Generator) -> np.ndarray:
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  q = q * np.linalg.det(q)
  pose = np.eye(4)
  pose[:3, :3] = q
  pose[:3, 3] = rng.uniform(-3, 3, 3)
  return pose.astype(np.float32)  # float32 values: exact text round trip


def write_scene(scene_dir: str, scene: str, frames: list[int], color_hw: tuple[int, int],
                rng: np.random.Generator, num_vertices: int = 40) -> dict:
  """Writes one scene: intrinsics, frames with labels, and the labelled mesh.

  Args:
    scene_dir: `scans/<scene>`.
    scene: the scene name.
    frames: absolute frame indices to write.
    color_hw: the colour images' size (depth is DEPTH_HW).
    rng: the source of all values.
    num_vertices: the mesh size.

  Returns:
    {"color_intrinsics", "depth_intrinsics": [3, 3] float32 as written,
     "frames": {frame: {"depth", "cam_to_world", "label", "instance"}},
     "mesh": {"points", "colors", "labels" (NYU40)}}.
  """
  k_color, k_depth = _pinhole(color_hw, rng), _pinhole(DEPTH_HW, rng)
  scannet.write_intrinsics(scene_dir, k_color, k_depth)
  truth = {"color_intrinsics": k_color, "depth_intrinsics": k_depth, "frames": {}}
  for frame in frames:
    depth = rng.integers(1, 6000, DEPTH_HW).astype(np.uint16)
    depth[rng.uniform(size=DEPTH_HW) < 0.1] = 0  # holes, as in real depth maps
    values = {
        "depth": depth,
        "cam_to_world": random_pose(rng),
        "label": rng.choice(RAW_IDS, color_hw).astype(np.uint16),
        "instance": rng.integers(0, 9, color_hw).astype(np.uint16),
    }
    scannet.write_frame(scene_dir, frame, color=rng.integers(0, 256, color_hw + (3,)),
                        **values)
    truth["frames"][frame] = values
  mesh = {"points": rng.normal(size=(num_vertices, 3)).astype(np.float32),
          "colors": rng.integers(0, 256, (num_vertices, 3)).astype(np.uint8),
          "labels": rng.integers(0, 41, num_vertices).astype(np.int32)}
  scannet.write_mesh(scene_dir, scene, mesh["points"], mesh["colors"], mesh["labels"])
  truth["mesh"] = mesh
  return truth


def write_export(manual_dir: str, splits: dict[str, list[str]], frames: list[int], *,
                 split_lists: bool = True, seed: int = 0) -> dict[str, dict]:
  """Writes a manual dir: scans/, the split lists and the label map.

  Args:
    manual_dir: where to write.
    splits: {split: scene names}; the first scene is written with 48x64 colour, the others
      with 40x56 (a non-integer resize factor).
    frames: the frame indices written for every scene.
    split_lists: write scannetv2_<split>.txt; without them every scene is in "train".
    seed: for the values.

  Returns:
    {scene: write_scene's truth}.
  """
  rng = np.random.default_rng(seed)
  truth = {}
  for split, scenes in splits.items():
    for scene in scenes:
      color_hw = (48, 64) if not truth else (40, 56)
      truth[scene] = write_scene(os.path.join(manual_dir, "scans", scene), scene, frames,
                                 color_hw, rng)
    if split_lists:
      with open(os.path.join(manual_dir, export.SPLIT_FILES[split]), "w") as f:
        f.write("".join(f"{scene}\n" for scene in scenes))
  scannet.write_label_map(os.path.join(manual_dir, scannet.LABEL_MAP_FILE), LABEL_MAP)
  return truth


def _path(scene_dir: str, folder: str, frame: int, suffix: str) -> str:
  return os.path.join(scene_dir, folder, f"{frame}{suffix}")


def _truncate(path: str) -> None:
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _flip_png_data(path: str) -> None:
  """Inverts bytes inside the first IDAT chunk: the zlib stream no longer decodes."""
  with open(path, "rb") as f:
    data = bytearray(f.read())
  start = data.index(b"IDAT") + 8
  data[start:start + 8] = bytes(b ^ 0xFF for b in data[start:start + 8])
  with open(path, "wb") as f:
    f.write(bytes(data))


def _write_pose_text(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write("\n".join([text] * 4) + "\n")


# kind -> the reason the frame must be skipped for.
FRAME_DAMAGE = {
    "inf_pose": scannet.BAD_POSE,  # ScanNet writes -inf where tracking was lost
    "nan_pose": scannet.BAD_POSE,
    "zero_pose": scannet.MALFORMED_POSE,  # all zeros: finite, but no camera
    "reflected_pose": scannet.MALFORMED_POSE,  # det -1
    "sheared_pose": scannet.MALFORMED_POSE,  # not orthonormal
    "projective_pose": scannet.MALFORMED_POSE,  # last row not 0 0 0 1
    "depth_8bit": scannet.DEPTH_NOT_16BIT,  # would read as at most 255 mm
    "depth_half_size": scannet.DEPTH_SIZE,  # the full-size intrinsics kept
    "missing_pose": scannet.MISSING_FILE,
    "missing_depth": scannet.MISSING_FILE,
    "missing_color": scannet.MISSING_FILE,
    "truncated_jpeg": scannet.CORRUPT_IMAGE,
    "corrupt_jpeg": scannet.CORRUPT_IMAGE,
    "truncated_png": scannet.CORRUPT_IMAGE,
    "corrupt_png": scannet.CORRUPT_IMAGE,
    "zero_depth": scannet.EMPTY_DEPTH,
    "missing_label": scannet.MISSING_FILE,
    "corrupt_label": scannet.CORRUPT_IMAGE,
}


def damage_frame(scene_dir: str, frame: int, kind: str) -> tuple[str, str]:
  """Breaks one file of a written frame.

  Args:
    scene_dir: `scans/<scene>`.
    frame: a frame written there.
    kind: a key of FRAME_DAMAGE.

  Returns:
    (the reason the frame must be skipped for, the file that must be named).
  """
  pose = _path(scene_dir, "pose", frame, ".txt")
  depth = _path(scene_dir, "depth", frame, ".png")
  color = _path(scene_dir, "color", frame, ".jpg")
  label = _path(scene_dir, "label-filt", frame, ".png")
  if kind == "inf_pose":
    _write_pose_text(pose, "-inf -inf -inf -inf")
    path = pose
  elif kind == "nan_pose":
    _write_pose_text(pose, "1 0 nan 0")
    path = pose
  elif kind in ("zero_pose", "reflected_pose", "sheared_pose", "projective_pose"):
    matrix = scannet.read_matrix(pose)
    if kind == "zero_pose":
      matrix = np.zeros((4, 4))
    elif kind == "reflected_pose":
      matrix[:3, 0] *= -1
    elif kind == "sheared_pose":
      matrix[:3, 1] += 0.1 * matrix[:3, 0]
    else:
      matrix[3] = [0.0, 0.0, 0.1, 1.0]
    np.savetxt(pose, matrix)
    path = pose
  elif kind == "depth_8bit":
    Image.fromarray(np.full(DEPTH_HW, 200, np.uint8)).save(depth)
    path = depth
  elif kind == "depth_half_size":
    Image.fromarray(np.full((DEPTH_HW[0] // 2, DEPTH_HW[1] // 2), 1000, np.uint16)).save(depth)
    path = depth
  elif kind.startswith("missing_"):
    path = {"pose": pose, "depth": depth, "color": color, "label": label}[kind[8:]]
    os.remove(path)
  elif kind == "truncated_jpeg":
    _truncate(color)
    path = color
  elif kind == "corrupt_jpeg":
    with open(color, "wb") as f:
      f.write(b"this is not a JPEG file" * 10)
    path = color
  elif kind == "truncated_png":
    _truncate(depth)
    path = depth
  elif kind == "corrupt_png":
    _flip_png_data(depth)
    path = depth
  elif kind == "zero_depth":
    Image.fromarray(np.zeros(DEPTH_HW, np.uint16)).save(depth)
    path = depth
  elif kind == "corrupt_label":
    _flip_png_data(label)
    path = label
  else:
    raise ValueError(f"unknown damage {kind!r}; one of {sorted(FRAME_DAMAGE)}")
  return FRAME_DAMAGE[kind], path


# kind -> the reason the scene must be skipped for.
MESH_DAMAGE = {
    "missing_mesh": scannet.MISSING_FILE,
    "missing_labels": scannet.MISSING_FILE,
    "garbage_mesh": export.MALFORMED_MESH,
    "truncated_labels": export.MALFORMED_MESH,
    "unlabelled": export.MALFORMED_MESH,
    "vertex_count": export.MALFORMED_MESH,
}


def damage_mesh(scene_dir: str, scene: str, kind: str) -> tuple[str, str]:
  """Breaks one of a scene's mesh files.

  Args:
    scene_dir: `scans/<scene>`.
    scene: the scene name.
    kind: a key of MESH_DAMAGE.

  Returns:
    (the reason the scene must be skipped for, the file that must be named).
  """
  mesh = os.path.join(scene_dir, scene + scannet.MESH_SUFFIX)
  labels = os.path.join(scene_dir, scene + scannet.LABELS_SUFFIX)
  if kind == "missing_mesh":
    os.remove(mesh)
    path = mesh
  elif kind == "missing_labels":
    os.remove(labels)
    path = labels
  elif kind == "garbage_mesh":
    with open(mesh, "wb") as f:
      f.write(b"ply\nformat nonsense\n" + bytes(range(256)))
    path = mesh
  elif kind == "truncated_labels":
    _truncate(labels)
    path = labels
  elif kind == "unlabelled":
    # The plain mesh where the labelled one should be: no `label` vertex property.
    with open(mesh, "rb") as f, open(labels, "wb") as g:
      g.write(f.read())
    path = labels
  elif kind == "vertex_count":
    vertex = np.zeros(3, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("label", "u2")])
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(labels)
    path = labels
  else:
    raise ValueError(f"unknown damage {kind!r}; one of {sorted(MESH_DAMAGE)}")
  return MESH_DAMAGE[kind], path
