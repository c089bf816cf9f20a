"""Rooms as triangle meshes, camera paths through their free space, and ray-cast frames.

Frames are ray cast with Embree (trimesh's `ray_pyembree`) into shaded colour, z-depth,
semantic labels and instance ids.
"""

import dataclasses
import functools

import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph
import trimesh
from PIL import Image

# Imported directly so a missing embreex fails loudly instead of falling back to trimesh's
# pure-Python ray tracer, which is two orders of magnitude slower.
from trimesh.ray import ray_pyembree

from p2p_jax.data.synthetic.appearance import Textures, _random_textures, albedo
from p2p_jax.data.synthetic.furniture import CEILING, FLOOR, WALL
from p2p_jax.data.synthetic.layout import _floor_rectangles, _inside_polygon, _Layout, _layout

HFOV_DEGREES = 65.0
CAMERA_CLEARANCE = 0.3  # metres from walls, furniture and wall fixtures to the camera
GRID = 0.05  # metres per cell of the free-space grid the camera path is planned on




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
