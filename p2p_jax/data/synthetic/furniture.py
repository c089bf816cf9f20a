"""Furniture and fixtures of the synthetic rooms, built from trimesh primitives.

Each builder returns an `_Item` in a local frame: x across the width, +y towards the front,
z up, the footprint centred on the origin. Class ids are NYU40 ids of the 20 ScanNet
benchmark classes, plus the ceiling.
"""

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
import trimesh

from p2p_jax.data import labels

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
