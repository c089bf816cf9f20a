"""Pretraining: prepare -> method setup -> the shared loop -> checkpoints with the student.

One run for every method of `p2p_jax.methods`, chosen by `config.method` ("ppkt",
"pointcontrast"). The method gives the loop its data, initial state and pmapped step;
checkpoints, logging and resumption are `p2p_jax.train.loop`'s, and every method saves the
same "student" item, which `p2p_jax.checkpoints.load_student` reads.

A run lives in its work dir: `checkpoints/` (Orbax:
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

    prepare(config, workdir)   the frames dataset, then the method's own preparation
    train(config, workdir)     the run (its data prepared)
"""

import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from p2p_jax import checkpoints, methods, models
from p2p_jax.data import pipeline
from p2p_jax.data import prepare as prepare_data
from p2p_jax.models import student as student_lib
from p2p_jax.train import config as config_lib
from p2p_jax.train import loop, parallel
from p2p_jax.train import state as state_lib


def prepare(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Everything the run reads, written once: the frames dataset (synthetic rooms when asked),
  then the method's preparation (PPKT's teacher cache, PointContrast's frame pairs)."""
  prepare_data.frames(config.data)
  methods.get(config.method).prepare(config, workdir)


def train(config: ml_collections.ConfigDict, workdir: str,
          template: ml_collections.ConfigDict | None = None,
          stop_at: int | None = None) -> dict[str, float]:
  """Pretrains (or resumes pretraining) as `config` says, in `workdir`.

  Args:
    config: an experiment config (see experiments/configs/), prepared by `prepare`.
    workdir: where checkpoints and metrics go; an existing one is resumed.
    template: the config schema; keys of `config` missing from it are an error.
    stop_at: end this run after this step (saving it), e.g. for time-sliced jobs; the
      schedule still runs to `config.total_steps`.

  Returns:
    The metrics of the last step.

  Raises:
    loop.StoppedError: a SIGTERM stopped the run (after saving where it was).
  """
  if template is not None:
    config_lib.check_config(config, template)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  devices = jax.devices()  # the pmapped step's, across all processes

  # The optimiser, then the method's data, model and step.
  optimizer = state_lib.OptimizerConfig.from_config(config.optimizer, config.total_steps)
  tx, schedule = state_lib.make_optimizer(optimizer), state_lib.make_schedule(optimizer)
  backbone = models.backbone(config.student, bn_axis_name=parallel.AXIS,
                             **models.backbone_kwargs(config.student, config.sparse))
  student = student_lib.PointModel(backbone, student_lib.ProjectionHead(config.projection_dim))
  dataset, init, step_fn = methods.get(config.method).setup(
      config, workdir, student=student, tx=tx, schedule=schedule, devices=devices)
  frames_per_step = len(devices) * config.per_device_batch

  def student_items(host_state):  # the student on its own, for downstream loading
    student = {"params": host_state.params["student"],
               "batch_stats": host_state.batch_stats.get("student", {})}
    return {checkpoints.STUDENT: ocp.args.StandardSave(student),
            checkpoints.STUDENT_CONFIG: ocp.args.JsonSave({
                "student": config.student, "projection_dim": config.projection_dim,
                "colors": config.points.colors,
                "backbone_kwargs": models.backbone_kwargs(config.student, config.sparse)})}

  result = loop.run(
      workdir=workdir, total_steps=config.total_steps,
      init=lambda: jax.jit(init)(jax.random.key(config.seed)),
      # Restored onto one device, then replicated: checkpoints load on any device count.
      abstract_state=loop.abstract_state(lambda: init(jax.random.key(config.seed))),
      step=step_fn, batches=lambda start: pipeline.prefetch(dataset, start=start),
      log_every=config.log_every, checkpoint_every=config.checkpointing.every,
      keep=config.checkpointing.keep, fallback=config.checkpointing.fallback,
      place=lambda state: parallel.replicate(state, devices),
      to_host=parallel.unreplicate, save_items=student_items,
      per_step=lambda m, seconds: {"frames_per_second": frames_per_step / seconds,
                                   "pairs_per_second": m["pairs"] / seconds},
      stop_at=stop_at, desc="pretraining", postfix=("loss", "pair_accuracy"))
  loop.raise_if_stopped(result, "pretraining", workdir)
  return result.last
