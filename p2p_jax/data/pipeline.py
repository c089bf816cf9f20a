"""The pretraining input pipeline: RGB-D frames -> fixed-shape pixel-point batches.

Two halves, so that the heavy geometry runs where the model runs:

  host (`pretrain_dataset`, Grain + NumPy): reads frames from a random-access source (e.g.
    `tfds.data_source` of `scannet_frames`), shuffles them per epoch, gives each process its
    slice of every global batch,
    draws each frame's augmentation from a generator seeded by (seed, epoch, index), crops,
    resizes and flips the teacher's image, and batches to [devices, per_device, ...];
  device (`make_pairs`, pure JAX): back-projects the depth, samples N points and K pixel-point
    pairs, maps each pair's pixel through the colour camera and the 2D augmentation into the
    teacher's image, and applies the 3D augmentation (rotation about gravity, scaling,
    jitter). It is jittable and vmapped over the batch: call it inside the pmapped training
    step, or on the host through `make_pairs_jit`.

PointContrast's data path (`frame_pairs`) reads the same frames; the pieces the two share
(frame fields, depth range, colour lookup, the Grain dataset) are in `frames`.

Pairs stay exact under augmentation: a pair's pixel is the projection of its own point into
the augmented image (rounded to the nearest pixel, so within 0.5 px), pairs whose pixel leaves
the crop are never drawn, and 3D transforms act on points, not on the index that pairs them.

Conventions: pixels (row, col) with integer coordinates at pixel centres (see geometry.py);
a crop (top, left, height, width) of the frame resized to `image_hw` maps
row -> (row - top + 0.5) image_h / height - 0.5, and a flip maps col -> image_w - 1 - col.
"""

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from p2p_jax import geometry
from p2p_jax.data import frames


@dataclasses.dataclass(frozen=True)
class PairConfig(frames.HasDepthRange):
  """Shapes and augmentations of pretraining batches.

  Attributes:
    image_hw: size of the teacher's input image after the crop.
    num_points: N points per frame (padded and masked when a frame has fewer valid pixels).
    num_pairs: K pixel-point pairs per frame, K <= N.
    crop_scale: range of the crop's area as a fraction of the frame (torchvision's scale).
    crop_ratio: range of the crop's aspect ratio relative to `image_hw`'s (log-uniform).
    flip_probability: probability of a horizontal flip of the teacher's image.
    views_per_frame: 0 draws a fresh crop and flip every time a frame is used; V > 0 fixes V
      views (crop + flip) per frame, drawn once from (seed, frame index, view), and each use
      picks one of them, so the teacher's features of every view can be cached
      (`p2p_jax.data.teacher_cache`). The 3D augmentations stay fresh either way.
    max_rotation: rotation about the gravity axis z, uniform in [-max, max] radians.
    scale_range: isotropic scaling of the points, uniform in the range.
    jitter_sigma: standard deviation of Gaussian point jitter, in metres.
    jitter_clip: jitter is clipped to [-clip, clip].
    depth_scale, min_depth, max_depth: the valid depth (`frames.DepthRange`; `depth_range`).
    colors: False gives the student no colour: every point's colour input is a constant grey
      (0.5), so it learns from geometry alone.
  """
  image_hw: tuple[int, int] = (240, 320)
  num_points: int = 8192
  num_pairs: int = 4096
  crop_scale: tuple[float, float] = (0.5, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_probability: float = 0.5
  views_per_frame: int = 0
  max_rotation: float = math.pi
  scale_range: tuple[float, float] = (0.9, 1.1)
  jitter_sigma: float = 0.005
  jitter_clip: float = 0.02
  depth_scale: float = frames.DepthRange.depth_scale
  min_depth: float = frames.DepthRange.min_depth
  max_depth: float = frames.DepthRange.max_depth
  colors: bool = True


def random_crop(rng: np.random.Generator, frame_hw: tuple[int, int],
                config: PairConfig) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box: (top, left, height, width) in frame pixels."""
  height, width = frame_hw
  area = height * width
  target_aspect = config.image_hw[1] / config.image_hw[0]
  log_ratio = np.log(config.crop_ratio)
  for _ in range(10):
    crop_area = area * rng.uniform(*config.crop_scale)
    aspect = target_aspect * math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(crop_area * aspect)))
    h = int(round(math.sqrt(crop_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  # Fallback: the largest centred crop with the target aspect ratio.
  h, w = (height, min(width, round(height * target_aspect)))
  if w == width:
    h = min(height, round(width / target_aspect))
  return (height - h) // 2, (width - w) // 2, h, w


def frame_view(index: int, view: int, seed: int, frame_hw: tuple[int, int],
               config: PairConfig) -> tuple[tuple[int, int, int, int], bool]:
  """The crop box and flip of fixed view `view` of the frame at source `index`."""
  rng = np.random.default_rng([seed, index, view])
  crop = random_crop(rng, frame_hw, config)
  return crop, bool(rng.uniform() < config.flip_probability)


def teacher_image(image: np.ndarray, crop: tuple[int, int, int, int], flip: bool,
                  image_hw: tuple[int, int]) -> np.ndarray:
  """The teacher's input: the crop box (top, left, height, width) resized (bilinear) to
  `image_hw`, then flipped horizontally when `flip`."""
  top, left, h, w = crop
  out = Image.fromarray(image).resize((image_hw[1], image_hw[0]), Image.BILINEAR,
                                      box=(left, top, left + w, top + h))
  out = np.asarray(out)
  return np.ascontiguousarray(out[:, ::-1] if flip else out)


def augment_frame(record: dict[str, Any], rng: np.random.Generator, config: PairConfig, *,
                  seed: int = 0, cache=None) -> dict[str, np.ndarray]:
  """Host half: draws a frame's augmentation and makes the teacher's image.

  Args:
    record: a frame with the `frames.FRAME_FIELDS` (the `scannet_frames` features), and its
      source "index" when `config.views_per_frame` > 0.
    rng: the frame's generator; the output is a function of the record and the generator.
    config: the pipeline configuration.
    seed: the run's seed, which fixes the views when `config.views_per_frame` > 0.
    cache: a `teacher_cache.TeacherCache` of the views: the output then carries the cached
      "teacher_features" of the chosen view instead of the "image".

  Returns:
    Fixed-shape arrays: "image" uint8 [h, w, 3] (the augmented teacher input) or, with a
    cache, "teacher_features" float16 [h', w', C] of it, "frame_image" uint8 [H, W, 3]
    (the whole frame, for point colours), "depth" uint16 [H, W], the camera fields, "crop"
    int32 (top, left, height, width), "flip" bool, "rotation" and "scale" float32, "seed"
    uint32 (for the device half's sampling and jitter), "frame" int32.
  """
  image = np.asarray(record["image"], np.uint8)
  depth = np.asarray(record["depth"])
  if image.shape[:2] != depth.shape or image.ndim != 3:
    raise ValueError(f"frame {record.get('scene', '?')}/{record.get('frame', '?')}: image "
                     f"{image.shape} does not match depth {depth.shape} (build scannet_frames, "
                     "which resizes colour to the depth resolution)")
  if config.views_per_frame:
    view = int(rng.integers(config.views_per_frame))
    crop, flip = frame_view(int(record["index"]), view, seed, depth.shape, config)
  else:
    if cache is not None:
      raise ValueError("a teacher cache needs fixed views: set views_per_frame > 0")
    crop = random_crop(rng, depth.shape, config)
    flip = bool(rng.uniform() < config.flip_probability)
  if cache is None:
    teacher = {"image": teacher_image(image, crop, flip, config.image_hw)}
  else:
    teacher = {"teacher_features": cache.features(int(record["index"]))[view]}
  return {
      **teacher,
      "frame_image": image,
      "depth": depth.astype(np.uint16),
      **{k: np.asarray(record[k], np.float32) for k in frames.CAMERA_FIELDS},
      "crop": np.array(crop, np.int32),
      "flip": np.array(flip),
      "rotation": np.float32(rng.uniform(-config.max_rotation, config.max_rotation)),
      "scale": np.float32(rng.uniform(*config.scale_range)),
      "seed": np.uint32(rng.integers(0, 2**32)),
      "frame": np.int32(record["frame"]),
  }


def frame_to_image_pixels(pixels: jax.Array, crop: jax.Array, flip: jax.Array,
                          image_hw: tuple[int, int]) -> jax.Array:
  """Maps frame pixels (row, col) [..., 2] into the cropped, resized, flipped image."""
  crop = crop.astype(jnp.float32)
  top, left, height, width = crop[0], crop[1], crop[2], crop[3]
  row = (pixels[..., 0] - top + 0.5) * (image_hw[0] / height) - 0.5
  col = (pixels[..., 1] - left + 0.5) * (image_hw[1] / width) - 0.5
  col = jnp.where(flip, image_hw[1] - 1 - col, col)
  return jnp.stack([row, col], axis=-1)


def _pairs_one(frame: dict[str, jax.Array], config: PairConfig) -> dict[str, jax.Array]:
  cam_points, valid = config.depth_range.back_project(frame["depth"], frame["depth_intrinsics"])
  # Where each depth pixel's point appears in the colour image, then in the teacher's image.
  color_pixels, visible = frames.color_pixels(frame, cam_points)
  image_pixels = jnp.round(frame_to_image_pixels(color_pixels, frame["crop"], frame["flip"],
                                                 config.image_hw)).astype(jnp.int32)
  in_image = (visible & (image_pixels[..., 0] >= 0) & (image_pixels[..., 0] < config.image_hw[0])
              & (image_pixels[..., 1] >= 0) & (image_pixels[..., 1] < config.image_hw[1]))

  sample_key, jitter_key = jax.random.split(jax.random.key(frame["seed"]))
  sample = geometry.sample_pairs(sample_key, valid, config.num_points, config.num_pairs,
                                 pair_valid=in_image)
  world = geometry.transform_points(frame["cam_to_world"], cam_points)
  points = geometry.gather_pixels(world, sample.point_pixels)
  colors = frames.point_colors(frame["frame_image"],
                               geometry.gather_pixels(color_pixels, sample.point_pixels),
                               config.colors)

  # 3D augmentation about the cloud's horizontal centre; gravity (z) is kept.
  mask = sample.point_mask
  augment, world_from_points = geometry.scaled_rotation_about(
      geometry.rotation_about_z(frame["rotation"]), frame["scale"],
      geometry.horizontal_center(points, mask))
  jitter = jnp.clip(config.jitter_sigma * jax.random.normal(jitter_key, points.shape),
                    -config.jitter_clip, config.jitter_clip)
  points = jnp.where(mask[:, None], geometry.transform_points(augment, points) + jitter, 0.0)
  return {
      "points": points,
      "point_mask": mask,
      "point_colors": jnp.where(mask[:, None], colors, 0.0),
      "pair_pixels": geometry.gather_pixels(image_pixels, sample.pair_pixels),
      "pair_points": sample.pair_points,
      "pair_mask": sample.pair_mask,
      "world_from_points": world_from_points,  # undoes all but the jitter
  }


def make_pairs(batch: dict[str, jax.Array], config: PairConfig) -> dict[str, jax.Array]:
  """Device half: fixed-shape points and pixel-point pairs for a batch of augmented frames.

  Args:
    batch: `augment_frame` outputs stacked with any leading batch axes, e.g.
      [devices, per_device, ...] or [per_device, ...].
    config: the pipeline configuration (static).

  Returns:
    With the same leading axes: "image" uint8 [h, w, 3] (when the batch has it), "points"
    float32 [N, 3] (augmented),
    "point_mask" [N], "point_colors" float32 [N, 3] in [0, 1], "pair_pixels" int32 [K, 2]
    (row, col) in "image", "pair_points" int32 [K] into the points, "pair_mask" [K], and
    "world_from_points" float32 [4, 4], the inverse of the rotation, scaling and centring.
  """
  fn = frames.vmap_leading(functools.partial(_pairs_one, config=config),
                           batch["depth"].ndim - 2)
  out = fn({k: batch[k] for k in frames.GEOMETRY_FIELDS + (
      "frame_image", "crop", "flip", "rotation", "scale", "seed")})
  return {"image": batch["image"], **out} if "image" in batch else out


@functools.partial(jax.jit, static_argnums=1)
def make_pairs_jit(batch: dict[str, jax.Array], config: PairConfig) -> dict[str, jax.Array]:
  """`make_pairs` compiled, for use on the host CPU or outside a training step."""
  return make_pairs(batch, config)


def pretrain_dataset(source: Sequence[dict[str, Any]],
                     config: PairConfig,
                     *,
                     seed: int,
                     num_devices: int,
                     per_device_batch: int,
                     num_epochs: int | None = None,
                     shuffle: bool = True,
                     process_index: int | None = None,
                     process_count: int | None = None,
                     cache=None) -> grain.MapDataset:
  """Host half as a Grain dataset of this process's batches [num_devices, per_device_batch, ...].

  Deterministic and independent of how the devices are spread over processes
  (`frames.batched_dataset`): the frames are reshuffled every epoch into one global order,
  process p reads and augments only its slice of each global batch, and every frame's
  augmentation is drawn from a generator seeded by (seed, global position). So a resumed run
  that restarts at batch i sees the same data, and 2 processes of 2 devices train on exactly
  the batches of 1 process of 4 devices.

  Args:
    source: random-access frames, e.g. `tfds.data_source(...)` of scannet_frames.
    config: the pipeline configuration.
    seed: seeds the shuffle and every frame's augmentation.
    num_devices: this process's devices (the leading batch axis, for pmap).
    per_device_batch: frames per device.
    num_epochs: None repeats forever.
    shuffle: shuffle the frames each epoch.
    process_index: this process's slice (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    cache: a `teacher_cache.TeacherCache` of this source's views: batches then carry the
      teacher's features ("teacher_features") instead of its "image".

  Returns:
    A `grain.MapDataset`; index it (`ds[i]`) for random access, or iterate with `prefetch`.
  """
  # Grain passes later epochs' positions here: the source index is the position mod its size.
  ds = grain.MapDataset.source(source).map_with_index(
      lambda i, r: {**r, "index": i % len(source)})
  return frames.batched_dataset(
      ds, functools.partial(augment_frame, config=config, seed=seed, cache=cache), seed=seed,
      num_devices=num_devices, per_device_batch=per_device_batch, num_epochs=num_epochs,
      shuffle=shuffle, process_index=process_index, process_count=process_count,
      holds=("the source", "frames"))


def prefetch(dataset: grain.MapDataset, *, start: int = 0, num_threads: int = 2,
             buffer_size: int = 4) -> grain.DatasetIterator:
  """Iterates `dataset` from batch `start`, preparing batches in background threads.

  The iterator's `get_state()` / `set_state()` checkpoint the position.
  """
  it = iter(dataset[start:].to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=buffer_size)))
  return it
