"""Appearance of the synthetic rooms: per-instance colours and procedural solid textures.

Every instance draws its own colour from a wide, class-dependent distribution and its own
texture (grain, stripes, checker, blotches), so colour alone does not identify the class.
"""

import colorsys
import dataclasses
from collections.abc import Sequence

import numpy as np

from p2p_jax.data.synthetic.furniture import (
  BATHTUB,
  BED,
  BOOKSHELF,
  CABINET,
  CEILING,
  CHAIR,
  COUNTER,
  CURTAIN,
  DESK,
  DOOR,
  FLOOR,
  OTHERFURNITURE,
  PICTURE,
  REFRIGERATOR,
  SHOWER_CURTAIN,
  SINK,
  SOFA,
  TABLE,
  TOILET,
  WALL,
  WINDOW,
)

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
