"""Preparation: everything written before a run reads its data, as one explicit step.

Scripts call these before training; the loops only read. Each step is idempotent (a finished
build is reused) and multi-host safe: process 0 writes, every process waits for it. Each is
also atomic, so a step killed at any point is redone by the next call, never used half
written: the synthetic rooms are marked complete last (`synthetic.MARKER`; the S3DIS layout
and the teacher's export are renamed into place), and TFDS builds into an `incomplete.*`
folder that it renames when the build succeeds.

    frames(data)          synthetic rooms when asked, then scannet_frames (pretraining)
    scenes(data)          synthetic rooms when asked, then scannet_scenes (fine-tuning)
    teacher(data)         synthetic rooms when asked, then the teacher's export and frames
    s3dis(data)           synthetic rooms in the S3DIS layout when asked, then s3dis
    boxes(data)           synthetic rooms when asked, then scannet_boxes (detection)

`data` is the `data` field of an experiment config: manual_dir, data_dir, frames_config and
`synthetic` (settings of `synthetic.generate_if_asked`), plus the teacher's holdout keys.
"""

from collections.abc import Callable

import jax
from jax.experimental import multihost_utils

from p2p_jax.data import s3dis as s3dis_lib
from p2p_jax.data import scannet_boxes, scannet_frames, scannet_scenes, synthetic, teacher_frames
from p2p_jax.data.synthetic import s3dis_writer


def _on_lead(name: str, write: Callable[[], None]) -> None:
  if jax.process_index() == 0:
    write()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def frames(data) -> None:
  """Generates synthetic rooms if asked, then builds scannet_frames into `data.data_dir`."""
  def write():
    synthetic.generate_if_asked(data.manual_dir, data.synthetic)
    scannet_frames.build_frames(data.manual_dir, data.data_dir, config=data.frames_config)
  _on_lead("frames prepared", write)


def scenes(data) -> None:
  """Generates synthetic rooms if asked, then builds scannet_scenes into `data.data_dir`."""
  def write():
    synthetic.generate_if_asked(data.manual_dir, data.synthetic)
    scannet_scenes.build_scenes(data.manual_dir, data.data_dir)
  _on_lead("scenes prepared", write)


def teacher(data) -> None:
  """Generates synthetic rooms if asked, then writes and builds the teacher's frames."""
  def write():
    synthetic.generate_if_asked(data.manual_dir, data.synthetic)
    root, train, held_out = teacher_frames.teacher_split(
        data.manual_dir, data.data_dir, data.holdout_fraction, data.holdout_seed)
    teacher_frames.write_export(data.manual_dir, root, train, held_out)
    teacher_frames.build(root, data.frames_config)
  _on_lead("teacher frames prepared", write)


def s3dis(data) -> None:
  """Writes synthetic rooms in the S3DIS layout if asked (`s3dis_writer.generate_if_asked`:
  `synthetic.scenes` rooms spread over the areas), then builds s3dis into `data.data_dir`."""
  def write():
    s3dis_writer.generate_if_asked(data.manual_dir, data.synthetic)
    s3dis_lib.build_s3dis(data.manual_dir, data.data_dir)
  _on_lead("s3dis prepared", write)


def boxes(data) -> None:
  """Generates synthetic rooms if asked, then builds scannet_boxes into `data.data_dir`."""
  def write():
    synthetic.generate_if_asked(data.manual_dir, data.synthetic)
    scannet_boxes.build_boxes(data.manual_dir, data.data_dir)
  _on_lead("boxes prepared", write)
