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

# Fields of a frame record that the pipeline reads (the `scannet_frames` feature names).
FRAME_FIELDS = ("image", "depth", "depth_intrinsics", "color_intrinsics", "color_from_depth",
                "cam_to_world", "frame")


@dataclasses.dataclass(frozen=True)
class PairConfig:
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
    depth_scale: raw depth units per metre.
    min_depth: nearest valid depth in metres.
    max_depth: farthest valid depth in metres.
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
  depth_scale: float = 1000.0
  min_depth: float = 0.1
  max_depth: float = 10.0
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
    record: a frame with the `FRAME_FIELDS` (the `scannet_frames` features), and its source
      "index" when `config.views_per_frame` > 0.
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
      "depth_intrinsics": np.asarray(record["depth_intrinsics"], np.float32),
      "color_intrinsics": np.asarray(record["color_intrinsics"], np.float32),
      "color_from_depth": np.asarray(record["color_from_depth"], np.float32),
      "cam_to_world": np.asarray(record["cam_to_world"], np.float32),
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


def _augmentation(rotation, scale, center):
  """The 4x4 affine p -> scale R_z(rotation) (p - center), and its inverse."""
  rot = geometry.rotation_about_z(rotation)
  # Matrix-vector products written out: exact on TPU, where matmuls default to bfloat16.
  rotated_center = jnp.sum(rot * center[None, :], axis=1)
  forward = geometry.rigid_transform(scale * rot, -scale * rotated_center)
  inverse = geometry.rigid_transform(rot.T / scale, center)
  return forward, inverse


def _pairs_one(frame: dict[str, jax.Array], config: PairConfig) -> dict[str, jax.Array]:
  height, width = frame["depth"].shape
  cam_points, valid = geometry.back_project(
      frame["depth"], frame["depth_intrinsics"], depth_scale=config.depth_scale,
      min_depth=config.min_depth, max_depth=config.max_depth)
  # Where each depth pixel's point appears in the colour image, then in the teacher's image.
  color_pixels, _, visible = geometry.project(
      geometry.transform_points(frame["color_from_depth"], cam_points),
      frame["color_intrinsics"], None, (height, width))
  image_pixels = jnp.round(frame_to_image_pixels(color_pixels, frame["crop"], frame["flip"],
                                                 config.image_hw)).astype(jnp.int32)
  in_image = (visible & (image_pixels[..., 0] >= 0) & (image_pixels[..., 0] < config.image_hw[0])
              & (image_pixels[..., 1] >= 0) & (image_pixels[..., 1] < config.image_hw[1]))

  sample_key, jitter_key = jax.random.split(jax.random.key(frame["seed"]))
  sample = geometry.sample_pairs(sample_key, valid, config.num_points, config.num_pairs,
                                 pair_valid=in_image)
  world = geometry.transform_points(frame["cam_to_world"], cam_points)
  points = geometry.gather_pixels(world, sample.point_pixels)
  colour_at = jnp.clip(jnp.round(geometry.gather_pixels(color_pixels, sample.point_pixels)),
                       0, jnp.array([height - 1, width - 1])).astype(jnp.int32)
  colors = geometry.gather_pixels(frame["frame_image"], colour_at).astype(jnp.float32) / 255.0
  if not config.colors:
    colors = jnp.full_like(colors, 0.5)

  # 3D augmentation about the cloud's horizontal centre; gravity (z) is kept.
  mask = sample.point_mask
  count = jnp.maximum(jnp.sum(mask), 1)
  center_xy = jnp.sum(jnp.where(mask[:, None], points[:, :2], 0.0), axis=0) / count
  center = jnp.concatenate([center_xy, jnp.zeros(1)])
  augment, world_from_points = _augmentation(frame["rotation"], frame["scale"], center)
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
  fn = vmap_leading(functools.partial(_pairs_one, config=config), batch["depth"].ndim - 2)
  out = fn({k: batch[k] for k in FRAME_FIELDS[1:-1] + (
      "frame_image", "crop", "flip", "rotation", "scale", "seed")})
  return {"image": batch["image"], **out} if "image" in batch else out


@functools.partial(jax.jit, static_argnums=1)
def make_pairs_jit(batch: dict[str, jax.Array], config: PairConfig) -> dict[str, jax.Array]:
  """`make_pairs` compiled, for use on the host CPU or outside a training step."""
  return make_pairs(batch, config)


def vmap_leading(fn, lead: int):
  """`fn` vmapped over `lead` leading axes of every argument."""
  for _ in range(lead):
    fn = jax.vmap(fn)
  return fn


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

  Deterministic and independent of how the devices are spread over processes: the frames are
  shuffled (reshuffled every epoch) into one global order, global batch i is the frames
  [i G, (i + 1) G) of it with G = num_devices x per_device_batch x process_count, and process p
  reads and augments only its slice [p L, (p + 1) L) of each (L = G / process_count). Every
  frame's augmentation is drawn from a generator seeded by (seed, global position), so a
  resumed run that restarts at batch i sees the same data, and 2 processes of 2 devices train
  on exactly the batches of 1 process of 4 devices.

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
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local = num_devices * per_device_batch
  # Grain passes later epochs' positions here: the source index is the position mod its size.
  ds = grain.MapDataset.source(source).map_with_index(
      lambda i, r: {**r, "index": i % len(source)})
  if len(ds) < local * process_count:
    raise ValueError(f"the source holds {len(ds)} frames, fewer than one global batch of "
                     f"{process_count} processes x {num_devices} devices x {per_device_batch}")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.random_map(functools.partial(augment_frame, config=config, seed=seed, cache=cache),
                     seed=seed)
  return process_batches(ds, num_devices=num_devices, per_device_batch=per_device_batch,
                         process_index=process_index, process_count=process_count)


def prefetch(dataset: grain.MapDataset, *, start: int = 0, num_threads: int = 2,
             buffer_size: int = 4) -> grain.DatasetIterator:
  """Iterates `dataset` from batch `start`, preparing batches in background threads.

  The iterator's `get_state()` / `set_state()` checkpoint the position.
  """
  it = iter(dataset[start:].to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=buffer_size)))
  return it
