"""Room layout: a floor polygon, walls, and furniture placed by rejection sampling.

Footprints live in the floor plane; each room type draws its furniture from `_FURNITURE` and
places it against a wall, freely, or around a table, then hangs doors, windows and pictures.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from p2p_jax.data.synthetic.furniture import (
  CURTAIN,
  DESK,
  TABLE,
  _bathtub,
  _bed,
  _bookshelf,
  _cabinet,
  _chair,
  _counter,
  _desk,
  _door,
  _Item,
  _otherfurniture,
  _picture,
  _refrigerator,
  _rod,
  _sink,
  _sofa,
  _table,
  _toilet,
  _wavy_sheet,
  _window,
)


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
