"""The pretraining pipeline: exact pairs under augmentation, determinism, sharding, shapes."""

import dataclasses

import jax
import numpy as np
import pytest

from p2p_jax.data import pipeline

ROOM = np.array([5.0, 4.0, 3.0])


def look_at(eye, target):
  forward = (target - eye) / np.linalg.norm(target - eye)
  right = np.cross(forward, [0.0, 0.0, 1.0])
  right /= np.linalg.norm(right)
  pose = np.eye(4)
  pose[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
  pose[:3, 3] = eye
  return pose.astype(np.float32)


def render_depth(pose, k, hw):
  """z-depth (mm) of a camera inside an empty box room, by ray-plane intersection."""
  v, u = np.mgrid[:hw[0], :hw[1]].astype(np.float64)
  rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
  dirs = rays @ pose[:3, :3].T.astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    exits = np.where(dirs > 0, (ROOM - pose[:3, 3]) / dirs, -pose[:3, 3] / dirs)
  return np.round(np.nanmin(np.where(exits > 0, exits, np.inf), -1) * 1000).astype(np.uint16)


def make_frames(num, hw=(48, 64), seed=0, offset_color=True):
  rng = np.random.default_rng(seed)
  depth_k = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]], np.float32)
  color_k = depth_k.copy()
  color_from_depth = np.eye(4, dtype=np.float32)
  if offset_color:  # a colour camera that differs from the depth camera, as in real RGB-D
    color_k = np.array([[54.0, 0, 30.2], [0, 53.0, 24.9], [0, 0, 1]], np.float32)
    color_from_depth[:3, 3] = [0.02, -0.01, 0.005]
  frames = []
  for i in range(num):
    pose = look_at(rng.uniform([1, 1, 1], ROOM - [1, 1, 1.2]), rng.uniform([0.5] * 3, ROOM - 0.5))
    depth = render_depth(pose, depth_k, hw)
    depth[rng.uniform(size=hw) < 0.1] = 0  # holes
    frames.append({
        "image": rng.integers(0, 256, hw + (3,), dtype=np.uint8),
        "depth": depth,
        "depth_intrinsics": depth_k,
        "color_intrinsics": color_k,
        "color_from_depth": color_from_depth,
        "cam_to_world": pose,
        "frame": np.int32(25 * i),
    })
  return frames


CONFIG = pipeline.PairConfig(image_hw=(40, 56), num_points=512, num_pairs=256,
                             crop_scale=(0.3, 0.9), flip_probability=0.5, jitter_sigma=0.0)


def reference_image_pixel(world_point, frame, crop, flip, image_hw):
  """Independent NumPy projection: world -> depth camera -> colour camera -> pixel -> crop."""
  cam = np.linalg.inv(frame["cam_to_world"].astype(np.float64)) @ np.append(world_point, 1.0)
  color_cam = frame["color_from_depth"].astype(np.float64) @ cam
  uvw = frame["color_intrinsics"].astype(np.float64) @ color_cam[:3]
  col, row = uvw[0] / uvw[2], uvw[1] / uvw[2]
  top, left, h, w = crop
  row = (row - top + 0.5) * image_hw[0] / h - 0.5
  col = (col - left + 0.5) * image_hw[1] / w - 0.5
  if flip:
    col = image_hw[1] - 1 - col
  return np.array([row, col])


@pytest.mark.parametrize("offset_color", [False, True])
def test_pairs_reproject_onto_their_pixels_after_flip_crop_and_rotation(offset_color):
  frames = make_frames(6, offset_color=offset_color)
  ds = pipeline.pretrain_dataset(frames, CONFIG, seed=1, num_devices=2, per_device_batch=3,
                                 process_index=0, process_count=1)
  host = ds[0]
  out = jax.tree.map(np.asarray, pipeline.make_pairs_jit(host, CONFIG))
  assert out["points"].shape == (2, 3, 512, 3) and out["pair_pixels"].shape == (2, 3, 256, 2)
  flips = host["flip"].reshape(-1)
  assert flips.any() and not flips.all(), "the seed should exercise both flip states"
  assert np.all(host["rotation"] != 0)
  frame_of = {int(f["frame"]): f for f in frames}
  checked = 0
  for d in range(2):
    for b in range(3):
      frame = frame_of[int(host["frame"][d, b])]
      pair_mask = out["pair_mask"][d, b]
      assert pair_mask.sum() > 100
      points = out["points"][d, b][out["pair_points"][d, b][pair_mask]]
      world = (out["world_from_points"][d, b].astype(np.float64)
               @ np.concatenate([points, np.ones((len(points), 1))], 1).T).T[:, :3]
      pixels = out["pair_pixels"][d, b][pair_mask]
      for p, pix in zip(world, pixels):
        ref = reference_image_pixel(p, frame, host["crop"][d, b], host["flip"][d, b],
                                    CONFIG.image_hw)
        assert np.all(np.abs(ref - pix) <= 0.5 + 1e-3), (ref, pix)
        checked += 1
      assert np.all((pixels >= 0) & (pixels < CONFIG.image_hw))
  assert checked > 1000


def test_teacher_image_samples_the_frame_where_the_pair_mapping_says():
  # Linear ramps survive bilinear (even antialiased) resampling: away from the borders, the
  # teacher's pixel (r', c') must hold the frame's value at the inverse of the pixel mapping
  # used for the pairs.
  frames = make_frames(4)
  rows, cols = np.mgrid[:48, :64]
  for f in frames:
    f["image"] = np.stack([rows * 4, cols * 3, np.full_like(rows, 77)], -1).astype(np.uint8)
  ds = pipeline.pretrain_dataset(frames, CONFIG, seed=2, num_devices=1, per_device_batch=4,
                                 process_index=0, process_count=1)
  host = ds[0]
  assert host["flip"].any()
  out_h, out_w = CONFIG.image_hw
  r2, c2 = np.mgrid[:out_h, :out_w].astype(np.float64)
  for b in range(4):
    top, left, h, w = host["crop"][0, b]
    c_unflipped = out_w - 1 - c2 if host["flip"][0, b] else c2
    frame_row = (r2 + 0.5) * h / out_h - 0.5 + top
    frame_col = (c_unflipped + 0.5) * w / out_w - 0.5 + left
    interior = ((frame_row > top + 2) & (frame_row < top + h - 3)
                & (frame_col > left + 2) & (frame_col < left + w - 3))
    image = host["image"][0, b].astype(np.float64)
    assert interior.sum() > 300
    np.testing.assert_allclose(image[..., 0][interior], 4 * frame_row[interior], atol=1.01)
    np.testing.assert_allclose(image[..., 1][interior], 3 * frame_col[interior], atol=1.01)


def test_point_colours_and_3d_augmentation():
  frames = make_frames(2, offset_color=False)
  config = dataclasses.replace(CONFIG, jitter_sigma=0.01, jitter_clip=0.02)
  ds = pipeline.pretrain_dataset(frames, config, seed=3, num_devices=1, per_device_batch=2,
                                 process_index=0, process_count=1, shuffle=False)
  host = ds[0]
  out = jax.tree.map(np.asarray, pipeline.make_pairs_jit(host, config))
  for b in range(2):
    mask = out["point_mask"][0, b]
    world = (out["world_from_points"][0, b] @ np.concatenate(
        [out["points"][0, b], np.ones((512, 1))], 1).T).T[:, :3]
    assert np.all(world[mask] > -0.05) and np.all(world[mask] < ROOM + 0.05)  # jitter <= 2 cm
    # Centred horizontally, gravity kept: z stays a height up to the scale.
    scale = host["scale"][0, b]
    np.testing.assert_allclose(out["points"][0, b][mask, :2].mean(0), 0.0, atol=0.01)
    assert np.all(out["points"][0, b][mask, 2] > -0.05 * scale)
    assert np.all(out["points"][0, b][~mask] == 0) and np.all(out["point_colors"][0, b][~mask] == 0)
  # Identical cameras: a point's colour is its own pixel's colour in the frame.
  colors = out["point_colors"][0, 0][out["point_mask"][0, 0]]
  assert colors.min() >= 0 and colors.max() <= 1 and colors.std() > 0.1


def test_without_colours_the_student_reads_constant_grey_and_the_same_geometry():
  frames = make_frames(2, offset_color=False)
  ds = pipeline.pretrain_dataset(frames, CONFIG, seed=3, num_devices=1, per_device_batch=2,
                                 process_index=0, process_count=1, shuffle=False)
  with_colour = jax.tree.map(np.asarray, pipeline.make_pairs_jit(ds[0], CONFIG))
  grey = jax.tree.map(np.asarray, pipeline.make_pairs_jit(
      ds[0], dataclasses.replace(CONFIG, colors=False)))
  mask = grey["point_mask"]
  assert mask.sum() > 500
  np.testing.assert_array_equal(grey["point_colors"][mask], 0.5)
  np.testing.assert_array_equal(grey["point_colors"][~mask], 0.0)
  assert with_colour["point_colors"][mask].std() > 0.1
  for key in ("points", "point_mask", "pair_pixels", "pair_points", "pair_mask"):
    np.testing.assert_array_equal(grey[key], with_colour[key])


def test_deterministic_per_seed_epoch_and_index_and_sliced_by_process():
  frames = make_frames(8)
  make = lambda seed, index=0, count=1, devices=1: pipeline.pretrain_dataset(
      frames, CONFIG, seed=seed, num_devices=devices, per_device_batch=2,
      process_index=index, process_count=count)
  a, b, c = make(7), make(7), make(8)
  for i in (0, 3, 5):  # batches 4.. are the second epoch
    for key in a[i]:
      np.testing.assert_array_equal(a[i][key], b[i][key])
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  epoch1 = np.concatenate([a[i]["frame"].reshape(-1) for i in range(4)])
  epoch2 = np.concatenate([a[i]["frame"].reshape(-1) for i in range(4, 8)])
  assert sorted(epoch1) == sorted(epoch2) == sorted(int(f["frame"]) for f in frames)
  assert not np.array_equal(epoch1, epoch2)  # reshuffled each epoch
  # 2 processes x 1 device read disjoint halves of the batches of 1 process x 2 devices,
  # augmented identically: the data do not depend on how devices are spread over processes.
  whole = make(7, devices=2)
  for j in (0, 1, 5):
    halves = [make(7, i, 2)[j] for i in range(2)]
    for key in whole[j]:
      for i in range(2):
        np.testing.assert_array_equal(halves[i][key][0], whole[j][key][i])
    assert not set(halves[0]["frame"].reshape(-1)) & set(halves[1]["frame"].reshape(-1))
  with pytest.raises(ValueError, match="fewer than one global batch"):
    make(7, 0, 5)
  # The device half is a pure function of the host batch.
  x = pipeline.make_pairs_jit(a[2], CONFIG)
  y = pipeline.make_pairs_jit(b[2], CONFIG)
  for key in x:
    np.testing.assert_array_equal(x[key], y[key])


def test_prefetch_iterates_in_order_and_resumes_from_its_state():
  frames = make_frames(6)
  ds = pipeline.pretrain_dataset(frames, CONFIG, seed=4, num_devices=1, per_device_batch=2,
                                 process_index=0, process_count=1)
  it = pipeline.prefetch(ds)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  fourth = next(it)
  np.testing.assert_array_equal(first[1]["image"], ds[1]["image"])
  resumed = pipeline.prefetch(ds)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["image"], fourth["image"])
  np.testing.assert_array_equal(next(pipeline.prefetch(ds, start=3))["image"], fourth["image"])


def test_frames_without_enough_valid_pixels_are_padded_not_crashing():
  frames = make_frames(2)
  frames[0]["depth"] = np.zeros_like(frames[0]["depth"])
  frames[0]["depth"][:2, :3] = 1500  # six valid pixels
  ds = pipeline.pretrain_dataset(frames, CONFIG, seed=5, num_devices=1, per_device_batch=2,
                                 process_index=0, process_count=1, shuffle=False)
  out = pipeline.make_pairs_jit(ds[0], CONFIG)
  assert int(out["point_mask"][0, 0].sum()) == 6
  assert int(out["pair_mask"][0, 0].sum()) <= 6
  assert np.all(np.isfinite(np.asarray(out["points"])))


def test_clear_errors():
  frames = make_frames(1)
  frames[0]["image"] = frames[0]["image"][:10]
  with pytest.raises(ValueError, match="does not match depth"):
    pipeline.augment_frame(frames[0], np.random.default_rng(0), CONFIG)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.pretrain_dataset(make_frames(3), CONFIG, seed=0, num_devices=2, per_device_batch=2,
                              process_index=0, process_count=1)
