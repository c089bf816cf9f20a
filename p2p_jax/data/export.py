"""A ScanNet export in a TFDS manual dir: the scenes of each split, and the tally of skips.

Shared by the `scannet_frames` and `scannet_scenes` builders (and, for `scene_arrays` and
`SkipTally`, by `s3dis`). The manual dir holds
`scans/<scene>/` (the layout of `p2p_jax.data.scannet`) and, optionally, the official split
lists `scannetv2_train.txt` and `scannetv2_val.txt` (one scene name per line).
"""

import collections
import logging
import os
from typing import Any

import numpy as np

# The dataset both builders read, cited in their `DatasetInfo`.
SCANNET_CITATION = r"""@inproceedings{dai2017scannet,
  title     = {{ScanNet}: Richly-annotated {3D} Reconstructions of Indoor Scenes},
  author    = {Dai, Angela and Chang, Angel X. and Savva, Manolis and Halber, Maciej and
               Funkhouser, Thomas and Nie{\ss}ner, Matthias},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition
               (CVPR)},
  year      = {2017}
}
"""

SPLIT_FILES = {"train": "scannetv2_train.txt", "val": "scannetv2_val.txt"}

# Why a scene is skipped by `scannet_scenes` (besides `scannet.MISSING_FILE`).
MALFORMED_MESH = "malformed mesh"

# How many skipped files of each reason the end-of-split summary names; all of them are
# logged one by one as they are met and stored in the dataset's metadata.
SUMMARY_EXAMPLES = 3

logger = logging.getLogger(__name__)


def _read_scene_list(path: str) -> list[str]:
  with open(path) as f:
    scenes = [line.strip() for line in f if line.strip()]
  if not scenes:
    raise ValueError(f"{path}: the split list names no scenes")
  repeated = sorted(s for s, n in collections.Counter(scenes).items() if n > 1)
  if repeated:
    raise ValueError(f"{path}: scenes listed more than once: {repeated}")
  return scenes


def split_scenes(manual_dir: str) -> tuple[dict[str, list[str]], list[str]]:
  """Assigns the scenes under `<manual_dir>/scans/` to splits.

  With split lists, each list that exists makes one split; without any, every scene goes to
  "train". Scene directories named by no list are returned separately so that the caller can
  report them.

  Args:
    manual_dir: the TFDS manual dir.

  Returns:
    ({split: sorted scene names}, sorted names of scene directories in no split).

  Raises:
    ValueError: naming the file, if scans/ is missing or empty, a split list is empty or
      repeats a scene, two lists share a scene, or a listed scene has no directory.
  """
  scans = os.path.join(manual_dir, "scans")
  if not os.path.isdir(scans):
    raise ValueError(f"{scans}: missing; expected scans/<scene>/ in the manual dir")
  present = sorted(d for d in os.listdir(scans) if os.path.isdir(os.path.join(scans, d)))
  if not present:
    raise ValueError(f"{scans}: no scene directories")
  lists = {split: os.path.join(manual_dir, name) for split, name in SPLIT_FILES.items()
           if os.path.isfile(os.path.join(manual_dir, name))}
  if not lists:
    return {"train": present}, []
  splits = {}
  owner = {}
  for split, path in lists.items():
    scenes = _read_scene_list(path)
    for scene in scenes:
      if scene in owner:
        raise ValueError(f"{path}: scene {scene} is also listed in {lists[owner[scene]]}")
      owner[scene] = split
      if not os.path.isdir(os.path.join(scans, scene)):
        raise ValueError(f"{path}: lists scene {scene}, but {os.path.join(scans, scene)} "
                         "does not exist")
    splits[split] = sorted(scenes)
  return splits, [s for s in present if s not in owner]


def note(kind: str, path: str, detail: str, count: int = 1) -> dict[str, Any]:
  """Something noted (a repair, a defect kept) about a written scene or room, logged at once:
  `count` items (lines, files, vertices...) of `kind` in the file `path`."""
  logger.warning("%s: %s", kind, detail)
  return {"kind": kind, "path": path, "count": count, "detail": detail}


class NoteTally:
  """The notes (`note`) of the written scenes of one split, summed by kind.

  Attributes:
    dataset: the dataset's name, for the summary.
    split: the split.
    what: what the notes are, e.g. "repairs in written rooms".
    key: the metadata key the builder stores `finish()` under.
    notes: the notes, appended by the builder.
  """

  def __init__(self, dataset: str, split: str, what: str, key: str):
    self.dataset, self.split, self.what, self.key = dataset, split, what, key
    self.notes = []

  def finish(self) -> dict[str, Any]:
    """Logs a summary; returns {"counts": {kind: count}, "notes": [...]}."""
    counts = collections.Counter()
    for n in self.notes:
      counts[n["kind"]] += n["count"]
    if counts:
      logger.warning("%s, split %s: %s: %s. Every one is listed in the dataset's metadata "
                     "(builder.info.metadata[%r][%r]['notes']).", self.dataset, self.split,
                     self.what, dict(counts), self.key, self.split)
    return {"counts": dict(counts), "notes": self.notes}


class SkipTally:
  """The inputs of one split: how many were listed, written, and skipped for which reason.

  Every skip is logged at once with its file; `finish` logs a summary by reason and returns
  the counts in a JSON-serialisable form for the dataset's metadata.
  """

  def __init__(self, dataset: str, split: str, unit: str):
    """Starts an empty tally.

    Args:
      dataset: the dataset's full name, for the log lines.
      split: the split being written.
      unit: what an input is ("frames", "scenes"), for the log lines.
    """
    self.dataset = dataset
    self.split = split
    self.unit = unit
    self.listed = 0
    self.written = 0
    self.skipped = []  # (reason, path, detail)

  def skip(self, reason: str, path: str, detail: str) -> None:
    """Records a skipped input; `path` is the offending file, `detail` the full message."""
    self.skipped.append((reason, path, detail))
    logger.warning("%s, split %s: skipped (%s): %s", self.dataset, self.split, reason, detail)

  def counts(self) -> dict[str, int]:
    """Skips per reason, in order of first appearance."""
    return dict(collections.Counter(reason for reason, _, _ in self.skipped))

  def require_written(self) -> None:
    """Raises if the split wrote nothing: TFDS's writer cannot finish an empty split, and its
    bare assertion would not say why."""
    if not self.written:
      raise ValueError(f"{self.dataset}, split {self.split}: all {self.listed} {self.unit} were "
                       f"skipped ({self.counts()}); see the warnings above")

  def finish(self) -> dict:
    """Logs the summary of the split and returns it for the metadata.

    Returns:
      {"listed": int, "written": int, "skipped": {reason: count},
       "skipped_files": [{"reason", "path", "detail"}]}; listed = written + skipped.
    """
    counts = self.counts()
    line = (f"{self.dataset}, split {self.split}: {self.listed} {self.unit} listed, "
            f"{self.written} written, {len(self.skipped)} skipped")
    if counts:
      by_reason = []
      for reason, count in counts.items():
        paths = [path for r, path, _ in self.skipped if r == reason]
        more = f", ... ({count - SUMMARY_EXAMPLES} more)" if count > SUMMARY_EXAMPLES else ""
        by_reason.append(f"  {reason}: {count}: {', '.join(paths[:SUMMARY_EXAMPLES])}{more}")
      logger.warning("%s:\n%s\nEvery skipped file is listed in the dataset's metadata "
                     "(builder.info.metadata['splits'][%r]['skipped_files']).",
                     line, "\n".join(by_reason), self.split)
    else:
      logger.info("%s.", line)
    return {
        "listed": self.listed,
        "written": self.written,
        "skipped": counts,
        "skipped_files": [{"reason": r, "path": p, "detail": d} for r, p, d in self.skipped],
    }


def scene_arrays(example) -> dict:
  """A scene example of scannet_scenes or s3dis as numpy: {"points" float32 [P, 3], "colors"
  uint8 [P, 3], "labels" int32 [P], "scene" str}."""
  scene = example["scene"]
  return {"points": np.asarray(example["points"], np.float32),
          "colors": np.asarray(example["colors"], np.uint8),
          "labels": np.asarray(example["labels"], np.int32),
          "scene": scene.decode() if isinstance(scene, bytes) else str(scene)}
