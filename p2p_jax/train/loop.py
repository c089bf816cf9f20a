"""The loop every training stage shares: restore or start, step, check, log, save, stop.

Pretraining (pmapped contrastive steps), fine-tuning and teacher training (jitted steps) differ
only in their step, their batches and what they log; this loop does the rest:

  - restores the newest Orbax checkpoint of `<workdir>/checkpoints` that restores completely,
    or starts from `init()` when there is none (see "Damaged checkpoints" below);
  - feeds `batches(start)` to `step`, and stops with `FloatingPointError` naming the step at the
    first non-finite loss (every step), leaving the last good checkpoint as it was;
  - logs every `log_every` steps (and the last) to `metrics.jsonl`, TensorBoard and tqdm;
  - saves every `checkpoint_every` steps, at the end, and on SIGTERM (then stops).

A resumed run continues bitwise: a stage's batches and randomness depend on the step alone,
and its logs are cut back to the restored step S, so each step is logged once:

  - `metrics.jsonl` loses its records after S, so `Result.records` is the whole run;
  - the TensorBoard event files are rewritten without their events after S (each record kept
    byte for byte, wall times included), and the scalars of steps <= S that a killed process
    had not flushed yet are written again from `metrics.jsonl`, the log flushed at every line
    (with the time of the resume as their wall time).
    TensorBoard then shows one clean curve, whatever reader it uses (TensorBoard's own purge
    of "orphaned" steps is not relied on).

Damaged checkpoints: a checkpoint restores completely when its "state" and "data" items do,
and so does every extra item (`save_items`) it holds; "data" must be at the checkpoint's step.
With `fallback` (the default), each newer checkpoint that does not is logged (step, path,
reason) and moved, kept, to `<workdir>/checkpoints_damaged/<step>`, and the run resumes from
the newest one that does; without, the first damaged one is a `DamagedCheckpointError`. When
none restores, the error names them all and nothing is moved: starting again from scratch
would silently drop the run's work (move or delete them by hand to do that).
"""

import dataclasses
import glob
import itertools
import json
import logging
import os
import signal
import struct
import time
from collections.abc import Callable, Container, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX
import tqdm
from google.protobuf import message
from tensorboardX.proto import event_pb2

METRICS = "metrics.jsonl"
DAMAGED = "checkpoints_damaged"  # next to `checkpoints/`: where damaged steps are moved


class DamagedCheckpointError(RuntimeError):
  """A checkpoint that does not restore, and no fallback (or none to fall back to)."""


@dataclasses.dataclass
class Result:
  """What `run` returns.

  Attributes:
    state: the final state, as the step left it (e.g. replicated).
    last: the metrics of the last step run, as logged ({} when no step ran).
    records: every logged record of the run, resumed sessions included.
    start: the step this session started from (0 unless resumed).
    seconds: this session's time in the loop, less the time of `on_log`.
    stopped: a SIGTERM ended the session before `total_steps` (or `stop_at`); what it ran is
      saved, and running again resumes it.
  """
  state: Any
  last: dict[str, Any]
  records: list[dict[str, Any]]
  start: int
  seconds: float
  stopped: bool = False


class StoppedError(Exception):
  """A SIGTERM stopped a stage's loop: its results would be those of an unfinished run, so
  the stage stops too (its scripts exit 0; running again resumes)."""


def raise_if_stopped(result: Result, what: str, workdir: str | None) -> None:
  """Raises `StoppedError` naming the stage, step and work dir if a SIGTERM ended `result`."""
  if result.stopped:
    step = result.last.get("step", result.start)
    raise StoppedError(f"SIGTERM: {what} stopped after step {step} of {workdir}; run the same "
                  "command again to resume")


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


def _cut_events(directory: str, upto: int) -> set[tuple[str, int]]:
  """Rewrites the TensorBoard event files of `directory` without their events after step
  `upto`, and without a record a killed writer left incomplete (or any unreadable one and
  what follows it).

  Event files are TFRecords (length u64, its crc u32, an `Event` proto, its crc u32); kept
  records are copied byte for byte, and a file is replaced (atomically) only if it changes.

  Returns:
    The (tag, step) of every scalar kept.
  """
  kept_scalars = set()
  for path in glob.glob(os.path.join(directory, "*tfevents*.tmp")):
    os.remove(path)  # a rewrite cut short: its original is still there
  for path in sorted(glob.glob(os.path.join(directory, "*tfevents*"))):
    with open(path, "rb") as f:
      data = f.read()
    kept, i = [], 0
    while i + 12 <= len(data):
      size = struct.unpack("<Q", data[i:i + 8])[0]
      end = i + 12 + size + 4
      if end > len(data):
        break
      try:
        event = event_pb2.Event.FromString(data[i + 12:end - 4])
      except message.DecodeError:
        logging.warning("%s: unreadable TensorBoard event at byte %d; dropping the rest of the "
                        "file", path, i)
        break
      if event.step <= upto:
        kept.append(data[i:end])
        kept_scalars.update((value.tag, event.step) for value in event.summary.value)
      i = end
    if i != len(data) or sum(map(len, kept)) != len(data):
      with open(path + ".tmp", "wb") as f:
        f.writelines(kept)
      os.replace(path + ".tmp", path)
  return kept_scalars


def _board_scalars(board: tensorboardX.SummaryWriter, record: dict[str, Any],
                   skip: Container[tuple[str, int]] = ()) -> None:
  """Writes the values of a logged record to TensorBoard, but those of (tag, step) in `skip`."""
  for key, value in record.items():
    if key != "step" and value is not None and (key, record["step"]) not in skip:
      board.add_scalar(key, value, record["step"])


def _restore_args(save_args: ocp.args.CheckpointArgs) -> ocp.args.CheckpointArgs:
  """The restore arguments of an item saved with `save_args`."""
  if isinstance(save_args, ocp.args.StandardSave):
    return ocp.args.StandardRestore(save_args.item)
  if isinstance(save_args, ocp.args.JsonSave):
    return ocp.args.JsonRestore()
  raise TypeError(f"save_items: no restore known for {type(save_args).__name__} (use "
                  f"StandardSave or JsonSave, or add it to loop._restore_args)")


def _reason(error: Exception, limit: int = 600) -> str:
  """`error` in one short line (TensorStore's messages carry a long spec)."""
  text = " ".join(f"{type(error).__name__}: {error}".split())
  return text if len(text) <= limit else text[:limit] + " ..."


def _restore_newest(manager: ocp.CheckpointManager, workdir: str, abstract_state: Any,
                    extra_items: dict[str, ocp.args.CheckpointArgs],
                    fallback: bool) -> tuple[Any, int] | None:
  """Restores the newest checkpoint of `manager` that restores completely.

  Args:
    manager: the run's checkpoint manager.
    workdir: the run's work dir (damaged checkpoints go to `<workdir>/checkpoints_damaged`).
    abstract_state: the restore target of the "state" item.
    extra_items: {name: save args} of the extra items a checkpoint may hold; each one a
      checkpoint holds is restored too (and dropped), to check it.
    fallback: set damaged checkpoints aside and try older ones; else raise at the first.

  Returns:
    (state, step), or None when there is no checkpoint.

  Raises:
    DamagedCheckpointError: naming the step, path and reason of the newest damaged checkpoint
      (without `fallback`), or of every checkpoint (when none restores).
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    path = os.path.join(os.fspath(manager.directory), str(step))
    items = {name: _restore_args(args) for name, args in extra_items.items()
             if os.path.isdir(os.path.join(path, name))}  # older checkpoints may lack one
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
          **items))
      if restored["data"]["next_batch"] != step:
        raise ValueError(f"its data item is at batch {restored['data']['next_batch']}, "
                         f"not {step}")
    except Exception as error:  # Orbax and TensorStore raise many kinds
      reason = _reason(error)
      if not fallback:
        raise DamagedCheckpointError(
            f"checkpoint {step} at {path} does not restore: {reason}. With fallback (the "
            f"config's checkpointing.fallback) the run would move it to "
            f"{os.path.join(workdir, DAMAGED)} and resume from an older one") from error
      logging.warning("checkpoint %d at %s does not restore; trying an older one: %s", step,
                      path, reason)
      damaged.append((step, path, reason))
      continue
    _set_aside(manager, workdir, damaged, step)
    return restored["state"], step
  if damaged:
    raise DamagedCheckpointError(
        f"no checkpoint of {manager.directory} restores, so the run stops rather than start "
        f"again from step 0 (move or delete them to do that):\n" + "\n".join(
            f"  checkpoint {step} at {path}: {reason}" for step, path, reason in damaged))
  return None


def _set_aside(manager: ocp.CheckpointManager, workdir: str,
               damaged: list[tuple[int, str, str]], resumed: int) -> None:
  """Moves the `damaged` checkpoints to `<workdir>/checkpoints_damaged/<step>` (or
  `<step>.<n>` if taken), where `manager` no longer sees them, so that new saves can reuse
  their steps."""
  if not damaged:
    return
  # Every process has finished reading before process 0 moves, and sees the moves after.
  ocp.multihost.sync_global_processes(f"p2p_jax_loop_set_aside_{resumed}_start")
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, DAMAGED), exist_ok=True)
    for step, path, _ in damaged:
      target = os.path.join(workdir, DAMAGED, str(step))
      for n in itertools.count(1):
        if not os.path.exists(target):
          break
        target = os.path.join(workdir, DAMAGED, f"{step}.{n}")
      os.rename(path, target)
      logging.warning("moved damaged checkpoint %d to %s; resuming from step %d", step, target,
                      resumed)
  ocp.multihost.sync_global_processes(f"p2p_jax_loop_set_aside_{resumed}_done")
  manager.reload()


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
        checkpoint_every: int | None = None, keep: int = 1, fallback: bool = True,
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
    fallback: resume from the newest checkpoint that restores completely, moving newer,
      damaged ones to `<workdir>/checkpoints_damaged/`; False: a damaged latest checkpoint
      is a `DamagedCheckpointError` (see the module docstring).
    place: the state as `step` takes it (e.g. replicated over devices), after init or restore.
    to_host: a placed state or metrics tree -> one copy of it (e.g. the first replica).
    save_items: host state -> extra checkpoint items ({name: Orbax save args: StandardSave or
      JsonSave}) to save next to it, e.g. the student; also called with `abstract_state`
      when resuming, to check that the checkpoint's extra items restore.
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
    extra_items = save_items(abstract_state) if manager.all_steps() else {}
    restored = _restore_newest(manager, workdir, abstract_state, extra_items, fallback)
    if restored is not None:
      state, start = restored
      logging.info("resumed from step %d of %s", start, workdir)
    if is_lead:
      records = _read_records(os.path.join(workdir, METRICS), start)
      board_kept = _cut_events(os.path.join(workdir, "tensorboard"), start)
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
    # A file of its own: tensorboardX names files by the second and opens them with "wb".
    board = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                       filename_suffix=f".{time.time_ns()}")
    for record in records:  # the steps a killed writer had not flushed
      _board_scalars(board, record, skip=board_kept)
  bar = tqdm.tqdm(total=total_steps, initial=start, disable=not (progress and is_lead),
                  desc=desc, leave=leave)
  last = {}
  end = total_steps if stop_at is None else min(stop_at, total_steps)
  stopped = bool(_SIGTERM) and start < end
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
          _board_scalars(board, last)
        bar.set_postfix({k: f"{last[k]:.3f}" for k in postfix if last.get(k) is not None})
      bar.update(1)
      stop = bool(_SIGTERM)  # read once: a signal between save and check is not lost
      final = stop or index + 1 == end
      if manager is not None and (final or (checkpoint_every and
                                            (index + 1) % checkpoint_every == 0)):
        save(index + 1, state, final)
      if stop:
        stopped = index + 1 < total_steps
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
  return Result(state=state, last=last, records=records, start=start, stopped=stopped,
                seconds=time.perf_counter() - loop_start - log_seconds)
