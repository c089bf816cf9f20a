"""The loop every training stage shares: restore or start, step, check, log, save, stop.

Pretraining (pmapped contrastive steps), fine-tuning and teacher training (jitted steps) differ
only in their step, their batches and what they log; this loop does the rest:

  - restores the latest Orbax checkpoint of `<workdir>/checkpoints`, or starts from `init()`;
  - feeds `batches(start)` to `step`, and stops with `FloatingPointError` naming the step at the
    first non-finite loss (every step), leaving the last good checkpoint as it was;
  - logs every `log_every` steps (and the last) to `metrics.jsonl`, TensorBoard and tqdm;
  - saves every `checkpoint_every` steps, at the end, and on SIGTERM (then stops).

A resumed run continues bitwise: a stage's batches and randomness depend on the step alone,
and `metrics.jsonl` is cut back to the restored step, so `Result.records` is the whole run.
"""

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX
import tqdm

METRICS = "metrics.jsonl"


@dataclasses.dataclass
class Result:
  """What `run` returns.

  Attributes:
    state: the final state, as the step left it (e.g. replicated).
    last: the metrics of the last step run, as logged ({} when no step ran).
    records: every logged record of the run, resumed sessions included.
    start: the step this session started from (0 unless resumed).
    seconds: this session's time in the loop, less the time of `on_log`.
  """
  state: Any
  last: dict[str, Any]
  records: list[dict[str, Any]]
  start: int
  seconds: float


def json_float(x: float) -> float | None:
  """`x` as a JSON number; None for NaN and infinities."""
  return None if not np.isfinite(x) else float(x)


def global_norm(tree) -> jax.Array:
  """The L2 norm of all leaves of `tree` together."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def abstract_state(init: Callable[[], Any], device: jax.Device | None = None) -> Any:
  """The shapes and dtypes of `init()`, placed on one device (default: the first local one):
  the restore target of a state that `run` then places as its step wants."""
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(init))


def _read_records(path: str, upto: int) -> list[dict[str, Any]]:
  """The records of `path` up to step `upto`; rewrites the file without any later ones."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  kept = [r for r in records if r["step"] <= upto]
  if len(kept) != len(records):
    with open(path + ".tmp", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(path + ".tmp", path)
  return kept


# SIGTERMs recorded by `_record_sigterm`, the handler a loop (or `handle_sigterm`) installs.
_SIGTERM: list[bool] = []


def _record_sigterm(*_) -> None:
  _SIGTERM.append(True)


def handle_sigterm() -> None:
  """Records SIGTERM instead of dying, from now on: call it first thing in a script.

  A SIGTERM during setup (data preparation, compilation) then stops the next loop before its
  first step, saving nothing new, and the script exits cleanly; one during a loop saves and
  stops it, as without this call. Each loop consumes the signal it acted on.
  """
  signal.signal(signal.SIGTERM, _record_sigterm)
  logging.info("SIGTERM handler installed: a stop during setup ends the run before its loop")


def stop_requested() -> bool:
  """Whether a SIGTERM arrived that no loop has acted on yet."""
  return bool(_SIGTERM)


def run(*, workdir: str | None, total_steps: int, init: Callable[[], Any],
        abstract_state: Any, step: Callable[[Any, Any], tuple[Any, dict[str, Any]]],
        batches: Callable[[int], Iterator[Any]], log_every: int,
        checkpoint_every: int | None = None, keep: int = 1,
        place: Callable[[Any], Any] = lambda state: state,
        to_host: Callable[[Any], Any] = lambda tree: tree,
        save_items: Callable[[Any], dict[str, ocp.args.CheckpointArgs]] = lambda host: {},
        on_log: Callable[[int, dict[str, Any], Any], dict[str, Any]] | None = None,
        per_step: Callable[[dict[str, Any], float], dict[str, Any]] | None = None,
        stop_at: int | None = None, desc: str = "training", progress: bool = True,
        postfix: tuple[str, ...] = ("loss",), leave: bool = True) -> Result:
  """Runs (or resumes) steps `start..total_steps` and returns the final state and metrics.

  Args:
    workdir: gets `checkpoints/`, `metrics.jsonl` and `tensorboard/`; None keeps nothing (no
      checkpoint, no log, no resumption).
    total_steps: the run's length.
    init: () -> the initial state (on the host's default device, unplaced).
    abstract_state: the state's `jax.ShapeDtypeStruct`s, with their shardings, to restore.
    step: (placed state, batch) -> (state, metrics); metrics hold at least "loss".
    batches: start step -> the iterator of the batches of steps start, start + 1, ...
    log_every: log every this many steps, and the last.
    checkpoint_every: save every this many steps (None: only at the end and on SIGTERM).
    keep: checkpoints kept.
    place: the state as `step` takes it (e.g. replicated over devices), after init or restore.
    to_host: a placed state or metrics tree -> one copy of it (e.g. the first replica).
    save_items: host state -> extra checkpoint items ({name: Orbax save args}) to save next
      to it, e.g. the student.
    on_log: (step number, metrics, state) -> extra metrics, called on logged steps (e.g. a
      held-out evaluation); its time is not counted in the steps' seconds.
    per_step: (metrics, step seconds) -> derived metrics (e.g. throughput).
    stop_at: end this session after this step (saving it); the run is still `total_steps`
      long.
    desc: the progress bar's label.
    progress: show a progress bar (process 0 only).
    postfix: metrics shown on the progress bar.
    leave: keep the finished progress bar on screen.

  Returns:
    The `Result`.
  """
  is_lead = jax.process_index() == 0
  manager = None
  start, records = 0, []
  if workdir is not None:
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    # The loop decides when to save (below), so the state leaves the devices only then.
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    options=ocp.CheckpointManagerOptions(max_to_keep=keep))
    latest = manager.latest_step()
    if latest is not None:
      restored = manager.restore(latest, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      if restored["data"]["next_batch"] != latest:
        raise ValueError(f"checkpoint {latest} in {workdir} is at batch "
                         f"{restored['data']['next_batch']}, not {latest}")
      state, start = restored["state"], latest
      logging.info("resumed from step %d of %s", start, workdir)
    if is_lead:
      records = _read_records(os.path.join(workdir, METRICS), start)
  if start == 0:
    state = init()
  state = place(state)

  def save(step_number, state, final):
    if final:  # the last save waits for any save still in flight
      manager.wait_until_finished()
    # As NumPy: every process holds the same values, and process 0 writes them.
    host_state = jax.device_get(to_host(state))
    items = {"state": ocp.args.StandardSave(host_state),
             **save_items(host_state),
             "data": ocp.args.JsonSave({"next_batch": step_number})}
    manager.save(step_number, force=final, args=ocp.args.Composite(**items))

  previous = signal.signal(signal.SIGTERM, _record_sigterm)
  if _SIGTERM:  # arrived during setup (see `handle_sigterm`): stop before the first step
    logging.warning("SIGTERM before step %d of %s: stopped; nothing new to save", start + 1,
                    workdir)
  log = board = None
  if workdir is not None and is_lead:
    log = open(os.path.join(workdir, METRICS), "a")
    board = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
  bar = tqdm.tqdm(total=total_steps, initial=start, disable=not (progress and is_lead),
                  desc=desc, leave=leave)
  last = {}
  end = total_steps if stop_at is None else min(stop_at, total_steps)
  if _SIGTERM:
    end = start
  feed = batches(start)
  loop_start, log_seconds = time.perf_counter(), 0.0
  try:
    for index in range(start, end):
      tick = time.perf_counter()
      state, metrics = step(state, next(feed))
      metrics = jax.tree.map(float, jax.device_get(to_host(metrics)))
      if not np.isfinite(metrics["loss"]):
        kept = f"; the last good checkpoint in {workdir} is left as it was" if workdir else ""
        raise FloatingPointError(f"non-finite loss {metrics['loss']} at step {index + 1}{kept}")
      seconds = time.perf_counter() - tick
      last = {"step": index + 1, **metrics, **(per_step(metrics, seconds) if per_step else {})}
      if (index + 1) % log_every == 0 or index + 1 == total_steps:
        if on_log is not None:
          log_start = time.perf_counter()
          last.update(on_log(index + 1, last, state))
          log_seconds += time.perf_counter() - log_start
        records.append(last)
        if log is not None:
          log.write(json.dumps(last) + "\n")
          log.flush()
          for key, value in last.items():
            if key != "step" and value is not None:
              board.add_scalar(key, value, index + 1)
        bar.set_postfix({k: f"{last[k]:.3f}" for k in postfix if last.get(k) is not None})
      bar.update(1)
      stop = bool(_SIGTERM)  # read once: a signal between save and check is not lost
      final = stop or index + 1 == end
      if manager is not None and (final or (checkpoint_every and
                                            (index + 1) % checkpoint_every == 0)):
        save(index + 1, state, final)
      if stop:
        logging.warning("SIGTERM: saved step %d of %s and stopped", index + 1, workdir)
        break
  finally:
    if manager is not None:
      manager.wait_until_finished()
      manager.close()
    bar.close()
    if log is not None:
      log.close()
      board.close()
    signal.signal(signal.SIGTERM, previous)
    _SIGTERM.clear()  # this loop acted on it
  jax.block_until_ready(state)
  return Result(state=state, last=last, records=records, start=start,
                seconds=time.perf_counter() - loop_start - log_seconds)
