"""PCA colours against an eigen-decomposition of the covariance, PLY export, panels."""

import numpy as np
import pytest
import trimesh
from PIL import Image

from p2p_jax import viz


def test_principal_components_match_the_covariance_eigenvectors():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 6)) @ np.diag([5.0, 3.0, 2.0, 0.5, 0.2, 0.1]) @ np.linalg.qr(
      rng.normal(size=(6, 6)))[0]
  mask = rng.uniform(size=500) < 0.8
  x[~mask] = 1e6  # padding must not count
  axes = viz.principal_components(x, mask)
  valid = x[mask]
  values, vectors = np.linalg.eigh(np.cov(valid.T))
  expected = vectors[:, ::-1][:, :3]
  for i in range(3):
    assert abs(abs(axes[:, i] @ expected[:, i]) - 1) < 1e-9
  colors = viz.pca_colors(x, mask)
  assert colors.shape == (500, 3) and colors.min() >= 0 and colors.max() <= 1
  assert np.all(colors[~mask] == 0)
  # The red channel orders points by the first component.
  first = (valid - valid.mean(0)) @ axes[:, 0]
  inside = (first > np.percentile(first, 2)) & (first < np.percentile(first, 98))
  assert np.all(np.diff(colors[mask][inside][np.argsort(first[inside]), 0]) >= 0)
  with pytest.raises(ValueError, match="at least 2 valid rows"):
    viz.principal_components(x, np.zeros(500, bool))


def test_ply_round_trips_through_trimesh(tmp_path):
  rng = np.random.default_rng(1)
  points = rng.normal(size=(100, 3)).astype(np.float32)
  colors = rng.uniform(size=(100, 3))
  path = str(tmp_path / "cloud.ply")
  viz.write_ply(path, points, colors, labels=np.arange(100))
  cloud = trimesh.load(path)
  np.testing.assert_array_equal(np.asarray(cloud.vertices, np.float32), points)
  np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3],
                                np.round(colors * 255).astype(np.uint8))
  with pytest.raises(ValueError, match="cloud.ply: points"):
    viz.write_ply(path, points, colors[:5])


def test_splat_and_panels(tmp_path):
  image = viz.splat(np.array([[0, 0], [2, 3], [9, 9]]), np.array([[1.0, 0, 0], [0, 1, 0],
                                                                   [0, 0, 1]]), (4, 5))
  assert image.shape == (4, 5, 3)
  np.testing.assert_array_equal(image[0, 0], [1, 0, 0])
  np.testing.assert_array_equal(image[2, 3], [0, 1, 0])
  assert np.all(image[1, 1] == 1)  # no point: white; (9, 9) is outside and dropped
  path = str(tmp_path / "panels.png")
  viz.save_panels(path, [("a", image), ("b", np.zeros((4, 5, 3), np.uint8))], title="t")
  assert Image.open(path).size[0] > Image.open(path).size[1]
