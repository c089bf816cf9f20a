"""The 2D teacher's frames: its scenes, split into training and held-out scenes, as frames.

The teacher trains on the scenes listed in `scannetv2_teacher.txt`, disjoint from the
pretraining and fine-tuning scenes. They are split by scene (seeded) into training and held-out
scenes. The `scannet_frames` builder knows the splits "train" and "val" only, so the teacher
scenes get a small export of their own, `<data_dir>/teacher_<hash>/export/`: symbolic links to
the scene folders, the label map, and split lists naming the training scenes "train" and the
held-out scenes "val". The dataset (a `*_labels` frames config) is built next to it, under
`tfds/`. The hash names the scene lists, so other lists never reuse a stale build.

    write_export(...) / build(...)   preparation (`p2p_jax.data.prepare.teacher_frames`)
    load(...)                        reads the built frames into memory
"""

import hashlib
import json
import os
import shutil
from collections.abc import Sequence

import numpy as np

from p2p_jax.data import scannet, scannet_frames

TEACHER_LIST = "scannetv2_teacher.txt"


def split_teacher_scenes(scenes: Sequence[str], holdout_fraction: float,
                         seed: int) -> tuple[list[str], list[str]]:
  """(training scenes, held-out scenes) of the teacher: max(1, round(f n)) held out.

  Raises:
    ValueError: fewer than two scenes (nothing would be left on one side).
  """
  scenes = sorted(scenes)
  if len(scenes) < 2:
    raise ValueError(f"the teacher needs at least 2 scenes (training and held-out), got "
                     f"{len(scenes)}; generate more with a larger teacher_fraction")
  order = np.random.default_rng(seed).permutation(len(scenes))
  count = min(len(scenes) - 1, max(1, int(round(holdout_fraction * len(scenes)))))
  held_out = sorted(scenes[i] for i in order[:count])
  return [s for s in scenes if s not in held_out], held_out


def _read_list(path: str) -> list[str]:
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def teacher_split(manual_dir: str, data_dir: str, holdout_fraction: float,
                  seed: int) -> tuple[str, list[str], list[str]]:
  """(the teacher's root under `data_dir`, training scenes, held-out scenes); writes nothing.

  Args:
    manual_dir: a ScanNet-layout export with `scannetv2_teacher.txt` and the label map.
    data_dir: where the export and its dataset go.
    holdout_fraction: share of the teacher scenes held out for evaluation.
    seed: seeds the held-out choice.
  """
  manual_dir = os.path.abspath(manual_dir)
  list_path = os.path.join(manual_dir, TEACHER_LIST)
  if not os.path.isfile(list_path):
    raise FileNotFoundError(
        f"{list_path}: missing; the teacher trains on scenes disjoint from the pretraining "
        "and fine-tuning ones: generate the rooms with teacher_fraction > 0 "
        "(python -m datasets.synthetic_rooms.generate --teacher-fraction 0.2)")
  train, held_out = split_teacher_scenes(_read_list(list_path), holdout_fraction, seed)
  digest = hashlib.sha1(json.dumps([manual_dir, train, held_out]).encode()).hexdigest()[:10]
  root = os.path.join(os.path.abspath(data_dir), f"teacher_{digest}")
  return root, train, held_out


def write_export(manual_dir: str, root: str, train: Sequence[str],
                 held_out: Sequence[str]) -> None:
  """Writes `<root>/export/` (see the module docstring) unless a finished one is there.

  It is written as `<root>/export.partial/` and renamed when complete, so `export/` is never
  a half-written one; a `.partial` left by a killed write is removed and written again.
  """
  manual_dir = os.path.abspath(manual_dir)
  export = os.path.join(root, "export")
  if os.path.isfile(os.path.join(export, "scannetv2_val.txt")):
    return
  staging = export + ".partial"
  for path in (export, staging):  # a killed write (export/ from an older version)
    shutil.rmtree(path, ignore_errors=True)
  os.makedirs(os.path.join(staging, "scans"))
  for scene in [*train, *held_out]:
    os.symlink(os.path.join(manual_dir, "scans", scene), os.path.join(staging, "scans", scene))
  shutil.copy(os.path.join(manual_dir, scannet.LABEL_MAP_FILE), staging)
  for name, scenes in (("scannetv2_train.txt", train), ("scannetv2_val.txt", held_out)):
    with open(os.path.join(staging, name), "w") as f:
      f.writelines(s + "\n" for s in scenes)
  os.rename(staging, export)


def build(root: str, frames_config: str) -> None:
  """Builds the teacher's frames dataset from `<root>/export/` into `<root>/tfds/`."""
  scannet_frames.build_frames(os.path.join(root, "export"), os.path.join(root, "tfds"),
                              config=frames_config)


def load(root: str, frames_config: str, train: Sequence[str],
         held_out: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
  """The teacher's built frames and 2D labels, in memory.

  Returns:
    {"train": ..., "holdout": ...}, each {"image" uint8 [F, H, W, 3], "label" int32
    [F, H, W], "scenes": list of the scene names}.
  """
  out = {}
  for name, split, scenes in (("train", "train", train), ("holdout", "val", held_out)):
    source = scannet_frames.load_frames(os.path.join(root, "tfds"), split, config=frames_config)
    examples = [source[i] for i in range(len(source))]
    if not examples:
      raise ValueError(f"no frames in the teacher's {name} scenes {list(scenes)}")
    if any(e["image"].shape != examples[0]["image"].shape for e in examples):
      raise ValueError("teacher frames must share one resolution")
    out[name] = {"image": np.stack([e["image"] for e in examples]).astype(np.uint8),
                 "label": np.stack([e["label"] for e in examples]).astype(np.int32),
                 "scenes": list(scenes)}
  return out


