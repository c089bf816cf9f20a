"""What the two pretraining data paths share: PPKT's frames (`pipeline`) and PointContrast's
frame pairs (`frame_pairs`).

Both read RGB-D frames (the `scannet_frames` features), back-project their depth with the same
valid range, read point colours through the colour camera, and build their host half as the
same Grain dataset: a random-access source, shuffled per epoch, repeated, augmented by a
generator seeded by (seed, global position), and batched to [devices, per_device, ...] with
each process reading only its slice of every global batch.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from p2p_jax import geometry

# Fields of a frame record that the pipelines read (the `scannet_frames` feature names).
CAMERA_FIELDS = ("depth_intrinsics", "color_intrinsics", "color_from_depth", "cam_to_world")
# What the device halves read of a frame: the depth map and its cameras.
GEOMETRY_FIELDS = ("depth",) + CAMERA_FIELDS
FRAME_FIELDS = ("image",) + GEOMETRY_FIELDS + ("frame",)


@dataclasses.dataclass(frozen=True)
class DepthRange:
  """The unit and valid range of raw depth, and so which pixels back-project to points.

  The configurations of both paths (`pipeline.PairConfig`, `frame_pairs.MatchConfig` and
  `frame_pairs.OverlapConfig`) carry these three fields flat, with these defaults, and give
  them as a `DepthRange` through `depth_range` (`HasDepthRange`).

  Attributes:
    depth_scale: raw depth units per metre.
    min_depth: nearest valid depth in metres.
    max_depth: farthest valid depth in metres.
  """
  depth_scale: float = 1000.0
  min_depth: float = 0.1
  max_depth: float = 10.0

  def back_project(self, depth: jax.Array, intrinsics: jax.Array,
                   cam_to_world: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """`geometry.back_project` with this range: (points [..., H, W, 3], valid [..., H, W])."""
    return geometry.back_project(depth, intrinsics, cam_to_world, depth_scale=self.depth_scale,
                                 min_depth=self.min_depth, max_depth=self.max_depth)


class HasDepthRange:
  """Mixin for configurations with the fields `depth_scale`, `min_depth` and `max_depth`.

  The fields stay flat in each configuration rather than held as one `DepthRange` field, so
  their keyword arguments and `dataclasses.asdict` (stored with mined frame pairs and
  compared when they are loaded) are unchanged.
  """

  @property
  def depth_range(self) -> DepthRange:
    return DepthRange(self.depth_scale, self.min_depth, self.max_depth)


# --------------------------------------------------------------------------------------------
# Device side (pure JAX).


def color_pixels(frame: dict[str, jax.Array],
                 cam_points: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Where points of the depth camera appear in the colour image.

  Args:
    frame: one frame's "depth" [H, W], "color_from_depth" [4, 4] and "color_intrinsics" [3, 3];
      the colour image has the depth map's size (scannet_frames resizes it).
    cam_points: [..., 3] points in the depth camera's coordinates.

  Returns:
    pixels: [..., 2] float32 (row, col) in the colour image.
    visible: [...] bool, in front of the colour camera and inside its image.
  """
  pixels, _, visible = geometry.project(
      geometry.transform_points(frame["color_from_depth"], cam_points),
      frame["color_intrinsics"], None, frame["depth"].shape)
  return pixels, visible


def point_colors(image: jax.Array, pixels: jax.Array, colors: bool = True) -> jax.Array:
  """float32 RGB in [0, 1] of `image` [H, W, 3] uint8 at the nearest pixel to each `pixels`
  [..., 2] (clamped to the image); a constant grey (0.5) when not `colors`, so the student
  learns from geometry alone."""
  height, width = image.shape[:2]
  at = jnp.clip(jnp.round(pixels), 0, jnp.array([height - 1, width - 1])).astype(jnp.int32)
  out = geometry.gather_pixels(image, at).astype(jnp.float32) / 255.0
  return out if colors else jnp.full_like(out, 0.5)


def vmap_leading(fn, lead: int):
  """`fn` vmapped over `lead` leading axes of every argument."""
  for _ in range(lead):
    fn = jax.vmap(fn)
  return fn


# --------------------------------------------------------------------------------------------
# Host side (Grain + NumPy).


def _stack(records: Sequence[dict[str, np.ndarray]], lead: tuple[int, ...]):
  return {k: np.stack([r[k] for r in records]).reshape(lead + np.shape(records[0][k]))
          for k in records[0]}


def process_batches(ds: grain.MapDataset, *, num_devices: int, per_device_batch: int,
                    process_index: int, process_count: int) -> grain.MapDataset:
  """This process's slices [num_devices, per_device_batch, ...] of the global batches of `ds`.

  Global batch i is the elements [i G, (i + 1) G) of `ds` (G = num_devices x per_device_batch
  x process_count), and process p takes [p L, (p + 1) L) of it (L = G / process_count). Lazy:
  batching and slicing only decide which elements a process reads, so each process reads and
  augments just its own slice.
  """
  lead = (num_devices, per_device_batch)
  ds = ds.batch(num_devices * per_device_batch, drop_remainder=True,
                batch_fn=lambda records: _stack(records, lead))
  return ds[process_index::process_count]


def batched_dataset(ds: grain.MapDataset,
                    augment: Callable[[Any, np.random.Generator], dict[str, np.ndarray]],
                    *,
                    read: Callable[[Any], Any] | None = None,
                    seed: int,
                    num_devices: int,
                    per_device_batch: int,
                    num_epochs: int | None,
                    shuffle: bool,
                    process_index: int | None,
                    process_count: int | None,
                    holds: tuple[str, str]) -> grain.MapDataset:
  """The host half of either path: `ds` shuffled, repeated, read, augmented and batched.

  Deterministic and independent of how the devices are spread over processes: the elements
  are shuffled (reshuffled every epoch) into one global order, global batch i is the elements
  [i G, (i + 1) G) of it with G = num_devices x per_device_batch x process_count, and process p
  reads and augments only its slice [p L, (p + 1) L) of each (L = G / process_count). Every
  element's augmentation is drawn from a generator seeded by (seed, global position), so a
  resumed run that restarts at batch i sees the same data.

  Args:
    ds: the random-access elements, one epoch.
    augment: (element, generator) -> fixed-shape arrays.
    read: optional element -> what `augment` takes (e.g. a pair of indices -> its frames),
      applied lazily after the shuffle.
    seed: seeds the shuffle and every element's augmentation.
    num_devices: this process's devices (the leading batch axis, for pmap).
    per_device_batch: elements per device.
    num_epochs: None repeats forever.
    shuffle: shuffle the elements each epoch.
    process_index: this process's slice (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    holds: (what `ds` is, what its elements are) for the error of a too short `ds`, e.g.
      ("the source", "frames").

  Returns:
    A `grain.MapDataset` of this process's batches [num_devices, per_device_batch, ...].

  Raises:
    ValueError: if `ds` holds fewer elements than one global batch.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local = num_devices * per_device_batch
  if len(ds) < local * process_count:
    raise ValueError(f"{holds[0]} holds {len(ds)} {holds[1]}, fewer than one global batch of "
                     f"{process_count} processes x {num_devices} devices x {per_device_batch}")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if read is not None:
    ds = ds.map(read)
  ds = ds.random_map(augment, seed=seed)
  return process_batches(ds, num_devices=num_devices, per_device_batch=per_device_batch,
                         process_index=process_index, process_count=process_count)

