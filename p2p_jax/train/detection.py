"""Label-efficient 3D object detection: VoteNet on the (pretrained) student, then mAP.

Readable top to bottom: data (`p2p_jax.tasks.detection`) -> labelled subset and its size
templates -> model (VoteNet on a pretrained backbone, or scratch) -> optimiser -> steps
(`p2p_jax.train.loop`, resumable) -> evaluation on the val scenes (mAP and AR at IoU 0.25
and 0.5) -> results. The number of steps does not depend on the label fraction.

The backbone comes from a pretraining work dir (the "student" item); VoteNet's voting and
proposal modules start fresh. Without a checkpoint the backbone starts from a random
initialisation ("scratch").
"""

import functools
import itertools
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from p2p_jax import checkpoints, models
from p2p_jax.configs import detection as schema
from p2p_jax.models import votenet
from p2p_jax.tasks import detection, segmentation
from p2p_jax.train import loop
from p2p_jax.train import state as state_lib


@functools.partial(jax.jit, static_argnames=("model", "optimizer", "near", "far"),
                   donate_argnums=(0,))
def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], *,
               model: votenet.VoteNet, optimizer: state_lib.OptimizerConfig, near: float,
               far: float) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One VoteNet step (BatchNorm in training mode) on a `detection.training_batch`.

  Returns:
    (new state, the loss terms of `votenet.loss`, "loss" (the total), "learning_rate",
     "grad_norm").
  """
  tx = state_lib.make_optimizer(optimizer)
  targets = detection.targets(batch)

  def loss_fn(params):
    (outputs, _), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, batch["points"], batch["colors"],
        batch["point_mask"], train=True, mutable=["batch_stats"])
    total, terms = votenet.loss(outputs, targets, model.spec, near_threshold=near,
                                far_threshold=far)
    return total, (updates["batch_stats"], terms)

  (loss, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state, _ = state.apply_gradients(grads, batch_stats, tx)
  schedule = state_lib.make_schedule(optimizer)
  return new_state, {**terms, "loss": loss, "learning_rate": schedule(state.step),
                     "grad_norm": loop.global_norm(grads)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None = None, *,
                       data: tuple[list, list] | None = None,
                       progress: bool = True) -> dict[str, Any]:
  """Trains VoteNet on a labelled subset of the training scenes and evaluates it.

  Args:
    config: a detection config (p2p_jax.configs.detection, checked here).
    workdir: where `results.json`, `label_lists.json`, `metrics.jsonl` and the checkpoints
      go (a run there is resumed); None writes nothing.
    data: (train scenes, val scenes) from `detection.load_split`, to share between runs;
      None loads them.
    progress: show a progress bar.

  Returns:
    The results (also in `workdir/results.json`): "mAP@0.25", "mAP@0.5", "mAR@0.25",
    "mAR@0.5" and per-class "AP@.../<class>" (`p2p_jax.boxes.evaluate`), the chance level
    "random_proposals" (`detection.chance_level`: as many random boxes as the model
    reports, scored the same way), the run's settings,
    the labelled scenes, "train_loss" (every `log_every`-th step), and "seconds".

  Raises:
    loop.StoppedError: a SIGTERM stopped training (after saving where it was).
  """
  # Setup.
  start_time = time.perf_counter()
  schema.check(config)
  sample = detection.sample_config(config)
  optimizer = state_lib.OptimizerConfig.from_config(config.optimizer, config.total_steps)

  # Data: the labelled subset, and the size templates from its boxes alone.
  train, val = data if data is not None else (detection.load_split(config.data, "train"),
                                              detection.load_split(config.data, "val"))
  if not val:
    raise ValueError("no val scenes to evaluate on")
  labelled = segmentation.labelled_subset([s["scene"] for s in train], config.labels.fraction,
                                          config.labels.seed)
  train_scenes = [s for s in train if s["scene"] in set(labelled)]
  detection.check_max_boxes(train_scenes, sample.max_boxes, "train")
  detection.check_max_boxes(val, sample.max_boxes, "val")
  spec = votenet.DetectionSpec(num_classes=len(detection.CLASS_NAMES),
                               mean_sizes=detection.mean_sizes(train_scenes),
                               num_heading_bins=config.model.num_heading_bins)
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "label_lists.json"), "w") as f:
      json.dump({"scenes": labelled, "seed": config.labels.seed,
                 "mean_sizes": spec.mean_sizes}, f)

  # Model.
  model = detection.make_model(config.student, spec, config.model,
                               **models.backbone_kwargs(config.student, config.sparse))
  key = jax.random.key(config.seed)
  variables = detection.init_variables(model, key, sample.num_points)
  init_step = None
  if config.init.checkpoint:
    variables, init_step = checkpoints.load_student_backbone(config.init.checkpoint, model,
                                                             variables)

  # Training.
  tx = state_lib.make_optimizer(optimizer)
  init = lambda: state_lib.TrainState.create(variables, tx)
  batches = lambda start: (detection.training_batch(train_scenes, config.seed, step,
                                                    config.batch_size, sample)
                           for step in itertools.count(start))
  step = functools.partial(train_step, model=model, optimizer=optimizer,
                           near=config.loss.near_threshold, far=config.loss.far_threshold)
  result = loop.run(
      workdir=workdir, total_steps=config.total_steps, init=init,
      abstract_state=loop.abstract_state(init), step=step, batches=batches,
      log_every=config.log_every, desc=f"detection {config.labels.fraction:g}",
      progress=progress, postfix=("loss", "vote", "objectness"))
  loop.raise_if_stopped(result, "detection fine-tuning", workdir)
  train_seconds = time.perf_counter() - start_time

  # Evaluation.
  eval_start = time.perf_counter()
  trained = {"params": result.state.params, "batch_stats": result.state.batch_stats}
  samples = detection.eval_samples(val, sample, seed=config.seed)
  scores, _ = detection.evaluate(model, trained, samples,
                                 batch_size=config.eval.batch_size,
                                 nms_iou=config.eval.nms_iou,
                                 conf_threshold=config.eval.conf_threshold,
                                 oriented=sample.oriented)
  chance = detection.chance_level(samples, config.model.num_proposals * spec.num_classes,
                                  oriented=sample.oriented)
  results = {
      **{k: loop.json_float(v) for k, v in scores.items()},
      "random_proposals": chance,
      "student": config.student,
      "init": config.init.checkpoint or "scratch",
      "init_step": init_step,
      "label_fraction": config.labels.fraction,
      "label_seed": config.labels.seed,
      "seed": config.seed,
      "labelled_scenes": labelled,
      "num_train_scenes": len(train),
      "num_val_scenes": len(val),
      "num_val_boxes": int(sum(len(s["boxes"]) for s in val)),
      "steps": config.total_steps,
      "train_loss": [r["loss"] for r in result.records],
      "train_steps": [r["step"] for r in result.records],
      "seconds": {"train": train_seconds, "eval": time.perf_counter() - eval_start,
                  "total": time.perf_counter() - start_time},
  }
  if workdir is not None:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
  return results


def ap_table(results: dict[str, Any]) -> str:
  """Per-class AP at IoU 0.25 and 0.5 as a Markdown table, with the means."""
  rows = ["| class | AP@0.25 | AP@0.5 |", "|---|---|---|"]
  fmt = lambda v: "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"
  for name in detection.CLASS_NAMES:
    rows.append(f"| {name} | {fmt(results.get(f'AP@0.25/{name}'))} | "
                f"{fmt(results.get(f'AP@0.5/{name}'))} |")
  rows.append(f"| **mean** | {fmt(results['mAP@0.25'])} | {fmt(results['mAP@0.5'])} |")
  return "\n".join(rows)

