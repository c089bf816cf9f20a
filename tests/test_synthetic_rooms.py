"""Synthetic rooms in the ScanNet layout: files, determinism, geometry, labels and appearance."""

import json
import os

import numpy as np
import pytest
import scipy.spatial
import trimesh
from trimesh.ray import ray_pyembree

from p2p_jax import geometry
from p2p_jax.data import labels, scannet
from p2p_jax.data import synthetic as rooms

SEED = 3
NUM_SCENES = 5  # one of each room type
FRAMES = 3
HEIGHT, WIDTH = 96, 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synthetic"))
  stats = rooms.generate(out, num_scenes=NUM_SCENES, frames_per_scene=FRAMES, height=HEIGHT,
                         width=WIDTH, seed=SEED, val_fraction=0.2, teacher_fraction=0.2,
                         workers=1)
  return out, stats


def scene_dir(out, index):
  return os.path.join(out, "scans", rooms.scene_name(index))


def read_segments(out, index):
  name = rooms.scene_name(index)
  with open(os.path.join(scene_dir(out, index), name + rooms.SEGS_SUFFIX)) as f:
    return np.array(json.load(f)["segIndices"])


def frames(out, index):
  """(frame id, frame dict with labels, depth intrinsics) of every frame of a scene."""
  path = scene_dir(out, index)
  k = scannet.read_intrinsics(path).depth
  return [(f, scannet.read_frame(path, f, labels=True), k) for f in scannet.frame_ids(path)]


def world_points(frame, k):
  points, valid = geometry.back_project(frame["depth"], k, frame["cam_to_world"])
  return np.asarray(points), np.asarray(valid)


def file_bytes(root):
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_every_frame_and_file_is_written_and_reads_back(dataset):
  out, stats = dataset
  assert stats["frames"] == NUM_SCENES * FRAMES and stats["frames_per_second"] > 0
  label_map = scannet.read_label_map(os.path.join(out, scannet.LABEL_MAP_FILE))
  assert all(raw == nyu40 for raw, nyu40 in label_map.items())  # raw ids are NYU40 ids
  assert {nyu40 for nyu40, _ in labels.SCANNET20} <= set(label_map)

  splits = {}
  for split in ("train", "val", "teacher"):
    with open(os.path.join(out, f"scannetv2_{split}.txt")) as f:
      splits[split] = f.read().split()
  assert [len(splits[s]) for s in ("train", "val", "teacher")] == [3, 1, 1]
  assert sorted(sum(splits.values(), [])) == [rooms.scene_name(i) for i in range(NUM_SCENES)]

  for i in range(NUM_SCENES):
    path = scene_dir(out, i)
    intrinsics = scannet.read_intrinsics(path)
    np.testing.assert_allclose(intrinsics.color, intrinsics.depth)
    np.testing.assert_allclose(intrinsics.depth, rooms.intrinsics_for(HEIGHT, WIDTH), rtol=1e-6)
    hfov = 2 * np.degrees(np.arctan(WIDTH / 2 / intrinsics.depth[0, 0]))
    assert 60 <= hfov <= 70
    assert scannet.frame_ids(path) == [rooms.FRAME_STEP * f for f in range(FRAMES)]
    for f, frame, _ in frames(out, i):
      for folder, suffix in (("color", ".jpg"), ("depth", ".png"), ("pose", ".txt"),
                             ("label-filt", ".png"), ("instance-filt", ".png")):
        assert os.path.isfile(os.path.join(path, folder, f"{f}{suffix}"))
      assert frame["color"].shape == (HEIGHT, WIDTH, 3)
      for key in ("depth", "label", "instance"):
        assert frame[key].shape == (HEIGHT, WIDTH) and frame[key].dtype == np.uint16
      assert set(np.unique(frame["label"])) <= set(label_map)
      rotation = frame["cam_to_world"][:3, :3]
      np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)
      assert np.linalg.det(rotation) > 0

    mesh = scannet.read_mesh(path, rooms.scene_name(i))
    assert len(mesh["points"]) == len(mesh["colors"]) == len(mesh["labels"]) > 10_000
    assert set(np.unique(mesh["labels"])) <= set(label_map.values())
    # Instances as ScanNet stores them: one segment per instance, grouped into objects whose
    # objectId + 1 is the instance-filt id and whose label names the class.
    segments = read_segments(out, i)
    assert len(segments) == len(mesh["points"])
    with open(os.path.join(path, rooms.scene_name(i) + rooms.AGGREGATION_SUFFIX)) as f:
      groups = json.load(f)["segGroups"]
    names = {name: nyu40 for name, nyu40 in rooms.LABEL_MAP.values()}
    assert sorted(g["objectId"] + 1 for g in groups) == sorted(np.unique(segments))
    for group in groups:
      (segment,) = group["segments"]
      assert np.all(mesh["labels"][segments == segment] == names[group["label"]])


def test_same_seed_gives_identical_files_for_any_worker_count(tmp_path):
  tiny = dict(frames_per_scene=2, height=24, width=32, points_per_m2=50.0)
  rooms.generate(str(tmp_path / "a"), num_scenes=2, seed=7, workers=1, **tiny)
  rooms.generate(str(tmp_path / "b"), num_scenes=2, seed=7, workers=2, **tiny)
  rooms.generate(str(tmp_path / "c"), num_scenes=1, seed=7, workers=1, **tiny)
  rooms.generate(str(tmp_path / "d"), num_scenes=2, seed=8, workers=1, **tiny)
  a, b = file_bytes(tmp_path / "a"), file_bytes(tmp_path / "b")
  assert len(a) > 20 and a == b
  # A scene depends on (seed, index) only, not on how many scenes were made.
  first = os.path.join("scans", rooms.scene_name(0))
  c = file_bytes(tmp_path / "c")
  assert {k: v for k, v in a.items() if k.startswith(first)} == {
      k: v for k, v in c.items() if k.startswith(first)}
  d = file_bytes(tmp_path / "d")
  changed = [k for k in a if k.startswith("scans") and a[k] != d.get(k)]
  assert len(changed) > len(a) // 2


def test_scenes_cover_at_least_ten_benchmark_classes(dataset):
  out, _ = dataset
  benchmark = {nyu40 for nyu40, _ in labels.SCANNET20}
  in_meshes, in_images = set(), set()
  for i in range(NUM_SCENES):
    in_meshes |= set(scannet.read_mesh(scene_dir(out, i), rooms.scene_name(i))["labels"].tolist())
    for _, frame, _ in frames(out, i):
      in_images |= set(frame["label"].ravel().tolist())
  assert len(in_meshes & benchmark) >= 15
  assert len(in_images & benchmark) >= 10


def test_depth_back_projects_onto_the_room_surfaces(dataset):
  out, _ = dataset
  rng = np.random.default_rng(0)
  for i in range(NUM_SCENES):
    room = rooms.scene_room(SEED, i)
    for _, frame, k in frames(out, i):
      points, valid = world_points(frame, k)
      assert valid.mean() > 0.98  # a closed room: every ray hits something in range
      # Brute-force distance to the nearest triangle, independent of the renderer's ray cast.
      sample = points[valid][rng.choice(valid.sum(), 40, replace=False)]
      triangles = room.mesh.triangles
      pairs = np.repeat(sample, len(triangles), axis=0)
      closest = trimesh.triangles.closest_point(np.tile(triangles, (len(sample), 1, 1)), pairs)
      dist = np.linalg.norm(closest - pairs, axis=1).reshape(len(sample), -1).min(axis=1)
      assert dist.max() < 0.005, dist.max()
      # Floor pixels land on z = 0, ceiling pixels on the ceiling (depth is rounded to mm).
      floor = valid & (frame["label"] == rooms.FLOOR)
      ceiling = valid & (frame["label"] == rooms.CEILING)
      np.testing.assert_allclose(points[floor][:, 2], 0.0, atol=0.003)
      np.testing.assert_allclose(points[ceiling][:, 2], room.height, atol=0.003)


def test_pixel_labels_match_the_labelled_point_cloud(dataset):
  out, _ = dataset
  for i in range(NUM_SCENES):
    mesh = scannet.read_mesh(scene_dir(out, i), rooms.scene_name(i))
    segments = read_segments(out, i)
    tree = scipy.spatial.cKDTree(mesh["points"])
    for _, frame, k in frames(out, i):
      points, valid = world_points(frame, k)
      _, nearest = tree.query(points[valid])
      assert np.mean(mesh["labels"][nearest] == frame["label"][valid]) > 0.95
      assert np.mean(segments[nearest] == frame["instance"][valid]) > 0.9


def test_colour_does_not_identify_the_class(dataset):
  out, _ = dataset
  classes, colours = [], []
  for i in range(NUM_SCENES):
    mesh = scannet.read_mesh(scene_dir(out, i), rooms.scene_name(i))
    segments = read_segments(out, i)
    for segment in np.unique(segments):
      members = segments == segment
      classes.append(mesh["labels"][members][0])
      colours.append(mesh["colors"][members].mean(axis=0) / 255)
  classes, colours = np.array(classes), np.array(colours)
  names = np.unique(classes)
  means = np.stack([colours[classes == c].mean(axis=0) for c in names])
  # Even fitted on the very instances it classifies, nearest class-mean colour is poor.
  predicted = names[np.argmin(np.sum((colours[:, None] - means[None]) ** 2, -1), axis=1)]
  assert np.mean(predicted == classes) < 0.6
  for c in names:
    if np.sum(classes == c) >= 4:
      assert colours[classes == c].std(axis=0).mean() > 0.08, c


def test_depth_noise_and_holes_change_only_the_depth(tmp_path):
  tiny = dict(num_scenes=1, frames_per_scene=2, height=48, width=64, points_per_m2=50.0,
              workers=1)
  rooms.generate(str(tmp_path / "clean"), **tiny)
  rooms.generate(str(tmp_path / "noisy"), depth_noise=0.01, **tiny)
  rooms.generate(str(tmp_path / "holes"), depth_holes=0.2, **tiny)
  for f in (0, rooms.FRAME_STEP):
    clean, noisy, holes = (
        scannet.read_frame(scene_dir(str(tmp_path / run), 0), f, labels=True)
        for run in ("clean", "noisy", "holes"))
    for other in (noisy, holes):
      for key in ("color", "label", "instance", "cam_to_world"):
        np.testing.assert_array_equal(other[key], clean[key])
    valid = clean["depth"] > 0
    assert valid.all()
    assert np.mean(noisy["depth"][valid] != clean["depth"][valid]) > 0.5
    assert np.all(noisy["depth"] > 0)
    dropped = holes["depth"] == 0
    assert 0.18 < dropped.mean() < 0.22
    np.testing.assert_array_equal(holes["depth"][~dropped], clean["depth"][~dropped])


def test_cameras_stay_upright_in_free_space(dataset):
  out, _ = dataset
  for i in range(NUM_SCENES):
    room = rooms.scene_room(SEED, i)
    instances = set(range(len(room.instance_labels)))
    for _, frame, _ in frames(out, i):
      pose = frame["cam_to_world"]
      xy, z = pose[:2, 3], pose[2, 3]
      cell = np.round((xy - room.grid_origin) / rooms.GRID).astype(int)
      assert room.clearance[tuple(cell)] > rooms.CAMERA_CLEARANCE
      assert 1.0 < z < room.height - 0.2
      assert pose[2, 1] < -0.5  # the camera's y axis (image down) points down
      assert set(np.unique(frame["instance"])) <= instances


def test_rays_are_cast_by_embree():
  assert trimesh.ray.has_embree
  room = rooms.scene_room(0, 3)
  assert isinstance(room.intersector, ray_pyembree.RayMeshIntersector)


def test_cli_reports_throughput_and_refuses_to_overwrite(tmp_path, capsys):
  args = ["--out", str(tmp_path), "--scenes", "1", "--frames-per-scene", "2", "--height", "24",
          "--width", "32", "--points-per-m2", "50", "--workers", "1", "--val-fraction", "0"]
  rooms.main(args)
  assert "wrote 2 frames of 1 scenes" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="exists"):
    rooms.main(args)
  rooms.main(args + ["--overwrite"])
  assert "frames/s" in capsys.readouterr().out
  with open(tmp_path / "scannetv2_train.txt") as f:
    assert f.read().split() == [rooms.scene_name(0)]


def test_fractions_that_leave_no_training_scene_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="none for training"):
    rooms.generate(str(tmp_path), num_scenes=2, frames_per_scene=1, val_fraction=0.5,
                   teacher_fraction=0.5)
  assert not os.path.exists(tmp_path / "scans")
