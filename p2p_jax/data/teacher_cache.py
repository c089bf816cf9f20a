"""A cache of the frozen teacher's features at the configured layer (layer4, or the layer the
UPL reads), computed once and read every epoch.

The teacher never changes during pretraining, so its features of an image need computing only
once. What it sees is the augmented frame (crop, resize, flip), so only a fixed set of views
can be cached: with `PairConfig.views_per_frame = V`, each frame has V views drawn once from
(seed, frame index, view) (`pipeline.frame_view`), and every use of the frame picks one of
them. A cache holds the teacher's features of all V views of every frame, as float16; with it
the training step skips the teacher, and its result equals the uncached run with the same
views up to float16 rounding of the features (tested). Fresh random crops every epoch
(`views_per_frame = 0`) cannot be cached.

On disk, a directory:
  features.array_record   record i: the raw float16 bytes of [V, h', w', C] for frame i
  cache.json              what the features were computed from, and "record_shape"; opening a
                          cache with other settings is an error naming the file and the field

A cache is complete once cache.json exists: `build_cache` removes it first, writes the
features under a temporary name, renames them, and then writes cache.json under a temporary
name and renames it, so a build killed at any point leaves no cache.json behind.

Records are raw bytes rather than `.npy`: `np.load` parses the `.npy` header with
`ast.literal_eval`, and on CPython 3.11 concurrent AST construction in the loader's threads can
fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905).
"""

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import tqdm
from array_record.python import array_record_data_source, array_record_module

from p2p_jax.data import pipeline

FEATURES = "features.array_record"
METADATA = "cache.json"
FORMAT = "raw float16"


def cache_metadata(*, teacher: str, num_frames: int, seed: int,
                   config: pipeline.PairConfig, **identity: Any) -> dict[str, Any]:
  """What a cache's features depend on; `identity` names the teacher weights and the frames
  (e.g. checkpoint path, data dir, split)."""
  return {"format": FORMAT, "teacher": teacher, "num_frames": num_frames, "seed": seed,
          "image_hw": list(config.image_hw), "views_per_frame": config.views_per_frame,
          "crop_scale": list(config.crop_scale), "crop_ratio": list(config.crop_ratio),
          "flip_probability": config.flip_probability, **identity}


class TeacherCache:
  """Random access to a built cache: `features(i)` is float16 [V, h', w', C] of frame i."""

  def __init__(self, directory: str, expected: dict[str, Any] | None = None):
    self.directory = directory
    path = os.path.join(directory, METADATA)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no teacher cache here (build it with build_cache)")
    with open(path) as f:
      self.metadata = json.load(f)
    for key, value in (expected or {}).items():
      if self.metadata.get(key) != value:
        raise ValueError(f"{path}: field {key!r} is {self.metadata.get(key)!r}, but this run "
                         f"needs {value!r}; delete {directory} to rebuild the cache")
    self._source = array_record_data_source.ArrayRecordDataSource(
        [os.path.join(directory, FEATURES)])
    if len(self._source) != self.metadata["num_frames"]:
      raise ValueError(f"{os.path.join(directory, FEATURES)}: {len(self._source)} records, "
                       f"but {path} says num_frames={self.metadata['num_frames']}")

  def __len__(self) -> int:
    return len(self._source)

  def features(self, index: int) -> np.ndarray:
    shape = self.metadata["record_shape"]
    flat = np.frombuffer(self._source[index], np.float16)
    if flat.size != math.prod(shape):
      raise ValueError(f"{os.path.join(self.directory, FEATURES)}: record {index} holds "
                       f"{flat.size} values, but {METADATA} says record_shape={shape}")
    return flat.reshape(shape)

  def __getstate__(self):  # readers are per process; reopen after pickling
    return {"directory": self.directory, "metadata": self.metadata}

  def __setstate__(self, state):
    self.__init__(state["directory"])
    self.metadata = state["metadata"]


def build_cache(directory: str, source: Sequence[dict[str, Any]],
                teacher_features: Callable[[np.ndarray], jax.Array],
                config: pipeline.PairConfig, *,
                seed: int, metadata: dict[str, Any], batch_size: int = 8,
                progress: bool = True) -> TeacherCache:
  """Computes the teacher's features of every view of every frame and writes the cache.

  Written to a temporary name and renamed at the end, so an interrupted build leaves no
  cache that looks complete.

  Args:
    directory: where the cache goes (created).
    source: the random-access frames the pretraining reads, in the same order.
    teacher_features: uint8 images [B, h, w, 3] -> the teacher's features at the configured
      layer [B, h', w', C], e.g. the module's `teacher_features(teacher, variables, layer)`.
    config: the pipeline configuration; `views_per_frame` must be > 0.
    seed: the pretraining seed, which fixes the views.
    metadata: `cache_metadata(...)` of these settings.
    batch_size: views per teacher call.
    progress: show a progress bar.

  Returns:
    The opened cache.
  """
  views = config.views_per_frame
  if views < 1:
    raise ValueError("a teacher cache needs pairs.views_per_frame > 0: fresh random crops "
                     "every epoch cannot be cached")
  os.makedirs(directory, exist_ok=True)
  if os.path.exists(os.path.join(directory, METADATA)):  # a cache is complete once this exists
    os.remove(os.path.join(directory, METADATA))
  partial = os.path.join(directory, FEATURES + ".partial")
  writer = array_record_module.ArrayRecordWriter(partial, "group_size:1")
  todo = [(i, v) for i in range(len(source)) for v in range(views)]
  pending, record, record_shape = [], None, None
  try:
    for start in tqdm.tqdm(range(0, len(todo), batch_size), desc="teacher cache",
                           disable=not progress):
      chunk = todo[start:start + batch_size]
      images = []
      for index, view in chunk:
        if record is None or record[0] != index:
          record = (index, np.asarray(source[index]["image"], np.uint8))
        crop, flip = pipeline.frame_view(index, view, seed, record[1].shape[:2], config)
        images.append(pipeline.teacher_image(record[1], crop, flip, config.image_hw))
      padded = images + [images[-1]] * (batch_size - len(images))  # one compiled shape
      features = np.asarray(teacher_features(np.stack(padded)))
      pending.extend(features[:len(images)].astype(np.float16))
      while len(pending) >= views:  # a frame's views are consecutive
        frame_features = np.ascontiguousarray(np.stack(pending[:views]), np.float16)
        record_shape = list(frame_features.shape)
        writer.write(frame_features.tobytes())
        pending = pending[views:]
  finally:
    writer.close()
  os.replace(partial, os.path.join(directory, FEATURES))
  path = os.path.join(directory, METADATA)
  with open(path + ".partial", "w") as f:
    f.write(json.dumps({**metadata, "record_shape": record_shape}, indent=1))
  os.replace(path + ".partial", path)  # last: marks the cache complete
  return TeacherCache(directory, metadata)
