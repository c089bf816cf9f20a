"""Synthetic rooms written in the S3DIS layout, for `p2p_jax.data.s3dis` without the real data.

    <out_dir>/Stanford3dDataset_v1.2_Aligned_Version/Area_<a>/<room>/<room>.txt
    <out_dir>/Stanford3dDataset_v1.2_Aligned_Version/Area_<a>/<room>/Annotations/<class>_<i>.txt

The rooms are this package's procedural rooms (`scene_room`), their surfaces sampled
(`sample_surface`) into points with albedo colours, a class and an instance each. Every
instance with points becomes one annotation file, its NYU40 class mapped to the 13 S3DIS
classes by `S3DIS_CLASS` (beam and column never occur: the rooms have none), numbered
1, 2, ... per class in instance order; the room file holds the same lines in sampling order.
Lines are `%.3f %.3f %.3f %d %d %d` with LF endings, as in the real files. Each room keeps its
own frame (metres, floor at z = 0). Room `k` overall (areas in order, then rooms) is the
synthetic scene `k` of the seed, named after its type (`office_1`, `WC_1`, ...); the output is
a pure function of the arguments, byte for byte.
"""

import glob
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from p2p_jax.data import s3dis
from p2p_jax.data.synthetic import furniture
from p2p_jax.data.synthetic.furniture import ROOM_TYPES
from p2p_jax.data.synthetic.render import sample_surface
from p2p_jax.data.synthetic.writer import _rng, scene_room

# NYU40 id of the synthetic rooms -> S3DIS class; every other id is clutter.
S3DIS_CLASS = {
    furniture.CEILING: "ceiling", furniture.FLOOR: "floor", furniture.WALL: "wall",
    furniture.WINDOW: "window", furniture.DOOR: "door", furniture.TABLE: "table",
    furniture.DESK: "table", furniture.CHAIR: "chair", furniture.SOFA: "sofa",
    furniture.BOOKSHELF: "bookcase", furniture.PICTURE: "board",
}
# Synthetic room type -> S3DIS-style room name (S3DIS has no bedrooms or kitchens).
ROOM_NAMES = {"bedroom": "bedroom", "living room": "lounge", "kitchen": "pantry",
              "bathroom": "WC", "office": "office"}
# Settings of a config's `data.synthetic` that concern only the ScanNet-layout rooms.
SCANNET_ONLY = frozenset({"frames_per_scene", "height", "width", "val_fraction",
                          "teacher_fraction", "depth_noise", "depth_holes", "workers"})

logger = logging.getLogger(__name__)


def _lines(points: np.ndarray, colors: np.ndarray) -> list[str]:
  return [f"{x:.3f} {y:.3f} {z:.3f} {r} {g} {b}\n"
          for (x, y, z), (r, g, b) in zip(points.tolist(), colors.tolist())]


def _write_room(room_dir: str, seed: int, index: int, points_per_m2: float) -> int:
  """Writes synthetic scene `index` as one S3DIS room; returns its number of points."""
  room = scene_room(seed, index)
  cloud = sample_surface(room, _rng(seed, index, 2), points_per_m2)
  lines = _lines(cloud["points"], cloud["colors"])
  name = os.path.basename(room_dir)
  os.makedirs(os.path.join(room_dir, s3dis.ANNOTATIONS))
  with open(os.path.join(room_dir, name + ".txt"), "w", newline="\n") as f:
    f.writelines(lines)
  numbers = {}
  for instance in np.unique(cloud["instances"]):
    label = S3DIS_CLASS.get(int(room.instance_labels[instance]), "clutter")
    numbers[label] = numbers.get(label, 0) + 1
    path = os.path.join(room_dir, s3dis.ANNOTATIONS, f"{label}_{numbers[label]}.txt")
    with open(path, "w", newline="\n") as f:
      f.writelines(lines[i] for i in np.flatnonzero(cloud["instances"] == instance))
  return len(lines)


def write_rooms(out_dir: str, num_areas: int, rooms_per_area: int | Sequence[int], *,
                seed: int = 0, points_per_m2: float = 200.0,
                overwrite: bool = False) -> dict[str, Any]:
  """Writes synthetic rooms as `<out_dir>/Stanford3dDataset_v1.2_Aligned_Version/`.

  The tree is written into a temporary folder beside it and renamed into place, so a reader
  never sees a partial dataset; the temporary folders of killed writes are removed first.

  Args:
    out_dir: the manual dir to write into.
    num_areas: areas Area_1 .. Area_<num_areas>.
    rooms_per_area: rooms in every area, or one count per area.
    seed: seed of everything.
    points_per_m2: surface sampling density (the real scans have far more).
    overwrite: replace an existing tree instead of refusing to.

  Returns:
    {"rooms": ["Area_1/office_1", ...], "points": total, "seconds": wall time}.

  Raises:
    ValueError: for an area without rooms, or an existing tree without overwrite.
  """
  counts = ([rooms_per_area] * num_areas if isinstance(rooms_per_area, int)
            else list(rooms_per_area))
  if num_areas < 1 or len(counts) != num_areas or min(counts) < 1:
    raise ValueError(f"need at least one room in each of {num_areas} area(s), got "
                     f"{rooms_per_area}")
  target = os.path.join(out_dir, s3dis.ROOT)
  if os.path.exists(target) and not overwrite:
    raise ValueError(f"{target} exists; pass overwrite=True to replace it")
  start = time.perf_counter()
  os.makedirs(out_dir, exist_ok=True)
  for stale in glob.glob(os.path.join(glob.escape(out_dir), f".{s3dis.ROOT}.*")):
    logger.warning("%s: the unfinished tree of an interrupted write of synthetic S3DIS rooms; "
                   "removing it", stale)
    shutil.rmtree(stale)
  staging = tempfile.mkdtemp(prefix=f".{s3dis.ROOT}.", dir=out_dir)
  rooms, points, index = [], 0, 0
  try:
    for area, count in enumerate(counts, start=1):
      numbers = {}
      for _ in range(count):
        kind = ROOM_NAMES[ROOM_TYPES[index % len(ROOM_TYPES)]]
        numbers[kind] = numbers.get(kind, 0) + 1
        scene = f"Area_{area}/{kind}_{numbers[kind]}"
        points += _write_room(os.path.join(staging, scene), seed, index, points_per_m2)
        rooms.append(scene)
        index += 1
    if os.path.exists(target):
      shutil.rmtree(target)
    os.rename(staging, target)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return {"rooms": rooms, "points": points, "seconds": time.perf_counter() - start}


def generate_if_asked(out_dir: str, settings: Any) -> bool:
  """Writes synthetic rooms into `out_dir` as a config's `data.synthetic` says, unless its
  `scenes` is 0 or `out_dir` already holds `Stanford3dDataset_v1.2_Aligned_Version/` (which
  `write_rooms` renames into place only when complete, so a killed write is redone).

  `scenes` is the total number of rooms, spread over the areas as evenly as possible (the
  first areas get one more), so it must be at least the number of areas. `seed` and
  `points_per_m2` are used as they are; `areas` (default 6) sets the number of areas; the
  settings of the ScanNet-layout rooms (frames, image size, split fractions) are ignored.

  Args:
    out_dir: the manual dir.
    settings: a mapping (or ConfigDict) such as `p2p_jax.configs.common.synthetic()`.

  Returns:
    Whether it wrote rooms.

  Raises:
    ValueError: for fewer rooms than areas or an unknown setting.
  """
  s = dict(settings.to_dict() if hasattr(settings, "to_dict") else settings)
  scenes = s.pop("scenes", 0)
  if not scenes or os.path.isdir(os.path.join(out_dir, s3dis.ROOT)):
    return False
  areas = s.pop("areas", 6)
  seed = s.pop("seed", 0)
  points_per_m2 = s.pop("points_per_m2", 200.0)
  unknown = sorted(set(s) - SCANNET_ONLY)
  if unknown:
    raise ValueError(f"synthetic S3DIS rooms: unknown settings {unknown}")
  if scenes < areas:
    raise ValueError(f"synthetic S3DIS rooms: {scenes} scenes cannot fill {areas} areas; ask "
                     "for at least one room per area (or set `areas`)")
  spread = [scenes // areas + (area < scenes % areas) for area in range(areas)]
  write_rooms(out_dir, areas, spread, seed=seed, points_per_m2=points_per_m2)
  return True
