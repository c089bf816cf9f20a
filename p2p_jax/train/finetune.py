"""Label-efficient 3D semantic segmentation: fine-tuning and linear probing of the student.

Readable top to bottom: data (`p2p_jax.tasks.segmentation`) -> labelled subset -> model
(pretrained backbone or scratch) -> optimiser -> steps (`p2p_jax.train.loop`) -> evaluation on
every point of the held-out scenes -> results. The number of steps does not depend on the
label fraction: every run spends the same compute and compiles the same step.

Modes. "finetune" trains the backbone and a `SegmentationHead` (BatchNorm in training mode,
cross-entropy over labelled points). "linear_probe" fits a `LinearHead` on the frozen
backbone's features (`p2p_jax.train.probe`).

The backbone comes from a pretraining work dir (`p2p_jax.train.pretrain` writes the "student"
item: {"params": {"backbone", "head"}, "batch_stats": {"backbone"}}); the pretraining head is
dropped and the segmentation head starts fresh. Without a checkpoint the backbone starts from
a random initialisation ("scratch").

The jitted steps take the model and the optimiser settings as static arguments, so runs in
one process with the same architecture, shapes and optimiser settings (e.g. every label
fraction and initialisation of a study) compile once.
"""

import functools
import itertools
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections

from p2p_jax import checkpoints
from p2p_jax import metrics as metrics_lib
from p2p_jax.models import student as student_lib
from p2p_jax.tasks import segmentation
from p2p_jax.train import config as config_lib
from p2p_jax.train import loop, probe
from p2p_jax.train import state as state_lib


@functools.partial(jax.jit, static_argnames=("model", "optimizer"), donate_argnums=(0,))
def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], key: jax.Array, *,
               model: student_lib.PointModel,
               optimizer: state_lib.OptimizerConfig,
               ) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One fine-tuning step on a batch of crops (BatchNorm in training mode, dropout on).

  Args:
    state: the state, donated.
    batch: `segmentation.training_batch` output.
    key: dropout randomness of this step.
    model: the `segmentation.make_model` model (static).
    optimizer: the optimiser settings (static).

  Returns:
    (new state, {"loss", "accuracy", "learning_rate", "grad_norm"}).
  """
  tx = state_lib.make_optimizer(optimizer)

  def loss_fn(params):
    (logits, _), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, batch["points"], batch["colors"],
        batch["point_mask"], train=True, mutable=["batch_stats"], rngs={"dropout": key})
    loss, accuracy = segmentation.cross_entropy(logits, batch["labels"], batch["point_mask"])
    return loss, (updates["batch_stats"], accuracy)

  (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  new_state, _ = state.apply_gradients(grads, batch_stats, tx)
  schedule = state_lib.make_schedule(optimizer)
  return new_state, {"loss": loss, "accuracy": accuracy, "learning_rate": schedule(state.step),
                     "grad_norm": loop.global_norm(grads)}


def _finetune(config, model, variables, train_scenes, crop, optimizer, key, workdir,
              progress) -> dict[str, Any]:
  """The fine-tuning loop; returns the logged curve and the final "variables"."""
  tx = state_lib.make_optimizer(optimizer)
  # Batches and dropout keys depend on the step alone, so a resumed run continues bitwise.
  batch = lambda step: segmentation.training_batch(train_scenes, config.seed, step,
                                                   config.batch_size, crop)
  batches = lambda start: ((batch(step), jax.random.fold_in(key, step + 1))
                           for step in itertools.count(start))
  step = lambda state, batch_key: train_step(state, *batch_key, model=model, optimizer=optimizer)
  init = lambda: state_lib.TrainState.create(variables, tx)
  result = loop.run(
      workdir=workdir, total_steps=config.total_steps, init=init,
      abstract_state=loop.abstract_state(init), step=step,
      batches=batches, log_every=config.log_every, desc=f"finetune {config.labels.fraction:g}",
      progress=progress, leave=False)
  loop.raise_if_stopped(result, "fine-tuning", workdir)
  history = {k: [r[k] for r in result.records] for k in ("step", "loss", "accuracy")}
  history["variables"] = {"params": result.state.params,
                          "batch_stats": result.state.batch_stats}
  return history


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None = None, *,
                       data: segmentation.SceneData | None = None,
                       template: ml_collections.ConfigDict | None = None,
                       progress: bool = True) -> dict[str, Any]:
  """Fine-tunes (or linearly probes) on a labelled subset and evaluates on the val scenes.

  Args:
    config: a fine-tuning config (experiments/configs/finetune_synthetic.py).
    workdir: where `results.json` and `metrics.jsonl` go; None writes nothing.
    data: scenes loaded by `segmentation.load_data(config)`, to share between runs; None
      loads them.
    template: the config schema; keys of `config` missing from it are an error.
    progress: show a progress bar.

  Returns:
    The results (also written to `workdir/results.json`): "miou", "macc", "oa" (fractions),
    "per_class_iou" and "per_class_acc" ({class: value, None when absent from the ground
    truth}), "iou_table" (Markdown), "confusion", the run's settings ("mode", "student",
    "init", "init_step", "label_fraction", "labelled_scenes", ...), "train_loss" (the loss
    at every `log_every`-th step), "eval_points" and "seconds".
  """
  # Setup.
  start_time = time.perf_counter()
  if template is not None:
    config_lib.check_config(config, template)
  if config.mode not in segmentation.MODES:
    raise ValueError(f"unknown mode {config.mode!r}; expected one of {segmentation.MODES}")
  crop = segmentation.crop_config(config)
  optimizer = state_lib.OptimizerConfig.from_config(config.optimizer, config.total_steps)

  # Data.
  if data is None:
    data = segmentation.load_data(config)
  elif data.crop != crop:
    raise ValueError(f"the data were prepared for {data.crop}, the config asks for {crop}")
  labelled = segmentation.labelled_subset([s["scene"] for s in data.train],
                                          config.labels.fraction, config.labels.seed)
  train_scenes = [s for s in data.train if s["scene"] in set(labelled)]
  label_lists = {"scenes": labelled, "points_per_scene": config.labels.points_per_scene,
                 "seed": config.labels.seed}
  if config.labels.points_per_scene and config.mode == "linear_probe":
    raise ValueError("labels.points_per_scene: limited points are for mode 'finetune'; the "
                     "linear probe labels whole scenes (labels.fraction)")
  if config.labels.points_per_scene:
    kept = segmentation.limited_points(train_scenes, config.labels.points_per_scene,
                                       config.labels.seed)
    train_scenes = [segmentation.keep_labels(s, kept[s["scene"]]) for s in train_scenes]
    label_lists["points"] = {name: idx.tolist() for name, idx in kept.items()}
  if not data.val:
    raise ValueError("no val scenes to evaluate on")
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "label_lists.json"), "w") as f:
      json.dump(label_lists, f)

  # Model.
  names = segmentation.class_names(config.data)
  model = segmentation.make_model(config.student, config.mode, num_classes=len(names),
                                  head_hidden=config.head.hidden,
                                  head_dropout=config.head.dropout,
                                  **segmentation.student_kwargs(config))
  key = jax.random.key(config.seed)
  variables = segmentation.init_variables(model, jax.random.fold_in(key, 0), crop.num_points)
  init_step = None
  if config.init.checkpoint:
    variables, init_step = checkpoints.load_student_backbone(config.init.checkpoint, model,
                                                             variables)
  elif config.mode == "linear_probe":
    logging.warning("linear probe of a randomly initialised backbone (init.checkpoint is empty)")

  # Training, then a function labelling the blocks of the val scenes.
  train_start = time.perf_counter()
  if config.mode == "finetune":
    history = _finetune(config, model, variables, train_scenes, crop, optimizer, key, workdir,
                        progress)
    labeller = functools.partial(segmentation.predict, history.pop("variables"), model=model)
  else:
    history = probe.fit(config, model, variables, data.tiles(labelled), crop, optimizer,
                            workdir)
    labeller = functools.partial(probe.probe_predict, variables, history.pop("probe"),
                                 model=model)
  train_seconds = time.perf_counter() - train_start

  # Evaluation.
  eval_start = time.perf_counter()
  confusion = segmentation.spread_confusion(
      data.val, segmentation.map_blocks(labeller, data.val, config.eval.batch_size), len(names))
  scores = metrics_lib.segmentation_scores(confusion)
  results = {
      "mode": config.mode,
      "student": config.student,
      "init": config.init.checkpoint or "scratch",
      "init_step": init_step,
      "label_fraction": config.labels.fraction,
      "label_seed": config.labels.seed,
      "seed": config.seed,
      "dataset": config.data.dataset,
      "labelled_scenes": labelled,
      "points_per_scene": config.labels.points_per_scene,
      "num_train_scenes": len(data.train),
      "num_val_scenes": len(data.val),
      "steps": config.total_steps,
      "miou": loop.json_float(scores["miou"]),
      "macc": loop.json_float(scores["macc"]),
      "oa": loop.json_float(scores["oa"]),
      "per_class_iou": {n: loop.json_float(v) for n, v in zip(names, scores["iou"])},
      "per_class_acc": {n: loop.json_float(v) for n, v in zip(names, scores["acc"])},
      "iou_table": metrics_lib.iou_table(scores, names),
      "confusion": confusion.tolist(),
      "eval_points": int(confusion.sum()),
      "train_loss": history["loss"],
      "train_accuracy": history["accuracy"],
      "train_steps": history["step"],
      "seconds": {"train": train_seconds, "eval": time.perf_counter() - eval_start,
                  "total": time.perf_counter() - start_time},
  }
  if workdir is not None:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
  return results
