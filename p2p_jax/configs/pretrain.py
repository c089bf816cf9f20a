"""Pretraining (`p2p_jax.train.pretrain`): the schema and PPKT's paper defaults.

`base()` is also the template a run's config is checked against: a key that is not here is an
error, so a typo cannot silently fall back to a default. `shrink_for_cpu` is the `runlocal`
variant of any pretraining experiment.
"""

import math

import ml_collections

from p2p_jax.configs import common


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "ppkt"  # or "pointcontrast", the 3D-to-3D baseline
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      manual_dir="",           # a ScanNet export, or where synthetic rooms are generated
      data_dir="",             # the TFDS data dir scannet_frames is built into
      frames_config="skip25",  # every 25th frame, as in the paper
      split="train",
      # Generate synthetic rooms into manual_dir first when it has no scans/ (scenes > 0).
      synthetic=common.synthetic(frames_per_scene=0),
  ))
  # num_points and num_pairs are per frame; the loss contrasts the pairs of the whole batch
  # (of every device with loss.global_negatives), so K = num_pairs x global batch.
  c.pairs = ml_collections.ConfigDict(dict(
      image_hw=(240, 320), num_points=8192, num_pairs=512, crop_scale=(0.5, 1.0),
      flip_probability=0.5,
      views_per_frame=0,  # 0: a fresh crop every use; V > 0: V fixed views (cacheable)
      max_rotation=math.pi, scale_range=(0.9, 1.1), jitter_sigma=0.005,
      jitter_clip=0.02,
      colors=True))  # False: the student sees geometry only (constant grey colour input)
  c.teacher = ml_collections.ConfigDict(dict(
      arch="resnet50",
      checkpoint="",  # from experiments/convert_weights.py; empty = random (warns)
      layer="layer4",  # the feature map the UPL reads (the paper's); "layer3" is stride 16
      # Compute layer4 of every view once (needs pairs.views_per_frame > 0), in cache_dir
      # (default <workdir>/teacher_cache), and skip the teacher in the step.
      cache=False,
      cache_dir="",
  ))
  # PointContrast (method "pointcontrast"): frame pairs whose clouds overlap by min_overlap
  # (voxel_size voxels; a point matches within match_radius_voxels of the other cloud), within
  # max_frame_distance frame ids (0: any two frames of a scene); num_matches per pair. Points
  # per view, rotation and scaling are those of `pairs`.
  c.pointcontrast = ml_collections.ConfigDict(dict(
      voxel_size=0.05, match_radius_voxels=1.5, min_overlap=0.3, max_frame_distance=0,
      num_matches=512, full_rotation=False))
  c.student = "pointnet2_seg"
  c.projection_dim = 128
  c.loss = ml_collections.ConfigDict(dict(temperature=0.04, global_negatives=True,
                                          symmetric=False))
  c.optimizer = common.optimizer(name="sgd", learning_rate=0.5)
  c.per_device_batch = 24
  c.total_steps = 60_000
  c.log_every = 50
  c.checkpointing = ml_collections.ConfigDict(dict(every=1000, keep=3))  # saving
  return c


def shrink_for_cpu(c: ml_collections.ConfigDict, workdir_hint: str) -> None:
  """The `runlocal` variant: the same experiment, small enough to run in seconds on a CPU."""
  c.data.synthetic.update(scenes=2, frames_per_scene=8, height=48, width=64, val_fraction=0.0)
  c.data.frames_config = "skip1"
  c.data.manual_dir = c.data.manual_dir or f"{workdir_hint}/rooms"
  c.data.data_dir = c.data.data_dir or f"{workdir_hint}/tfds"
  c.pairs.update(image_hw=(48, 64), num_points=256, num_pairs=128)
  c.teacher.arch = "tiny"
  c.student = "pointnet2_tiny"
  c.projection_dim = 16
  c.per_device_batch = 1
  c.total_steps = 20
  c.log_every = 1
  c.checkpointing.update(every=5, keep=2)
