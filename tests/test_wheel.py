"""The built wheel on its own: installed into a fresh virtualenv with the `data` and
`experiments` extras, and run from outside the checkout, it prepares tiny generated data and
trains every stage (teacher, PPKT pretraining, fine-tuning), then loads the pretrained student
through `p2p_jax.checkpoints.load_student`, the entry point downstream code uses."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import importlib.util
    import json
    import os
    import sys

    import jax.numpy as jnp
    import numpy as np

    import p2p_jax
    from p2p_jax import checkpoints
    from p2p_jax.configs import finetune as finetune_schema
    from p2p_jax.configs import pretrain as pretrain_schema
    from p2p_jax.configs import teacher as teacher_schema
    from p2p_jax.data import prepare, synthetic
    from p2p_jax.train import finetune, pretrain, teacher

    fresh, checkout = sys.argv[1], sys.argv[2]
    here = os.getcwd()
    # The installed package, not the checkout, and no top-level folder of the checkout.
    assert p2p_jax.__file__.startswith(fresh), p2p_jax.__file__
    assert not here.startswith(checkout)
    assert importlib.util.find_spec("experiments") is None

    rooms, tfds = os.path.join(here, "rooms"), os.path.join(here, "tfds")
    synthetic.generate(rooms, num_scenes=6, frames_per_scene=2, height=32, width=48, seed=0,
                       val_fraction=0.2, teacher_fraction=0.34, points_per_m2=40.0, workers=1)

    t = teacher_schema.base()
    t.data.update(manual_dir=rooms, data_dir=tfds)
    t.update(arch="tiny", image_hw=(32, 48), batch_size=2, total_steps=2, log_every=1)
    t.eval.batch_size = 2
    prepare.teacher(t.data)
    taught = teacher.train(t, os.path.join(here, "teacher"), template=teacher_schema.base(),
                           progress=False)

    p = pretrain_schema.base()
    pretrain_schema.shrink_for_cpu(p, here)
    p.data.update(manual_dir=rooms, data_dir=tfds)
    p.ppkt.teacher.checkpoint = taught["checkpoint"]
    p.total_steps = 2
    work = os.path.join(here, "ppkt")
    pretrain.prepare(p, work)
    last = pretrain.train(p, work, template=pretrain_schema.base())

    f = finetune_schema.base()
    f.data.update(manual_dir=rooms, data_dir=tfds)
    f.init.checkpoint = work
    f.crop.num_points = 128
    f.update(batch_size=2, total_steps=2, log_every=1)
    f.eval.batch_size = 2
    prepare.scenes(f.data)
    tuned = finetune.train_and_evaluate(f, os.path.join(here, "finetune"),
                                        template=finetune_schema.base(), progress=False)

    model, variables = checkpoints.load_student(work)
    features, _ = model.apply(variables, jnp.zeros((1, 64, 3)), jnp.zeros((1, 64, 3)),
                              jnp.ones((1, 64), bool), train=False)
    print(json.dumps({"teacher_loss": taught["train_loss"], "pretrain_step": last["step"],
                      "init_step": tuned["init_step"], "miou": tuned["miou"],
                      "features": list(features.shape),
                      "finite": bool(np.isfinite(np.asarray(features)).all())}))
    """)


def test_the_wheel_installs_and_trains_every_stage_outside_the_checkout(tmp_path):
  # Build from the package's files alone (as `pip wheel --no-deps .` in the checkout does),
  # so nothing is written into the checkout.
  src = tmp_path / "src"
  src.mkdir()
  shutil.copytree(os.path.join(ROOT, "p2p_jax"), src / "p2p_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--no-index", "-q", str(src), "-w", str(tmp_path / "dist")],
                 check=True, capture_output=True, timeout=300)
  wheels = os.listdir(tmp_path / "dist")
  assert len(wheels) == 1 and wheels[0].startswith("p2p_jax-"), wheels

  # A fresh virtualenv that sees this one's dependencies (not its editable p2p_jax: a path
  # named in a .pth file is no site dir, so the .pth files inside it are not run), then the
  # wheel with its extras, resolved offline against those dependencies.
  fresh = tmp_path / "fresh"
  subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True, timeout=300)
  python = str(fresh / "bin" / "python")
  purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], check=True, capture_output=True, text=True)
  with open(os.path.join(purelib.stdout.strip(), "deps.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  wheel = str(tmp_path / "dist" / wheels[0])
  subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", f"{wheel}[data,experiments]"],
                 check=True, capture_output=True, timeout=300)

  outside = tmp_path / "outside"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  done = subprocess.run([python, "-c", SCRIPT, str(fresh), ROOT], cwd=outside, env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-4000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert len(result["teacher_loss"]) == 2 and result["pretrain_step"] == 2
  assert result["init_step"] == 2 and 0 <= result["miou"] <= 1
  assert result["features"][:2] == [1, 64] and result["finite"]
