"""The pretraining loop: setup -> data -> models -> restore -> steps -> checkpoints.

One loop for both methods, chosen by `config.method`: "ppkt" (pixel-to-point against a frozen
2D teacher, `setup_ppkt`) and "pointcontrast" (3D-to-3D on overlapping frame pairs, the
baseline, `setup_pointcontrast`). Each gives the loop its data, initial state and pmapped
step; checkpoints, logging and resumption are shared, and so is the saved "student".

Readable top to bottom, big_vision style. A run lives in its work dir: `checkpoints/` (Orbax:
the replicated-once state, the student's variables on their own for downstream loading, and
the data position), `metrics.jsonl` and TensorBoard event files in `tensorboard/` (written
with tensorboardX, no TensorFlow needed). Starting a run in a work dir that has checkpoints
resumes from the latest one; batches are a function of (seed, index), so a resumed run sees
exactly the batches it would have seen. SIGTERM (what a preempted TPU VM receives) saves a
checkpoint and returns; a non-finite loss stops the run naming the step, with the last good
checkpoint left as it was.

Across processes (a TPU pod slice, or `jax.distributed.initialize` by hand) the step is
pmapped over every device, each process feeds its own devices with its own slice of every
global batch, and only process 0 prepares the data and writes metrics and checkpoint files.
"""

import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX
import tqdm
from jax.experimental import multihost_utils

from p2p_jax.data import frame_pairs, pipeline, scannet_frames, teacher_cache
from p2p_jax.models import convert, pointnet2, projector, resnet, sparse_unet
from p2p_jax.train import pointcontrast, ppkt

# The 3D students, by config name: PointNet++ and the paper's sparse residual U-Nets.
STUDENTS = {"pointnet2_seg": pointnet2.PointNet2Seg, "pointnet2_small": pointnet2.PointNet2Small,
            "pointnet2_tiny": pointnet2.PointNet2Tiny,
            "sr_unet34c": sparse_unet.SparseUNet34C, "sr_unet18a": sparse_unet.SparseUNet18A,
            "sr_unet14a": sparse_unet.SparseUNet14A, "sr_unet_tiny": sparse_unet.SparseUNetTiny}


def check_config(config: ml_collections.ConfigDict, template: ml_collections.ConfigDict,
                 prefix: str = "") -> None:
  """Raises ValueError listing every key of `config` that `template` does not have."""
  unknown = []

  def walk(c, t, path):
    for key in c.keys():
      if key not in t:
        unknown.append(path + key)
      elif isinstance(c[key], ml_collections.ConfigDict) and isinstance(
          t[key], ml_collections.ConfigDict):
        walk(c[key], t[key], f"{path}{key}.")

  walk(config, template, prefix)
  if unknown:
    raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")


def pair_config(config: ml_collections.ConfigDict) -> pipeline.PairConfig:
  p = config.pairs
  return pipeline.PairConfig(
      image_hw=tuple(p.image_hw), num_points=p.num_points, num_pairs=p.num_pairs,
      crop_scale=tuple(p.crop_scale), flip_probability=p.flip_probability,
      views_per_frame=p.views_per_frame, max_rotation=p.max_rotation,
      scale_range=tuple(p.scale_range),
      jitter_sigma=p.jitter_sigma, jitter_clip=p.jitter_clip, colors=p.colors)


def load_frames(data: ml_collections.ConfigDict):
  """The frames source of a prepared dataset (`p2p_jax.data.prepare.frames`)."""
  return scannet_frames.load_frames(data.data_dir, data.split, config=data.frames_config)


def load_teacher(config: ml_collections.ConfigDict, image_hw):
  teacher = resnet.VARIANTS[config.teacher.arch]()
  if config.teacher.checkpoint:
    return teacher, convert.load_teacher_checkpoint(config.teacher.checkpoint, teacher)
  logging.warning("teacher.checkpoint is empty: the teacher is randomly initialised, which "
                  "exercises the code but transfers no knowledge")
  images = jnp.zeros((1,) + tuple(image_hw) + (3,))
  return teacher, jax.jit(teacher.init)(jax.random.key(config.seed + 1), images)


def open_teacher_cache(config: ml_collections.ConfigDict, workdir: str, source, teacher,
                       teacher_variables, pairs: pipeline.PairConfig):
  """Opens the run's teacher cache; process 0 builds it first when it is missing."""
  if not pairs.views_per_frame:
    raise ValueError("teacher.cache needs pairs.views_per_frame > 0: the cache holds the "
                     "features of fixed views, and fresh random crops cannot be cached")
  directory = config.teacher.cache_dir or os.path.join(workdir, "teacher_cache")
  metadata = teacher_cache.cache_metadata(
      teacher=config.teacher.arch, num_frames=len(source), seed=config.seed, config=pairs,
      layer=config.teacher.layer,
      checkpoint=os.path.abspath(config.teacher.checkpoint) if config.teacher.checkpoint else
      f"random init, seed {config.seed + 1}",
      data=[os.path.abspath(config.data.data_dir), config.data.frames_config, config.data.split])
  if jax.process_index() == 0 and not os.path.exists(
      os.path.join(directory, teacher_cache.METADATA)):
    teacher_cache.build_cache(directory, source,
                              teacher_cache.teacher_features(teacher, teacher_variables,
                                                             config.teacher.layer), pairs,
                              seed=config.seed, metadata=metadata)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("teacher cache built")
  return teacher_cache.TeacherCache(directory, metadata)


def _loss_config(config, cls):
  return cls(temperature=config.loss.temperature, global_negatives=config.loss.global_negatives,
             symmetric=config.loss.symmetric)


def setup_ppkt(config, workdir, source, *, student, tx, schedule, devices):
  """PPKT: pixel-to-point pairs of single frames against the frozen 2D teacher.

  Returns:
    (dataset of this process's host batches, init(key) -> TrainState,
     step(state, host_batch) -> (state, metrics) pmapped over `devices`).
  """
  pairs = pair_config(config)
  teacher, teacher_variables = load_teacher(config, pairs.image_hw)
  cache = None
  if config.teacher.cache:  # the teacher's features of fixed views, computed once
    cache = open_teacher_cache(config, workdir, source, teacher, teacher_variables, pairs)
  dataset = pipeline.pretrain_dataset(source, pairs, seed=config.seed,
                                      num_devices=jax.local_device_count(),
                                      per_device_batch=config.per_device_batch, cache=cache)
  model = ppkt.PPKTModel(projector=projector.UpsamplingProjector(features=config.projection_dim),
                         student=student)
  # Initialisation needs only shapes: one device's share of a batch, and its teacher features.
  first = dataset[0]
  example = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), jax.eval_shape(
      lambda b: pipeline.make_pairs(b, pairs), first))
  if cache is None:
    layer4 = jax.eval_shape(lambda v, x: teacher.apply(v, x)[1][config.teacher.layer],
                            teacher_variables,
                            resnet.preprocess(example["image"])).shape
    teacher_variables = ppkt.replicate(teacher_variables, devices)
  else:
    layer4 = first["teacher_features"].shape[1:]
    teacher_variables = {}  # the step reads the cache instead
  init = lambda key: ppkt.init_state(model, tx, key, jnp.zeros(layer4), example,
                                     image_hw=pairs.image_hw)
  step = ppkt.make_train_step(devices=devices, model=model, teacher=teacher, tx=tx,
                              pair_config=pairs, schedule=schedule,
                              teacher_layer=config.teacher.layer,
                              loss_config=_loss_config(config, ppkt.LossConfig))
  return dataset, init, lambda state, batch: step(state, teacher_variables, batch)


def setup_pointcontrast(config, workdir, source, *, student, tx, schedule, devices):
  """PointContrast: matched points of overlapping frame pairs, 3D against 3D.

  The pair list is computed once (by process 0) and stored with the dataset. Returns what
  `setup_ppkt` returns.
  """
  del workdir
  c = config.pointcontrast
  overlap = frame_pairs.OverlapConfig(
      voxel_size=c.voxel_size, match_radius_voxels=c.match_radius_voxels,
      min_overlap=c.min_overlap, max_frame_distance=c.max_frame_distance or None)
  d = config.data
  if jax.process_index() == 0:
    frame_pairs.mine_pairs(d.data_dir, d.split, d.frames_config, overlap)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("frame pairs computed")
  pairs = frame_pairs.mine_pairs(d.data_dir, d.split, d.frames_config, overlap, progress=False)
  matches = frame_pairs.MatchConfig(
      num_points=config.pairs.num_points, num_matches=c.num_matches,
      match_radius=c.voxel_size * c.match_radius_voxels, max_rotation=config.pairs.max_rotation,
      full_rotation=c.full_rotation, scale_range=tuple(config.pairs.scale_range),
      colors=config.pairs.colors)
  dataset = pointcontrast.pointcontrast_dataset(
      source, pairs, matches, seed=config.seed, num_devices=jax.local_device_count(),
      per_device_batch=config.per_device_batch)
  model = pointcontrast.PointContrastModel(student=student)
  example = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), jax.eval_shape(
      lambda b: frame_pairs.make_matches(b, matches), dataset[0]))
  init = lambda key: pointcontrast.init_state(model, tx, key, example)
  step = pointcontrast.make_train_step(
      devices=devices, model=model, tx=tx, match_config=matches,
      loss_config=_loss_config(config, pointcontrast.LossConfig), schedule=schedule)
  return dataset, init, step


METHODS = {"ppkt": setup_ppkt, "pointcontrast": setup_pointcontrast}


def _unreplicate(tree):
  return jax.tree.map(lambda x: x[0], tree)


def train(config: ml_collections.ConfigDict, workdir: str,
          template: ml_collections.ConfigDict | None = None,
          stop_at: int | None = None) -> dict[str, float]:
  """Pretrains (or resumes pretraining) as `config` says, in `workdir`.

  Args:
    config: an experiment config (see experiments/configs/).
    workdir: where checkpoints and metrics go; an existing one is resumed.
    template: the config schema; keys of `config` missing from it are an error.
    stop_at: end this run after this step (saving it), e.g. for time-sliced jobs; the
      schedule still runs to `config.total_steps`.

  Returns:
    The metrics of the last step.
  """
  # Setup.
  if template is not None:
    check_config(config, template)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  devices = jax.devices()  # the pmapped step's, across all processes
  local_devices = jax.local_devices()
  is_lead = jax.process_index() == 0

  # Data, prepared beforehand (`p2p_jax.data.prepare.frames`); each process reads its own
  # slice of each batch.
  source = load_frames(config.data)

  # Optimiser, then the method's data, model and step.
  o = config.optimizer
  schedule = ppkt.make_schedule(o.learning_rate, config.total_steps, o.warmup_steps)
  tx = ppkt.make_optimizer(o.name, learning_rate=o.learning_rate, weight_decay=o.weight_decay,
                           total_steps=config.total_steps, warmup_steps=o.warmup_steps,
                           momentum=o.momentum)
  student = pointnet2.PointModel(STUDENTS[config.student](bn_axis_name=ppkt.AXIS),
                                 pointnet2.ProjectionHead(config.projection_dim))
  if config.method not in METHODS:
    raise ValueError(f"unknown method {config.method!r}; expected one of {sorted(METHODS)}")
  dataset, init, step_fn = METHODS[config.method](
      config, workdir, source, student=student, tx=tx, schedule=schedule, devices=devices)
  # Restored onto one device, then replicated: checkpoints load on any device count.
  one_device = jax.sharding.SingleDeviceSharding(local_devices[0])
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device),
      jax.eval_shape(init, jax.random.key(config.seed)))

  # Restore, or start.
  manager = ocp.CheckpointManager(
      os.path.join(workdir, "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint.keep,
                                           save_interval_steps=config.checkpoint.every))
  start = manager.latest_step()
  if start is None:
    state, start = jax.jit(init)(jax.random.key(config.seed)), 0
  else:
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    state = restored["state"]
    if restored["data"]["next_batch"] != start:
      raise ValueError(f"checkpoint {start} in {workdir} is at batch "
                       f"{restored['data']['next_batch']}, not {start}")
    logging.info("resumed from step %d of %s", start, workdir)

  def save(step, state, force=False):
    if force:  # a save still in flight would make the manager skip this one
      manager.wait_until_finished()
    # As NumPy: every process holds the same values, and process 0 writes them.
    host_state = jax.device_get(_unreplicate(state))
    student = {"params": host_state.params["student"],
               "batch_stats": host_state.batch_stats.get("student", {})}
    manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(host_state), student=ocp.args.StandardSave(student),
        data=ocp.args.JsonSave({"next_batch": step})))

  state = ppkt.replicate(state, devices)

  # Loop.
  terminated = []
  previous = signal.signal(signal.SIGTERM, lambda *_: terminated.append(True))
  batches = pipeline.prefetch(dataset, start=start)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  board = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard")) if is_lead else None
  frames_per_step = len(devices) * config.per_device_batch
  bar = tqdm.tqdm(total=config.total_steps, initial=start, disable=not is_lead,
                  desc="pretraining")
  last = {}
  end = config.total_steps if stop_at is None else min(stop_at, config.total_steps)
  try:
    for step in range(start, end):
      tick = time.perf_counter()
      state, metrics = step_fn(state, next(batches))
      metrics = jax.tree.map(float, jax.device_get(_unreplicate(metrics)))
      if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(f"non-finite loss {metrics['loss']} at step {step + 1}; the "
                                 f"last good checkpoint in {workdir} is left as it was")
      seconds = time.perf_counter() - tick
      last = {"step": step + 1, **metrics, "frames_per_second": frames_per_step / seconds,
              "pairs_per_second": metrics["pairs"] / seconds}
      if is_lead and ((step + 1) % config.log_every == 0 or step + 1 == config.total_steps):
        with open(metrics_path, "a") as f:
          f.write(json.dumps(last) + "\n")
        for key, value in last.items():
          if key != "step":
            board.add_scalar(key, value, step + 1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['pair_accuracy']:.2f}")
      bar.update(1)
      stop = bool(terminated)  # read once: a signal between save and check is not lost
      save(step + 1, state, force=stop or step + 1 == end)
      if stop:
        logging.warning("SIGTERM: saved step %d of %s and stopped", step + 1, workdir)
        break
  finally:
    manager.wait_until_finished()
    manager.close()
    bar.close()
    if board is not None:
      board.close()
    signal.signal(signal.SIGTERM, previous)
  return last
