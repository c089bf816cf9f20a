"""The main job: teacher -> PPKT and PointContrast pretraining -> label-efficient segmentation.

    python -m experiments.demo [--config experiments/configs/demo.py[:runlocal|:full]] \
        [--workdir work_dirs/demo] [--results results] [--config.world.seed=1 ...]

Stages (see experiments/configs/demo.py for the sizes), each resumed where it stopped when the
job is interrupted and started again with the same work dir:

  1. world          synthetic rooms (teacher, training and val scenes, disjoint), and the
                    datasets every stage reads (`p2p_jax.data.prepare`)
  2. teacher        a ResNet trained on the 2D labels of the teacher scenes, then frozen
  3. ppkt           PPKT pretraining of the 3D student on the training scenes' frames
     pointcontrast  PointContrast on the same frames, same student and budget
  4. finetune       scratch / PointContrast / PPKT at each label fraction and seed, and
                    linear probes of each (plus a randomly initialised student)
  5. results        table (Markdown + JSON), label-efficiency plot, PCA pictures, .ply

Finished runs keep their `results.json`; pretraining resumes from its Orbax checkpoints.
"""

import json
import os
import sys
import time
from typing import Any

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from experiments.configs import demo as demo_config
from p2p_jax.data import prepare, synthetic
from p2p_jax.tasks import segmentation
from p2p_jax.train import config as config_lib
from p2p_jax.train import finetune, loop, pretrain, teacher


def parse(argv: list[str]) -> tuple[ml_collections.ConfigDict, str, str]:
  """(config, workdir, results dir) from the command line (without the program name):
  `--config path[:arg]` with `--config.x=` overrides, `--workdir`, `--results`."""
  fv = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", "experiments/configs/demo.py",
                                           "the study's config file[:arg]", flag_values=fv,
                                           lock_config=True, sys_argv=["demo", *argv])
  workdir = flags.DEFINE_string("workdir", "work_dirs/demo", "work dir of every stage",
                                flag_values=fv)
  results = flags.DEFINE_string("results", "results", "where the report goes", flag_values=fv)
  fv(["demo", *argv])
  return config.value, workdir.value, results.value


def stage_configs(c: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Each stage's config, pointed at the shared world in `workdir`."""
  rooms, tfds_dir = os.path.join(workdir, "rooms"), os.path.join(workdir, "tfds")
  out = demo_config.stages(c)
  for stage in out.values():
    stage.data.update(manual_dir=rooms, data_dir=tfds_dir)
    stage.data.synthetic.scenes = 0  # the world stage generates
  for method in ("ppkt", "pointcontrast"):
    out[method].data.split = "train"
  out["ppkt"].ppkt.teacher.checkpoint = os.path.join(workdir, "teacher", "teacher")
  return out


def make_world(c: ml_collections.ConfigDict, configs: dict[str, Any], workdir: str) -> None:
  """Generates the rooms once, then builds every stage's dataset (each build is reused)."""
  done = os.path.join(workdir, "rooms", "world.json")
  if not os.path.exists(done):
    _generate(c, workdir, done)
  prepare.teacher(configs["teacher"].data)
  for method in ("ppkt", "pointcontrast"):
    if method in c.study.inits:
      prepare.frames(configs[method].data)  # the method's own preparation runs with it
  prepare.scenes(configs["finetune"].data)


def _generate(c: ml_collections.ConfigDict, workdir: str, done: str) -> None:
  w = c.world
  stats = synthetic.generate(os.path.join(workdir, "rooms"), num_scenes=w.scenes,
                             frames_per_scene=w.frames_per_scene, height=w.height, width=w.width,
                             seed=w.seed, val_fraction=w.val_fraction,
                             teacher_fraction=w.teacher_fraction, points_per_m2=w.points_per_m2,
                             overwrite=True, progress=True)
  with open(done + ".partial", "w") as f:  # renamed when whole: a kill leaves no world.json
    json.dump({**w.to_dict(), **stats}, f)
  os.replace(done + ".partial", done)


def _pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  pretrain.prepare(config, workdir)
  return pretrain.train(config, workdir)


def _run_json(path: str, fn):
  """Runs `fn()` unless `path` holds its result from an earlier, finished run."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  result = fn()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(result, f)
  os.replace(path + ".tmp", path)
  return result


def study_runs(c: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Every probing and fine-tuning run of the study, as (name, settings).

  The cheap linear probes come first, and inits alternate within each (fraction, seed), so a
  partial study already compares them.
  """
  runs = []
  for seed in range(c.study.probe_seeds):
    for init in c.study.inits:
      runs.append(dict(name=f"probe_{init}_seed{seed}", init=init, mode="linear_probe",
                       fraction=1.0, seed=seed))
  for fraction, seeds in zip(c.study.fractions, c.study.seeds, strict=True):
    for seed in range(seeds):
      for init in c.study.inits:
        runs.append(dict(name=f"finetune_{init}_{fraction:g}_seed{seed}", init=init,
                         mode="finetune", fraction=fraction, seed=seed))
  return runs


def run_study(c, configs, workdir, checkpoints) -> list[dict[str, Any]]:
  data = segmentation.load_data(configs["finetune"])
  results = []
  runs = study_runs(c)
  for i, run in enumerate(runs):
    f = ml_collections.ConfigDict(configs["finetune"].to_dict())
    f.init.checkpoint = checkpoints[run["init"]]
    f.mode = run["mode"]
    f.labels.update(fraction=run["fraction"], seed=run["seed"])
    f.seed = run["seed"]
    out = os.path.join(workdir, "finetune", run["name"])
    print(f"[{i + 1}/{len(runs)}] {run['name']}", flush=True)
    result = _run_json(os.path.join(out, "summary.json"), lambda: _summary(
        finetune.train_and_evaluate(f, out, data=data, progress=False)))  # noqa: B023
    results.append({**run, **result})
  return results


def _summary(result: dict[str, Any]) -> dict[str, Any]:
  keep = ("miou", "macc", "oa", "per_class_iou", "labelled_scenes", "seconds", "init_step")
  return {k: result[k] for k in keep if k in result}


def run(c: ml_collections.ConfigDict, workdir: str, results_dir: str) -> None:
  """Runs (or resumes) every stage of the study `c` in `workdir`; the report goes to
  `results_dir`."""
  demo_config.check(c)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  configs = stage_configs(c, workdir)
  # Seconds each stage took, summed over the sessions it ran in (a resumed job adds to it).
  timings_path = os.path.join(workdir, "timings.json")
  timings = json.load(open(timings_path)) if os.path.exists(timings_path) else {}

  def timed(name, fn):
    start = time.perf_counter()
    print(f"== {name}", flush=True)
    value = fn()
    seconds = time.perf_counter() - start
    timings[name] = timings.get(name, 0.0) + seconds
    with open(timings_path, "w") as f:
      json.dump(timings, f)
    print(f"== {name}: {seconds:.0f} s", flush=True)
    return value

  timed("world", lambda: make_world(c, configs, workdir))
  teacher_result = timed("teacher", lambda: _run_json(
      os.path.join(workdir, "teacher", "summary.json"),
      lambda: {k: v for k, v in teacher.train(configs["teacher"],
                                               os.path.join(workdir, "teacher")).items()
               if k in ("checkpoint", "pixel_accuracy", "miou", "macc", "per_class_iou",
                        "curve", "train_frames", "train_scenes", "holdout_frames",
                        "seconds")}))
  pretrained = {}
  for method in ("ppkt", "pointcontrast"):
    if method in c.study.inits:
      out = os.path.join(workdir, method)
      pretrained[method] = timed(method, lambda m=method, o=out: _run_json(
          os.path.join(o, "summary.json"),
          lambda: _pretrain(configs[m], o)))
  checkpoints = {"scratch": "", "ppkt": os.path.join(workdir, "ppkt"),
                 "pointcontrast": os.path.join(workdir, "pointcontrast")}
  results = timed("finetune", lambda: run_study(c, configs, workdir, checkpoints))

  from experiments import demo_report
  timed("results", lambda: demo_report.write_results(
      results_dir, c, configs, workdir, results, teacher_result, pretrained, checkpoints,
      timings))
  total = sum(timings.values())
  print(f"demo finished in {total / 60:.1f} min; results in {os.path.abspath(results_dir)}")


def main(argv: list[str] | None = None) -> int:
  logging.set_verbosity(logging.INFO)
  try:
    config, workdir, results = parse(sys.argv[1:] if argv is None else argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (AttributeError, KeyError) as e:  # --config.x= for a key the config does not have
    print(f"error: a --config.* override names a key the config does not have: {e}",
          file=sys.stderr)
    return 2
  loop.handle_sigterm()  # first: a stop during setup still exits cleanly
  config_lib.check_or_exit(demo_config.check, config)  # before any data is touched
  try:
    run(config, workdir, results)
  except loop.StoppedError as e:
    print(f"{e}: `make demo` (or the same command) resumes the study", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
