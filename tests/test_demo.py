"""The demo script end to end, and the consistency of the frames it renders."""

import numpy as np

from experiments import demo
from p2p_jax import geometry


def test_rendered_frames_back_project_onto_the_room_surfaces():
  depth, labels, intrinsics, poses = demo.make_frames(3, np.random.default_rng(0))
  points, valid = geometry.back_project(depth, intrinsics, poses)
  points, valid = np.asarray(points), np.asarray(valid)
  assert valid.mean() > 0.9
  p = points[valid]
  assert np.all(p > -0.01) and np.all(p < demo.ROOM + 0.01)
  # Floor pixels (label 4: the z = 0 face) back-project onto z = 0 (depth is rounded to mm).
  floor = valid & (labels == 4)
  assert floor.sum() > 0
  np.testing.assert_allclose(points[floor][:, 2], 0.0, atol=0.01)


def test_demo_trains_on_eight_devices(capsys):
  assert demo.main(["--steps", "12", "--frames", "2"]) == 0
  out = capsys.readouterr().out
  assert "on 8 device(s)" in out and "OK: loss fell" in out
