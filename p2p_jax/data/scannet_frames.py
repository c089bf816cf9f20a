"""ScanNet RGB-D frames for pixel-to-point pretraining (PPKT), as a TFDS dataset.

Reads a ScanNet export (or the project's synthetic rooms, which share its layout) from the
manual dir and writes array_record files, readable as numpy with `tfds.data_source` and no
TensorFlow. The README next to this file describes the features, configs and bad-input
handling.
"""

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from p2p_jax import geometry
from p2p_jax.data import export, scannet
from p2p_jax.data import labels as labels_lib

logger = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False, kw_only=True)
class ScannetFramesConfig(tfds.core.BuilderConfig):
  """Which frames to keep, and whether to add the 2D semantic and instance labels.

  Attributes:
    frame_skip: keep the frames whose absolute index is a multiple of this (PPKT: 25).
    labels: add "label" and "instance" from label-filt/ and instance-filt/.
  """
  frame_skip: int = 25
  labels: bool = False

  def __post_init__(self):
    if self.frame_skip < 1:
      raise ValueError(f"config {self.name}: frame_skip must be >= 1, got {self.frame_skip}")


def resize_bilinear(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Resizes uint8 [H, W, C] with PIL's bilinear filter, antialiased when shrinking.

  PIL widens the triangle filter by the shrink factor (so every source pixel contributes)
  and places pixel centres at half-integers, the convention `geometry.resize_intrinsics`
  assumes.
  """
  if image.shape[:2] == tuple(hw):
    return image
  return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.Resampling.BILINEAR))


def resize_nearest(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Resizes [H, W, ...] by taking, for each target pixel, the source pixel under its centre.

  Target pixel i covers source rows [i s, (i + 1) s) with s = H / h; its centre (i + 0.5) s
  falls in source row floor((i + 0.5) s). Nearest neighbour keeps ids (labels, instances)
  intact, where any interpolation would invent ids.
  """
  rows = np.floor((np.arange(hw[0]) + 0.5) * (array.shape[0] / hw[0])).astype(np.int64)
  cols = np.floor((np.arange(hw[1]) + 0.5) * (array.shape[1] / hw[1])).astype(np.int64)
  return array[np.minimum(rows, array.shape[0] - 1)[:, None],
               np.minimum(cols, array.shape[1] - 1)[None, :]]


def raw_to_scannet20(raw_to_nyu40: dict[int, int]) -> np.ndarray:
  """A lookup table: raw ScanNet category id (uint16) -> ScanNet-20 class or IGNORE_LABEL.

  Raw ids missing from the label map (0, "unannotated", among them) map to IGNORE_LABEL; ids
  outside the uint16 range cannot occur in a label image and are left out.
  """
  table = np.full(1 << 16, labels_lib.IGNORE_LABEL, np.int32)
  raw = np.array([r for r in raw_to_nyu40 if 0 <= r < 1 << 16], np.int64)
  nyu40 = np.array([raw_to_nyu40[r] for r in raw], np.int64)
  table[raw] = labels_lib.nyu40_to_scannet20(nyu40)
  return table


def frame_example(scene_dir: str, frame: int, intrinsics: scannet.Intrinsics,
                  label_table: np.ndarray | None) -> dict[str, np.ndarray]:
  """Reads one frame and brings it to the depth resolution.

  Args:
    scene_dir: `scans/<scene>`.
    frame: absolute frame index.
    intrinsics: the scene's cameras, from `scannet.read_intrinsics`.
    label_table: `raw_to_scannet20` of the label map, or None for no labels.

  Returns:
    The example's features except "scene" and "frame".

  Raises:
    scannet.FrameError: a missing, corrupt or truncated file, a non-finite or non-rigid pose,
      depth that is not 16-bit, does not fit the depth intrinsics or is all zero.
  """
  raw = scannet.read_frame(scene_dir, frame, labels=label_table is not None,
                          depth_intrinsics=intrinsics.depth)
  depth = raw["depth"]
  hw = depth.shape
  # inv(E_color) @ E_depth maps depth-camera coordinates to colour-camera coordinates. ScanNet
  # writes identity extrinsics: in practice both cameras share the pose in pose/<f>.txt.
  color_from_depth = np.linalg.solve(intrinsics.color_extrinsic.astype(np.float64),
                                     intrinsics.depth_extrinsic.astype(np.float64))
  example = {
      "image": resize_bilinear(raw["color"], hw),
      "depth": depth,
      "depth_intrinsics": intrinsics.depth,
      "color_intrinsics": np.asarray(
          geometry.resize_intrinsics(intrinsics.color, raw["color"].shape[:2], hw), np.float32),
      "color_from_depth": color_from_depth.astype(np.float32),
      "cam_to_world": raw["cam_to_world"],
  }
  if label_table is not None:
    example["label"] = label_table[resize_nearest(raw["label"], hw)]
    example["instance"] = resize_nearest(raw["instance"], hw).astype(np.int32)
  return example


# (scene, scene_dir, its cameras, the frame indices to read) for one scene of a split.
ScenePlan = tuple[str, str, scannet.Intrinsics, list[int]]


class ScannetFrames(tfds.core.GeneratorBasedBuilder):
  """ScanNet RGB-D frames at the depth resolution, with cameras and poses."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      ScannetFramesConfig(name="skip25", frame_skip=25, labels=False,
                          description="Every 25th frame, as in PPKT's pretraining."),
      ScannetFramesConfig(name="skip25_labels", frame_skip=25, labels=True,
                          description="Every 25th frame with 2D ScanNet-20 and instance labels."),
      ScannetFramesConfig(name="skip1", frame_skip=1, labels=False,
                          description="Every exported frame."),
      ScannetFramesConfig(name="skip1_labels", frame_skip=1, labels=True,
                          description="Every exported frame with 2D labels."),
  ]
  DEFAULT_CONFIG_NAME = "skip25"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Export ScanNet with its SensReader (color/, depth/, pose/, intrinsic/ per scene) into
  `<manual_dir>/scans/<scene>/`. Optionally add `scannetv2_train.txt` and
  `scannetv2_val.txt` (one scene per line; without them every scene goes to "train") and,
  for the *_labels configs, `scannetv2-labels.combined.tsv` and each scene's label-filt/ and
  instance-filt/ folders. The synthetic rooms of this project are written in the same layout.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
        "depth": tfds.features.Tensor(shape=(None, None), dtype=np.uint16, encoding="zlib"),
        "depth_intrinsics": tfds.features.Tensor(shape=(3, 3), dtype=np.float32),
        "color_intrinsics": tfds.features.Tensor(shape=(3, 3), dtype=np.float32),
        "color_from_depth": tfds.features.Tensor(shape=(4, 4), dtype=np.float32),
        "cam_to_world": tfds.features.Tensor(shape=(4, 4), dtype=np.float32),
        "scene": tfds.features.Text(),
        "frame": tfds.features.Scalar(dtype=np.int32),
    }
    if self.builder_config.labels:
      for name in ("label", "instance"):
        features[name] = tfds.features.Tensor(shape=(None, None), dtype=np.int32,
                                              encoding="zlib")
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        homepage="http://www.scan-net.org/",
        citation=export.SCANNET_CITATION,
        # Keep (scene, frame) order: neighbouring frames stay neighbours on disk, and the writer
        # needs no shuffling pass over the whole split. TFDS then keys examples by position.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(
      self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[tuple[str, dict]]]:
    """Checks every scene's intrinsics (and the label map) before any split is written."""
    manual_dir = os.fspath(dl_manager.manual_dir)
    config = self.builder_config
    splits, unassigned = export.split_scenes(manual_dir)
    if unassigned:
      logger.warning("%s: %d scene(s) under %s are in no split list and are left out: %s",
                     self.info.full_name, len(unassigned), os.path.join(manual_dir, "scans"),
                     ", ".join(unassigned))
    label_table = None
    if config.labels:
      label_table = raw_to_scannet20(
          scannet.read_label_map(os.path.join(manual_dir, scannet.LABEL_MAP_FILE)))
    plans = {}
    for split, scenes in splits.items():
      plan = []
      for scene in scenes:
        scene_dir = os.path.join(manual_dir, "scans", scene)
        frames = [f for f in scannet.frame_ids(scene_dir) if f % config.frame_skip == 0]
        if not frames:
          logger.warning("%s: %s has no frame with an index divisible by %d in color/, "
                         "depth/ or pose/", self.info.full_name, scene_dir, config.frame_skip)
        plan.append((scene, scene_dir, scannet.read_intrinsics(scene_dir), frames))
      if not any(frames for *_, frames in plan):
        raise ValueError(f"{os.path.join(manual_dir, 'scans')}: the scenes of split {split} "
                         f"have no frame with an index divisible by {config.frame_skip}")
      plans[split] = plan
    self.info.metadata.update(
        frame_skip=config.frame_skip, labels=config.labels, scenes_in_no_split=unassigned,
        splits={})
    return {split: self._generate_examples(split, plan, label_table)
            for split, plan in plans.items()}

  def _generate_examples(self, split: str, plan: list[ScenePlan],
                         label_table: np.ndarray | None) -> Iterator[tuple[str, dict]]:
    """Yields (f"{scene}_{frame}", example) in scene then frame order; skips bad frames."""
    tally = export.SkipTally(self.info.full_name, split, "frames")
    for scene, scene_dir, intrinsics, frames in plan:
      tally.listed += len(frames)
      for frame in frames:
        try:
          example = frame_example(scene_dir, frame, intrinsics, label_table)
        except scannet.FrameError as e:
          tally.skip(e.reason, e.path, str(e))
          continue
        tally.written += 1
        yield f"{scene}_{frame}", {**example, "scene": scene, "frame": frame}
    self.info.metadata["splits"][split] = tally.finish()
    tally.require_written()


def build_frames(manual_dir: str, data_dir: str, config: str = "skip25") -> ScannetFrames:
  """Builds (or reuses) the dataset as array_record files under `data_dir`.

  Args:
    manual_dir: the ScanNet export (`scans/<scene>/...`, optional split lists, label map).
    data_dir: the TFDS data dir to write to.
    config: a config name, e.g. "skip25" or "skip1_labels".

  Returns:
    The prepared builder; `builder.info.metadata["splits"]` holds the skip counts.
  """
  builder = ScannetFrames(data_dir=data_dir, config=config)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def load_frames(data_dir: str, split: str, config: str = "skip25") -> Sequence[dict[str, Any]]:
  """A random-access source of numpy examples of a built dataset (no TensorFlow needed).

  Args:
    data_dir: the TFDS data dir the dataset was built into.
    split: "train", "val", or a TFDS slice such as "train[:10%]".
    config: the config name it was built with.

  Returns:
    A sequence: `len(source)`, `source[i]` -> {feature: numpy array, "scene": bytes,
    "frame": int}.
  """
  builder = ScannetFrames(data_dir=data_dir, config=config)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{builder.data_path}: not built; run python -m datasets.scannet_frames.build "
        f"--manual_dir <scannet export> --data_dir {data_dir} --config {config}")
  return builder.as_data_source(split=split)
