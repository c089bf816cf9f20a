"""ScanNet 3D object detection: scenes with the axis-aligned boxes of their objects, as TFDS.

The standard ScanNet detection preparation (VoteNet's `scannet/load_scannet_data.py`, also
used by H3DNet, 3DETR and the pretraining papers evaluating on ScanNet detection): the mesh
vertices of `<scene>_vh_clean_2.ply`, moved by the scene's `axisAlignment` (from `<scene>.txt`)
so that the walls run along the axes; an instance per segGroup of `<scene>.aggregation.json`
(the vertices of its segments in `<scene>_vh_clean_2.0.010000.segs.json`, instance id =
objectId + 1, 0 = none), its class the NYU40 id of its raw category in
`scannetv2-labels.combined.tsv`; and, for every instance of one of the 18 detection classes
(the 20 benchmark classes without wall and floor), the axis-aligned box of its aligned
vertices: centre (min + max) / 2, size max - min, heading 0.

Written as array_record, readable as numpy with `tfds.data_source` and no TensorFlow. Where
this preparation departs from VoteNet's (it keeps the first claim of a vertex where VoteNet
keeps the last, and it counts what VoteNet would crash on or drop silently), the README in
`datasets/scannet_boxes/` says so, and lists the features and the handling of bad input.
"""

import collections
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from p2p_jax.data import export, scannet
from p2p_jax.data import labels as labels_lib

logger = logging.getLogger(__name__)

# (NYU40 id, name) of the 18 detection classes, in the order of their box class 0..17.
DETECTION_CLASSES = (
    (3, "cabinet"), (4, "bed"), (5, "chair"), (6, "sofa"), (7, "table"), (8, "door"),
    (9, "window"), (10, "bookshelf"), (11, "picture"), (12, "counter"), (14, "desk"),
    (16, "curtain"), (24, "refrigerator"), (28, "shower curtain"), (33, "toilet"),
    (34, "sink"), (36, "bathtub"), (39, "otherfurniture"),
)
DETECTION_NAMES = tuple(name for _, name in DETECTION_CLASSES)
NUM_DETECTION_CLASSES = len(DETECTION_CLASSES)
# NYU40 id (0..40) -> box class 0..17, or -1 for an object that gets no box.
NYU40_TO_DETECTION = np.full(41, -1, np.int32)
for _index, (_nyu40, _) in enumerate(DETECTION_CLASSES):
  NYU40_TO_DETECTION[_nyu40] = _index

# Why a scene is skipped (besides `scannet.MISSING_FILE` and `export.MALFORMED_MESH`).
MALFORMED_INSTANCES = "malformed instances"
MALFORMED_AXIS_ALIGNMENT = "malformed axis alignment"

# What is noted about a scene that is kept; counted in the units given.
UNKNOWN_SEGMENT = "unknown segment"  # segment references
VERTEX_CLAIMED_TWICE = "vertex claimed twice"  # vertices
UNKNOWN_CATEGORY = "unknown category"  # instances
EMPTY_INSTANCE = "empty instance"  # instances
NO_AXIS_ALIGNMENT = "no axis alignment"  # scenes


class SceneError(Exception):
  """A scene that cannot be used: `reason` is one of the skip reasons, `path` the file."""

  def __init__(self, reason: str, path: str, detail: str):
    super().__init__(detail)
    self.reason = reason
    self.path = path


def nyu40_to_detection(nyu40: np.ndarray) -> np.ndarray:
  """Maps NYU40 ids to box classes 0..17; other classes and ids outside 0..40 -> -1."""
  nyu40 = np.asarray(nyu40)
  inside = (nyu40 >= 0) & (nyu40 <= 40)
  return np.where(inside, NYU40_TO_DETECTION[np.clip(nyu40, 0, 40)], -1).astype(np.int32)


def vertex_instances(seg_indices: np.ndarray, groups: Sequence[scannet.SegGroup],
                     path: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """The instance id of each vertex: objectId + 1 of the group that claims its segment first.

  Args:
    seg_indices: [V] segment id of each vertex (`scannet.read_segments`).
    groups: the objects of the aggregation file, in file order.
    path: the aggregation file, for the notes.

  Returns:
    (int32 [V] instance ids, 0 where no group claims the vertex; notes of UNKNOWN_SEGMENT for
    segment ids that no vertex has, and VERTEX_CLAIMED_TWICE for vertices of a segment an
    earlier group already claimed, which keep the earlier claim).
  """
  segments, inverse, sizes = np.unique(seg_indices, return_inverse=True, return_counts=True)
  owner = np.zeros(len(segments), np.int32)  # instance id claiming each segment
  notes = []
  for group in groups:
    instance = group.object_id + 1
    unknown, claimed, vertices = [], [], 0
    for segment in dict.fromkeys(group.segments):  # a segment listed twice is one claim
      pos = int(np.searchsorted(segments, segment))
      if pos == len(segments) or segments[pos] != segment:
        unknown.append(segment)
      elif owner[pos]:
        claimed.append(f"segment {segment} of objectId {owner[pos] - 1}")
        vertices += int(sizes[pos])
      else:
        owner[pos] = instance
    if unknown:
      notes.append(export.note(UNKNOWN_SEGMENT, path, f"{path}: objectId {group.object_id} "
                         f"({group.label!r}) names segment(s) {unknown[:5]}"
                         f"{' ...' if len(unknown) > 5 else ''} that no vertex of the segs "
                         "file has; ignored", len(unknown)))
    if claimed:
      notes.append(export.note(VERTEX_CLAIMED_TWICE, path, f"{path}: objectId {group.object_id} "
                         f"({group.label!r}) claims {vertices} vertices already claimed "
                         f"({', '.join(claimed[:5])}{' ...' if len(claimed) > 5 else ''}); "
                         "they keep the first claim", vertices))
  return owner[inverse.reshape(-1)].astype(np.int32), notes


def instance_boxes(points: np.ndarray, instances: np.ndarray,
                   classes: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Axis-aligned boxes of the instances of a detection class, in instance id order.

  Args:
    points: [V, 3] vertex positions.
    instances: [V] instance id of each vertex (0 = none).
    classes: instance id -> box class (0..17) of the instances that get a box.

  Returns:
    (boxes float32 [M, 7] as (cx, cy, cz, dx, dy, dz, heading = 0), box classes int32 [M],
    instance ids int32 [M]); an instance without vertices gets no box.
  """
  boxes, box_classes, box_instances = [], [], []
  for instance in sorted(classes):
    inside = points[instances == instance]
    if not len(inside):
      continue
    low, high = inside.min(0).astype(np.float64), inside.max(0).astype(np.float64)
    boxes.append(np.concatenate([(low + high) / 2, high - low, [0.0]]))
    box_classes.append(classes[instance])
    box_instances.append(instance)
  return (np.asarray(boxes, np.float32).reshape(-1, 7), np.asarray(box_classes, np.int32),
          np.asarray(box_instances, np.int32))


def _paths(scene_dir: str, scene: str) -> dict[str, str]:
  suffixes = {"mesh": scannet.MESH_SUFFIX, "labels": scannet.LABELS_SUFFIX,
              "segs": scannet.SEGS_SUFFIX, "aggregation": scannet.AGGREGATION_SUFFIX,
              "meta": scannet.META_SUFFIX}
  return {name: os.path.join(scene_dir, scene + suffix) for name, suffix in suffixes.items()}


def read_scene(scene_dir: str, scene: str,
               category_map: dict[str, int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Reads one scene into an example of the dataset.

  Args:
    scene_dir: `scans/<scene>`.
    scene: the scene name.
    category_map: raw category name -> NYU40 id (`scannet.read_raw_category_map`).

  Returns:
    (example, notes): the example's features as numpy (see the README), and what was noted
    about the scene (each a dict {"kind", "path", "count", "detail"}, already logged).

  Raises:
    SceneError: `scannet.MISSING_FILE` if a mesh, the segs or the aggregation file is absent;
      `export.MALFORMED_MESH`, MALFORMED_INSTANCES (unreadable segs or aggregation file, or
      a segs file with another number of vertices than the mesh) or MALFORMED_AXIS_ALIGNMENT,
      with the file and field named.
  """
  paths = _paths(scene_dir, scene)
  for name in ("mesh", "labels", "segs", "aggregation"):
    if not os.path.isfile(paths[name]):
      raise SceneError(scannet.MISSING_FILE, paths[name], f"{paths[name]}: missing file")
  try:
    mesh = scannet.read_mesh(scene_dir, scene)
  except ValueError as e:
    path = next((p for p in (paths["mesh"], paths["labels"]) if str(e).startswith(p)),
                scene_dir)
    raise SceneError(export.MALFORMED_MESH, path, str(e)) from e
  for name in ("segs", "aggregation"):
    try:
      if name == "segs":
        seg_indices = scannet.read_segments(paths[name])
      else:
        groups = scannet.read_aggregation(paths[name])
    except ValueError as e:
      raise SceneError(MALFORMED_INSTANCES, paths[name], str(e)) from e
  if len(seg_indices) != len(mesh["points"]):
    raise SceneError(MALFORMED_INSTANCES, paths["segs"],
                     f"{paths['segs']}: field 'segIndices' has {len(seg_indices)} entries, but "
                     f"{os.path.basename(paths['mesh'])} has {len(mesh['points'])} vertices")
  try:
    alignment = scannet.read_axis_alignment(paths["meta"])
  except ValueError as e:
    raise SceneError(MALFORMED_AXIS_ALIGNMENT, paths["meta"], str(e)) from e

  notes = []
  points = mesh["points"]
  if alignment is None:
    why = "no such file" if not os.path.isfile(paths["meta"]) else (
        f"no '{scannet.AXIS_ALIGNMENT_KEY}' line")
    notes.append(export.note(NO_AXIS_ALIGNMENT, paths["meta"], f"{paths['meta']}: {why}; the scene "
                       "is kept in the mesh's own frame"))
    alignment = np.eye(4)
  else:
    points = (points.astype(np.float64) @ alignment[:3, :3].T + alignment[:3, 3]).astype(
        np.float32)
  instances, instance_notes = vertex_instances(seg_indices, groups, paths["aggregation"])
  notes.extend(instance_notes)
  sizes = collections.Counter(instances.tolist())
  classes = {}
  for group in groups:
    instance = group.object_id + 1
    where = f"{paths['aggregation']}: objectId {group.object_id} ({group.label!r})"
    if not sizes[instance]:
      notes.append(export.note(EMPTY_INSTANCE, paths["aggregation"], f"{where} has no vertices"))
    nyu40 = category_map.get(group.label)
    if nyu40 is None:
      notes.append(export.note(UNKNOWN_CATEGORY, paths["aggregation"], f"{where}: the label is no "
                         f"raw_category of {scannet.LABEL_MAP_FILE}; the instance gets no box"))
    elif nyu40_to_detection(nyu40) >= 0:
      classes[instance] = int(nyu40_to_detection(nyu40))
  boxes, box_classes, box_instances = instance_boxes(points, instances, classes)
  return {
      "points": points,
      "colors": mesh["colors"],
      "labels": labels_lib.nyu40_to_scannet20(mesh["labels"]),
      "instances": instances,
      "boxes": boxes,
      "box_classes": box_classes,
      "box_instances": box_instances,
      "axis_alignment": alignment.astype(np.float32),
      "scene": scene,
  }, notes


class ScannetBoxes(tfds.core.GeneratorBasedBuilder):
  """ScanNet scenes, axis-aligned, with instances and the boxes of the 18 detection classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put ScanNet's `<scene>_vh_clean_2.ply`, `<scene>_vh_clean_2.labels.ply`,
  `<scene>_vh_clean_2.0.010000.segs.json`, `<scene>.aggregation.json` and `<scene>.txt` in
  `<manual_dir>/scans/<scene>/`, `scannetv2-labels.combined.tsv` in `<manual_dir>/`, and
  optionally `scannetv2_train.txt` and `scannetv2_val.txt` (one scene per line; without them
  every scene goes to "train"). The synthetic rooms of this project are written in the same
  layout (without `<scene>.txt`: their walls already run along the axes).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    tensor = lambda shape, dtype: tfds.features.Tensor(shape=shape, dtype=dtype,
                                                       encoding="zlib")
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "points": tensor((None, 3), np.float32),
            "colors": tensor((None, 3), np.uint8),
            "labels": tensor((None,), np.int32),
            "instances": tensor((None,), np.int32),
            "boxes": tensor((None, 7), np.float32),
            "box_classes": tensor((None,), np.int32),
            "box_instances": tensor((None,), np.int32),
            "axis_alignment": tfds.features.Tensor(shape=(4, 4), dtype=np.float32),
            "scene": tfds.features.Text(),
        }),
        homepage="http://www.scan-net.org/",
        citation=export.SCANNET_CITATION,
        disable_shuffling=True,  # scenes in name order; TFDS then keys them by position
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(
      self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[tuple[str, dict]]]:
    """Reads the label map and assigns scenes to splits before any split is written."""
    manual_dir = os.fspath(dl_manager.manual_dir)
    splits, unassigned = export.split_scenes(manual_dir)
    category_map = scannet.read_raw_category_map(
        os.path.join(manual_dir, scannet.LABEL_MAP_FILE))
    if unassigned:
      logger.warning("%s: %d scene(s) under %s are in no split list and are left out: %s",
                     self.info.full_name, len(unassigned), os.path.join(manual_dir, "scans"),
                     ", ".join(unassigned))
    self.info.metadata.update(scenes_in_no_split=unassigned, splits={}, notes={})
    return {split: self._generate_examples(split, manual_dir, scenes, category_map)
            for split, scenes in splits.items()}

  def _generate_examples(self, split: str, manual_dir: str, scenes: list[str],
                         category_map: dict[str, int]) -> Iterator[tuple[str, dict]]:
    """Yields (scene, example) in scene order; skips scenes that cannot be read."""
    tally = export.SkipTally(self.info.full_name, split, "scenes")
    notes = export.NoteTally(self.info.full_name, split, "notes on written scenes", "notes")
    tally.listed = len(scenes)
    for scene in scenes:
      try:
        example, scene_notes = read_scene(os.path.join(manual_dir, "scans", scene), scene,
                                          category_map)
      except SceneError as e:
        tally.skip(e.reason, e.path, str(e))
        continue
      notes.notes.extend(scene_notes)
      tally.written += 1
      yield scene, example
    self.info.metadata["splits"][split] = tally.finish()
    self.info.metadata["notes"][split] = notes.finish()
    tally.require_written()


def build_boxes(manual_dir: str, data_dir: str) -> ScannetBoxes:
  """Builds (or reuses) the dataset as array_record files under `data_dir`.

  Args:
    manual_dir: the ScanNet export (`scans/<scene>/...`, the label map, split lists).
    data_dir: the TFDS data dir to write to.

  Returns:
    The prepared builder; `builder.info.metadata` holds the skips ("splits") and the notes on
    written scenes ("notes").

  Raises:
    ValueError: naming the file, for a missing or malformed label map or split list, and for
      a split in which every scene is skipped.
  """
  builder = ScannetBoxes(data_dir=data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def load_boxes(data_dir: str, split: str) -> Sequence[dict[str, Any]]:
  """A random-access source of numpy examples of a built dataset (no TensorFlow needed).

  Args:
    data_dir: the TFDS data dir the dataset was built into.
    split: "train", "val", or a TFDS slice such as "train[:10]".

  Returns:
    A sequence: `len(source)`, `source[i]` -> {"points", "colors", "labels", "instances",
    "boxes", "box_classes", "box_instances", "axis_alignment": numpy arrays, "scene": bytes}.

  Raises:
    FileNotFoundError: if the dataset is not built (the message gives the command).
  """
  builder = ScannetBoxes(data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{builder.data_path}: not built; run python -m datasets.scannet_boxes.build "
        f"--manual_dir <scannet export> --data_dir {data_dir}")
  return builder.as_data_source(split=split)
