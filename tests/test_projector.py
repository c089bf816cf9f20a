"""The upsampling feature projection layer against torch's F.interpolate, and path (a) == (b)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from p2p_jax.models import projector


def torch_upl(feature_map, kernel, bias, image_hw, align_corners):
  """The PyTorch formulation: 1x1 conv, F.interpolate bilinear, F.normalize over channels."""
  x = torch.tensor(np.array(feature_map)).permute(0, 3, 1, 2).double()
  w = torch.tensor(np.array(kernel)).double().T[:, :, None, None]
  y = F.conv2d(x, w, torch.tensor(np.array(bias)).double())
  y = F.interpolate(y, size=image_hw, mode="bilinear", align_corners=align_corners)
  return F.normalize(y, dim=1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("align_corners", [True, False])
def test_dense_path_matches_torch_interpolate(align_corners):
  rng = np.random.default_rng(0)
  fmap = rng.normal(size=(2, 8, 10, 16)).astype(np.float32)  # layer4 of a 240x320 input
  model = projector.UpsamplingProjector(features=8, align_corners=align_corners)
  variables = model.init(jax.random.key(0), fmap, (240, 320))
  dense, aux = jax.jit(lambda v, f: model.apply(v, f, (240, 320)))(variables, fmap)
  assert dense.shape == (2, 240, 320, 8) and aux["projected"].shape == (2, 8, 10, 8)
  conv = variables["params"]["conv1x1"]
  ref = torch_upl(fmap, conv["kernel"], conv["bias"], (240, 320), align_corners)
  np.testing.assert_allclose(dense, ref, atol=1e-5)


@pytest.mark.parametrize("align_corners", [True, False])
def test_sampling_at_pixels_equals_dense_then_gather(align_corners):
  rng = np.random.default_rng(1)
  fmap = rng.normal(size=(3, 15, 20, 32)).astype(np.float32)  # layer4 of 480x640
  image_hw = (480, 640)
  pixels = np.stack([rng.integers(0, 480, size=(3, 500)), rng.integers(0, 640, size=(3, 500))], -1)
  pixels[:, :4] = [[0, 0], [479, 639], [0, 639], [479, 0]]  # the corners
  model = projector.UpsamplingProjector(features=16, align_corners=align_corners)
  variables = model.init(jax.random.key(1), fmap, image_hw)
  dense, _ = model.apply(variables, fmap, image_hw, method=model.dense)
  sampled, _ = jax.jit(lambda v, f, p: model.apply(v, f, image_hw, p))(variables, fmap, pixels)
  gathered = projector.gather_dense(dense, pixels)
  np.testing.assert_allclose(sampled, gathered, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(sampled, axis=-1), 1.0, rtol=1e-5)


def test_gradients_of_both_paths_agree():
  rng = np.random.default_rng(2)
  fmap = rng.normal(size=(1, 4, 5, 8)).astype(np.float32)
  pixels = np.stack([rng.integers(0, 64, size=(1, 50)), rng.integers(0, 80, size=(1, 50))], -1)
  model = projector.UpsamplingProjector(features=4)
  variables = model.init(jax.random.key(2), fmap, (64, 80))
  target = rng.normal(size=(1, 50, 4)).astype(np.float32)

  def loss_dense(params):
    dense, _ = model.apply({"params": params}, fmap, (64, 80), method=model.dense)
    return jnp.sum(projector.gather_dense(dense, pixels) * target)

  def loss_sampled(params):
    return jnp.sum(model.apply({"params": params}, fmap, (64, 80), pixels)[0] * target)

  g_dense = jax.grad(loss_dense)(variables["params"])
  g_sampled = jax.grad(loss_sampled)(variables["params"])
  for a, b in zip(jax.tree.leaves(g_dense), jax.tree.leaves(g_sampled)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bilinear_sample_reads_exact_values_on_the_grid():
  fmap = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 3, 4, 2)
  # align_corners: output pixel (r, c) of a 5x7 image reads (r / 2, c / 2) of the 3x4 map.
  pix = np.array([[[0, 0], [2, 4], [4, 6], [1, 1]]])
  out = projector.bilinear_sample(fmap, pix, (5, 7), align_corners=True)
  np.testing.assert_allclose(out[0, 0], fmap[0, 0, 0])
  np.testing.assert_allclose(out[0, 1], fmap[0, 1, 2])
  np.testing.assert_allclose(out[0, 2], fmap[0, 2, 3])
  np.testing.assert_allclose(out[0, 3], fmap[0, :2, :2].mean(axis=(0, 1)))
