"""ScanNet scene meshes with ScanNet-20 vertex labels, as a TFDS dataset.

One example per scene: the vertices of `<scene>_vh_clean_2.ply` with their colours and the
labels of `<scene>_vh_clean_2.labels.ply`, for fine-tuning and evaluating the 3D network.
Written as array_record, readable as numpy with `tfds.data_source` and no TensorFlow. The
README next to this file describes the features and bad-input handling.
"""

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from p2p_jax.data import export, scannet
from p2p_jax.data import labels as labels_lib

logger = logging.getLogger(__name__)


def _mesh_skip(scene_dir: str, scene: str, error: ValueError) -> tuple[str, str]:
  """(reason, path) of a mesh that `scannet.read_mesh` refused; its message names the file."""
  paths = [os.path.join(scene_dir, scene + s) for s in (scannet.MESH_SUFFIX,
                                                         scannet.LABELS_SUFFIX)]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    return scannet.MISSING_FILE, missing[0]
  named = [p for p in paths if str(error).startswith(p)]
  return export.MALFORMED_MESH, named[0] if named else scene_dir


class ScannetScenes(tfds.core.GeneratorBasedBuilder):
  """ScanNet scenes: mesh vertices, colours and ScanNet-20 labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put ScanNet's `<scene>_vh_clean_2.ply` and `<scene>_vh_clean_2.labels.ply` in
  `<manual_dir>/scans/<scene>/`, and optionally `scannetv2_train.txt` and `scannetv2_val.txt`
  (one scene per line; without them every scene goes to "train"). The synthetic rooms of
  this project are written in the same layout.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "points": tfds.features.Tensor(shape=(None, 3), dtype=np.float32, encoding="zlib"),
            "colors": tfds.features.Tensor(shape=(None, 3), dtype=np.uint8, encoding="zlib"),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding="zlib"),
            "scene": tfds.features.Text(),
        }),
        homepage="http://www.scan-net.org/",
        citation=export.SCANNET_CITATION,
        disable_shuffling=True,  # scenes in name order; TFDS then keys them by position
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(
      self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[tuple[str, dict]]]:
    """Assigns scenes to splits (checking the split lists) before any split is written."""
    manual_dir = os.fspath(dl_manager.manual_dir)
    splits, unassigned = export.split_scenes(manual_dir)
    if unassigned:
      logger.warning("%s: %d scene(s) under %s are in no split list and are left out: %s",
                     self.info.full_name, len(unassigned), os.path.join(manual_dir, "scans"),
                     ", ".join(unassigned))
    self.info.metadata.update(scenes_in_no_split=unassigned, splits={})
    return {split: self._generate_examples(split, manual_dir, scenes)
            for split, scenes in splits.items()}

  def _generate_examples(self, split: str, manual_dir: str,
                         scenes: list[str]) -> Iterator[tuple[str, dict]]:
    """Yields (scene, example) in scene order; skips scenes whose meshes cannot be read."""
    tally = export.SkipTally(self.info.full_name, split, "scenes")
    tally.listed = len(scenes)
    for scene in scenes:
      scene_dir = os.path.join(manual_dir, "scans", scene)
      try:
        mesh = scannet.read_mesh(scene_dir, scene)
      except ValueError as e:
        tally.skip(*_mesh_skip(scene_dir, scene, e), str(e))
        continue
      tally.written += 1
      yield scene, {
          "points": mesh["points"],
          "colors": mesh["colors"],
          "labels": labels_lib.nyu40_to_scannet20(mesh["labels"]),
          "scene": scene,
      }
    self.info.metadata["splits"][split] = tally.finish()
    tally.require_written()


def build_scenes(manual_dir: str, data_dir: str) -> ScannetScenes:
  """Builds (or reuses) the dataset as array_record files under `data_dir`.

  Args:
    manual_dir: the ScanNet export (`scans/<scene>/<scene>_vh_clean_2*.ply`, split lists).
    data_dir: the TFDS data dir to write to.

  Returns:
    The prepared builder; `builder.info.metadata["splits"]` holds the skip counts.
  """
  builder = ScannetScenes(data_dir=data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def load_scenes(data_dir: str, split: str) -> Sequence[dict[str, Any]]:
  """A random-access source of numpy examples of a built dataset (no TensorFlow needed).

  Args:
    data_dir: the TFDS data dir the dataset was built into.
    split: "train", "val", or a TFDS slice such as "train[:10]".

  Returns:
    A sequence: `len(source)`, `source[i]` -> {"points", "colors", "labels": numpy arrays,
    "scene": bytes}.
  """
  builder = ScannetScenes(data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{builder.data_path}: not built; run python -m datasets.scannet_scenes.build "
        f"--manual_dir <scannet export> --data_dir {data_dir}")
  return builder.as_data_source(split=split)
