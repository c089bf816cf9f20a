"""3D semantic segmentation by fine-tuning or linear probing: a thin main over
p2p_jax.train.finetune.

    python -m experiments.finetune --config experiments/configs/finetune_synthetic.py \
        --workdir /tmp/ft --config.init.checkpoint=/tmp/ppkt_synthetic \
        [--config.labels.fraction=0.1 --config.mode=linear_probe ...]

Writes `results.json` and `metrics.jsonl` to the work dir and prints the per-class IoU table.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from p2p_jax.configs import finetune as schema
from p2p_jax.tasks import segmentation
from p2p_jax.train import config as config_lib
from p2p_jax.train import finetune, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work dir: results and metrics")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  loop.handle_sigterm()  # first: a stop during setup still exits cleanly
  config_lib.check_or_exit(schema.check, _CONFIG.value)  # before any data is touched
  segmentation.prepare(_CONFIG.value.data)
  try:
    results = finetune.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                          template=schema.base())
  except loop.StoppedError as e:
    logging.warning("%s", e)
    return
  print(results["iou_table"])
  print(f"{results['mode']} from {results['init']}, {results['label_fraction']:g} of the labels "
        f"({len(results['labelled_scenes'])} scenes): mIoU {results['miou']:.3f}, mAcc "
        f"{results['macc']:.3f}, OA {results['oa']:.3f} over {results['eval_points']} points; "
        f"loss {results['train_loss'][0]:.3f} -> {results['train_loss'][-1]:.3f}")


if __name__ == "__main__":
  app.run(main)
