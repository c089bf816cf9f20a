"""Pretrained students from Orbax checkpoints: what downstream code loads.

A pretraining step directory `<workdir>/checkpoints/<step>/` holds the items "state" (for
resuming), "data" (the data position), "student" ({"params", "batch_stats"} of the 3D
student with its projection head, {"backbone": ..., "head": ...}) and "student_config"
(the student's registry name, projection width and whether it saw colours).

    model, variables = checkpoints.load_student("work_dirs/demo/ppkt")
    features, aux = model.apply(variables, points, colors, point_mask, train=False)

Items are read with Orbax's item handlers directly, so no step-level metadata is expected
next to them.
"""

import os
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from p2p_jax import models
from p2p_jax.models import student as student_lib

STUDENT, STUDENT_CONFIG = "student", "student_config"


def _flat_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
  tree = getattr(tree, "tree", tree)  # Orbax's TreeMetadata wraps the tree
  flat = traverse_util.flatten_dict(tree) if isinstance(tree, dict) else {}
  return {"/".join(map(str, k)): (tuple(v.shape), v.dtype) for k, v in flat.items()}


def find_student_checkpoint(path: str) -> tuple[str, int | None]:
  """The "student" item of a pretraining checkpoint.

  Args:
    path: a pretraining work dir (its latest checkpoint), its `checkpoints/` dir (likewise),
      a step dir `checkpoints/<step>`, or the step's `student/` item dir itself.

  Returns:
    (the item directory, its step or None when `path` named the item).

  Raises:
    FileNotFoundError: nothing that looks like a pretraining checkpoint at `path`.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.isfile(os.path.join(path, "_METADATA")):
    step = os.path.basename(os.path.dirname(path))
    return path, int(step) if step.isdigit() else None
  if os.path.isdir(os.path.join(path, "student")):
    step = os.path.basename(path)
    return os.path.join(path, "student"), int(step) if step.isdigit() else None
  root = os.path.join(path, "checkpoints") if os.path.isdir(
      os.path.join(path, "checkpoints")) else path
  steps = sorted(int(d) for d in (os.listdir(root) if os.path.isdir(root) else [])
                 if d.isdigit() and os.path.isdir(os.path.join(root, d, "student")))
  if not steps:
    raise FileNotFoundError(f"no pretraining checkpoint with a 'student' item at {path} (looked "
                            f"for <workdir>/checkpoints/<step>/student/ and <step>/student/)")
  return os.path.join(root, str(steps[-1]), "student"), steps[-1]


def load_student_backbone(path: str, model: student_lib.PointModel, variables: dict, *,
                          head: bool = False) -> tuple[dict, int | None]:
  """Replaces the backbone of `variables` by the pretrained one at `path`; the head stays.

  Args:
    path: see `find_student_checkpoint`.
    model: the model `variables` belong to (only used to name it in errors).
    variables: `model`'s {"params", "batch_stats"}, e.g. from `init_variables`.
    head: replace the head too (a model with the pretraining head).

  Returns:
    (variables with params["backbone"] and batch_stats["backbone"] (and the head's) from the
     checkpoint, the checkpoint's step).

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError: listing every backbone variable the checkpoint lacks, has in excess or has
      with another shape (paths like "params/backbone/sa1/SharedMLP_0/PointwiseDense_0/kernel").
  """
  item, step = find_student_checkpoint(path)
  parts = ("backbone", "head") if head else ("backbone",)
  wanted = {c: {p: variables.get(c, {}).get(p, {}) for p in parts}
            for c in ("params", "batch_stats")}
  wanted_shapes = _flat_shapes(wanted)
  handler = ocp.StandardCheckpointHandler()
  try:
    stored_shapes = _flat_shapes(handler.metadata(epath.Path(item)))
    in_parts = lambda k: k.split("/")[1] in parts
    problems = [f"missing: {k} (expected shape {v[0]})" for k, v in wanted_shapes.items()
                if k not in stored_shapes]
    problems += [f"shape mismatch: {k} expected {v[0]}, found {stored_shapes[k][0]}"
                 for k, v in wanted_shapes.items()
                 if k in stored_shapes and stored_shapes[k][0] != v[0]]
    problems += [f"unexpected: {k} (found shape {v[0]})" for k, v in stored_shapes.items()
                 if in_parts(k) and k not in wanted_shapes]
    if problems:
      raise ValueError(
          f"the pretrained student at {item} does not fit the backbone "
          f"{type(model.backbone).__name__} of this model (is the config's `student` the "
          f"architecture that was pretrained?): {len(problems)} problem(s)\n  "
          + "\n  ".join(problems))
    # Checked above, before restoring: a failed Orbax restore leaves work that errors at exit.
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = traverse_util.unflatten_dict({
        tuple(k.split("/")): jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        for k, (shape, dtype) in stored_shapes.items()})
    restored = handler.restore(epath.Path(item), args=ocp.args.StandardRestore(target))
  finally:
    handler.close()
  out = {c: {**variables.get(c, {}), **{p: restored.get(c, {}).get(p, {}) for p in parts}}
         for c in ("params", "batch_stats")}
  return out, step


def student_config(item: str) -> dict[str, Any] | None:
  """The "student_config" item next to the student item `item`; None if it has none."""
  path = epath.Path(item).parent / STUDENT_CONFIG
  if not path.exists():
    return None
  handler = ocp.JsonCheckpointHandler()
  try:
    return handler.restore(path)
  finally:
    handler.close()


def load_student(path: str, *, head: bool = False,
                 student: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
  """Restores a pretrained 3D student as a Flax module and its variables.

  Args:
    path: a pretraining work dir (its latest checkpoint), its `checkpoints/` dir, a step dir
      or the step's `student/` item dir.
    head: also return the projection head: the module is then the `PointModel` that was
      pretrained, giving L2-normalised projections; else the bare backbone, giving features.
    student: the student's name in `p2p_jax.models.STUDENTS`; needed only for checkpoints
      written without a "student_config" item, and checked against it otherwise.

  Returns:
    (module, {"params", "batch_stats"}): `module.apply(variables, points [B, N, 3],
    features [B, N, 3], point_mask [B, N], train=False)` follows the backbone protocol of
    `p2p_jax.models.student`.

  Raises:
    FileNotFoundError: nothing that looks like a pretraining checkpoint at `path`.
    ValueError: the student is unknown, or its variables do not fit the named architecture.
  """
  item, _ = find_student_checkpoint(path)
  config = student_config(item) or {}
  name = config.get("student", student)
  if name is None:
    raise ValueError(f"{item}: the checkpoint does not name its student (no "
                     f"{STUDENT_CONFIG} item); pass student=, one of {sorted(models.STUDENTS)}")
  if student is not None and student != name:
    raise ValueError(f"{item}: the checkpoint holds student {name!r}, not {student!r}")
  handler = ocp.StandardCheckpointHandler()
  try:
    shapes = _flat_shapes(handler.metadata(epath.Path(item)))
  finally:
    handler.close()
  projection_dim = shapes["params/head/Dense_0/kernel"][0][-1]
  # The SR-UNet settings it was pretrained with (voxel size, ...); JSON turned tuples to lists.
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in config.get("backbone_kwargs", {}).items()}
  model = student_lib.PointModel(models.backbone(name, **kwargs),
                                 student_lib.ProjectionHead(projection_dim))
  variables = jax.eval_shape(model.init, jax.random.key(0), jax.numpy.zeros((1, 8, 3)),
                             jax.numpy.zeros((1, 8, 3)), jax.numpy.ones((1, 8), bool))
  variables, _ = load_student_backbone(item, model, variables, head=True)
  if head:
    return model, variables
  return model.backbone, {k: v["backbone"] for k, v in variables.items()}
