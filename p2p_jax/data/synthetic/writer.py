"""Procedural indoor rooms rendered into the ScanNet export layout.

    python -m datasets.synthetic_rooms.generate --out DIR --scenes N --frames-per-scene F \
        [--height 240] [--width 320] [--seed 0] [--val-fraction 0.2] [--teacher-fraction 0] \
        [--depth-noise 0] [--depth-holes 0] [--points-per-m2 1000] [--workers W] [--overwrite]

Each scene is a rectangular or L-shaped room (floor, walls, ceiling) furnished from trimesh
primitives by room type (bedroom, living room, kitchen, bathroom, office), covering all 20
ScanNet benchmark classes with their NYU40 ids. Every instance draws its own colour from a wide,
class-dependent distribution and its own procedural solid texture, so colour alone does not
identify the class. A camera walks a smooth path at eye height through the free space and
looks around; frames are ray cast with Embree (trimesh's `ray_pyembree`) into shaded colour,
z-depth, semantic labels and instance ids. Written per scene, with `p2p_jax.data.scannet`:

    scans/<scene>/color/<f>.jpg, depth/<f>.png, pose/<f>.txt, label-filt/<f>.png,
        instance-filt/<f>.png, intrinsic/*.txt       frames; <f> = 25 * (frame number)
    scans/<scene>/<scene>_vh_clean_2.ply, .labels.ply  surface samples, colour, NYU40 label
    scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json, <scene>.aggregation.json
                                                       instances, as ScanNet stores them
    scannetv2-labels.combined.tsv, scannetv2_{train,val}.txt (and _teacher.txt when asked)
    synthetic_rooms.json                               the settings; "complete" is set last

The marker `synthetic_rooms.json` is written, marked incomplete, before anything else and
marked complete (an atomic rename) after everything else, so a generation killed at any point
is recognised: the next `generate` or `generate_if_asked` logs a warning naming it, removes its
scene folders and writes the dataset again. A folder with scans/ and no marker is someone's
export (or the output of an older version) and is never deleted.

Raw label ids equal NYU40 ids. The ceiling carries NYU40 22 ("ceiling"), which the 20-class
benchmark ignores. Output is a pure function of the arguments (not of `workers`): the same seed
gives byte-identical files, and scene i is the same whatever the number of scenes.
"""

import argparse
import concurrent.futures as futures
import ctypes
import dataclasses
import inspect
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import tqdm

from p2p_jax.data import scannet
from p2p_jax.data.synthetic.furniture import LABEL_MAP, ROOM_TYPES
from p2p_jax.data.synthetic.render import (
  Room,
  build_room,
  camera_trajectory,
  intrinsics_for,
  render,
  sample_surface,
)

FRAME_STEP = 25  # frame indices as in a SensReader export keeping every 25th frame (PPKT's skip)
SEGS_SUFFIX = "_vh_clean_2.0.010000.segs.json"
AGGREGATION_SUFFIX = ".aggregation.json"
MARKER = "synthetic_rooms.json"  # {"complete": bool, "settings": {...}}
_PR_SET_PDEATHSIG = 1  # prctl(2) on Linux

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _SceneTask:
  scans_dir: str
  seed: int
  index: int
  frames: int
  height: int
  width: int
  depth_noise: float
  depth_holes: float
  points_per_m2: float


def scene_name(index: int) -> str:
  """ScanNet-style name of the index-th synthetic scene: scene0000_00, scene0001_00, ..."""
  return f"scene{index:04d}_00"


def _rng(seed: int, *key: int) -> np.random.Generator:
  """Independent streams per (scene, purpose[, frame]), so nothing depends on the order in
  which scenes and frames are made."""
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def scene_room(seed: int, index: int) -> Room:
  """The room of scene `index` in a dataset generated with `seed` (its type is
  ROOM_TYPES[index % 5]), e.g. to compare rendered frames against the exact geometry."""
  return build_room(_rng(seed, index, 0), ROOM_TYPES[index % len(ROOM_TYPES)])


def _write_instances(scene_dir: str, scene: str, room: Room, instances: np.ndarray) -> None:
  """ScanNet's instance annotation: one segment per instance (segment id = instance id) in
  `segs.json`, grouped into objects (objectId = instance id - 1, as instance-filt stores
  objectId + 1) in `aggregation.json`."""
  # json.dumps, not json.dump: the latter streams through the slow pure-Python encoder.
  with open(os.path.join(scene_dir, scene + SEGS_SUFFIX), "w") as f:
    f.write(json.dumps({"sceneId": scene, "segIndices": instances.tolist()}))
  groups = [{"id": int(i) - 1, "objectId": int(i) - 1, "segments": [int(i)],
             "label": LABEL_MAP[int(room.instance_labels[i])][0]}
            for i in np.unique(instances)]
  with open(os.path.join(scene_dir, scene + AGGREGATION_SUFFIX), "w") as f:
    f.write(json.dumps({"sceneId": f"scannet.{scene}", "segGroups": groups,
                        "segmentsFile": f"scannet.{scene}{SEGS_SUFFIX}"}))


def _generate_scene(task: _SceneTask, on_frame: Callable[[], None] | None = None) -> int:
  """Builds, renders and writes one scene; returns the number of frames written."""
  room = scene_room(task.seed, task.index)
  poses = camera_trajectory(room, _rng(task.seed, task.index, 1), task.frames)
  intrinsics = intrinsics_for(task.height, task.width)
  scene = scene_name(task.index)
  scene_dir = os.path.join(task.scans_dir, scene)
  scannet.write_intrinsics(scene_dir, intrinsics, intrinsics)
  cloud = sample_surface(room, _rng(task.seed, task.index, 2), task.points_per_m2)
  scannet.write_mesh(scene_dir, scene, cloud["points"], cloud["colors"], cloud["labels"])
  _write_instances(scene_dir, scene, room, cloud["instances"])
  for i, pose in enumerate(poses):
    frame = render(room, pose, intrinsics, task.height, task.width,
                   _rng(task.seed, task.index, 3, i), depth_noise=task.depth_noise,
                   depth_holes=task.depth_holes)
    scannet.write_frame(scene_dir, i * FRAME_STEP, color=frame["color"], depth=frame["depth"],
                        cam_to_world=pose, label=frame["label"], instance=frame["instance"])
    if on_frame is not None:
      on_frame()
  return task.frames


def _splits(rng: np.random.Generator, scenes: list[str], val_fraction: float,
            teacher_fraction: float) -> dict[str, list[str]]:
  order = rng.permutation(len(scenes))
  teacher = int(round(len(scenes) * teacher_fraction))
  val = int(round(len(scenes) * val_fraction))
  if teacher + val >= len(scenes):
    raise ValueError(f"{len(scenes)} scenes leave none for training with val_fraction="
                     f"{val_fraction} and teacher_fraction={teacher_fraction}")
  pick = lambda idx: sorted(scenes[i] for i in idx)
  return {"teacher": pick(order[:teacher]), "val": pick(order[teacher:teacher + val]),
          "train": pick(order[teacher + val:])}


def _settings(*, num_scenes: int, frames_per_scene: int, height: int, width: int, seed: int,
              val_fraction: float, teacher_fraction: float, depth_noise: float,
              depth_holes: float, points_per_m2: float, **_: Any) -> dict[str, int | float]:
  """The arguments of `generate` that its output depends on (not workers, overwrite,
  progress), as the marker stores them."""
  return {"num_scenes": int(num_scenes), "frames_per_scene": int(frames_per_scene),
          "height": int(height), "width": int(width), "seed": int(seed),
          "val_fraction": float(val_fraction), "teacher_fraction": float(teacher_fraction),
          "depth_noise": float(depth_noise), "depth_holes": float(depth_holes),
          "points_per_m2": float(points_per_m2)}


def read_marker(out_dir: str) -> dict[str, Any] | None:
  """The generator's marker in `out_dir` ({"complete", "settings"}), or None if it has none.

  Raises:
    ValueError: for a marker that is not the generator's JSON.
  """
  path = os.path.join(out_dir, MARKER)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      marker = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not the synthetic-room generator's marker ({e}); delete "
                       f"{out_dir} to generate the rooms again") from e
  if not isinstance(marker, dict) or set(marker) != {"complete", "settings"}:
    raise ValueError(f"{path}: not the synthetic-room generator's marker; delete {out_dir} "
                     "to generate the rooms again")
  return marker


def _write_marker(out_dir: str, settings: dict[str, Any], complete: bool) -> None:
  """Writes the marker under a temporary name and renames it, so it is never half written."""
  path = os.path.join(out_dir, MARKER)
  with open(path + ".tmp", "w") as f:
    f.write(json.dumps({"complete": complete, "settings": settings}, indent=1, sort_keys=True)
            + "\n")
  os.replace(path + ".tmp", path)


def _remove_interrupted(out_dir: str, marker: dict[str, Any]) -> None:
  """Removes the scene folders of the interrupted generation `marker` describes: folders the
  generator created or was allowed to overwrite (it refuses others before writing its marker).
  The label map and split lists are rewritten by the generation that follows."""
  scans_dir = os.path.join(out_dir, "scans")
  logger.warning("%s: an earlier generation of synthetic rooms was interrupted (%s is not "
                 "marked complete); removing its partial scenes from %s and generating again",
                 out_dir, os.path.join(out_dir, MARKER), scans_dir)
  for i in range(int(marker["settings"]["num_scenes"])):
    scene_dir = os.path.join(scans_dir, scene_name(i))
    if os.path.isdir(scene_dir):
      shutil.rmtree(scene_dir)
  if os.path.isdir(scans_dir) and not os.listdir(scans_dir):
    os.rmdir(scans_dir)


def generate_if_asked(out_dir: str, settings: Any) -> bool:
  """Generates rooms into `out_dir` as a config's `data.synthetic` says, unless its `scenes`
  is 0 or `out_dir` already holds them.

  `out_dir` holds them when the generator's marker says a generation with these settings
  completed there, or when it has scans/ and no marker (an export from elsewhere, used as it
  is and never deleted). A generation that was interrupted (marker not complete) is removed
  and redone, with a warning naming it.

  Args:
    out_dir: the export root.
    settings: a mapping (or ConfigDict) with `scenes` and any keyword of `generate`.

  Returns:
    Whether it generated.

  A complete generation with other settings is used as it is, with a warning naming the
  differences: stages share one folder of rooms, and a rebuild would leave the datasets built
  from it stale.
  """
  s = dict(settings.to_dict() if hasattr(settings, "to_dict") else settings)
  scenes = s.pop("scenes", 0)
  if not scenes:
    return False
  marker = read_marker(out_dir)
  if marker is None and os.path.isdir(os.path.join(out_dir, "scans")):
    logger.warning("%s has scans/ but no %s, so it was not written by this version of the "
                   "generator: used as it is, never deleted (if it is a generation that was "
                   "killed, delete it to generate the rooms again)", out_dir, MARKER)
    return False
  if marker is not None and marker["complete"]:
    arguments = inspect.signature(generate).bind(out_dir, num_scenes=scenes, **s)
    arguments.apply_defaults()
    wanted = _settings(**arguments.arguments)
    had = marker["settings"]
    differ = sorted(k for k in wanted if had.get(k) != wanted[k])
    if differ:
      show = lambda values: ", ".join(f"{k}={values.get(k)!r}" for k in differ)
      # Several stages share one folder of rooms (a teacher's world, then pretraining and
      # fine-tuning on it), so the rooms there are used, and the difference is named.
      logger.warning("%s holds synthetic rooms generated with %s; this config asks for %s: "
                     "the rooms there are used as they are (delete %s and the datasets built "
                     "from it to generate them again)", out_dir, show(had), show(wanted),
                     out_dir)
    return False
  generate(out_dir, num_scenes=scenes, progress=True, **s)
  return True


def _die_with_parent(parent: int) -> None:
  """Pool initializer: on Linux a worker gets SIGKILL when the generating process dies, so a
  killed generation leaves no worker writing on into the output it left behind."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  except (OSError, AttributeError):  # not Linux: workers finish their scene, then exit
    return
  if os.getppid() != parent:  # it died before prctl
    os._exit(1)


def generate(out_dir: str, *, num_scenes: int, frames_per_scene: int, height: int = 240,
             width: int = 320, seed: int = 0, val_fraction: float = 0.2,
             teacher_fraction: float = 0.0, depth_noise: float = 0.0, depth_holes: float = 0.0,
             points_per_m2: float = 1000.0, workers: int | None = None, overwrite: bool = False,
             progress: bool = False) -> dict[str, float]:
  """Generates a synthetic ScanNet-layout dataset under out_dir.

  Room types cycle through ROOM_TYPES, so any five consecutive scenes hold one of each. Scene i
  depends only on (seed, i), never on num_scenes or workers.

  Args:
    out_dir: root; scenes go to out_dir/scans/<scene>/.
    num_scenes: number of scenes.
    frames_per_scene: frames rendered per scene.
    height: image rows (colour and depth share the resolution and intrinsics).
    width: image columns.
    seed: seed of everything.
    val_fraction: share of scenes listed in scannetv2_val.txt (rounded to a count).
    teacher_fraction: share of scenes, disjoint from train and val, listed in
      scannetv2_teacher.txt for training a 2D teacher. A split that gets no scene gets no
      list file (an empty list would read as a mistake).
    depth_noise: depth noise in metres at 1 m, growing with depth squared; 0 for exact depth.
    depth_holes: fraction of depth pixels dropped in blobs.
    points_per_m2: density of the labelled surface samples written as the scene mesh.
    workers: processes rendering scenes in parallel; default min(CPU count, num_scenes).
    overwrite: replace existing scene directories instead of refusing to. The scenes of an
      interrupted generation (see the module docstring) are replaced without it.
    progress: show a progress bar.

  Returns:
    {"scenes", "frames", "seconds", "frames_per_second"}: the whole write path, timed.

  Raises:
    ValueError: for bad sizes or fractions, or an existing scene directory without overwrite.
  """
  if num_scenes < 1 or frames_per_scene < 1 or height < 1 or width < 1:
    raise ValueError("num_scenes, frames_per_scene, height and width must be positive")
  if not (0 <= val_fraction < 1 and 0 <= teacher_fraction < 1):
    raise ValueError("val_fraction and teacher_fraction must be in [0, 1)")
  if not 0 <= depth_holes < 1 or depth_noise < 0:
    raise ValueError("depth_holes must be in [0, 1) and depth_noise non-negative")
  start = time.perf_counter()
  settings = _settings(num_scenes=num_scenes, frames_per_scene=frames_per_scene, height=height,
                       width=width, seed=seed, val_fraction=val_fraction,
                       teacher_fraction=teacher_fraction, depth_noise=depth_noise,
                       depth_holes=depth_holes, points_per_m2=points_per_m2)
  scans_dir = os.path.join(out_dir, "scans")
  names = [scene_name(i) for i in range(num_scenes)]
  splits = _splits(np.random.default_rng(seed), names, val_fraction, teacher_fraction)
  marker = read_marker(out_dir)
  if marker is not None and not marker["complete"]:
    _remove_interrupted(out_dir, marker)
  existing = [os.path.join(scans_dir, name) for name in names
              if os.path.exists(os.path.join(scans_dir, name))]
  if existing and not overwrite:
    raise ValueError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace it")
  # From here on the folder is the generator's until the marker says complete.
  os.makedirs(out_dir, exist_ok=True)
  _write_marker(out_dir, settings, complete=False)
  for scene_dir in existing:
    shutil.rmtree(scene_dir)
  tasks = [_SceneTask(scans_dir, seed, i, frames_per_scene, height, width, depth_noise,
                      depth_holes, points_per_m2) for i in range(num_scenes)]
  workers = min(os.cpu_count() or 1, num_scenes) if workers is None else workers
  with tqdm.tqdm(total=num_scenes * frames_per_scene, unit="frame", disable=not progress) as bar:
    if workers <= 1:
      for task in tasks:
        _generate_scene(task, lambda: bar.update(1))
    else:
      # Spawned, not forked: the parent may hold threads (JAX) that a fork would copy broken.
      # A worker that dies (killed, crashed) breaks the pool, which raises here; a
      # multiprocessing.Pool would start a new worker and wait for the lost scene forever.
      pool = futures.ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                                         _die_with_parent, (os.getpid(),))
      try:
        for done in futures.as_completed([pool.submit(_generate_scene, t) for t in tasks]):
          bar.update(done.result())
      except BrokenProcessPool as e:
        raise RuntimeError(
            f"{out_dir}: a generator worker died (killed or crashed) before finishing its "
            f"scene; the marker {MARKER} stays incomplete, so the next run starts over") from e
      finally:  # on an error or an interrupt, no scene that has not started starts
        pool.shutdown(wait=True, cancel_futures=True)
  scannet.write_label_map(os.path.join(out_dir, scannet.LABEL_MAP_FILE), LABEL_MAP)
  for split, scenes in splits.items():
    path = os.path.join(out_dir, f"scannetv2_{split}.txt")
    if not scenes:  # no list rather than an empty one (which readers reject as a mistake)
      if os.path.exists(path):  # from an earlier run; would now list scenes of other splits
        os.remove(path)
      continue
    with open(path, "w") as f:
      f.writelines(name + "\n" for name in scenes)
  _write_marker(out_dir, settings, complete=True)
  seconds = time.perf_counter() - start
  frames = num_scenes * frames_per_scene
  return {"scenes": num_scenes, "frames": frames, "seconds": seconds,
          "frames_per_second": frames / seconds}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output root (gets scans/ and split files)")
  parser.add_argument("--scenes", type=int, required=True)
  parser.add_argument("--frames-per-scene", type=int, required=True)
  parser.add_argument("--height", type=int, default=240)
  parser.add_argument("--width", type=int, default=320)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--val-fraction", type=float, default=0.2)
  parser.add_argument("--teacher-fraction", type=float, default=0.0)
  parser.add_argument("--depth-noise", type=float, default=0.0,
                      help="depth noise std in metres at 1 m (grows with depth squared)")
  parser.add_argument("--depth-holes", type=float, default=0.0,
                      help="fraction of depth pixels dropped, in blobs")
  parser.add_argument("--points-per-m2", type=float, default=1000.0,
                      help="density of the labelled surface samples")
  parser.add_argument("--workers", type=int, default=None,
                      help="parallel processes (default: CPU count)")
  parser.add_argument("--overwrite", action="store_true", help="replace existing scenes")
  args = parser.parse_args(argv)
  try:
    stats = generate(args.out, num_scenes=args.scenes, frames_per_scene=args.frames_per_scene,
                     height=args.height, width=args.width, seed=args.seed,
                     val_fraction=args.val_fraction, teacher_fraction=args.teacher_fraction,
                     depth_noise=args.depth_noise, depth_holes=args.depth_holes,
                     points_per_m2=args.points_per_m2, workers=args.workers,
                     overwrite=args.overwrite, progress=True)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {stats['frames']} frames of {stats['scenes']} scenes ({args.height}x{args.width}) "
        f"to {args.out} in {stats['seconds']:.1f} s: {stats['frames_per_second']:.1f} frames/s")


if __name__ == "__main__":
  main()
