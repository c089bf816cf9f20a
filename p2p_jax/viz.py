"""Pictures of learnt features: PCA colours, point-cloud exports and image panels.

    colors = pca_colors(features, mask)          # [n, C] -> [n, 3] in [0, 1]
    write_ply("scene.ply", points, colors)       # opens in MeshLab / Open3D / trimesh
    save_panels("view.png", [("RGB", rgb), ("2D teacher", image), ...])

Features are coloured by their first three principal components (one per RGB channel, each
stretched between its 1st and 99th percentile), the usual way of looking at dense features.
matplotlib is imported only by `save_panels`.
"""

from collections.abc import Sequence

import numpy as np
import plyfile


def principal_components(features: np.ndarray, mask: np.ndarray | None = None,
                         k: int = 3) -> np.ndarray:
  """The top-k principal directions [C, k] of the valid rows of `features` [n, C], each
  signed so that its largest-magnitude entry is positive (a deterministic sign)."""
  x = np.asarray(features, np.float64)
  if mask is not None:
    x = x[np.asarray(mask, bool)]
  if len(x) < 2:
    raise ValueError(f"PCA needs at least 2 valid rows, got {len(x)}")
  x = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  axes = vt[:k].T
  if axes.shape[1] < k:  # fewer channels than components: pad with zero directions
    axes = np.concatenate([axes, np.zeros((axes.shape[0], k - axes.shape[1]))], axis=1)
  signs = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(k)])
  return axes * np.where(signs == 0, 1.0, signs)


def pca_colors(features: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  """RGB colours [n, 3] in [0, 1] from the first three principal components of the valid
  rows; invalid rows are black."""
  x = np.asarray(features, np.float64)
  valid = np.ones(len(x), bool) if mask is None else np.asarray(mask, bool)
  axes = principal_components(x, valid)
  projected = (x - x[valid].mean(axis=0)) @ axes
  low, high = np.percentile(projected[valid], [1, 99], axis=0)
  colors = np.clip((projected - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)
  return np.where(valid[:, None], colors, 0.0).astype(np.float32)


def write_ply(path: str, points: np.ndarray, colors: np.ndarray,
              labels: np.ndarray | None = None) -> None:
  """Writes a binary PLY point cloud with uint8 vertex colours (and an optional int32
  `label` per vertex).

  Args:
    path: the file to write.
    points: [n, 3] float positions.
    colors: [n, 3] colours in [0, 1].
    labels: optional [n] integer labels.
  """
  points = np.asarray(points, np.float32)
  colors = np.asarray(colors)
  if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
    raise ValueError(f"{path}: points {points.shape} and colors {colors.shape} must both be "
                     "[n, 3]")
  fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
            ("blue", "u1")] + ([("label", "i4")] if labels is not None else [])
  vertex = np.empty(len(points), dtype=fields)
  for i, axis in enumerate("xyz"):
    vertex[axis] = points[:, i]
  rgb = np.round(np.clip(colors, 0.0, 1.0) * 255).astype(np.uint8)
  for i, channel in enumerate(("red", "green", "blue")):
    vertex[channel] = rgb[:, i]
  if labels is not None:
    vertex["label"] = np.asarray(labels, np.int32)
  plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(path)


def splat(pixels: np.ndarray, colors: np.ndarray, image_hw: tuple[int, int],
          mask: np.ndarray | None = None) -> np.ndarray:
  """An image [h, w, 3] with `colors` [n, 3] at integer `pixels` [n, 2] (row, col); pixels
  with no point stay white."""
  image = np.ones(tuple(image_hw) + (3,), np.float32)
  pixels = np.asarray(pixels)
  keep = np.ones(len(pixels), bool) if mask is None else np.asarray(mask, bool)
  keep &= ((pixels[:, 0] >= 0) & (pixels[:, 0] < image_hw[0]) & (pixels[:, 1] >= 0)
           & (pixels[:, 1] < image_hw[1]))
  image[pixels[keep, 0], pixels[keep, 1]] = colors[keep]
  return image


def save_panels(path: str, panels: Sequence[tuple[str, np.ndarray]], title: str = "") -> None:
  """Saves images side by side as a PNG, each under its caption."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
  for ax, (caption, image) in zip(axes[0], panels):
    ax.imshow(np.clip(image, 0, 1) if image.dtype.kind == "f" else image)
    ax.set_title(caption, fontsize=9)
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
