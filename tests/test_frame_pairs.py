"""Frame pairs for PointContrast: overlaps, the stored pair list, and exact correspondences."""

import dataclasses
import itertools
import os

import jax
import numpy as np
import pytest
from test_pipeline import make_frames

from datasets.scannet_frames import make_pairs as make_pairs_cli
from p2p_jax.data import frame_pairs, frames, pipeline, synthetic
from p2p_jax.data.scannet_frames import build_frames, load_frames


def synthetic_frames(root, scenes=2, frames_per_scene=6):
  """Synthetic rooms (48x64) built into scannet_frames; returns the TFDS data dir."""
  synthetic.generate(str(root / "rooms"), num_scenes=scenes, frames_per_scene=frames_per_scene,
                     height=48, width=64, seed=3, val_fraction=0.0, workers=1)
  build_frames(str(root / "rooms"), str(root / "tfds"), config="skip1")
  return str(root / "tfds")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The TFDS data dir of 12 synthetic frames (2 scenes) with their pair list."""
  data_dir = synthetic_frames(tmp_path_factory.mktemp("frame_pairs"))
  frame_pairs.mine_pairs(data_dir, "train", "skip1", progress=False)
  return data_dir


def stored_pairs(data_dir):
  """(frames source, stored pairs) of the train split."""
  source = load_frames(data_dir, "train", "skip1")
  return source, frame_pairs.load_pairs(frame_pairs.pairs_path(data_dir, "train", "skip1"), source)



def test_the_configs_share_one_depth_range_and_keep_their_fields_flat():
  configs = (pipeline.PairConfig, frame_pairs.MatchConfig, frame_pairs.OverlapConfig)
  for config in configs:
    assert config().depth_range == frames.DepthRange()
    custom = config(depth_scale=4000.0, min_depth=0.3, max_depth=5.0)
    assert custom.depth_range == frames.DepthRange(4000.0, 0.3, 5.0)
  # Flat in `asdict`, which mined pair files store and are checked against.
  assert dataclasses.asdict(frame_pairs.OverlapConfig()) == {
      "voxel_size": 0.05, "match_radius_voxels": 1.5, "min_overlap": 0.3,
      "max_frame_distance": None, "depth_scale": 1000.0, "min_depth": 0.1, "max_depth": 10.0}

# Independent NumPy references.


def reference_cloud(record):
  """World points of the valid depth pixels, pixel by pixel in float64."""
  depth = np.asarray(record["depth"], np.float64) / 1000.0
  k = np.asarray(record["depth_intrinsics"], np.float64)
  pose = np.asarray(record["cam_to_world"], np.float64)
  rows, cols = np.nonzero((depth >= 0.1) & (depth <= 10.0))
  z = depth[rows, cols]
  cam = np.stack([(cols - k[0, 2]) / k[0, 0] * z, (rows - k[1, 2]) / k[1, 1] * z, z], -1)
  return cam @ pose[:3, :3].T + pose[:3, 3]


def reference_downsample(points, voxel):
  groups = {}
  for p in points:
    groups.setdefault(tuple(np.floor(p / voxel).astype(int)), []).append(p)
  return np.array([np.mean(g, axis=0) for g in groups.values()]).reshape(-1, 3)


def reference_overlap(a, b, radius):
  """max of the two match ratios, from the full O(n^2) distance matrix."""
  if not len(a) or not len(b):
    return 0.0
  dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
  close = dist <= radius
  return max(close.any(1).mean(), close.any(0).mean())


def test_overlap_ratio_equals_a_brute_force_reference():
  rng = np.random.default_rng(0)
  for trial in range(6):
    a = rng.uniform(0, 1.0, (rng.integers(50, 400), 3))
    b = rng.uniform(0, 1.0, (rng.integers(50, 400), 3)) + [rng.uniform(0, 1.2), 0, 0]
    voxel = rng.uniform(0.03, 0.12)
    da, db = frame_pairs.voxel_downsample(a, voxel), frame_pairs.voxel_downsample(b, voxel)
    ra, rb = reference_downsample(a, voxel), reference_downsample(b, voxel)
    order = lambda x: x[np.lexsort(x.T[::-1])]
    np.testing.assert_allclose(order(da), order(ra), atol=1e-12)
    got = frame_pairs.overlap_ratio(da, db, 1.5 * voxel)
    want = reference_overlap(ra, rb, 1.5 * voxel)
    assert got == pytest.approx(want, abs=1e-12), trial
  assert frame_pairs.overlap_ratio(np.zeros((0, 3)), a, 0.1) == 0.0
  far = frame_pairs.overlap_ratio(a, a + 10, 0.1)
  assert far == 0.0 and frame_pairs.overlap_ratio(a, a, 0.01) == 1.0


def test_pair_list_counts_and_overlaps_match_the_reference():
  frames = make_frames(7, seed=4)
  for i, f in enumerate(frames):  # scenes of 4 and 3 frames, contiguous
    f["scene"] = b"scene_a" if i < 4 else b"scene_b"
  config = frame_pairs.OverlapConfig(voxel_size=0.1, min_overlap=0.3)
  pairs = frame_pairs.compute_pairs(frames, config, progress=False)
  clouds = [reference_downsample(reference_cloud(f), 0.1) for f in frames]
  candidates = [(a, b) for a, b in itertools.combinations(range(7), 2)
                if frames[a]["scene"] == frames[b]["scene"]]
  overlaps = {(a, b): reference_overlap(clouds[a], clouds[b], 0.15) for a, b in candidates}
  kept = sorted(p for p, o in overlaps.items() if o >= 0.3)
  assert 0 < len(kept) < len(candidates), overlaps  # the seed exercises both outcomes
  assert [tuple(p) for p in pairs.index] == kept
  np.testing.assert_allclose(pairs.overlap, [overlaps[p] for p in kept], atol=1e-3)
  paired = {i for p in kept for i in p}
  counts = {k: pairs.stats[k] for k in ("frames", "scenes", "candidates", "kept", "rejected",
                                        "frames_without_pair")}
  assert counts == {"frames": 7, "scenes": 2, "candidates": 6 + 3, "kept": len(kept),
                    "rejected": 9 - len(kept), "frames_without_pair": 7 - len(paired)}
  # Candidates within a frame distance: frames are 25 apart, so 25 keeps neighbours only.
  near = frame_pairs.compute_pairs(
      frames, dataclasses.replace(config, max_frame_distance=25), progress=False)
  assert near.stats["candidates"] == 3 + 2
  assert {tuple(p) for p in near.index} == {p for p in kept if p[1] - p[0] == 1}
  frames.append(dict(frames[0]))  # scene_a again, after scene_b
  with pytest.raises(ValueError, match="contiguously"):
    frame_pairs.compute_pairs(frames, config, progress=False)


def test_make_pairs_cli_writes_the_pair_list_next_to_the_dataset(built, capsys):
  assert make_pairs_cli.main(["--data_dir", built, "--config", "skip1", "--split", "train",
                              "--overwrite"]) == 0
  printed = capsys.readouterr().out
  path = os.path.join(built, "scannet_frames", "skip1", "1.0.0", "pairs_train.npz")
  assert frame_pairs.pairs_path(built, "train", "skip1") == path and os.path.exists(path)
  source, pairs = stored_pairs(built)
  s = pairs.stats
  assert (f"12 frames of 2 scenes; 30 candidate pairs, {s['kept']} kept, {s['rejected']} "
          f"rejected (overlap < 0.3); {s['frames_without_pair']} frames in no pair") in printed
  assert s["kept"] + s["rejected"] == 30 and s["kept"] >= 10
  scene = lambda i: source[int(i)]["scene"]
  assert all(scene(a) == scene(b) and a < b for a, b in pairs.index)
  assert np.all(pairs.overlap >= 0.3) and np.all(pairs.overlap <= 1.0)
  # The stored overlap is the brute-force overlap of the two frames.
  a, b = pairs.index[0]
  clouds = [reference_downsample(reference_cloud(source[int(i)]), 0.05) for i in (a, b)]
  assert pairs.overlap[0] == pytest.approx(reference_overlap(*clouds, 0.075), abs=1e-3)
  # A second call with the same rule reuses the file; a length mismatch is an error.
  again = frame_pairs.mine_pairs(built, "train", "skip1", progress=False)
  np.testing.assert_array_equal(again.index, pairs.index)
  with pytest.raises(ValueError, match="recompute"):
    frame_pairs.load_pairs(path, source=list(range(5)))


MATCH = frame_pairs.MatchConfig(num_points=1536, num_matches=256, full_rotation=False)


def reference_matches(points, mask, radius):
  """One-to-one matches by brute force: nearest valid view-1 point within radius, the
  lowest view-0 index keeping a shared one."""
  dist = np.sqrt(((points[0][:, None] - points[1][None]) ** 2).sum(-1))
  dist[:, ~mask[1]] = np.inf
  nearest = dist.argmin(1)
  matches, taken = set(), set()
  for i in np.nonzero(mask[0])[0]:
    if dist[i, nearest[i]] <= radius and nearest[i] not in taken:
      taken.add(nearest[i])
      matches.add((i, nearest[i]))
  return matches


@pytest.mark.parametrize("full_rotation", [False, True])
def test_matches_are_within_the_radius_and_the_transforms_undo_exactly(built, full_rotation):
  source, pairs = stored_pairs(built)
  config = dataclasses.replace(MATCH, full_rotation=full_rotation)
  ds = frame_pairs.pointcontrast_dataset(source, pairs, config, seed=1, num_devices=2,
                                         per_device_batch=2, process_index=0, process_count=1)
  host = ds[0]
  out = jax.tree.map(np.asarray, frame_pairs.make_matches_jit(host, config))
  assert out["points"].shape == (2, 2, 2, 1536, 3) and out["match_points"].shape == (2, 2, 256, 2)
  checked = 0
  for d, b in itertools.product(range(2), range(2)):
    mask = out["point_mask"][d, b]
    world = []
    for v in range(2):
      forward = out["points_from_world"][d, b, v].astype(np.float64)
      inverse = out["world_from_points"][d, b, v].astype(np.float64)
      np.testing.assert_allclose(forward @ inverse, np.eye(4), atol=1e-5)
      p = out["points"][d, b, v].astype(np.float64)
      w = p @ inverse[:3, :3].T + inverse[:3, 3]
      # Every recovered point is a back-projected pixel of its own frame.
      (record,) = [source[int(i)] for i in range(len(source))
                   if source[int(i)]["frame"] == host["frame"][d, b, v]
                   and np.array_equal(source[int(i)]["cam_to_world"],
                                      host["cam_to_world"][d, b, v])]
      cloud = reference_cloud(record)
      gap = np.sqrt(((w[mask[v]][:, None] - cloud[None]) ** 2).sum(-1)).min(1)
      assert gap.max() < 1e-4, gap.max()
      # The transform is the recorded one: scale, rotation about z (or any), no shear.
      linear = forward[:3, :3]
      scale = np.cbrt(np.linalg.det(linear))
      assert config.scale_range[0] <= scale <= config.scale_range[1]
      np.testing.assert_allclose(linear @ linear.T, scale ** 2 * np.eye(3), atol=1e-5)
      np.testing.assert_allclose(linear / scale, host["rotation"][d, b, v], atol=1e-5)
      if not full_rotation:
        np.testing.assert_allclose(linear[2] / scale, [0, 0, 1], atol=1e-6)
      assert np.all(p[~mask[v]] == 0)
      world.append(w)
    match_mask = out["match_mask"][d, b]
    idx = out["match_points"][d, b][match_mask]
    dist = np.linalg.norm(world[0][idx[:, 0]] - world[1][idx[:, 1]], axis=-1)
    assert np.all(dist <= config.match_radius + 1e-5), dist.max()
    assert np.all(mask[0][idx[:, 0]]) and np.all(mask[1][idx[:, 1]])
    assert len(set(idx[:, 0])) == len(idx) == len(set(idx[:, 1]))  # one-to-one
    reference = reference_matches(world, mask, config.match_radius)
    assert {tuple(m) for m in idx} <= reference
    assert len(idx) == min(config.num_matches, len(reference))
    checked += len(idx)
  assert checked > 200
  if full_rotation:
    assert np.any(np.abs(out["points_from_world"][..., 2, :2]) > 0.1)


def test_without_colours_both_views_are_grey_with_the_same_matches(built):
  source, pairs = stored_pairs(built)
  ds = frame_pairs.pointcontrast_dataset(source, pairs, MATCH, seed=1, num_devices=1,
                                         per_device_batch=2, process_index=0, process_count=1)
  with_colour = jax.tree.map(np.asarray, frame_pairs.make_matches_jit(ds[0], MATCH))
  grey = jax.tree.map(np.asarray, frame_pairs.make_matches_jit(
      ds[0], dataclasses.replace(MATCH, colors=False)))
  mask = grey["point_mask"]
  np.testing.assert_array_equal(grey["point_colors"][mask], 0.5)
  np.testing.assert_array_equal(grey["point_colors"][~mask], 0.0)
  assert with_colour["point_colors"][mask].std() > 0.05
  for key in ("points", "point_mask", "match_points", "match_mask"):
    np.testing.assert_array_equal(grey[key], with_colour[key])


def test_dataset_is_deterministic_reshuffled_and_sliced_by_process(built):
  source, pairs = stored_pairs(built)
  make = lambda seed, index=0, count=1, devices=1: frame_pairs.pointcontrast_dataset(
      source, pairs, MATCH, seed=seed, num_devices=devices, per_device_batch=2,
      process_index=index, process_count=count)
  a, b, c = make(7), make(7), make(8)
  per_epoch = len(pairs) // 2
  for i in (0, per_epoch + 1):
    for name in a[i]:
      np.testing.assert_array_equal(a[i][name], b[i][name])
  assert not np.array_equal(a[0]["rotation"], c[0]["rotation"])
  # A pair is named by its frames' poses (frame numbers repeat across scenes).
  key = lambda batch: [p.tobytes() for p in batch["cam_to_world"].reshape(-1, 2, 4, 4)]
  first = [k for i in range(per_epoch) for k in key(a[i])]
  second = [k for i in range(per_epoch, 2 * per_epoch) for k in key(a[i])]
  assert sorted(first) == sorted(second) and len(set(first)) == len(pairs)
  assert first != second  # reshuffled each epoch
  # 2 processes x 1 device read disjoint halves of the batches of 1 process x 2 devices,
  # augmented identically.
  whole = make(7, devices=2)
  for j in (0, 1, 4):
    halves = [make(7, i, 2)[j] for i in range(2)]
    for name in whole[j]:
      for i in range(2):
        np.testing.assert_array_equal(halves[i][name][0], whole[j][name][i])
    assert not set(key(halves[0])) & set(key(halves[1]))
  with pytest.raises(ValueError, match="fewer than one global batch"):
    frame_pairs.pointcontrast_dataset(source, pairs.index[:3], MATCH, seed=0, num_devices=2,
                                      per_device_batch=2, process_index=0, process_count=1)


def test_frames_with_few_valid_pixels_are_padded():
  frames = make_frames(2)
  frames[1]["depth"] = np.zeros_like(frames[1]["depth"])
  frames[1]["depth"][:3, :4] = 1500  # twelve valid pixels
  config = frame_pairs.MatchConfig(num_points=256, num_matches=64)
  host = frame_pairs.augment_pair((frames[0], frames[1]), np.random.default_rng(0), config)
  out = jax.tree.map(np.asarray, frame_pairs.make_matches_jit(host, config))
  assert out["point_mask"][0].sum() == 256 and out["point_mask"][1].sum() == 12
  assert out["match_mask"].sum() <= 12 and np.all(np.isfinite(out["points"]))
