"""p2p_jax.data.scannet: round trips of its writers and readers, and how it reports bad input."""

import os

import numpy as np
import pytest
from PIL import Image

from datasets.scannet_frames import dummy_data
from p2p_jax.data import scannet

SCENE = "scene0000_00"


@pytest.fixture
def scene(tmp_path):
  """A scene with frames 0, 7 and 25, and its truth; colour 48x64, depth 24x32."""
  scene_dir = str(tmp_path / "scans" / SCENE)
  truth = dummy_data.write_scene(scene_dir, SCENE, [0, 7, 25], (48, 64),
                                 np.random.default_rng(0))
  return scene_dir, truth


def test_frame_round_trip(scene):
  scene_dir, truth = scene
  for frame, values in truth["frames"].items():
    out = scannet.read_frame(scene_dir, frame, labels=True)
    np.testing.assert_array_equal(out["depth"], values["depth"])
    np.testing.assert_array_equal(out["cam_to_world"], values["cam_to_world"])
    np.testing.assert_array_equal(out["label"], values["label"])
    np.testing.assert_array_equal(out["instance"], values["instance"])
    assert out["depth"].dtype == np.uint16 and out["cam_to_world"].dtype == np.float32
    # Colour goes through JPEG: compare with the file decoded independently of the reader.
    decoded = np.asarray(Image.open(os.path.join(scene_dir, "color", f"{frame}.jpg")))
    np.testing.assert_array_equal(out["color"], decoded)
    assert out["color"].shape == (48, 64, 3) and out["color"].dtype == np.uint8


def test_smooth_colour_survives_jpeg(tmp_path):
  cols, rows = np.meshgrid(np.linspace(0, 255, 64), np.linspace(0, 255, 48))
  ramp = np.stack([cols, rows, np.full((48, 64), 128.0)], -1).astype(np.uint8)
  scannet.write_frame(str(tmp_path), 3, color=ramp, depth=np.ones((4, 4)),
                      cam_to_world=np.eye(4))
  out = scannet.read_color(str(tmp_path / "color" / "3.jpg"))
  assert np.abs(out.astype(int) - ramp).mean() < 2


def test_intrinsics_round_trip_and_default_extrinsics(scene):
  scene_dir, truth = scene
  out = scannet.read_intrinsics(scene_dir)
  np.testing.assert_array_equal(out.color, truth["color_intrinsics"])
  np.testing.assert_array_equal(out.depth, truth["depth_intrinsics"])
  np.testing.assert_array_equal(out.color_extrinsic, np.eye(4))
  os.remove(os.path.join(scene_dir, "intrinsic", "extrinsic_depth.txt"))
  np.testing.assert_array_equal(scannet.read_intrinsics(scene_dir).depth_extrinsic, np.eye(4))


def test_frame_ids_are_the_numeric_union_of_the_folders(scene):
  scene_dir, _ = scene
  os.remove(os.path.join(scene_dir, "pose", "7.txt"))
  os.remove(os.path.join(scene_dir, "color", "25.jpg"))
  open(os.path.join(scene_dir, "depth", "notes.txt"), "w").close()
  # 7 and 25 stay listed, so that reading them reports the missing file.
  assert scannet.frame_ids(scene_dir) == [0, 7, 25]


@pytest.mark.parametrize("kind", sorted(dummy_data.FRAME_DAMAGE))
def test_damaged_frame_raises_frame_error_with_reason_and_file(scene, kind):
  scene_dir, _ = scene
  reason, path = dummy_data.damage_frame(scene_dir, 7, kind)
  with pytest.raises(scannet.FrameError) as info:
    scannet.read_frame(scene_dir, 7, labels=True)
  assert info.value.reason == reason
  assert info.value.path == path and path in str(info.value)
  scannet.read_frame(scene_dir, 0, labels=True)  # the other frames are untouched


def test_a_rigid_pose_written_with_six_digits_passes_and_near_misses_do_not(tmp_path):
  """Rigid within 1e-3: ScanNet's six-digit poses pass; a 1% shear or a reflection does not."""
  angle = 0.7
  pose = np.array([[np.cos(angle), -np.sin(angle), 0, 1.5], [np.sin(angle), np.cos(angle), 0, 2],
                   [0, 0, 1, 1.2], [0, 0, 0, 1]])
  path = str(tmp_path / "0.txt")
  np.savetxt(path, pose, fmt="%.6f")
  np.testing.assert_allclose(scannet.read_pose(path), pose, atol=1e-6)
  for bad in (pose @ np.diag([1, 1, -1, 1]), pose + np.diag([0.01, 0, 0, 0]),
              np.zeros((4, 4))):
    np.savetxt(path, bad, fmt="%.6f")
    with pytest.raises(scannet.FrameError, match="malformed pose") as info:
      scannet.read_pose(path)
    assert info.value.reason == scannet.MALFORMED_POSE and info.value.path == path


def test_depth_must_be_16_bit_and_fit_the_intrinsics(tmp_path):
  path = str(tmp_path / "0.png")
  k = np.array([[577.0, 0, 319.5], [0, 577.0, 239.5], [0, 0, 1]])
  Image.fromarray(np.full((480, 640), 1000, np.uint16)).save(path)
  assert scannet.read_depth(path, k).shape == (480, 640)
  Image.fromarray(np.full((240, 320), 1000, np.uint16)).save(path)  # half size, same camera
  with pytest.raises(scannet.FrameError, match="320x240 pixels") as info:
    scannet.read_depth(path, k)
  assert info.value.reason == scannet.DEPTH_SIZE
  Image.fromarray(np.full((480, 640), 200, np.uint8)).save(path)  # 8-bit: 200 would be 0.2 m
  with pytest.raises(scannet.FrameError, match="16-bit") as info:
    scannet.read_depth(path, k)
  assert info.value.reason == scannet.DEPTH_NOT_16BIT


def test_rgb_png_as_depth_is_a_corrupt_image(tmp_path):
  path = str(tmp_path / "0.png")
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
  with pytest.raises(scannet.FrameError, match="single-channel") as info:
    scannet.read_uint16_png(path)
  assert info.value.reason == scannet.CORRUPT_IMAGE


def test_malformed_pose_matrix_is_a_bad_pose(tmp_path):
  path = str(tmp_path / "0.txt")
  np.savetxt(path, np.eye(3))
  with pytest.raises(scannet.FrameError) as info:
    scannet.read_pose(path)
  assert info.value.reason == scannet.BAD_POSE and info.value.path == path


@pytest.mark.parametrize("content, match", [
    ("1 0 0\n0 1 0\n0 0 1\n", "expected a 4x4 matrix"),
    ("577 0 319 0\n0 577 239 0\n0 0 1 0\n0 0 x 1\n", "not a readable 4x4 matrix"),
    ("-577 0 319 0\n0 577 239 0\n0 0 1 0\n0 0 0 1\n", "not a pinhole matrix"),
    ("inf 0 319 0\n0 577 239 0\n0 0 1 0\n0 0 0 1\n", "not a pinhole matrix"),
    (None, "missing intrinsics file"),
], ids=["3x3", "not_a_number", "negative_focal", "infinite_focal", "missing"])
def test_malformed_intrinsics_raise_value_error_naming_the_file(scene, content, match):
  scene_dir, _ = scene
  path = os.path.join(scene_dir, "intrinsic", "intrinsic_depth.txt")
  if content is None:
    os.remove(path)
  else:
    with open(path, "w") as f:
      f.write(content)
  with pytest.raises(ValueError, match=match) as info:
    scannet.read_intrinsics(scene_dir)
  assert str(info.value).startswith(path)


def test_mesh_round_trip(scene):
  scene_dir, truth = scene
  out = scannet.read_mesh(scene_dir, SCENE)
  for name in ("points", "colors", "labels"):
    np.testing.assert_array_equal(out[name], truth["mesh"][name])
  assert out["points"].dtype == np.float32 and out["colors"].dtype == np.uint8
  assert out["labels"].dtype == np.int32


def test_mesh_with_faces_round_trip(tmp_path):
  vertices = np.arange(12, dtype=np.float32).reshape(4, 3)
  colors = np.arange(12, dtype=np.uint8).reshape(4, 3)
  scannet.write_mesh(str(tmp_path), "s", vertices, colors, np.array([1, 2, 3, 40]),
                     faces=np.array([[0, 1, 2], [1, 2, 3]]))
  out = scannet.read_mesh(str(tmp_path), "s")
  np.testing.assert_array_equal(out["points"], vertices)
  np.testing.assert_array_equal(out["labels"], [1, 2, 3, 40])


@pytest.mark.parametrize("kind", sorted(dummy_data.MESH_DAMAGE))
def test_damaged_mesh_raises_value_error_naming_the_file(scene, kind):
  scene_dir, _ = scene
  _, path = dummy_data.damage_mesh(scene_dir, SCENE, kind)
  with pytest.raises(ValueError) as info:
    scannet.read_mesh(scene_dir, SCENE)
  assert str(info.value).startswith(path)


def test_label_map_round_trip(tmp_path):
  path = str(tmp_path / scannet.LABEL_MAP_FILE)
  scannet.write_label_map(path, dummy_data.LABEL_MAP)
  assert scannet.read_label_map(path) == {raw: nyu40 for raw, (_, nyu40)
                                          in dummy_data.LABEL_MAP.items()}


@pytest.mark.parametrize("content, match", [
    (None, "missing label map"),
    ("id\tcategory\n1\twall\n", "needs the columns"),
    ("id\traw_category\tnyu40id\n1\twall\tone\n", "non-integer"),
    ("id\traw_category\tnyu40id\n1\twall\t1\n2\tchair\n", "non-integer"),
], ids=["missing", "no_nyu40id_column", "non_integer", "short_row"])
def test_malformed_label_map_raises_value_error_naming_the_file(tmp_path, content, match):
  path = str(tmp_path / scannet.LABEL_MAP_FILE)
  if content is not None:
    with open(path, "w") as f:
      f.write(content)
  with pytest.raises(ValueError, match=match) as info:
    scannet.read_label_map(path)
  assert str(info.value).startswith(path)


def test_uint16_writer_refuses_out_of_range_values(tmp_path):
  with pytest.raises(ValueError, match="uint16 range"):
    scannet.write_frame(str(tmp_path), 0, color=np.zeros((2, 2, 3)),
                        depth=np.full((2, 2), 70000), cam_to_world=np.eye(4))
