"""Procedural indoor rooms rendered into the ScanNet export layout.

    python -m datasets.synthetic_rooms.generate --out DIR --scenes N --frames-per-scene F \
        [--height 240] [--width 320] [--seed 0] [--val-fraction 0.2] [--teacher-fraction 0] \
        [--depth-noise 0] [--depth-holes 0] [--points-per-m2 1000] [--workers W] [--overwrite]

Each scene is a rectangular or L-shaped room (floor, walls, ceiling) furnished from trimesh
primitives by room type (bedroom, living room, kitchen, bathroom, office), covering all 20
ScanNet benchmark classes with their NYU40 ids. Every instance draws its own colour from a wide,
class-dependent distribution and its own procedural solid texture, so colour alone does not
identify the class. A camera walks a smooth path at eye height through the free space and
looks around; frames are ray cast with Embree (trimesh's `ray_pyembree`) into shaded colour,
z-depth, semantic labels and instance ids. Written per scene, with `p2p_jax.data.scannet`:

    scans/<scene>/color/<f>.jpg, depth/<f>.png, pose/<f>.txt, label-filt/<f>.png,
        instance-filt/<f>.png, intrinsic/*.txt       frames; <f> = 25 * (frame number)
    scans/<scene>/<scene>_vh_clean_2.ply, .labels.ply  surface samples, colour, NYU40 label
    scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json, <scene>.aggregation.json
                                                       instances, as ScanNet stores them
    scannetv2-labels.combined.tsv, scannetv2_{train,val}.txt (and _teacher.txt when asked)

Raw label ids equal NYU40 ids. The ceiling carries NYU40 22 ("ceiling"), which the 20-class
benchmark ignores. Output is a pure function of the arguments (not of `workers`): the same seed
gives byte-identical files, and scene i is the same whatever the number of scenes.
"""

import argparse
import colorsys
import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph
import tqdm
import trimesh
from PIL import Image

# Imported directly so a missing embreex fails loudly instead of falling back to trimesh's
# pure-Python ray tracer, which is two orders of magnitude slower.
from trimesh.ray import ray_pyembree

from p2p_jax.data import labels, scannet

_NYU40 = {name: nyu40 for nyu40, name in labels.SCANNET20}
WALL, FLOOR, CABINET, BED = (_NYU40[n] for n in ("wall", "floor", "cabinet", "bed"))
CHAIR, SOFA, TABLE, DOOR = (_NYU40[n] for n in ("chair", "sofa", "table", "door"))
WINDOW, BOOKSHELF, PICTURE = (_NYU40[n] for n in ("window", "bookshelf", "picture"))
COUNTER, DESK, CURTAIN = (_NYU40[n] for n in ("counter", "desk", "curtain"))
REFRIGERATOR, SHOWER_CURTAIN = _NYU40["refrigerator"], _NYU40["shower curtain"]
TOILET, SINK, BATHTUB = (_NYU40[n] for n in ("toilet", "sink", "bathtub"))
OTHERFURNITURE = _NYU40["otherfurniture"]
CEILING = 22  # NYU40 "ceiling"; not a benchmark class
# Raw id -> (category name, NYU40 id) for scannetv2-labels.combined.tsv; raw id == NYU40 id.
LABEL_MAP = {nyu40: (name, nyu40) for nyu40, name in labels.SCANNET20} | {
    CEILING: ("ceiling", CEILING)}

ROOM_TYPES = ("bedroom", "living room", "kitchen", "bathroom", "office")
FRAME_STEP = 25  # frame indices as in a SensReader export keeping every 25th frame (PPKT's skip)
HFOV_DEGREES = 65.0
CAMERA_CLEARANCE = 0.3  # metres from walls, furniture and wall fixtures to the camera
GRID = 0.05  # metres per cell of the free-space grid the camera path is planned on
SEGS_SUFFIX = "_vh_clean_2.0.010000.segs.json"
AGGREGATION_SUFFIX = ".aggregation.json"

# Per class: (preferred hue, probability of that hue family, texture kind probabilities for
# grain / stripes / checker / blotches). Saturation and value ranges are shared by all
# classes and hues often come from anywhere, so colour distributions overlap strongly.
_APPEARANCE = {
    WALL: (0.10, 0.4, (0.45, 0.15, 0.1, 0.3)), FLOOR: (0.08, 0.5, (0.2, 0.35, 0.3, 0.15)),
    CABINET: (0.07, 0.5, (0.35, 0.3, 0.1, 0.25)), BED: (0.60, 0.4, (0.3, 0.3, 0.15, 0.25)),
    CHAIR: (0.05, 0.5, (0.35, 0.25, 0.1, 0.3)), SOFA: (0.00, 0.5, (0.4, 0.2, 0.15, 0.25)),
    TABLE: (0.08, 0.5, (0.3, 0.4, 0.05, 0.25)), DOOR: (0.09, 0.5, (0.35, 0.35, 0.05, 0.25)),
    WINDOW: (0.55, 0.5, (0.5, 0.2, 0.1, 0.2)), BOOKSHELF: (0.07, 0.5, (0.3, 0.35, 0.1, 0.25)),
    PICTURE: (0.30, 0.2, (0.2, 0.25, 0.25, 0.3)), COUNTER: (0.10, 0.5, (0.3, 0.2, 0.2, 0.3)),
    DESK: (0.08, 0.5, (0.3, 0.4, 0.05, 0.25)), CURTAIN: (0.75, 0.4, (0.3, 0.35, 0.1, 0.25)),
    REFRIGERATOR: (0.55, 0.4, (0.6, 0.1, 0.05, 0.25)),
    SHOWER_CURTAIN: (0.50, 0.4, (0.25, 0.35, 0.2, 0.2)),
    TOILET: (0.15, 0.4, (0.6, 0.1, 0.1, 0.2)), SINK: (0.55, 0.4, (0.5, 0.15, 0.1, 0.25)),
    BATHTUB: (0.55, 0.4, (0.5, 0.15, 0.15, 0.2)),
    OTHERFURNITURE: (0.40, 0.2, (0.3, 0.25, 0.2, 0.25)),
    CEILING: (0.12, 0.4, (0.6, 0.1, 0.1, 0.2)),
}
# Spatial frequencies (cycles per metre) of each texture kind.
_TEXTURE_FREQUENCY = ((8.0, 30.0), (2.0, 12.0), (1.5, 6.0), (1.0, 5.0))


# ---------------------------------------------------------------------------------------------
# Primitives and furniture, built in a local frame: x across the width, +y towards the front
# (into the room for things against a wall), z up, origin at the footprint centre on the floor.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Item:
  """A piece of furniture or a wall fixture in its local frame.

  `groups` holds (NYU40 id, parts) per instance: a vanity is a cabinet and a sink, a bathtub
  may come with its shower curtain.
  """
  groups: list[tuple[int, list[trimesh.Trimesh]]]
  width: float
  depth: float
  height: float


@functools.cache
def _template(kind: str, sections: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Vertices and faces of a unit box or a radius-1, height-1 cylinder, both with their bottom
  face centred on the origin. Rooms hold hundreds of primitives; scaling a template is much
  faster than building each one anew."""
  if kind == "box":
    mesh = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
  else:
    mesh = trimesh.creation.cylinder(radius=1.0, height=1.0, sections=sections)
  return mesh.vertices + (0.0, 0.0, 0.5), mesh.faces


def _scaled(kind: str, size: Sequence[float], at: Sequence[float],
            sections: int = 0) -> trimesh.Trimesh:
  vertices, faces = _template(kind, sections)
  return trimesh.Trimesh(vertices * size + at, faces, process=False)


def _box(sx: float, sy: float, sz: float, x: float = 0.0, y: float = 0.0,
         z: float = 0.0) -> trimesh.Trimesh:
  """A box of size (sx, sy, sz) whose bottom face is centred on (x, y, z)."""
  return _scaled("box", (sx, sy, sz), (x, y, z))


def _cylinder(radius: float, height: float, x: float = 0.0, y: float = 0.0, z: float = 0.0,
              sections: int = 12, scale_y: float = 1.0) -> trimesh.Trimesh:
  """A vertical cylinder standing on (x, y, z), optionally stretched along y (an ellipse)."""
  return _scaled("cylinder", (radius, radius * scale_y, height), (x, y, z), sections)


def _rod(radius: float, start: Sequence[float], end: Sequence[float]) -> trimesh.Trimesh:
  """A cylinder between two points (handles, curtain rods)."""
  return trimesh.creation.cylinder(radius=radius, segment=np.array([start, end], np.float64),
                                   sections=8)


def _legs(rng: np.random.Generator, width: float, depth: float, height: float,
          inset: float) -> list[trimesh.Trimesh]:
  """Four round or square legs under the corners of a width x depth top."""
  x, y = width / 2 - inset, depth / 2 - inset
  corners = ((-x, -y), (x, -y), (-x, y), (x, y))
  if rng.random() < 0.5:
    radius = rng.uniform(0.012, 0.025)
    return [_cylinder(radius, height, cx, cy) for cx, cy in corners]
  side = rng.uniform(0.025, 0.05)
  return [_box(side, side, height, cx, cy) for cx, cy in corners]


def _wavy_sheet(rng: np.random.Generator, width: float, z0: float, z1: float,
                y: float) -> list[trimesh.Trimesh]:
  """A hanging curtain: a row of overlapping vertical cylinders that reads as folds."""
  radius = rng.uniform(0.025, 0.045)
  count = max(2, int(width / (1.4 * radius)))
  xs = np.linspace(-width / 2 + radius, width / 2 - radius, count)
  return [_cylinder(radius, z1 - z0, x, y + (0.4 * radius if i % 2 else 0.0), z0, sections=8)
          for i, x in enumerate(xs)]


def _cabinet(rng: np.random.Generator) -> _Item:
  w, d = rng.uniform(0.4, 1.2), rng.uniform(0.35, 0.6)
  h = rng.uniform(0.5, 0.9) if rng.random() < 0.5 else rng.uniform(1.4, 2.0)
  return _Item([(CABINET, _cabinet_parts(rng, w, d, h))], w, d, h)


def _cabinet_parts(rng: np.random.Generator, w: float, d: float,
                   h: float) -> list[trimesh.Trimesh]:
  """A carcass on a recessed plinth with door or drawer fronts and handles."""
  plinth = rng.uniform(0.05, 0.1)
  body_d = d - 0.04
  parts = [_box(w - 0.04, body_d - 0.04, plinth, 0, -0.04, 0),
           _box(w, body_d, h - plinth, 0, -0.02, plinth)]
  front_y = d / 2 - 0.04  # door fronts from here to +0.02, handles to the footprint edge
  if rng.random() < 0.5:
    doors = 1 if w < 0.6 else 2
    door_w = w / doors
    for i in range(doors):
      cx = -w / 2 + door_w * (i + 0.5)
      parts.append(_box(door_w - 0.01, 0.02, h - plinth - 0.02, cx, front_y + 0.01, plinth + 0.01))
      hx = cx + (door_w / 2 - 0.06) * (1 if i % 2 == 0 and doors == 2 else -1)
      parts.append(_box(0.02, 0.02, 0.14, hx, front_y + 0.03, plinth + (h - plinth) * 0.55))
  else:
    drawers = max(2, int((h - plinth) / rng.uniform(0.18, 0.35)))
    drawer_h = (h - plinth) / drawers
    for i in range(drawers):
      z = plinth + drawer_h * i
      parts.append(_box(w - 0.01, 0.02, drawer_h - 0.01, 0, front_y + 0.01, z + 0.005))
      parts.append(_box(min(0.3, w * 0.5), 0.02, 0.02, 0, front_y + 0.03, z + drawer_h * 0.6))
  return parts


def _bed(rng: np.random.Generator) -> _Item:
  w = rng.uniform(0.9, 1.2) if rng.random() < 0.4 else rng.uniform(1.4, 1.9)
  length = rng.uniform(1.95, 2.15)
  frame_h = rng.uniform(0.25, 0.4)
  board_t = 0.06
  head_h = rng.uniform(0.9, 1.3)
  leg_h = 0.1
  mattress_h = rng.uniform(0.18, 0.28)
  head_y = -length / 2 + board_t / 2
  parts = [_box(w, board_t, head_h, 0, head_y, 0)]
  # The frame runs from the headboard to the foot, or to a footboard if there is one.
  foot = rng.random() < 0.4
  frame_len = length - board_t * (2 if foot else 1)
  frame_y = -length / 2 + board_t + frame_len / 2
  if foot:
    parts.append(_box(w, board_t, rng.uniform(0.45, 0.6), 0, -head_y, 0))
  parts.append(_box(w - 0.02, frame_len, frame_h - leg_h, 0, frame_y, leg_h))
  parts.append(_box(w - 0.06, frame_len - 0.04, mattress_h, 0, frame_y, frame_h))
  parts += [leg.apply_translation((0, frame_y, 0))
            for leg in _legs(rng, w - 0.02, frame_len, leg_h, 0.05)]
  pillows = 1 if w < 1.3 else 2
  for i in range(pillows):
    px = -w / 2 + w / pillows * (i + 0.5)
    parts.append(_box(w / pillows - 0.1, 0.35, rng.uniform(0.08, 0.14), px,
                      -length / 2 + board_t + 0.25, frame_h + mattress_h))
  return _Item([(BED, parts)], w, length, head_h)


def _chair(rng: np.random.Generator) -> _Item:
  w, d = rng.uniform(0.4, 0.52), rng.uniform(0.4, 0.52)
  seat_h, seat_t = rng.uniform(0.42, 0.48), rng.uniform(0.03, 0.06)
  back_h = rng.uniform(0.35, 0.5)
  parts = [_box(w, d, seat_t, 0, 0, seat_h - seat_t)]
  if rng.random() < 0.3:  # office chair: column on a five-star base
    parts.append(_cylinder(0.025, seat_h - seat_t - 0.06, 0, 0, 0.06))
    for k in range(5):
      arm = _box(min(w, d) / 2, 0.04, 0.04, min(w, d) / 4, 0, 0.02)
      parts.append(arm.apply_transform(trimesh.transformations.rotation_matrix(
          2 * np.pi * k / 5, (0, 0, 1))))
  else:
    parts += _legs(rng, w, d, seat_h - seat_t, 0.03)
  if rng.random() < 0.5:
    parts.append(_box(w, 0.03, back_h, 0, -d / 2 + 0.015, seat_h))
  else:  # two posts and rails
    for sx in (-1, 1):
      parts.append(_box(0.03, 0.03, back_h, sx * (w / 2 - 0.015), -d / 2 + 0.015, seat_h))
    for k in range(int(rng.integers(2, 5))):
      parts.append(_box(w - 0.06, 0.02, 0.04, 0, -d / 2 + 0.015,
                        seat_h + back_h * (0.25 + 0.7 * k / 4)))
  if rng.random() < 0.3:
    for sx in (-1, 1):
      parts.append(_box(0.04, d * 0.8, 0.03, sx * (w / 2 - 0.02), 0, seat_h + 0.22))
      parts.append(_box(0.03, 0.03, 0.22, sx * (w / 2 - 0.02), d * 0.3, seat_h))
  return _Item([(CHAIR, parts)], w, d, seat_h + back_h)


def _sofa(rng: np.random.Generator) -> _Item:
  w = rng.uniform(0.8, 1.0) if rng.random() < 0.25 else rng.uniform(1.5, 2.4)
  d = rng.uniform(0.8, 1.0)
  leg_h = rng.uniform(0.0, 0.12)
  base_h = rng.uniform(0.3, 0.38)
  arm_w, arm_h = rng.uniform(0.12, 0.25), rng.uniform(0.55, 0.7)
  back_t, back_h = rng.uniform(0.15, 0.25), rng.uniform(0.75, 0.95)
  inner_w = w - 2 * arm_w
  seat_d = d - back_t
  parts = [_box(inner_w, seat_d, base_h, 0, back_t / 2, leg_h),
           _box(w, back_t, back_h - leg_h, 0, -d / 2 + back_t / 2, leg_h)]
  for sx in (-1, 1):
    parts.append(_box(arm_w, seat_d, arm_h - leg_h, sx * (w / 2 - arm_w / 2), back_t / 2, leg_h))
  cushions = 1 if inner_w < 0.9 else int(rng.integers(2, 4))
  cushion_w = inner_w / cushions
  for i in range(cushions):
    parts.append(_box(cushion_w - 0.01, seat_d - 0.02, 0.12,
                      -inner_w / 2 + cushion_w * (i + 0.5), back_t / 2 + 0.01, leg_h + base_h))
  if leg_h > 0.03:
    parts += _legs(rng, w, d, leg_h, 0.06)
  return _Item([(SOFA, parts)], w, d, back_h)


def _table(rng: np.random.Generator, *, coffee: bool = False) -> _Item:
  h = rng.uniform(0.38, 0.5) if coffee else rng.uniform(0.72, 0.78)
  top_t = rng.uniform(0.025, 0.05)
  if not coffee and rng.random() < 0.3:  # round, on a pedestal
    r = rng.uniform(0.4, 0.6)
    parts = [_cylinder(r, top_t, 0, 0, h - top_t, sections=24),
             _cylinder(rng.uniform(0.035, 0.06), h - top_t, sections=12),
             _cylinder(rng.uniform(0.2, 0.3), 0.03, sections=16)]
    return _Item([(TABLE, parts)], 2 * r, 2 * r, h)
  w = rng.uniform(0.8, 1.3) if coffee else rng.uniform(0.8, 1.8)
  d = rng.uniform(0.45, 0.7) if coffee else rng.uniform(0.6, 1.0)
  parts = [_box(w, d, top_t, 0, 0, h - top_t)]
  parts += _legs(rng, w, d, h - top_t, rng.uniform(0.03, 0.08))
  if rng.random() < 0.5:  # apron under the top
    apron_h = rng.uniform(0.06, 0.1)
    z = h - top_t - apron_h
    for sy in (-1, 1):
      parts.append(_box(w - 0.16, 0.02, apron_h, 0, sy * (d / 2 - 0.08), z))
    for sx in (-1, 1):
      parts.append(_box(0.02, d - 0.16, apron_h, sx * (w / 2 - 0.08), 0, z))
  if coffee and rng.random() < 0.5:
    parts.append(_box(w - 0.12, d - 0.12, 0.02, 0, 0, 0.12))
  return _Item([(TABLE, parts)], w, d, h)


def _desk(rng: np.random.Generator) -> _Item:
  w, d, h = rng.uniform(1.0, 1.7), rng.uniform(0.55, 0.8), rng.uniform(0.72, 0.77)
  top_t, panel_t = 0.03, rng.uniform(0.025, 0.05)
  parts = [_box(w, d, top_t, 0, 0, h - top_t)]
  left = -w / 2 + panel_t / 2
  if rng.random() < 0.5:  # a drawer pedestal on the right instead of a side panel
    ped_w = rng.uniform(0.35, 0.45)
    right_inner = w / 2 - ped_w
    parts.append(_box(ped_w, d - 0.04, h - top_t, w / 2 - ped_w / 2, 0, 0))
    drawers = int(rng.integers(2, 4))
    for i in range(drawers):
      z = (h - top_t) * i / drawers
      parts.append(_box(ped_w - 0.02, 0.02, (h - top_t) / drawers - 0.01, w / 2 - ped_w / 2,
                        d / 2 - 0.01, z + 0.005))
  else:
    right_inner = w / 2 - panel_t
    parts.append(_box(panel_t, d - 0.04, h - top_t, w / 2 - panel_t / 2, 0, 0))
  parts.append(_box(panel_t, d - 0.04, h - top_t, left, 0, 0))
  modesty_w = right_inner - (-w / 2 + panel_t)
  parts.append(_box(modesty_w, 0.02, rng.uniform(0.3, 0.45), (right_inner - w / 2 + panel_t) / 2,
                    -d / 2 + 0.05, h - top_t - 0.45))
  return _Item([(DESK, parts)], w, d, h)


def _bookshelf(rng: np.random.Generator) -> _Item:
  w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.25, 0.4), rng.uniform(1.0, 2.1)
  t, base = rng.uniform(0.015, 0.03), rng.uniform(0.05, 0.1)
  parts = [_box(t, d, h, -w / 2 + t / 2), _box(t, d, h, w / 2 - t / 2),
           _box(w - 2 * t, d, t, 0, 0, h - t), _box(w - 2 * t, d, base),
           _box(w - 2 * t, 0.01, h - t - base, 0, -d / 2 + 0.005, base)]
  levels = max(2, int((h - base) / rng.uniform(0.3, 0.42)))
  spacing = (h - base - t) / levels
  inner_w = w - 2 * t
  for i in range(levels):
    z = base + spacing * i
    if i > 0:
      parts.append(_box(inner_w, d - 0.01, t, 0, 0.005, z - t))
    # Books fill a random share of each level, leaning on the left side.
    x = -inner_w / 2
    end = x + inner_w * rng.uniform(0.2, 0.95)
    while True:
      book_w = rng.uniform(0.02, 0.06)
      if x + book_w > end:
        break
      book_h = min(rng.uniform(0.15, 0.28), spacing - t - 0.02)
      book_d = rng.uniform(0.15, d - 0.03)
      parts.append(_box(book_w, book_d, book_h, x + book_w / 2, -d / 2 + 0.01 + book_d / 2, z))
      x += book_w + 0.002
  return _Item([(BOOKSHELF, parts)], w, d, h)


def _counter(rng: np.random.Generator) -> _Item:
  w, d, h = rng.uniform(1.2, 3.0), rng.uniform(0.55, 0.65), rng.uniform(0.86, 0.94)
  top_t, kick = rng.uniform(0.03, 0.05), 0.1
  # The top overhangs the carcass by 6 cm (doors and handles fill 3 cm), the toe kick is set
  # back another 6 cm.
  parts = [_box(w, d, top_t, 0, 0, h - top_t),
           _box(w, d - 0.12, kick, 0, -0.06, 0),
           _box(w, d - 0.06, h - top_t - kick, 0, -0.03, kick)]
  doors = max(1, int(round(w / rng.uniform(0.4, 0.6))))
  door_w = w / doors
  front_y = d / 2 - 0.06
  for i in range(doors):
    cx = -w / 2 + door_w * (i + 0.5)
    parts.append(_box(door_w - 0.01, 0.015, h - top_t - kick - 0.02, cx, front_y + 0.0075,
                      kick + 0.01))
    parts.append(_box(0.12, 0.015, 0.015, cx, front_y + 0.0225, h - top_t - 0.08))
  return _Item([(COUNTER, parts)], w, d, h)


def _refrigerator(rng: np.random.Generator) -> _Item:
  w, d, h = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.75), rng.uniform(1.6, 1.95)
  body_d = d - 0.08
  body_y = -d / 2 + body_d / 2
  front = -d / 2 + body_d
  parts = [_box(w, body_d, h, 0, body_y, 0)]
  if rng.random() < 0.3:  # side by side
    for sx in (-1, 1):
      parts.append(_box(w / 2 - 0.01, 0.04, h - 0.06, sx * w / 4, front + 0.02, 0.05))
      parts.append(_rod(0.012, (-sx * 0.04, front + 0.07, h * 0.35),
                        (-sx * 0.04, front + 0.07, h * 0.75)))
      parts.append(_box(0.02, 0.03, 0.02, -sx * 0.04, front + 0.055, h * 0.36))
      parts.append(_box(0.02, 0.03, 0.02, -sx * 0.04, front + 0.055, h * 0.73))
  else:  # freezer over fridge
    split = h * rng.uniform(0.6, 0.75)
    for z0, z1 in ((0.05, split - 0.01), (split + 0.01, h - 0.01)):
      parts.append(_box(w - 0.01, 0.04, z1 - z0, 0, front + 0.02, z0))
      hx = w / 2 - 0.06
      length = min(0.5, (z1 - z0) * 0.6)
      zm = (z0 + z1) / 2
      parts.append(_rod(0.012, (hx, front + 0.07, zm - length / 2),
                        (hx, front + 0.07, zm + length / 2)))
      parts.append(_box(0.02, 0.03, 0.02, hx, front + 0.055, zm - length / 2))
  return _Item([(REFRIGERATOR, parts)], w, d, h)


def _toilet(rng: np.random.Generator) -> _Item:
  r, bowl_h = rng.uniform(0.17, 0.21), rng.uniform(0.36, 0.4)
  tank_w, tank_d, tank_h = rng.uniform(0.36, 0.45), rng.uniform(0.15, 0.2), rng.uniform(0.3, 0.4)
  stretch = 1.25
  d = tank_d + 2 * r * stretch
  bowl_y = -d / 2 + tank_d + r * stretch - 0.03
  tank_y = -d / 2 + tank_d / 2
  parts = [_cylinder(r * 0.7, bowl_h - 0.08, 0, bowl_y, 0, sections=16, scale_y=stretch),
           _cylinder(r, 0.08, 0, bowl_y, bowl_h - 0.08, sections=16, scale_y=stretch),
           _cylinder(r + 0.01, 0.02, 0, bowl_y, bowl_h, sections=16, scale_y=stretch),
           _box(tank_w * 0.5, tank_d, bowl_h, 0, tank_y, 0),
           _box(tank_w, tank_d, tank_h, 0, tank_y, bowl_h + 0.02),
           _box(tank_w + 0.02, tank_d + 0.02, 0.02, 0, tank_y, bowl_h + 0.02 + tank_h)]
  return _Item([(TOILET, parts)], max(tank_w + 0.02, 2 * r + 0.02), d, bowl_h + tank_h + 0.04)


def _basin(w: float, d: float, h: float, z: float) -> list[trimesh.Trimesh]:
  """An open-topped box bowl on z, with a tap on the back rim."""
  t = 0.03
  return [_box(w, d, t, 0, 0, z),
          _box(w, t, h, 0, -d / 2 + t / 2, z), _box(w, t, h, 0, d / 2 - t / 2, z),
          _box(t, d - 2 * t, h, -w / 2 + t / 2, 0, z), _box(t, d - 2 * t, h, w / 2 - t / 2, 0, z),
          _cylinder(0.015, 0.15, 0, -d / 2 + t / 2, z + h, sections=8),
          _box(0.03, 0.1, 0.02, 0, -d / 2 + 0.05, z + h + 0.12)]


def _sink(rng: np.random.Generator, *, vanity: bool | None = None) -> _Item:
  if vanity is None:
    vanity = rng.random() < 0.5
  if vanity:  # a cabinet instance under a sink instance
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.45, 0.6), rng.uniform(0.78, 0.9)
    cabinet = _cabinet_parts(rng, w, d, h)
    basin_h = rng.uniform(0.1, 0.15)
    sink = _basin(min(0.6, w * 0.7), d * 0.75, basin_h, h)
    return _Item([(CABINET, cabinet), (SINK, sink)], w, d, h + basin_h + 0.14)
  w, d = rng.uniform(0.45, 0.65), rng.uniform(0.38, 0.5)
  top, basin_h = rng.uniform(0.65, 0.75), rng.uniform(0.15, 0.2)
  parts = [_cylinder(rng.uniform(0.06, 0.1), top, 0, -d / 4, sections=12)]
  parts += _basin(w, d, basin_h, top)
  return _Item([(SINK, parts)], w, d, top + basin_h + 0.14)


def _bathtub(rng: np.random.Generator) -> _Item:
  length, d, h = rng.uniform(1.5, 1.8), rng.uniform(0.7, 0.8), rng.uniform(0.5, 0.6)
  t = rng.uniform(0.05, 0.1)
  tub = [_box(length, d, 0.1),
         _box(length, t, h - 0.1, 0, -d / 2 + t / 2, 0.1),
         _box(length, t, h - 0.1, 0, d / 2 - t / 2, 0.1),
         _box(t, d - 2 * t, h - 0.1, -length / 2 + t / 2, 0, 0.1),
         _box(t, d - 2 * t, h - 0.1, length / 2 - t / 2, 0, 0.1),
         _cylinder(0.02, 0.2, -length / 2 + t / 2, 0, h, sections=8)]
  groups = [(BATHTUB, tub)]
  height = h + 0.2
  if rng.random() < 0.7:
    rod_z = rng.uniform(1.9, 2.05)
    y = d / 2 - t / 2
    covered = length * rng.uniform(0.3, 0.95)
    sheet = _wavy_sheet(rng, covered, h + 0.05, rod_z - 0.03, y)
    offset = (length - covered) / 2 * (1 if rng.random() < 0.5 else -1)
    curtain = [p.apply_translation((offset, 0, 0)) for p in sheet]
    curtain.append(_rod(0.012, (-length / 2, y, rod_z), (length / 2, y, rod_z)))
    groups.append((SHOWER_CURTAIN, curtain))
    height = rod_z + 0.02
  return _Item(groups, length, d, height)


def _otherfurniture(rng: np.random.Generator) -> _Item:
  kind = rng.integers(4)
  if kind == 0:  # stool
    r, h = rng.uniform(0.15, 0.22), rng.uniform(0.45, 0.75)
    parts = [_cylinder(r, 0.04, 0, 0, h - 0.04, sections=16)]
    parts += _legs(rng, 1.2 * r, 1.2 * r, h - 0.04, 0.0)
    parts.append(_box(1.2 * r, 1.2 * r, 0.015, 0, 0, h * 0.35))
    return _Item([(OTHERFURNITURE, parts)], 2 * r, 2 * r, h)
  if kind == 1:  # ottoman
    w, h = rng.uniform(0.4, 0.8), rng.uniform(0.35, 0.45)
    if rng.random() < 0.5:
      return _Item([(OTHERFURNITURE, [_cylinder(w / 2, h, sections=20)])], w, w, h)
    d = rng.uniform(0.4, 0.6)
    return _Item([(OTHERFURNITURE, [_box(w, d, h - 0.05, 0, 0, 0.05),
                                    _box(w - 0.06, d - 0.06, 0.05)])], w, d, h)
  if kind == 2:  # coat rack
    h = rng.uniform(1.6, 1.85)
    parts = [_cylinder(0.2, 0.03, sections=16), _cylinder(0.02, h, sections=8)]
    for k in range(4):
      a = np.pi / 2 * k
      parts.append(_rod(0.01, (0, 0, h - 0.15), (0.15 * np.cos(a), 0.15 * np.sin(a), h - 0.05)))
    return _Item([(OTHERFURNITURE, parts)], 0.4, 0.4, h)
  r, h = rng.uniform(0.12, 0.2), rng.uniform(0.3, 0.5)  # bin with a lid
  return _Item([(OTHERFURNITURE, [_cylinder(r, h, sections=16),
                                  _cylinder(r + 0.01, 0.03, 0, 0, h, sections=16)])],
               2 * r + 0.02, 2 * r + 0.02, h + 0.03)


def _door(rng: np.random.Generator) -> _Item:
  w, h, t = rng.uniform(0.8, 0.95), rng.uniform(1.98, 2.1), rng.uniform(0.03, 0.05)
  casing = rng.uniform(0.05, 0.08)
  parts = [_box(w, t, h, 0, t / 2),
           _box(casing, 0.02, h + casing, -w / 2 - casing / 2, 0.01),
           _box(casing, 0.02, h + casing, w / 2 + casing / 2, 0.01),
           _box(w, 0.02, casing, 0, 0.01, h)]
  panels = int(rng.integers(0, 4))
  for i in range(panels):
    ph = (h - 0.3) / panels
    parts.append(_box(w - 0.2, 0.01, ph - 0.1, 0, t + 0.005, 0.15 + ph * i + 0.05))
  hx = w / 2 - 0.08
  parts.append(_rod(0.01, (hx, t, 1.0), (hx, t + 0.06, 1.0)))
  parts.append(_box(0.12, 0.02, 0.02, hx - 0.05, t + 0.05, 0.99))
  return _Item([(DOOR, parts)], w + 2 * casing, t + 0.07, h + casing)


def _window(rng: np.random.Generator, sill: float, top: float) -> _Item:
  """A framed window between heights sill and top; the pane stays close to the wall plane."""
  w, h = rng.uniform(0.6, 1.8), top - sill
  bar, depth = rng.uniform(0.04, 0.08), rng.uniform(0.04, 0.07)
  parts = [_box(w, 0.01, h, 0, 0.005, sill),
           _box(bar, depth, h, -w / 2 + bar / 2, depth / 2, sill),
           _box(bar, depth, h, w / 2 - bar / 2, depth / 2, sill),
           _box(w - 2 * bar, depth, bar, 0, depth / 2, sill),
           _box(w - 2 * bar, depth, bar, 0, depth / 2, top - bar),
           _box(w + 0.1, 0.12, 0.03, 0, 0.06, sill - 0.03)]
  if rng.random() < 0.6:
    parts.append(_box(bar * 0.6, depth * 0.8, h - 2 * bar, 0, depth * 0.4, sill + bar))
  if rng.random() < 0.4:
    parts.append(_box(w - 2 * bar, depth * 0.8, bar * 0.6, 0, depth * 0.4, sill + h * 0.6))
  return _Item([(WINDOW, parts)], w + 0.1, 0.12, top)


def _picture(rng: np.random.Generator, centre_z: float) -> _Item:
  w, h = rng.uniform(0.3, 1.2), rng.uniform(0.25, 0.9)
  t, frame = rng.uniform(0.015, 0.04), rng.uniform(0.02, 0.05)
  z0 = centre_z - h / 2
  parts = [_box(w - 2 * frame, t, h - 2 * frame, 0, t / 2, z0 + frame),
           _box(frame, t + 0.01, h, -w / 2 + frame / 2, (t + 0.01) / 2, z0),
           _box(frame, t + 0.01, h, w / 2 - frame / 2, (t + 0.01) / 2, z0),
           _box(w - 2 * frame, t + 0.01, frame, 0, (t + 0.01) / 2, z0),
           _box(w - 2 * frame, t + 0.01, frame, 0, (t + 0.01) / 2, z0 + h - frame)]
  return _Item([(PICTURE, parts)], w, t + 0.01, z0 + h)


# ---------------------------------------------------------------------------------------------
# Room layout: footprints in the floor plane, rejection sampling against walls and each other.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Footprint:
  """An oriented rectangle on the floor: `half` = (half width, half depth) in the local frame."""
  centre: np.ndarray
  half: np.ndarray
  yaw: float
  top: float

  def axes(self) -> np.ndarray:
    c, s = np.cos(self.yaw), np.sin(self.yaw)
    return np.array([[c, s], [-s, c]])  # rows: local x and local y in world coordinates

  def corners(self) -> np.ndarray:
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    return self.centre + (signs * self.half) @ self.axes()

  def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
    local = np.abs((points - self.centre) @ self.axes().T)
    return np.all(local < self.half + margin, axis=-1)


def _overlap(a: _Footprint, b: _Footprint, gap: float) -> bool:
  """Separating-axis test: do the footprints come closer than `gap`?"""
  ca, cb = a.corners(), b.corners()
  for axis in np.concatenate([a.axes(), b.axes()]):
    pa, pb = ca @ axis, cb @ axis
    if pa.max() + gap <= pb.min() or pb.max() + gap <= pa.min():
      return False
  return True


def _inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
  """Even-odd rule for [N, 2] points against a [P, 2] polygon."""
  x, y = points[:, None, 0], points[:, None, 1]
  x0, y0 = polygon[:, 0], polygon[:, 1]
  x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
  crosses = (y0 > y) != (y1 > y)
  with np.errstate(divide="ignore", invalid="ignore"):
    x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
  return np.sum(crosses & (x < x_cross), axis=1) % 2 == 1


def _room_polygon(rng: np.random.Generator, room_type: str) -> np.ndarray:
  """Counter-clockwise floor outline: a rectangle, or an L with one corner cut away."""
  low, high = {"bathroom": (2.6, 3.6), "living room": (4.0, 7.0), "office": (3.5, 6.5)}.get(
      room_type, (3.0, 5.5))
  w, d = rng.uniform(low, high, size=2)
  if room_type == "bathroom" or rng.random() < 0.65:
    polygon = np.array([[0, 0], [w, 0], [w, d], [0, d]])
  else:
    a, b = w * rng.uniform(0.3, 0.5), d * rng.uniform(0.3, 0.5)
    polygon = np.array([[0, 0], [w, 0], [w, d - b], [w - a, d - b], [w - a, d], [0, d]])
    # Mirror to put the missing corner anywhere; mirroring reverses the winding.
    if rng.random() < 0.5:
      polygon = np.stack([w - polygon[:, 0], polygon[:, 1]], -1)[::-1]
    if rng.random() < 0.5:
      polygon = np.stack([polygon[:, 0], d - polygon[:, 1]], -1)[::-1]
  return polygon.astype(np.float64)


def _floor_rectangles(polygon: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
  """The floor as axis-aligned (min, max) rectangles: a grid over the polygon's distinct
  coordinates, keeping the cells inside it (one for a rectangle, three for an L)."""
  xs, ys = np.unique(polygon[:, 0]), np.unique(polygon[:, 1])
  cells = []
  for x0, x1 in zip(xs[:-1], xs[1:]):
    for y0, y1 in zip(ys[:-1], ys[1:]):
      if _inside_polygon(np.array([[(x0 + x1) / 2, (y0 + y1) / 2]]), polygon)[0]:
        cells.append((np.array([x0, y0]), np.array([x1, y1])))
  return cells


@dataclasses.dataclass
class _Walls:
  """Wall segments of a counter-clockwise polygon; `normal` points into the room."""
  start: np.ndarray
  direction: np.ndarray
  normal: np.ndarray
  length: np.ndarray

  @classmethod
  def from_polygon(cls, polygon: np.ndarray) -> "_Walls":
    edge = np.roll(polygon, -1, axis=0) - polygon
    length = np.linalg.norm(edge, axis=1)
    direction = edge / length[:, None]
    return cls(polygon, direction, np.stack([-direction[:, 1], direction[:, 0]], -1), length)

  def frame(self, seg: int, along: float, off: float) -> tuple[np.ndarray, float]:
    """World position `along` the wall and `off` into the room, and the yaw facing inwards."""
    n = self.normal[seg]
    return self.start[seg] + self.direction[seg] * along + n * off, float(np.arctan2(-n[0], n[1]))


@dataclasses.dataclass(frozen=True)
class _Span:
  """A stretch [a, b] of wall `seg`, from height z0 up, taken by a door, window or picture
  that reaches `reach` metres into the room."""
  seg: int
  a: float
  b: float
  z0: float
  reach: float


def _blocks(fp: _Footprint, span: _Span, walls: _Walls) -> bool:
  """Does a furniture footprint stand in front of a wall span, higher than its bottom?"""
  rel = fp.corners() - walls.start[span.seg]
  along, off = rel @ walls.direction[span.seg], rel @ walls.normal[span.seg]
  return bool(off.min() < span.reach + 0.03 and along.max() > span.a - 0.05
              and along.min() < span.b + 0.05 and fp.top > span.z0)


@dataclasses.dataclass
class _Layout:
  polygon: np.ndarray
  walls: _Walls
  height: float
  placed: list[tuple[_Item, np.ndarray, float]] = dataclasses.field(default_factory=list)
  footprints: list[_Footprint] = dataclasses.field(default_factory=list)
  keep_out: list[_Footprint] = dataclasses.field(default_factory=list)
  spans: list[_Span] = dataclasses.field(default_factory=list)
  fixtures: list[_Footprint] = dataclasses.field(default_factory=list)

  def fits(self, fp: _Footprint, gap: float) -> bool:
    if not np.all(_inside_polygon(fp.corners(), self.polygon)):
      return False
    if np.any(fp.contains(self.polygon)):  # the inner corner of an L
      return False
    if any(_overlap(fp, other, gap) for other in self.footprints + self.keep_out):
      return False
    return not any(_blocks(fp, span, self.walls) for span in self.spans)

  def add(self, item: _Item, fp: _Footprint) -> None:
    self.placed.append((item, np.append(fp.centre, 0.0), fp.yaw))
    self.footprints.append(fp)


def _place_against_wall(rng: np.random.Generator, layout: _Layout, item: _Item, *,
                        corner: bool = False, tries: int = 40) -> _Footprint | None:
  walls = layout.walls
  usable = walls.length > item.width + 0.1
  if not usable.any():
    return None
  weights = np.where(usable, walls.length, 0.0)
  for _ in range(tries):
    seg = int(rng.choice(len(weights), p=weights / weights.sum()))
    lo, hi = item.width / 2 + 0.02, walls.length[seg] - item.width / 2 - 0.02
    along = (lo if rng.random() < 0.5 else hi) if corner else rng.uniform(lo, hi)
    centre, yaw = walls.frame(seg, along, item.depth / 2 + 0.01)
    fp = _Footprint(centre, np.array([item.width, item.depth]) / 2, yaw, item.height)
    if layout.fits(fp, gap=0.05):
      layout.add(item, fp)
      return fp
  return None


def _place_free(rng: np.random.Generator, layout: _Layout, item: _Item, *,
                tries: int = 40) -> _Footprint | None:
  low, high = layout.polygon.min(0), layout.polygon.max(0)
  for _ in range(tries):
    centre = rng.uniform(low, high)
    # Most furniture stands square to the walls; some is turned freely.
    yaw = (rng.integers(4) * np.pi / 2 + rng.normal(0, 0.08) if rng.random() < 0.7
           else rng.uniform(0, 2 * np.pi))
    fp = _Footprint(centre, np.array([item.width, item.depth]) / 2, float(yaw), item.height)
    if layout.fits(fp, gap=0.25):
      layout.add(item, fp)
      return fp
  return None


def _place_chairs(rng: np.random.Generator, layout: _Layout, host: _Footprint,
                  sides: Sequence[int]) -> None:
  """Chairs pulled out from the given sides of a table or desk (0 front, 1 right, 2 back,
  3 left), facing it."""
  for side in sides:
    chair = _chair(rng)
    axis = side % 2  # 0: offset along local y, 1: along local x
    sign = 1 if side < 2 else -1
    local = np.zeros(2)
    local[1 - axis] = sign * (host.half[1 - axis] + chair.depth / 2 + rng.uniform(0.02, 0.12))
    local[axis] = rng.uniform(-0.3, 0.3) * host.half[axis]
    centre = host.centre + local @ host.axes()
    # The chair's front (+y) faces the host.
    to_host = host.centre - centre
    yaw = float(np.arctan2(-to_host[0], to_host[1]) + rng.normal(0, 0.15))
    fp = _Footprint(centre, np.array([chair.width, chair.depth]) / 2, yaw, chair.height)
    if layout.fits(fp, gap=0.02):
      layout.add(chair, fp)


def _place_wall_fixture(rng: np.random.Generator, layout: _Layout, make: Callable[[], _Item],
                        z0: float, tries: int = 30) -> tuple[_Item, _Span] | None:
  """A door, window or picture on a wall stretch free of furniture and other fixtures."""
  walls = layout.walls
  for _ in range(tries):
    item = make()
    seg = int(rng.integers(len(walls.length)))
    lo, hi = item.width / 2 + 0.25, walls.length[seg] - item.width / 2 - 0.25
    if lo >= hi:
      continue
    along = rng.uniform(lo, hi)
    span = _Span(seg, along - item.width / 2, along + item.width / 2, z0, item.depth)
    if any(s.seg == seg and s.a < span.b + 0.1 and span.a < s.b + 0.1 for s in layout.spans):
      continue
    if any(_blocks(fp, span, walls) for fp in layout.footprints):
      continue
    centre, yaw = walls.frame(seg, along, 0.0)
    layout.placed.append((item, np.append(centre, 0.0), yaw))
    layout.spans.append(span)
    layout.fixtures.append(_Footprint(walls.frame(seg, along, item.depth / 2)[0],
                                      np.array([item.width, item.depth]) / 2, yaw, item.height))
    return item, span
  return None


# Furniture per room type: (builder, least, most, placement). Chairs also come with tables and
# desks.
_FURNITURE = {
    "bedroom": [(_bed, 1, 1, "wall"), (_cabinet, 1, 2, "wall"), (_desk, 0, 1, "wall"),
                (_bookshelf, 0, 1, "wall"), (_otherfurniture, 0, 2, "free"),
                (_chair, 0, 1, "free")],
    "living room": [(_sofa, 1, 2, "wall"), (lambda r: _table(r, coffee=True), 0, 1, "free"),
                    (_table, 1, 1, "free"), (_bookshelf, 0, 2, "wall"), (_cabinet, 0, 2, "wall"),
                    (_chair, 0, 2, "free"), (_otherfurniture, 0, 2, "free")],
    "kitchen": [(_refrigerator, 1, 1, "wall"), (_counter, 1, 2, "wall"),
                (lambda r: _sink(r, vanity=True), 1, 1, "wall"), (_cabinet, 1, 3, "wall"),
                (_table, 0, 1, "free"), (_otherfurniture, 0, 1, "free")],
    "bathroom": [(_bathtub, 1, 1, "corner"), (_toilet, 1, 1, "wall"), (_sink, 1, 2, "wall"),
                 (_cabinet, 0, 1, "wall"), (_otherfurniture, 0, 1, "free")],
    "office": [(_desk, 1, 3, "wall"), (_bookshelf, 1, 2, "wall"), (_cabinet, 1, 2, "wall"),
               (_table, 0, 1, "free"), (_sofa, 0, 1, "wall"), (_otherfurniture, 0, 2, "free"),
               (_chair, 0, 1, "free")],
}
_CURTAIN_PROBABILITY = {"bedroom": 0.7, "living room": 0.7, "office": 0.3, "kitchen": 0.2,
                        "bathroom": 0.0}


def _layout(rng: np.random.Generator, room_type: str) -> _Layout:
  polygon = _room_polygon(rng, room_type)
  layout = _Layout(polygon, _Walls.from_polygon(polygon), float(rng.uniform(2.4, 3.0)))
  for _ in range(2 if room_type in ("living room", "office") and rng.random() < 0.4 else 1):
    placed = _place_wall_fixture(rng, layout, lambda: _door(rng), 0.0)
    if placed is not None:  # people walk through the door: keep furniture out of its swing
      _, span = placed
      centre, yaw = layout.walls.frame(span.seg, (span.a + span.b) / 2, 0.45)
      layout.keep_out.append(_Footprint(centre, np.array([(span.b - span.a) / 2, 0.45]), yaw, 2.0))
  for build, least, most, placement in _FURNITURE[room_type]:
    for _ in range(int(rng.integers(least, most + 1))):
      item = build(rng)
      if placement == "free":
        fp = _place_free(rng, layout, item)
      else:
        fp = _place_against_wall(rng, layout, item, corner=placement == "corner")
      if fp is not None and item.groups[0][0] == TABLE and item.height > 0.6:
        _place_chairs(rng, layout, fp, rng.permutation(4)[:rng.integers(1, 5)])
      elif fp is not None and item.groups[0][0] == DESK and rng.random() < 0.8:
        _place_chairs(rng, layout, fp, [0])
  windows = int(rng.integers(0, 2)) if room_type == "bathroom" else int(rng.integers(1, 4))
  for _ in range(windows):
    sill = rng.uniform(0.7, 1.0)
    top = min(sill + rng.uniform(0.8, 1.5), layout.height - 0.25)
    if rng.random() < _CURTAIN_PROBABILITY[room_type]:
      _window_with_curtains(rng, layout, sill, top)
    else:
      _place_wall_fixture(rng, layout, lambda: _window(rng, sill, top), sill - 0.03)  # noqa: B023
  for _ in range(int(rng.integers(0, 2 if room_type == "bathroom" else 4))):
    centre_z = min(rng.uniform(1.3, 1.7), layout.height - 0.6)
    _place_wall_fixture(rng, layout, lambda: _picture(rng, centre_z), centre_z - 0.45)  # noqa: B023
  return layout


def _window_with_curtains(rng: np.random.Generator, layout: _Layout, sill: float,
                          top: float) -> None:
  """A window flanked by two curtain panels (one instance each) on a rod above it."""
  panel = rng.uniform(0.25, 0.5)
  rod_z = min(top + rng.uniform(0.1, 0.25), layout.height - 0.05)
  bottom = rng.uniform(0.02, 0.08) if rng.random() < 0.7 else sill - 0.1
  y = rng.uniform(0.18, 0.22)  # clear of the window ledge

  def make() -> _Item:
    window = _window(rng, sill, top)
    half = window.width / 2 + panel / 2 - 0.05
    curtains = []
    for side in (-1, 1):
      sheet = _wavy_sheet(rng, panel, bottom, rod_z - 0.03, y)
      curtains.append((CURTAIN, [p.apply_translation((side * half, 0, 0)) for p in sheet]))
    reach = window.width / 2 + panel
    curtains[0][1].append(_rod(0.012, (-reach, y, rod_z), (reach, y, rod_z)))
    return _Item(window.groups + curtains, 2 * reach, y + 0.06, rod_z)

  _place_wall_fixture(rng, layout, make, bottom)


# ---------------------------------------------------------------------------------------------
# Appearance: per-instance colours and procedural solid textures.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Textures:
  """Per-instance appearance, indexed by instance id (row 0, "no instance", is black).

  Attributes:
    base: [I, 3] RGB in [0, 1].
    accent: [I, 3] second colour the pattern mixes in.
    kind: [I] 0 grain, 1 stripes, 2 checker, 3 blotches.
    frequency: [I] cycles per metre.
    direction: [I, 3] unit vector the stripes run across.
    offset: [I, 3] phase of the pattern, in periods.
    contrast: [I] share of the accent colour at full pattern strength.
    seed: [I] uint32 noise seed.
  """
  base: np.ndarray
  accent: np.ndarray
  kind: np.ndarray
  frequency: np.ndarray
  direction: np.ndarray
  offset: np.ndarray
  contrast: np.ndarray
  seed: np.ndarray


def _random_colour(rng: np.random.Generator, hue: float, hue_probability: float) -> np.ndarray:
  h = hue + rng.normal(0, 0.06) if rng.random() < hue_probability else rng.random()
  return np.array(colorsys.hsv_to_rgb(h % 1.0, rng.uniform(0.05, 0.75), rng.uniform(0.3, 0.95)))


def _random_textures(rng: np.random.Generator, classes: Sequence[int],
                     shared: dict[int, int]) -> Textures:
  """Appearance of instances 1..len(classes); `shared` maps an instance to an earlier one whose
  look it copies (the walls of a room are painted alike)."""
  rows = [dict(base=np.zeros(3), accent=np.zeros(3), kind=0, frequency=1.0,
               direction=np.array([1.0, 0, 0]), offset=np.zeros(3), contrast=0.0, seed=0)]
  for instance, nyu40 in enumerate(classes, start=1):
    if instance in shared:
      rows.append(rows[shared[instance]])
      continue
    hue, hue_probability, kinds = _APPEARANCE[nyu40]
    base = _random_colour(rng, hue, hue_probability)
    if rng.random() < 0.5:
      accent = np.clip(base * rng.uniform(0.4, 1.3), 0, 1)
    else:
      accent = _random_colour(rng, rng.random(), 0.0)
    kind = int(rng.choice(4, p=kinds))
    direction = rng.normal(size=3)
    rows.append(dict(base=base, accent=accent, kind=kind,
                     frequency=rng.uniform(*_TEXTURE_FREQUENCY[kind]),
                     direction=direction / np.linalg.norm(direction), offset=rng.random(3),
                     contrast=rng.uniform(0.3, 0.9), seed=int(rng.integers(2**32))))
  dtypes = {"kind": np.int32, "seed": np.uint32}
  return Textures(**{k: np.array([row[k] for row in rows], dtypes.get(k, np.float32))
                     for k in rows[0]})


_PRIMES = (np.uint32(73856093), np.uint32(19349663), np.uint32(83492791))


def _mix(h: np.ndarray) -> np.ndarray:
  """Scrambles uint32 hashes into floats in [0, 1)."""
  h = h ^ (h >> np.uint32(13))
  h *= np.uint32(0x5BD1E995)
  h ^= h >> np.uint32(15)
  return (h & np.uint32(0xFFFFFF)).astype(np.float32) * np.float32(1 / 0x1000000)


def _lattice(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Integer cell (as uint32, wrapping negatives) and fractional position of [N, 3] points."""
  cell = np.floor(q)
  return cell.astype(np.int32).view(np.uint32), q - cell


def _cell_noise(q: np.ndarray, seed: np.ndarray) -> np.ndarray:
  """One random value in [0, 1) per unit lattice cell."""
  i, _ = _lattice(q)
  return _mix(i[:, 0] * _PRIMES[0] ^ i[:, 1] * _PRIMES[1] ^ i[:, 2] * _PRIMES[2] ^ seed)


def _value_noise(q: np.ndarray, seed: np.ndarray) -> np.ndarray:
  """Smooth 3D value noise in [0, 1) at [N, 3] float32 lattice coordinates."""
  i, f = _lattice(q)
  f = f * f * (3 - 2 * f)
  # Per-axis hash terms of the two lattice planes around each point, XOR-ed per corner.
  terms = [(i[:, a] * _PRIMES[a], (i[:, a] + np.uint32(1)) * _PRIMES[a]) for a in range(3)]
  terms[2] = (terms[2][0] ^ seed, terms[2][1] ^ seed)
  weights = [(1 - f[:, a], f[:, a]) for a in range(3)]
  out = np.zeros(len(q), np.float32)
  for dx in (0, 1):
    for dy in (0, 1):
      hxy = terms[0][dx] ^ terms[1][dy]
      wxy = weights[0][dx] * weights[1][dy]
      for dz in (0, 1):
        out += wxy * weights[2][dz] * _mix(hxy ^ terms[2][dz])
  return out


def albedo(textures: Textures, points: np.ndarray, instances: np.ndarray) -> np.ndarray:
  """Surface colour of world points, a function of position and instance only, so images and
  the point cloud agree.

  Args:
    textures: per-instance appearance.
    points: [N, 3] world coordinates.
    instances: [N] instance ids.

  Returns:
    [N, 3] float32 RGB in [0, 1].
  """
  points = np.asarray(points, np.float32)
  kind = textures.kind[instances]
  seed = textures.seed[instances]
  pattern = np.zeros(len(points), np.float32)
  for k in range(4):
    sel = np.flatnonzero(kind == k)
    if not len(sel):
      continue
    inst = instances[sel]
    q = points[sel] * textures.frequency[inst, None] + textures.offset[inst]
    if k == 0:
      pattern[sel] = _value_noise(q, seed[sel])
    elif k == 1:  # bands, their edges wobbled by noise like wood grain
      s = np.einsum("ij,ij->i", q, textures.direction[inst]) + 0.3 * _value_noise(
          q * np.float32(0.7), seed[sel])
      pattern[sel] = (s % 1.0) < 0.5
    elif k == 2:
      pattern[sel] = np.floor(q).sum(axis=1) % 2
    else:
      n = (0.65 * _value_noise(q, seed[sel])
           + 0.35 * _value_noise(q * np.float32(2.3), seed[sel] ^ np.uint32(1)))
      pattern[sel] = np.clip((n - 0.35) / 0.3, 0, 1)
  mix = (pattern * textures.contrast[instances])[:, None]
  colour = textures.base[instances] * (1 - mix) + textures.accent[instances] * mix
  # A 2.5 cm speckle on every surface, so no instance is a flat colour.
  grain = _cell_noise(points * np.float32(40.0), seed ^ np.uint32(7))
  return np.clip(colour * (0.92 + 0.16 * grain[:, None]), 0, 1)


# ---------------------------------------------------------------------------------------------
# Rooms as triangle meshes, camera paths and rendering.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Room:
  """A furnished room ready to render.

  Attributes:
    mesh: all surfaces, in metres, z up, floor at z = 0.
    face_labels: [F] NYU40 id of each triangle.
    face_instances: [F] instance id (1-based) of each triangle.
    face_normals: [F, 3] unit normals.
    plane_offsets: [F] n . x of each triangle's plane, so hits are solved in float64.
    instance_labels: [I] NYU40 id of each instance (index 0 unused).
    textures: per-instance appearance.
    intersector: Embree ray intersector over `mesh`.
    polygon: [P, 2] counter-clockwise floor outline.
    height: ceiling height in metres.
    clearance: [X, Y] distance (metres) of each free-space grid cell to the nearest wall,
      furniture footprint or wall fixture; 0 outside the room or inside furniture. Cell (i, j)
      has its centre at `grid_origin + GRID * (i, j)`.
    grid_origin: [2] centre of cell (0, 0).
    light: [3] position of the ceiling light.
    light_colour: [3] RGB tint of the light.
    ambient: share of ambient light.
  """
  mesh: trimesh.Trimesh
  face_labels: np.ndarray
  face_instances: np.ndarray
  face_normals: np.ndarray
  plane_offsets: np.ndarray
  instance_labels: np.ndarray
  textures: Textures
  intersector: ray_pyembree.RayMeshIntersector
  polygon: np.ndarray
  height: float
  clearance: np.ndarray
  grid_origin: np.ndarray
  light: np.ndarray
  light_colour: np.ndarray
  ambient: float


def _quad(corners: np.ndarray) -> trimesh.Trimesh:
  return trimesh.Trimesh(corners, [[0, 1, 2], [0, 2, 3]], process=False)


def _left_turn(a: np.ndarray, b: np.ndarray) -> bool:
  """Is the turn from direction a to b a convex corner of a counter-clockwise outline?"""
  return a[0] * b[1] - a[1] * b[0] > 0


def _shell(layout: _Layout) -> list[tuple[int, list[trimesh.Trimesh]]]:
  """Floor, ceiling and one instance per wall, each a quad (two triangles) per rectangle.

  Floor and ceiling overhang the walls by 2 cm and walls run 2 cm past convex corners, so no
  ray escapes through a seam.
  """
  h = layout.height
  floors, ceilings = [], []
  for lo, hi in _floor_rectangles(layout.polygon):
    lo, hi = lo - 0.02, hi + 0.02
    xy = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    floors.append(_quad(np.column_stack([xy, np.zeros(4)])))
    ceilings.append(_quad(np.column_stack([xy[::-1], np.full(4, h)])))
  groups = [(FLOOR, floors), (CEILING, ceilings)]
  walls = layout.walls
  count = len(walls.length)
  for i in range(count):
    d = walls.direction[i]
    start = walls.start[i] - d * (0.02 if _left_turn(walls.direction[i - 1], d) else 0)
    end = walls.start[i] + d * (
        walls.length[i] + (0.02 if _left_turn(d, walls.direction[(i + 1) % count]) else 0))
    corners = np.array([[*start, 0], [*end, 0], [*end, h], [*start, h]])
    groups.append((WALL, [_quad(corners)]))
  return groups


def _clearance_grid(layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
  low, high = layout.polygon.min(0), layout.polygon.max(0)
  shape = np.ceil((high - low) / GRID).astype(int)
  origin = low + GRID / 2
  ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
  centres = origin + GRID * np.stack([ii, jj], -1).reshape(-1, 2)
  free = _inside_polygon(centres, layout.polygon)
  for fp in layout.footprints + layout.fixtures:
    free &= ~fp.contains(centres)
  # Pad with an occupied border so distances also measure the walls.
  free = np.pad(free.reshape(shape), 1)
  return scipy.ndimage.distance_transform_edt(free)[1:-1, 1:-1] * GRID, origin


def build_room(rng: np.random.Generator, room_type: str) -> Room:
  """Lays out and meshes a furnished room of the given type (one of ROOM_TYPES).

  Args:
    rng: source of all randomness of the layout and appearance.
    room_type: "bedroom", "living room", "kitchen", "bathroom" or "office".

  Returns:
    The room, with at least one free spot for the camera.

  Raises:
    RuntimeError: if no layout with room for the camera is found (does not happen in practice).
  """
  for _ in range(20):
    layout = _layout(rng, room_type)
    clearance, origin = _clearance_grid(layout)
    if np.count_nonzero(clearance > CAMERA_CLEARANCE) >= 20:
      break
  else:
    raise RuntimeError(f"no {room_type} layout left room for the camera")
  groups = _shell(layout)
  for item, position, yaw in layout.placed:
    transform = trimesh.transformations.rotation_matrix(yaw, (0, 0, 1))
    transform[:3, 3] = position
    for label, parts in item.groups:
      groups.append((label, [p.copy().apply_transform(transform) for p in parts]))
  vertices, faces, face_labels, face_instances = [], [], [], []
  offset = 0
  for instance, (label, parts) in enumerate(groups, start=1):
    for part in parts:
      vertices.append(part.vertices)
      faces.append(part.faces + offset)
      offset += len(part.vertices)
      face_labels.append(np.full(len(part.faces), label, np.uint16))
      face_instances.append(np.full(len(part.faces), instance, np.uint16))
  mesh = trimesh.Trimesh(np.concatenate(vertices), np.concatenate(faces), process=False)
  classes = [label for label, _ in groups]
  # The walls of a room are painted alike: every wall copies the first wall's appearance.
  walls = [i for i, label in enumerate(classes, start=1) if label == WALL]
  shared = {i: walls[0] for i in walls[1:]}
  largest = max(_floor_rectangles(layout.polygon), key=lambda r: np.prod(r[1] - r[0]))
  return Room(
      mesh=mesh, face_labels=np.concatenate(face_labels),
      face_instances=np.concatenate(face_instances), face_normals=mesh.face_normals,
      plane_offsets=np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles[:, 0]),
      instance_labels=np.array([0] + classes, np.uint16),
      textures=_random_textures(rng, classes, shared),
      intersector=ray_pyembree.RayMeshIntersector(mesh),
      polygon=layout.polygon, height=layout.height, clearance=clearance, grid_origin=origin,
      light=np.append((largest[0] + largest[1]) / 2, layout.height - 0.3),
      light_colour=rng.uniform(0.9, 1.1, 3) * np.array([1.0, 0.97, 0.92]),
      ambient=float(rng.uniform(0.3, 0.45)))


def _cast(room: Room, origin: np.ndarray,
          dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """First hits of rays from one origin.

  Embree finds the triangle; the hit itself is solved in float64 against that triangle's plane,
  which is exact where Embree's float32 distance is not.

  Args:
    room: the room.
    origin: [3] ray origin.
    dirs: [N, 3] ray directions, not necessarily unit.

  Returns:
    (ray indices that hit, their triangles, ray parameters t (hit = origin + t dir, so t is in
    units of |dir|), the triangles' normals turned towards the origin).
  """
  tri = room.intersector.intersects_first(np.broadcast_to(origin, dirs.shape), dirs)
  rays = np.flatnonzero(tri >= 0)
  tri = tri[rays]
  normal = room.face_normals[tri]
  facing = np.einsum("ij,ij->i", normal, dirs[rays])
  with np.errstate(divide="ignore", invalid="ignore"):
    t = (room.plane_offsets[tri] - np.einsum("ij,j->i", normal, origin)) / facing
  ok = np.isfinite(t) & (t > 0)
  normal = np.where(facing[ok, None] > 0, -normal[ok], normal[ok])
  return rays[ok], tri[ok], t[ok], normal


def _look(yaw: float, pitch: float, roll: float, position: np.ndarray) -> np.ndarray:
  """Camera-to-world pose of a camera (x right, y down, z forward) in a z-up world."""
  forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
  right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
  down = np.cross(forward, right)
  c, s = np.cos(roll), np.sin(roll)
  right, down = c * right + s * down, -s * right + c * down
  pose = np.eye(4)
  pose[:3, :3] = np.stack([right, down, forward], axis=1)
  pose[:3, 3] = position
  return pose


def _grid_path(room: Room, allowed: np.ndarray, waypoints: np.ndarray) -> np.ndarray:
  """Shortest 8-connected path through `allowed` cells visiting `waypoints` (cell indices) in
  order, preferring cells far from obstacles; [L, 2] cell centres in metres."""
  index = np.full(allowed.shape, -1)
  cells = np.argwhere(allowed)
  index[tuple(cells.T)] = np.arange(len(cells))
  rows, cols, weights = [], [], []
  cost = 1.0 + 0.5 / np.maximum(room.clearance, GRID)
  for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1)):
    other = cells + (di, dj)
    ok = np.all((other >= 0) & (other < allowed.shape), axis=1)
    src, dst = cells[ok], other[ok]
    ok = allowed[tuple(dst.T)]
    src, dst = src[ok], dst[ok]
    rows.append(index[tuple(src.T)])
    cols.append(index[tuple(dst.T)])
    weights.append(np.hypot(di, dj) * (cost[tuple(src.T)] + cost[tuple(dst.T)]) / 2)
  graph = scipy.sparse.coo_matrix(
      (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
      shape=(len(cells), len(cells))).tocsr()
  nodes = index[tuple(waypoints.T)]
  _, predecessors = scipy.sparse.csgraph.dijkstra(graph, directed=False, indices=nodes[:-1],
                                                  return_predecessors=True)
  path = [nodes[0]]
  for k in range(len(nodes) - 1):
    leg, node = [], nodes[k + 1]
    while node != nodes[k]:
      leg.append(node)
      node = predecessors[k, node]
    path += leg[::-1]
  return room.grid_origin + GRID * cells[np.array(path)]


def _view_yaws(room: Room, rng: np.random.Generator, positions: np.ndarray) -> np.ndarray:
  """Viewing directions that look into the room rather than at a nearby wall, and turn smoothly.

  Each frame scores 36 headings by how far a small fan of rays travels (capped at 4 m, beyond
  which all views are equally open) plus a slowly wandering random preference for variety; a
  Viterbi pass picks the best sequence under a penalty on turning between frames.
  """
  angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
  fan = (angles[:, None] + np.array([-0.3, 0.0, 0.3])).ravel()
  pitch = -0.2
  dirs = np.stack([np.cos(fan) * np.cos(pitch), np.sin(fan) * np.cos(pitch),
                   np.full_like(fan, np.sin(pitch))], -1)
  score = np.zeros((len(positions), len(angles)))
  for i, position in enumerate(positions):
    rays, _, t, _ = _cast(room, position, dirs)
    reach = np.zeros(len(fan))
    reach[rays] = t
    score[i] = np.minimum(reach.reshape(len(angles), -1).min(axis=1), 4.0)
  preference = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.5, len(positions)))
  score += 0.8 * np.cos(angles[None] - preference[:, None])
  turn = np.angle(np.exp(1j * (angles[None] - angles[:, None])))
  penalty = 1.5 * turn ** 2
  best, back = score[0], []
  for i in range(1, len(positions)):
    total = best[:, None] - penalty  # [from, to]
    back.append(np.argmax(total, axis=0))
    best = total[back[-1], np.arange(len(angles))] + score[i]
  path = [int(np.argmax(best))]
  for pointers in reversed(back):
    path.append(int(pointers[path[-1]]))
  return np.unwrap(angles[path[::-1]]) + rng.normal(0, 0.08, len(positions))


def camera_trajectory(room: Room, rng: np.random.Generator, num_frames: int) -> np.ndarray:
  """A person walking through the room's free space with a hand-held camera, looking around.

  Waypoints spread over the largest free region are joined by shortest paths that keep away
  from obstacles, smoothed, and resampled at equal arc length. The camera looks into the room
  (see `_view_yaws`), tilts down by a varying amount and rolls a little.

  Args:
    room: the room.
    rng: source of randomness.
    num_frames: number of poses.

  Returns:
    [num_frames, 4, 4] float64 camera-to-world poses; every camera is more than
    CAMERA_CLEARANCE from walls, furniture footprints and wall fixtures, below the ceiling.
  """
  allowed = room.clearance > CAMERA_CLEARANCE
  components, count = scipy.ndimage.label(allowed, structure=np.ones((3, 3)))
  sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
  allowed = components == 1 + int(np.argmax(sizes))
  cells = np.argwhere(allowed)
  # Greedy farthest-point waypoints from a random start, so the walk covers the room.
  chosen = [cells[rng.integers(len(cells))]]
  for _ in range(int(rng.integers(2, 6))):
    candidates = cells[rng.choice(len(cells), size=min(200, len(cells)), replace=False)]
    dist = np.min(np.linalg.norm(candidates[:, None] - np.array(chosen)[None], axis=-1), axis=1)
    chosen.append(candidates[np.argmax(dist)])
  path = _grid_path(room, allowed, np.array(chosen))
  # Smooth the staircase of grid cells; fall back to less smoothing where it cuts a corner.
  for sigma in (8.0, 4.0, 2.0, 0.0):
    smooth = scipy.ndimage.gaussian_filter1d(path, sigma, axis=0, mode="nearest") if sigma else path
    cell = np.clip(np.round((smooth - room.grid_origin) / GRID).astype(int), 0,
                   np.array(allowed.shape) - 1)
    if np.all(allowed[tuple(cell.T)]):
      break
  arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(smooth, axis=0), axis=1))])
  tau = np.linspace(0, 1, num_frames)
  xy = np.stack([np.interp(tau * arc[-1], arc, smooth[:, k]) for k in range(2)], -1)
  phase = rng.uniform(0, 2 * np.pi, 3)
  cycles = rng.uniform(0.5, 2.5, 3)
  wave = lambda k: np.sin(2 * np.pi * cycles[k] * tau + phase[k])
  z = np.minimum(rng.uniform(1.3, 1.65) + 0.04 * wave(0), room.height - 0.3)
  positions = np.column_stack([xy, z])
  yaw = _view_yaws(room, rng, positions)
  pitch = -0.2 + 0.15 * wave(1)
  roll = 0.04 * wave(2)
  return np.stack([_look(yaw[i], pitch[i], roll[i], positions[i]) for i in range(num_frames)])


def intrinsics_for(height: int, width: int) -> np.ndarray:
  """Pinhole matrix with HFOV_DEGREES horizontal field of view, square pixels, principal point
  at the image centre ((W - 1) / 2, (H - 1) / 2) since integer coordinates are pixel centres."""
  f = (width / 2) / np.tan(np.radians(HFOV_DEGREES) / 2)
  return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])


@functools.lru_cache(maxsize=4)
def _pixel_rays(height: int, width: int, fx: float, fy: float, cx: float,
                cy: float) -> np.ndarray:
  """[H * W, 3] camera-frame rays through pixel centres, row-major, with z = 1."""
  v, u = np.mgrid[:height, :width]
  return np.stack([(u.ravel() - cx) / fx, (v.ravel() - cy) / fy, np.ones(height * width)], -1)


def _blob_mask(rng: np.random.Generator, height: int, width: int, fraction: float) -> np.ndarray:
  """Pixels to drop, in blobs like the holes of a structured-light sensor; `fraction` of all."""
  coarse = rng.random((height // 12 + 2, width // 12 + 2)).astype(np.float32)
  field = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR))
  field = field + 0.15 * rng.random((height, width), np.float32)
  return field < np.quantile(field, fraction)


def render(room: Room, cam_to_world: np.ndarray, intrinsics: np.ndarray, height: int, width: int,
           rng: np.random.Generator, *, depth_noise: float = 0.0,
           depth_holes: float = 0.0) -> dict[str, np.ndarray]:
  """Ray casts one RGB-D frame with labels.

  Colour is Lambertian under a ceiling light plus ambient and a weak camera-side fill, times the
  textured albedo, with a little sensor noise. Depth is the z coordinate in the camera frame
  (what a depth sensor reports, and what `p2p_jax.geometry.back_project` inverts), not the ray
  length.

  Args:
    room: the room.
    cam_to_world: [4, 4] pose (camera x right, y down, z forward).
    intrinsics: [3, 3] pinhole matrix.
    height: image rows.
    width: image columns.
    rng: source of the colour and depth noise.
    depth_noise: standard deviation in metres of depth noise at 1 m; it grows with the square
      of the depth, as for structured-light sensors. 0 for exact depth.
    depth_holes: fraction of pixels whose depth is dropped (set to 0), in blobs.

  Returns:
    {"color": uint8 [H, W, 3], "depth": uint16 [H, W] millimetres (0 = no depth),
     "label": uint16 [H, W] NYU40 ids, "instance": uint16 [H, W] instance ids} (0 where a ray
    hits nothing).
  """
  k = np.asarray(intrinsics, np.float64)
  rays = _pixel_rays(height, width, k[0, 0], k[1, 1], k[0, 2], k[1, 2])
  origin = cam_to_world[:3, 3]
  # Camera z = 1, so a hit's ray parameter is its z-depth. (einsum, not a matmul: BLAS threads
  # cost more than they save on a 3x3 product.)
  dirs = np.einsum("ij,kj->ik", rays, cam_to_world[:3, :3])
  hit, tri, z, normal = _cast(room, origin, dirs)
  dirs = dirs[hit]
  points = origin + z[:, None] * dirs
  instances = room.face_instances[tri]

  to_light = room.light - points
  dist2 = np.einsum("ij,ij->i", to_light, to_light)
  lambert = np.clip(np.einsum("ij,ij->i", normal, to_light), 0, None) / np.sqrt(dist2)
  fill = np.clip(-np.einsum("ij,ij->i", normal, dirs), 0, None) / np.sqrt(
      np.einsum("ij,ij->i", dirs, dirs))
  light = (room.ambient + 0.75 * lambert / (1 + 0.04 * dist2) + 0.15 * fill).astype(np.float32)
  color = np.zeros((height * width, 3), np.float32)
  color[hit] = albedo(room.textures, points, instances) * (
      light[:, None] * room.light_colour.astype(np.float32))
  color += rng.standard_normal(color.shape, np.float32) * np.float32(0.01)

  depth = np.zeros(height * width)
  depth[hit] = z
  if depth_noise > 0:
    depth[hit] = np.maximum(depth[hit] + rng.normal(0, 1, len(hit)) * depth_noise * z ** 2, 0)
  depth = np.round(depth * 1000).reshape(height, width)
  if depth_holes > 0:
    depth[_blob_mask(rng, height, width, depth_holes)] = 0
  label = np.zeros(height * width, np.uint16)
  label[hit] = room.face_labels[tri]
  instance = np.zeros(height * width, np.uint16)
  instance[hit] = instances
  return {
      "color": np.round(np.clip(color, 0, 1) * 255).astype(np.uint8).reshape(height, width, 3),
      "depth": np.clip(depth, 0, 65535).astype(np.uint16),
      "label": label.reshape(height, width),
      "instance": instance.reshape(height, width),
  }


def sample_surface(room: Room, rng: np.random.Generator,
                   points_per_m2: float) -> dict[str, np.ndarray]:
  """Uniform samples of all surfaces, ScanNet's `_vh_clean_2` vertices in spirit.

  Args:
    room: the room.
    rng: source of randomness.
    points_per_m2: sampling density.

  Returns:
    {"points": float32 [V, 3], "colors": uint8 [V, 3] (albedo), "labels": uint16 [V] NYU40 ids,
     "instances": uint16 [V] instance ids}.
  """
  area = room.mesh.area_faces
  count = max(1, int(round(area.sum() * points_per_m2)))
  face = np.searchsorted(np.cumsum(area) / area.sum(), rng.random(count), side="right")
  face = np.minimum(face, len(area) - 1)
  r1, r2 = np.sqrt(rng.random(count))[:, None], rng.random(count)[:, None]
  tri = room.mesh.triangles[face]
  points = (1 - r1) * tri[:, 0] + r1 * (1 - r2) * tri[:, 1] + r1 * r2 * tri[:, 2]
  instances = room.face_instances[face]
  colors = np.round(albedo(room.textures, points, instances) * 255).astype(np.uint8)
  return {"points": points.astype(np.float32), "colors": colors,
          "labels": room.face_labels[face], "instances": instances}


# ---------------------------------------------------------------------------------------------
# Writing scenes in the ScanNet layout.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _SceneTask:
  scans_dir: str
  seed: int
  index: int
  frames: int
  height: int
  width: int
  depth_noise: float
  depth_holes: float
  points_per_m2: float


def scene_name(index: int) -> str:
  """ScanNet-style name of the index-th synthetic scene: scene0000_00, scene0001_00, ..."""
  return f"scene{index:04d}_00"


def _rng(seed: int, *key: int) -> np.random.Generator:
  """Independent streams per (scene, purpose[, frame]), so nothing depends on the order in
  which scenes and frames are made."""
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def scene_room(seed: int, index: int) -> Room:
  """The room of scene `index` in a dataset generated with `seed` (its type is
  ROOM_TYPES[index % 5]), e.g. to compare rendered frames against the exact geometry."""
  return build_room(_rng(seed, index, 0), ROOM_TYPES[index % len(ROOM_TYPES)])


def _write_instances(scene_dir: str, scene: str, room: Room, instances: np.ndarray) -> None:
  """ScanNet's instance annotation: one segment per instance (segment id = instance id) in
  `segs.json`, grouped into objects (objectId = instance id - 1, as instance-filt stores
  objectId + 1) in `aggregation.json`."""
  # json.dumps, not json.dump: the latter streams through the slow pure-Python encoder.
  with open(os.path.join(scene_dir, scene + SEGS_SUFFIX), "w") as f:
    f.write(json.dumps({"sceneId": scene, "segIndices": instances.tolist()}))
  groups = [{"id": int(i) - 1, "objectId": int(i) - 1, "segments": [int(i)],
             "label": LABEL_MAP[int(room.instance_labels[i])][0]}
            for i in np.unique(instances)]
  with open(os.path.join(scene_dir, scene + AGGREGATION_SUFFIX), "w") as f:
    f.write(json.dumps({"sceneId": f"scannet.{scene}", "segGroups": groups,
                        "segmentsFile": f"scannet.{scene}{SEGS_SUFFIX}"}))


def _generate_scene(task: _SceneTask, on_frame: Callable[[], None] | None = None) -> int:
  """Builds, renders and writes one scene; returns the number of frames written."""
  room = scene_room(task.seed, task.index)
  poses = camera_trajectory(room, _rng(task.seed, task.index, 1), task.frames)
  intrinsics = intrinsics_for(task.height, task.width)
  scene = scene_name(task.index)
  scene_dir = os.path.join(task.scans_dir, scene)
  scannet.write_intrinsics(scene_dir, intrinsics, intrinsics)
  cloud = sample_surface(room, _rng(task.seed, task.index, 2), task.points_per_m2)
  scannet.write_mesh(scene_dir, scene, cloud["points"], cloud["colors"], cloud["labels"])
  _write_instances(scene_dir, scene, room, cloud["instances"])
  for i, pose in enumerate(poses):
    frame = render(room, pose, intrinsics, task.height, task.width,
                   _rng(task.seed, task.index, 3, i), depth_noise=task.depth_noise,
                   depth_holes=task.depth_holes)
    scannet.write_frame(scene_dir, i * FRAME_STEP, color=frame["color"], depth=frame["depth"],
                        cam_to_world=pose, label=frame["label"], instance=frame["instance"])
    if on_frame is not None:
      on_frame()
  return task.frames


def _splits(rng: np.random.Generator, scenes: list[str], val_fraction: float,
            teacher_fraction: float) -> dict[str, list[str]]:
  order = rng.permutation(len(scenes))
  teacher = int(round(len(scenes) * teacher_fraction))
  val = int(round(len(scenes) * val_fraction))
  if teacher + val >= len(scenes):
    raise ValueError(f"{len(scenes)} scenes leave none for training with val_fraction="
                     f"{val_fraction} and teacher_fraction={teacher_fraction}")
  pick = lambda idx: sorted(scenes[i] for i in idx)
  return {"teacher": pick(order[:teacher]), "val": pick(order[teacher:teacher + val]),
          "train": pick(order[teacher + val:])}


def generate_if_asked(out_dir: str, settings: Any) -> bool:
  """Generates rooms into `out_dir` as a config's `data.synthetic` says, unless its `scenes`
  is 0 or `out_dir` already holds scans/. Returns whether it generated.

  Args:
    out_dir: the export root.
    settings: a mapping (or ConfigDict) with `scenes` and any keyword of `generate`.
  """
  s = dict(settings.to_dict() if hasattr(settings, "to_dict") else settings)
  scenes = s.pop("scenes", 0)
  if not scenes or os.path.isdir(os.path.join(out_dir, "scans")):
    return False
  generate(out_dir, num_scenes=scenes, progress=True, **s)
  return True


def generate(out_dir: str, *, num_scenes: int, frames_per_scene: int, height: int = 240,
             width: int = 320, seed: int = 0, val_fraction: float = 0.2,
             teacher_fraction: float = 0.0, depth_noise: float = 0.0, depth_holes: float = 0.0,
             points_per_m2: float = 1000.0, workers: int | None = None, overwrite: bool = False,
             progress: bool = False) -> dict[str, float]:
  """Generates a synthetic ScanNet-layout dataset under out_dir.

  Room types cycle through ROOM_TYPES, so any five consecutive scenes hold one of each. Scene i
  depends only on (seed, i), never on num_scenes or workers.

  Args:
    out_dir: root; scenes go to out_dir/scans/<scene>/.
    num_scenes: number of scenes.
    frames_per_scene: frames rendered per scene.
    height: image rows (colour and depth share the resolution and intrinsics).
    width: image columns.
    seed: seed of everything.
    val_fraction: share of scenes listed in scannetv2_val.txt (rounded to a count).
    teacher_fraction: share of scenes, disjoint from train and val, listed in
      scannetv2_teacher.txt for training a 2D teacher. A split that gets no scene gets no
      list file (an empty list would read as a mistake).
    depth_noise: depth noise in metres at 1 m, growing with depth squared; 0 for exact depth.
    depth_holes: fraction of depth pixels dropped in blobs.
    points_per_m2: density of the labelled surface samples written as the scene mesh.
    workers: processes rendering scenes in parallel; default min(CPU count, num_scenes).
    overwrite: replace existing scene directories instead of refusing to.
    progress: show a progress bar.

  Returns:
    {"scenes", "frames", "seconds", "frames_per_second"}: the whole write path, timed.

  Raises:
    ValueError: for bad sizes or fractions, or an existing scene directory without overwrite.
  """
  if num_scenes < 1 or frames_per_scene < 1 or height < 1 or width < 1:
    raise ValueError("num_scenes, frames_per_scene, height and width must be positive")
  if not (0 <= val_fraction < 1 and 0 <= teacher_fraction < 1):
    raise ValueError("val_fraction and teacher_fraction must be in [0, 1)")
  if not 0 <= depth_holes < 1 or depth_noise < 0:
    raise ValueError("depth_holes must be in [0, 1) and depth_noise non-negative")
  start = time.perf_counter()
  scans_dir = os.path.join(out_dir, "scans")
  names = [scene_name(i) for i in range(num_scenes)]
  splits = _splits(np.random.default_rng(seed), names, val_fraction, teacher_fraction)
  for name in names:
    scene_dir = os.path.join(scans_dir, name)
    if os.path.exists(scene_dir):
      if not overwrite:
        raise ValueError(f"{scene_dir} exists; pass overwrite=True (--overwrite) to replace it")
      shutil.rmtree(scene_dir)
  tasks = [_SceneTask(scans_dir, seed, i, frames_per_scene, height, width, depth_noise,
                      depth_holes, points_per_m2) for i in range(num_scenes)]
  workers = min(os.cpu_count() or 1, num_scenes) if workers is None else workers
  with tqdm.tqdm(total=num_scenes * frames_per_scene, unit="frame", disable=not progress) as bar:
    if workers <= 1:
      for task in tasks:
        _generate_scene(task, lambda: bar.update(1))
    else:
      # Spawned, not forked: the parent may hold threads (JAX) that a fork would copy broken.
      with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for frames in pool.imap_unordered(_generate_scene, tasks):
          bar.update(frames)
  os.makedirs(out_dir, exist_ok=True)
  scannet.write_label_map(os.path.join(out_dir, scannet.LABEL_MAP_FILE), LABEL_MAP)
  for split, scenes in splits.items():
    path = os.path.join(out_dir, f"scannetv2_{split}.txt")
    if not scenes:  # no list rather than an empty one (which readers reject as a mistake)
      if os.path.exists(path):  # from an earlier run; would now list scenes of other splits
        os.remove(path)
      continue
    with open(path, "w") as f:
      f.writelines(name + "\n" for name in scenes)
  seconds = time.perf_counter() - start
  frames = num_scenes * frames_per_scene
  return {"scenes": num_scenes, "frames": frames, "seconds": seconds,
          "frames_per_second": frames / seconds}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output root (gets scans/ and split files)")
  parser.add_argument("--scenes", type=int, required=True)
  parser.add_argument("--frames-per-scene", type=int, required=True)
  parser.add_argument("--height", type=int, default=240)
  parser.add_argument("--width", type=int, default=320)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--val-fraction", type=float, default=0.2)
  parser.add_argument("--teacher-fraction", type=float, default=0.0)
  parser.add_argument("--depth-noise", type=float, default=0.0,
                      help="depth noise std in metres at 1 m (grows with depth squared)")
  parser.add_argument("--depth-holes", type=float, default=0.0,
                      help="fraction of depth pixels dropped, in blobs")
  parser.add_argument("--points-per-m2", type=float, default=1000.0,
                      help="density of the labelled surface samples")
  parser.add_argument("--workers", type=int, default=None,
                      help="parallel processes (default: CPU count)")
  parser.add_argument("--overwrite", action="store_true", help="replace existing scenes")
  args = parser.parse_args(argv)
  try:
    stats = generate(args.out, num_scenes=args.scenes, frames_per_scene=args.frames_per_scene,
                     height=args.height, width=args.width, seed=args.seed,
                     val_fraction=args.val_fraction, teacher_fraction=args.teacher_fraction,
                     depth_noise=args.depth_noise, depth_holes=args.depth_holes,
                     points_per_m2=args.points_per_m2, workers=args.workers,
                     overwrite=args.overwrite, progress=True)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {stats['frames']} frames of {stats['scenes']} scenes ({args.height}x{args.width}) "
        f"to {args.out} in {stats['seconds']:.1f} s: {stats['frames_per_second']:.1f} frames/s")


if __name__ == "__main__":
  main()
