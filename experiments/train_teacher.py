"""Trains a 2D teacher for PPKT: a thin main over p2p_jax.train.teacher.

    python -m experiments.train_teacher --config experiments/configs/teacher_synthetic.py \
        --workdir /tmp/teacher [--config.total_steps=300 ...]

Prints the held-out 2D scores and the checkpoint path to pass as
`--config.ppkt.teacher.checkpoint` to experiments/pretrain.py.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from p2p_jax.configs import teacher as schema
from p2p_jax.data import prepare
from p2p_jax.train import config as config_lib
from p2p_jax.train import loop, teacher

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work dir: checkpoint, metrics and results")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  loop.handle_sigterm()  # first: a stop during setup still exits cleanly
  config_lib.check_or_exit(schema.check, _CONFIG.value)  # before any data is touched
  prepare.teacher(_CONFIG.value.data)
  try:
    results = teacher.train(_CONFIG.value, _WORKDIR.value, template=schema.base())
  except loop.StoppedError as e:
    logging.warning("%s", e)
    return
  print(results["iou_table"])
  print(f"held-out teacher frames: pixel accuracy {results['pixel_accuracy']:.3f}, "
        f"mIoU {results['miou']:.3f}; loss {results['train_loss'][0]:.3f} -> "
        f"{results['train_loss'][-1]:.3f}")
  print(f"teacher checkpoint ({results['arch']}): {results['checkpoint']}")


if __name__ == "__main__":
  app.run(main)
