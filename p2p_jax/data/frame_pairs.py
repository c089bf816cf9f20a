"""Overlapping frame pairs and their point correspondences, for PointContrast pretraining.

PointContrast (Xie et al., "PointContrast: Unsupervised Pre-training for 3D Point Cloud
Understanding", ECCV 2020) contrasts matched points of two overlapping views of one scene.
This module prepares its data in three parts:

  offline (`compute_pairs`, NumPy + SciPy): the pairs of frames of one scene whose
    back-projected clouds overlap by at least 30%, computed once per split and stored next to
    the dataset (`mine_pairs`, `load_pairs`; the `datasets.scannet_frames.make_pairs` CLI);
  host (`augment_pair`, `pointcontrast_dataset`, Grain + NumPy): reads both frames of a pair
    and draws each view's augmentation from a generator seeded by (seed, global position);
  device (`make_matches`, pure JAX, jittable and vmappable): back-projects both frames to
    world coordinates, samples N points per view, matches them (nearest neighbour within
    `match_radius`), samples K matches, and moves each view by its own random transform.

Overlap (PointContrast's rule): each frame's cloud is voxelised at 5 cm (every occupied voxel
replaced by the centroid of its points, as Open3D's `voxel_down_sample`); a point of one cloud
matches if a point of the other lies within 1.5 voxels; the overlap of two frames is the larger
of the two clouds' fractions of matching points.

Matches of one pair are one-to-one: each sampled point of view 0 is matched to its nearest
sampled point of view 1 within the radius, and when several points of view 0 share that
nearest point only the lowest-indexed one keeps it, so no point of view 1 is the positive of
two anchors (it would otherwise also be its own negative).

The host and device halves mirror `pipeline`'s; the pieces the two share (frame fields, depth
range, colour lookup, the Grain dataset) are in `frames`.

Arrays of a pair carry a view axis of size 2 after any batch axes: `points [..., 2, N, 3]`,
`point_mask [..., 2, N]`; `match_points [..., K, 2]` holds a match's point index in view 0 and
in view 1, and `match_mask [..., K]` marks real matches.
"""

import dataclasses
import functools
import json
import logging
import math
import os
import re
import zipfile
from collections.abc import Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from p2p_jax import geometry, pointops
from p2p_jax.data import frames, scannet_frames

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Offline: which frames overlap.


@dataclasses.dataclass(frozen=True)
class OverlapConfig(frames.HasDepthRange):
  """PointContrast's rule for keeping a pair of frames.

  Attributes:
    voxel_size: voxel edge for the downsampling of each frame's cloud, in metres.
    match_radius_voxels: a point matches if the other cloud has a point within this many
      voxels.
    min_overlap: keep pairs whose overlap is at least this.
    max_frame_distance: candidates are frames of one scene whose `frame` indices differ by at
      most this (absolute frame numbers, e.g. 100 for four steps of a skip25 export); None
      takes every pair of frames of a scene.
    depth_scale, min_depth, max_depth: the valid depth (`frames.DepthRange`; `depth_range`).
  """
  voxel_size: float = 0.05
  match_radius_voxels: float = 1.5
  min_overlap: float = 0.3
  max_frame_distance: int | None = None
  depth_scale: float = frames.DepthRange.depth_scale
  min_depth: float = frames.DepthRange.min_depth
  max_depth: float = frames.DepthRange.max_depth

  @property
  def match_radius(self) -> float:
    return self.voxel_size * self.match_radius_voxels


def voxel_downsample(points: np.ndarray, voxel_size: float) -> np.ndarray:
  """The centroid of the points in each occupied voxel of edge `voxel_size`.

  Args:
    points: [M, 3].
    voxel_size: voxel edge.

  Returns:
    [V, 3] float64 centroids, in the lexicographic order of their voxels.
  """
  points = np.asarray(points, np.float64).reshape(-1, 3)
  if not len(points):
    return points
  coords = np.floor(points / voxel_size).astype(np.int64)
  _, inverse, counts = np.unique(coords, axis=0, return_inverse=True, return_counts=True)
  inverse = inverse.reshape(-1)
  sums = np.zeros((len(counts), 3))
  np.add.at(sums, inverse, points)
  return sums / counts[:, None]


def frame_cloud(record: dict[str, Any], config: OverlapConfig) -> np.ndarray:
  """A frame's valid depth pixels back-projected to world coordinates, voxel-downsampled.

  Args:
    record: a frame with "depth", "depth_intrinsics" and "cam_to_world".
    config: the overlap configuration.

  Returns:
    [V, 3] float64 voxel centroids in world coordinates.
  """
  points, valid = config.depth_range.back_project(
      np.asarray(record["depth"]), np.asarray(record["depth_intrinsics"], np.float32),
      np.asarray(record["cam_to_world"], np.float32))
  return voxel_downsample(np.asarray(points)[np.asarray(valid)], config.voxel_size)


def _kd_tree(points: np.ndarray):
  # SciPy is needed by the offline step only, so it is imported here.
  from scipy import spatial
  return spatial.cKDTree(points)


def _match_ratio(query: np.ndarray, tree, radius: float) -> float:
  """Fraction of `query` points with a point of `tree` within `radius`."""
  if not len(query) or not tree.n:
    return 0.0
  # p=2 ball of `radius`; distance_upper_bound is strict, so widen it by an ulp-sized margin.
  dist, _ = tree.query(query, k=1, distance_upper_bound=radius * (1 + 1e-9))
  return float(np.mean(dist <= radius))


def overlap_ratio(cloud_a: np.ndarray, cloud_b: np.ndarray, radius: float) -> float:
  """max(fraction of A with a B point within `radius`, fraction of B with an A point within it).

  Args:
    cloud_a: [Va, 3] (already voxel-downsampled).
    cloud_b: [Vb, 3].
    radius: the match radius.

  Returns:
    The overlap in [0, 1]; 0 if either cloud is empty.
  """
  return max(_match_ratio(cloud_a, _kd_tree(cloud_b), radius),
             _match_ratio(cloud_b, _kd_tree(cloud_a), radius))


@dataclasses.dataclass(frozen=True)
class FramePairs:
  """The kept pairs of a split, as indices into its frames source.

  Attributes:
    index: [P, 2] int64 source indices, index[:, 0] < index[:, 1], both of one scene.
    overlap: [P] float32 overlap of each pair.
    num_frames: length of the source the indices refer to.
    stats: counts ("frames", "scenes", "candidates", "kept", "rejected",
      "frames_without_pair") and the overlap configuration ("config").
  """
  index: np.ndarray
  overlap: np.ndarray
  num_frames: int
  stats: dict[str, Any]

  def __len__(self) -> int:
    return len(self.index)


def _scene_pairs(clouds: list[tuple[int, int, np.ndarray]], config: OverlapConfig):
  """Candidates of one scene, from its (source index, frame, cloud): [(source index a, source
  index b, overlap)] for a < b."""
  radius = config.match_radius
  trees = [_kd_tree(cloud) if len(cloud) else None for _, _, cloud in clouds]
  # A box test first: clouds whose bounds are farther apart than the radius cannot overlap.
  lows = [cloud.min(0) if len(cloud) else None for _, _, cloud in clouds]
  highs = [cloud.max(0) if len(cloud) else None for _, _, cloud in clouds]
  out = []
  for a in range(len(clouds)):
    for b in range(a + 1, len(clouds)):
      (ia, fa, ca), (ib, fb, cb) = clouds[a], clouds[b]
      if config.max_frame_distance is not None and abs(fa - fb) > config.max_frame_distance:
        continue
      if trees[a] is None or trees[b] is None or np.any(lows[a] > highs[b] + radius) or np.any(
          lows[b] > highs[a] + radius):
        overlap = 0.0
      else:
        overlap = max(_match_ratio(ca, trees[b], radius), _match_ratio(cb, trees[a], radius))
      out.append((min(ia, ib), max(ia, ib), overlap))
  return out


def compute_pairs(source: Sequence[dict[str, Any]], config: OverlapConfig = OverlapConfig(), *,
                  progress: bool = True) -> FramePairs:
  """Finds the pairs of frames of one scene that overlap by at least `config.min_overlap`.

  Reads every frame once. Frames of a scene must be contiguous in the source (scannet_frames
  stores them in scene, then frame order), so only one scene's clouds are held at a time.

  Args:
    source: random-access frames with "scene", "frame", "depth", "depth_intrinsics" and
      "cam_to_world" (e.g. `load_frames(...)` of scannet_frames).
    config: the overlap rule.
    progress: show a progress bar over the frames.

  Returns:
    The kept pairs, sorted by (index a, index b), with the counts in `stats`.

  Raises:
    ValueError: if a scene's frames are not contiguous in the source.
  """
  import tqdm  # offline only
  kept, candidates, finished = [], 0, set()
  paired = np.zeros(len(source), bool)
  scene, clouds = None, []

  def flush():
    nonlocal candidates
    for a, b, overlap in _scene_pairs(clouds, config):
      candidates += 1
      if overlap >= config.min_overlap:
        kept.append((a, b, overlap))
        paired[[a, b]] = True

  for i in tqdm.trange(len(source), desc="frame overlaps", unit="frame", disable=not progress):
    record = source[i]
    name = record["scene"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    if name != scene:
      flush()
      if name in finished:
        raise ValueError(f"frame {i} belongs to scene {name}, whose frames ended earlier: the "
                         "source must hold each scene's frames contiguously")
      if scene is not None:
        finished.add(scene)
      scene, clouds = name, []
    clouds.append((i, int(record["frame"]), frame_cloud(record, config)))
  flush()
  finished.add(scene)
  kept.sort()
  index = np.array([(a, b) for a, b, _ in kept], np.int64).reshape(-1, 2)
  overlap = np.array([o for *_, o in kept], np.float32)
  stats = {
      "frames": len(source),
      "scenes": len(finished - {None}),
      "candidates": candidates,
      "kept": len(kept),
      "rejected": candidates - len(kept),
      "frames_without_pair": int(len(source) - paired.sum()),
      "config": dataclasses.asdict(config),
  }
  logger.info("frame pairs: %d kept, %d rejected (overlap < %.2f) of %d candidates; %d of %d "
              "frames in no pair", stats["kept"], stats["rejected"], config.min_overlap,
              candidates, stats["frames_without_pair"], stats["frames"])
  return FramePairs(index=index, overlap=overlap, num_frames=len(source), stats=stats)


class UnreadablePairsError(ValueError):
  """A pairs file that cannot be read: a write that never finished (or another file)."""


def save_pairs(path: str, pairs: FramePairs) -> None:
  """Writes `pairs` as .npz ("index", "overlap", and "stats" as JSON text), atomically: under
  a temporary name, synced to disk, then renamed, so `path` is complete whenever it exists."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  with open(tmp, "wb") as f:
    np.savez(f, index=pairs.index, overlap=pairs.overlap,
             num_frames=np.int64(pairs.num_frames), stats=np.array(json.dumps(pairs.stats)))
    f.flush()
    os.fsync(f.fileno())  # the data reaches the disk before the rename does
  os.replace(tmp, path)


def load_pairs(path: str, source: Sequence[Any] | None = None) -> FramePairs:
  """Reads pairs written by `save_pairs`.

  Args:
    path: the .npz file.
    source: if given, the frames the pairs must refer to (its length is checked).

  Returns:
    The pairs.

  Raises:
    FileNotFoundError: naming the command that writes the file.
    UnreadablePairsError: (a ValueError) if the file is truncated or not a pairs file.
    ValueError: if the pairs were computed for a source of another length.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no frame pairs; run python -m "
                            "datasets.scannet_frames.make_pairs for this dataset and split")
  try:
    with np.load(path) as f:
      pairs = FramePairs(index=f["index"], overlap=f["overlap"],
                         num_frames=int(f["num_frames"]), stats=json.loads(str(f["stats"])))
  except (EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise UnreadablePairsError(
        f"{path}: unreadable frame pairs ({type(e).__name__}: {e}), e.g. a write that never "
        "finished; run python -m datasets.scannet_frames.make_pairs --overwrite") from e
  if source is not None and len(source) != pairs.num_frames:
    raise ValueError(f"{path}: pairs of a source of {pairs.num_frames} frames, but this one "
                     f"has {len(source)}; recompute them")
  return pairs


def pairs_path(data_dir: str, split: str, config: str = "skip25") -> str:
  """`<data_dir>/scannet_frames/<config>/<version>/pairs_<split>.npz`: a built split's pairs.

  A TFDS slice such as "train[:10%]" gets its own file.
  """
  builder = scannet_frames.ScannetFrames(data_dir=data_dir, config=config)
  name = re.sub(r"[^A-Za-z0-9_.-]+", "_", split).strip("_")
  return os.path.join(os.fspath(builder.data_dir), f"pairs_{name}.npz")


def mine_pairs(data_dir: str, split: str, config: str = "skip25",
               overlap: OverlapConfig = OverlapConfig(), *, overwrite: bool = False,
               progress: bool = True) -> FramePairs:
  """Computes and stores the pairs of a built split, or loads them if stored with `overlap`.

  Args:
    data_dir: the TFDS data dir scannet_frames was built into.
    split: the split.
    config: the dataset's config name.
    overlap: the overlap rule.
    overwrite: recompute even if the file exists.
    progress: show a progress bar.

  Returns:
    The pairs, as stored in `pairs_path(data_dir, split, config)`.
  """
  source = scannet_frames.load_frames(data_dir, split, config)
  path = pairs_path(data_dir, split, config)
  if os.path.exists(path) and not overwrite:
    try:
      pairs = load_pairs(path, source)
    except UnreadablePairsError as e:
      logger.warning("%s; recomputing", e)
    else:
      if pairs.stats.get("config") == dataclasses.asdict(overlap):
        return pairs
      logger.info("%s was computed with %s; recomputing", path, pairs.stats.get("config"))
  pairs = compute_pairs(source, overlap, progress=progress)
  save_pairs(path, pairs)
  return pairs


# --------------------------------------------------------------------------------------------
# Host and device halves of the correspondence pipeline.


@dataclasses.dataclass(frozen=True)
class MatchConfig(frames.HasDepthRange):
  """Shapes and augmentations of PointContrast batches.

  Attributes:
    num_points: N points sampled per view (padded and masked if a frame has fewer).
    num_matches: K matches sampled per pair; the loss contrasts the matches of the whole
      batch, so 512 for a batch of 8 pairs gives PointContrast's 4096.
    match_radius: points of the two views match within this distance in world coordinates
      (1.5 voxels of 5 cm).
    max_rotation: each view is rotated about gravity (z) by an angle uniform in [-max, max].
    full_rotation: additionally rotate each view by a uniformly random 3D rotation.
    scale_range: isotropic scaling of each view, uniform in the range.
    depth_scale, min_depth, max_depth: the valid depth (`frames.DepthRange`; `depth_range`).
    colors: False gives the student no colour: a constant grey (0.5) instead.
  """
  num_points: int = 8192
  num_matches: int = 512
  match_radius: float = 0.075
  max_rotation: float = math.pi
  full_rotation: bool = False
  scale_range: tuple[float, float] = (0.8, 1.2)
  depth_scale: float = frames.DepthRange.depth_scale
  min_depth: float = frames.DepthRange.min_depth
  max_depth: float = frames.DepthRange.max_depth
  colors: bool = True


def random_rotation(rng: np.random.Generator) -> np.ndarray:
  """A uniformly random 3D rotation [3, 3] float64 (QR of a Gaussian matrix, signs fixed)."""
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  return q * np.linalg.det(q)


def augment_pair(records: tuple[dict[str, Any], dict[str, Any]], rng: np.random.Generator,
                 config: MatchConfig) -> dict[str, np.ndarray]:
  """Host half: stacks a pair's two frames and draws each view's augmentation.

  Args:
    records: two frames of one scene with the `frames.FRAME_FIELDS`.
    rng: the pair's generator; the output is a function of the records and the generator.
    config: the pipeline configuration.

  Returns:
    Fixed-shape arrays with a leading view axis of 2: "frame_image" uint8 [2, H, W, 3],
    "depth" uint16 [2, H, W], "depth_intrinsics", "color_intrinsics" [2, 3, 3],
    "color_from_depth", "cam_to_world" [2, 4, 4], "rotation" float32 [2, 3, 3] (about z,
    then the optional random 3D rotation), "scale" float32 [2], "frame" int32 [2]; and
    "seed" uint32 (for the device half's sampling).
  """
  shapes = {np.shape(r["depth"]) for r in records}
  if len(shapes) != 1:
    raise ValueError(f"the frames of a pair differ in size: {sorted(shapes)}")
  for r in records:
    if np.shape(r["image"])[:2] != np.shape(r["depth"]):
      raise ValueError(f"frame {r.get('scene', '?')}/{r.get('frame', '?')}: image "
                       f"{np.shape(r['image'])} does not match depth {np.shape(r['depth'])}")
  rotations = []
  for _ in records:
    # float64 NumPy, composed with the optional 3D rotation, rounded to float32 once at the end.
    angle = rng.uniform(-config.max_rotation, config.max_rotation)
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    if config.full_rotation:
      rotation = random_rotation(rng) @ rotation
    rotations.append(rotation)
  stack = lambda key, dtype: np.stack([np.asarray(r[key], dtype) for r in records])
  return {
      "frame_image": stack("image", np.uint8),
      "depth": stack("depth", np.uint16),
      **{k: stack(k, np.float32) for k in frames.CAMERA_FIELDS},
      "rotation": np.stack(rotations).astype(np.float32),
      "scale": rng.uniform(*config.scale_range, size=2).astype(np.float32),
      "frame": stack("frame", np.int32),
      "seed": np.uint32(rng.integers(0, 2**32)),
  }


def _view(frame, key, config):
  """One view: N sampled points in world coordinates, their mask and colours."""
  cam_points, valid = config.depth_range.back_project(frame["depth"], frame["depth_intrinsics"])
  pixels, mask = geometry.sample_pixels(key, valid, config.num_points)
  cam_points = geometry.gather_pixels(cam_points, pixels)
  points = geometry.transform_points(frame["cam_to_world"], cam_points)
  # A point's colour is read where it appears in the colour camera (as in `pipeline`).
  color_pixels, _ = frames.color_pixels(frame, cam_points)
  colors = frames.point_colors(frame["frame_image"], color_pixels, config.colors)
  return (jnp.where(mask[:, None], points, 0.0), mask, jnp.where(mask[:, None], colors, 0.0))


def _match(points_a, mask_a, points_b, mask_b, radius):
  """One-to-one nearest-neighbour matches from view a to view b within `radius`.

  Returns:
    nearest: [N] index in b of each a point's nearest valid b point.
    matched: [N] bool, the a points that keep their match.
  """
  num = points_a.shape[0]
  sq_dist, idx = pointops.knn(points_a[None], points_b[None], 1, mask=mask_b[None])
  nearest = idx[0, :, 0]
  matched = mask_a & (sq_dist[0, :, 0] <= radius * radius)
  # Of the a points sharing a nearest b point, the lowest index keeps it.
  position = jnp.arange(num, dtype=jnp.int32)
  owner = jnp.full((points_b.shape[0],), num, jnp.int32).at[
      jnp.where(matched, nearest, points_b.shape[0])].min(position, mode="drop")
  return nearest, matched & (owner[nearest] == position)


def _matches_one(pair: dict[str, jax.Array], config: MatchConfig) -> dict[str, jax.Array]:
  key_a, key_b, key_match = jax.random.split(jax.random.key(pair["seed"]), 3)
  view = lambda v, key: _view({k: x[v] for k, x in pair.items() if k != "seed"}, key, config)
  points_a, mask_a, colors_a = view(0, key_a)
  points_b, mask_b, colors_b = view(1, key_b)
  nearest, matched = _match(points_a, mask_a, points_b, mask_b, config.match_radius)
  chosen = geometry.sample_indices(key_match, matched, config.num_matches)
  match_points = jnp.stack([chosen, nearest[chosen]], axis=-1).astype(jnp.int32)

  points, forwards, inverses = [], [], []
  for v, (p, m) in enumerate(((points_a, mask_a), (points_b, mask_b))):
    # About the view's horizontal centre, so a z-only rotation keeps heights.
    forward, inverse = geometry.scaled_rotation_about(pair["rotation"][v], pair["scale"][v],
                                                      geometry.horizontal_center(p, m))
    points.append(jnp.where(m[:, None], geometry.transform_points(forward, p), 0.0))
    forwards.append(forward)
    inverses.append(inverse)
  return {
      "points": jnp.stack(points),
      "point_mask": jnp.stack([mask_a, mask_b]),
      "point_colors": jnp.stack([colors_a, colors_b]),
      "match_points": match_points,
      "match_mask": matched[chosen],
      "points_from_world": jnp.stack(forwards),
      "world_from_points": jnp.stack(inverses),
  }


def make_matches(batch: dict[str, jax.Array], config: MatchConfig) -> dict[str, jax.Array]:
  """Device half: fixed-shape points of both views and their sampled matches.

  Args:
    batch: `augment_pair` outputs stacked with any leading batch axes, e.g.
      [devices, per_device, ...] or [per_device, ...].
    config: the pipeline configuration (static).

  Returns:
    With the same leading axes: "points" float32 [2, N, 3] (each view in its own augmented
    frame), "point_mask" [2, N], "point_colors" float32 [2, N, 3] in [0, 1], "match_points"
    int32 [K, 2] (index in view 0, index in view 1), "match_mask" [K], and the per-view
    transforms "points_from_world" and "world_from_points" float32 [2, 4, 4] (inverses).
  """
  if config.num_matches > config.num_points:
    raise ValueError(f"num_matches ({config.num_matches}) must be <= num_points "
                     f"({config.num_points})")
  fn = frames.vmap_leading(functools.partial(_matches_one, config=config),
                           batch["depth"].ndim - 3)
  return fn({k: batch[k] for k in frames.GEOMETRY_FIELDS + (
      "frame_image", "rotation", "scale", "seed")})


@functools.partial(jax.jit, static_argnums=1)
def make_matches_jit(batch: dict[str, jax.Array], config: MatchConfig) -> dict[str, jax.Array]:
  """`make_matches` compiled, for use on the host CPU or outside a training step."""
  return make_matches(batch, config)


class _ReadPair:
  """Reads both frames of a pair from the source (a picklable Grain map)."""

  def __init__(self, source: Sequence[dict[str, Any]]):
    self.source = source

  def __call__(self, index: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    return self.source[int(index[0])], self.source[int(index[1])]


def pointcontrast_dataset(source: Sequence[dict[str, Any]],
                          pairs: FramePairs | np.ndarray,
                          config: MatchConfig,
                          *,
                          seed: int,
                          num_devices: int,
                          per_device_batch: int,
                          num_epochs: int | None = None,
                          shuffle: bool = True,
                          process_index: int | None = None,
                          process_count: int | None = None) -> grain.MapDataset:
  """Host half as a Grain dataset of this process's batches [num_devices, per_device_batch, 2,
  ...].

  `pipeline.pretrain_dataset` with frame pairs in place of frames: the same Grain dataset
  (`frames.batched_dataset`), deterministic and independent of how the devices are spread over
  processes. The pairs are reshuffled every epoch into one global order, process p reads and
  augments only its slice of each global batch, and every pair's augmentation is drawn from a
  generator seeded by (seed, global position), so a resumed run that restarts at batch i sees
  the same data.

  Args:
    source: random-access frames, e.g. `load_frames(...)` of scannet_frames.
    pairs: the pairs of `source` (`load_pairs`), or an [P, 2] array of source indices.
    config: the pipeline configuration.
    seed: seeds the shuffle and every pair's augmentation.
    num_devices: this process's devices (the leading batch axis, for pmap).
    per_device_batch: pairs per device.
    num_epochs: None repeats forever.
    shuffle: shuffle the pairs each epoch.
    process_index: this process's slice (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).

  Returns:
    A `grain.MapDataset`; index it (`ds[i]`) for random access, or iterate with
    `pipeline.prefetch`.
  """
  if isinstance(pairs, FramePairs):
    if pairs.num_frames != len(source):
      raise ValueError(f"the pairs refer to a source of {pairs.num_frames} frames, this one has "
                       f"{len(source)}")
    pairs = pairs.index
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  return frames.batched_dataset(
      grain.MapDataset.source(list(pairs)), functools.partial(augment_pair, config=config),
      read=_ReadPair(source), seed=seed, num_devices=num_devices,
      per_device_batch=per_device_batch, num_epochs=num_epochs, shuffle=shuffle,
      process_index=process_index, process_count=process_count,
      holds=("the pair list", "frame pairs"))
