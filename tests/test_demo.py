"""The main job end to end on its tiny configuration: every stage, results/, resumption."""

import json
import os

import numpy as np
import trimesh

from experiments import demo
from experiments.configs import demo as demo_config


def test_every_run_of_the_study_is_listed_once():
  c = demo_config.get_config()
  runs = demo.study_runs(c)
  names = [r["name"] for r in runs]
  assert len(names) == len(set(names))
  per_init = sum(c.study.seeds) + c.study.probe_seeds
  assert len(runs) == len(c.study.inits) * per_init
  assert {r["fraction"] for r in runs} == set(c.study.fractions)
  # At least 3 seeds for the small label fractions.
  assert all(s >= 3 for f, s in zip(c.study.fractions, c.study.seeds) if f <= 0.05)
  # Every stage gives the student the same input, and PointContrast PPKT's budget.
  for arg in (None, "runlocal", "full"):
    c = demo_config.get_config(arg)
    c.student, c.student_colors = "pointnet2_tiny", True  # shared keys set in one place
    stages = demo_config.stages(c)
    assert (stages["ppkt"].points.colors == stages["pointcontrast"].points.colors
            == stages["finetune"].crop.colors is True)
    assert {s.student for s in (stages["ppkt"], stages["pointcontrast"], stages["finetune"])} == {
        "pointnet2_tiny"}
    for key in ("points", "optimizer", "per_device_batch", "total_steps", "checkpointing"):
      assert stages["pointcontrast"][key] == stages["ppkt"][key], key
    assert stages["pointcontrast"].pointcontrast.num_matches == stages["ppkt"].ppkt.num_pairs
    assert "ppkt" not in stages["pointcontrast"]


def test_an_override_of_a_missing_key_is_an_error_naming_it(capsys):
  args = ["--config", "experiments/configs/demo.py:runlocal", "--config.finetune.bogus=1"]
  assert demo.main(args) == 2
  assert "bogus" in capsys.readouterr().err


def test_demo_runs_every_stage_writes_results_and_resumes(tmp_path):
  workdir, results = str(tmp_path / "work"), str(tmp_path / "results")
  # `make demo`'s command line, with overrides like every other script's: a shared key
  # (the student's colour input) reaches every stage, a stage's key reaches that stage.
  args = ["--config", "experiments/configs/demo.py:runlocal", "--workdir", workdir,
          "--results", results, "--config.student_colors=True", "--config.finetune.log_every=5"]
  assert demo.main(args) == 0
  report = json.load(open(os.path.join(results, "results.json")))
  stages = report["config"]["stages"]
  assert stages["ppkt"]["points"]["colors"] is True
  assert stages["pointcontrast"]["points"]["colors"] is True
  assert stages["finetune"]["crop"]["colors"] is True
  steps = [json.loads(line)["step"] for line in open(
      os.path.join(workdir, "finetune", "finetune_scratch_1_seed0", "metrics.jsonl"))]
  assert steps == [5, 10]
  for name in ("results.md", "results.json", "label_efficiency.png", "features_view.png",
               "features_scene.png", "features_ppkt.ply", "features_scratch.ply",
               "features_pointcontrast.ply"):
    assert os.path.getsize(os.path.join(results, name)) > 0, name
  table = open(os.path.join(results, "results.md")).read()
  for row in ("| scratch |", "| PointContrast |", "| PPKT |"):
    assert row in table
  c = demo_config.get_config("runlocal")
  assert len(report["runs"]) == len(demo.study_runs(c))
  for init in c.study.inits:
    stats = report["table"][init]["0.25"]
    miou = [r["miou"] for r in report["runs"] if r["init"] == init and r["fraction"] == 0.25
            and r["mode"] == "finetune"]
    assert stats["runs"] == 2 and np.isclose(stats["miou"], np.mean(miou))
    assert 0 <= stats["miou"] <= 1
  cloud = trimesh.load(os.path.join(results, "features_ppkt.ply"))
  assert len(cloud.vertices) > 100 and np.asarray(cloud.colors).shape[1] == 4

  # Interrupted after one run was lost: a restart redoes that run only.
  runs_dir = os.path.join(workdir, "finetune")
  lost = os.path.join(runs_dir, "finetune_ppkt_1_seed0", "summary.json")
  kept = os.path.join(runs_dir, "finetune_scratch_0.25_seed1", "summary.json")
  kept_mtime = os.path.getmtime(kept)
  metrics = os.path.join(workdir, "ppkt", "metrics.jsonl")
  pretraining_log = open(metrics).read()
  os.remove(lost)
  assert demo.main(args) == 0
  assert os.path.exists(lost) and os.path.getmtime(kept) == kept_mtime
  assert open(metrics).read() == pretraining_log  # finished pretraining is not rerun
