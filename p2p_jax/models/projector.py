"""PPKT's upsampling feature projection layer (UPL, Liu et al. 2021, Sec. 3.2).

A trainable 1x1 convolution maps the teacher's stride-32 feature map to D channels, bilinear
upsampling brings it back to the input resolution, and the features are L2-normalised over
channels. Two ways to read the features of the K paired pixels:

  (a) `dense`: materialise the [B, H, W, D] map, then gather the K pixels (the paper's path);
  (b) `at_pixels`: sample the low-resolution projected map bilinearly at the K pixels and
      normalise after sampling.

The 1x1 convolution and bilinear interpolation commute (interpolation weights sum to one, so
even the bias commutes), hence (b) equals (a) while touching K pixels instead of H x W.

Sampling convention (both paths): pixel (row, col) of the H x W image samples the h x w map at
  align_corners=True:  y = row (h - 1) / (H - 1)            (PyTorch align_corners=True)
  align_corners=False: y = clip((row + 0.5) h / H - 0.5, 0) (PyTorch align_corners=False),
and likewise for columns, with the same size H x W the map is upsampled to.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from p2p_jax.losses import l2_normalize


def _source_coords(out_index: jax.Array, in_size: int, out_size: int,
                   align_corners: bool) -> jax.Array:
  out_index = out_index.astype(jnp.float32)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return out_index * scale
  return jnp.maximum((out_index + 0.5) * (in_size / out_size) - 0.5, 0.0)


def bilinear_sample(feature_map: jax.Array, pixels: jax.Array, image_hw: tuple[int, int], *,
                    align_corners: bool = True) -> jax.Array:
  """Bilinearly samples a low-resolution map at full-resolution pixel coordinates.

  Args:
    feature_map: [B, h, w, C].
    pixels: [B, K, 2] (row, col) integer or float pixel coordinates of the H x W image.
    image_hw: (H, W), the resolution the map stands for.
    align_corners: sampling convention, see the module docstring.

  Returns:
    [B, K, C], equal to upsampling the map to H x W and reading the pixels.
  """
  _, h, w, _ = feature_map.shape
  y = _source_coords(pixels[..., 0], h, image_hw[0], align_corners)
  x = _source_coords(pixels[..., 1], w, image_hw[1], align_corners)
  y0 = jnp.clip(jnp.floor(y), 0, h - 1)
  x0 = jnp.clip(jnp.floor(x), 0, w - 1)
  wy = (y - y0)[..., None]
  wx = (x - x0)[..., None]
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
  read = jax.vmap(lambda f, r, c: f[r, c])
  top = read(feature_map, y0, x0) * (1 - wx) + read(feature_map, y0, x1) * wx
  bottom = read(feature_map, y1, x0) * (1 - wx) + read(feature_map, y1, x1) * wx
  return top * (1 - wy) + bottom * wy


def upsample(feature_map: jax.Array, image_hw: tuple[int, int], *,
             align_corners: bool = True) -> jax.Array:
  """Bilinear upsampling [B, h, w, C] -> [B, H, W, C] with `jax.image` (no antialiasing)."""
  batch, h, w, channels = feature_map.shape
  height, width = image_hw
  shape = (batch, height, width, channels)
  if not align_corners:
    return jax.image.resize(feature_map, shape, "linear", antialias=False)
  if min(h, w, height, width) < 2:
    raise ValueError(f"align_corners upsampling needs maps of at least 2x2, got {h}x{w} -> "
                     f"{height}x{width}")
  # Output pixel o samples input o (h - 1) / (H - 1): scale (H - 1) / (h - 1) about the
  # first pixel centre, i.e. translation 0.5 - 0.5 scale in jax.image's half-pixel convention.
  scale = jnp.array([(height - 1) / (h - 1), (width - 1) / (w - 1)], jnp.float32)
  return jax.image.scale_and_translate(feature_map, shape, (1, 2), scale, 0.5 - 0.5 * scale,
                                       "linear", antialias=False)


class UpsamplingProjector(nn.Module):
  """The upsampling feature projection layer (UPL).

  Attributes:
    features: output channels D (128 in PPKT).
    align_corners: bilinear convention (True as in the PyTorch reimplementation of PPKT).
  """
  features: int = 128
  align_corners: bool = True

  def setup(self):
    self.project = nn.Dense(self.features, name="conv1x1")  # a 1x1 convolution

  def dense(self, feature_map: jax.Array, image_hw: tuple[int, int]):
    """Path (a): the full-resolution normalised map.

    Args:
      feature_map: [B, h, w, C_in] teacher features (layer4).
      image_hw: (H, W) of the input image.

    Returns:
      ([B, H, W, D] L2-normalised features, {"projected": [B, h, w, D]}).
    """
    projected = self.project(feature_map)
    full = upsample(projected, image_hw, align_corners=self.align_corners)
    return l2_normalize(full), {"projected": projected}

  def at_pixels(self, feature_map: jax.Array, pixels: jax.Array, image_hw: tuple[int, int]):
    """Path (b): normalised features of given pixels, without the full-resolution map.

    Args:
      feature_map: [B, h, w, C_in].
      pixels: [B, K, 2] (row, col) pixel coordinates of the H x W image.
      image_hw: (H, W).

    Returns:
      ([B, K, D] L2-normalised features, {"projected": [B, h, w, D]}).
    """
    projected = self.project(feature_map)
    sampled = bilinear_sample(projected, pixels, image_hw, align_corners=self.align_corners)
    return l2_normalize(sampled), {"projected": projected}

  def __call__(self, feature_map: jax.Array, image_hw: tuple[int, int],
               pixels: jax.Array | None = None):
    """`at_pixels` when `pixels` are given, else `dense`."""
    if pixels is None:
      return self.dense(feature_map, image_hw)
    return self.at_pixels(feature_map, pixels, image_hw)


def gather_dense(dense: jax.Array, pixels: jax.Array) -> jax.Array:
  """Reads a [B, H, W, D] map at integer pixels [B, K, 2] (row, col) -> [B, K, D]."""
  return jax.vmap(lambda m, p: m[p[:, 0], p[:, 1]])(dense, pixels)
