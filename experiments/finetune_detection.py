"""3D object detection with VoteNet on the (pretrained) student: a thin main over
p2p_jax.train.detection.

    python -m experiments.finetune_detection --config experiments/configs/detection_scannet.py \
        --workdir /tmp/det --config.init.checkpoint=/tmp/ppkt_scannet \
        [--config.labels.fraction=0.1 ...]

Writes `results.json`, `label_lists.json` and `metrics.jsonl` to the work dir (re-running with
the same work dir resumes) and prints the per-class AP table.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from p2p_jax.configs import detection as schema
from p2p_jax.tasks import detection as task
from p2p_jax.train import config as config_lib
from p2p_jax.train import detection, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work dir: results, metrics and checkpoints")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  loop.handle_sigterm()  # first: a stop during setup still exits cleanly
  config_lib.check_or_exit(schema.check, _CONFIG.value)  # before any data is touched
  task.prepare(_CONFIG.value.data)
  try:
    results = detection.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except loop.StoppedError as e:
    logging.warning("%s", e)
    return
  print(detection.ap_table(results))
  print(f"VoteNet from {results['init']}, {results['label_fraction']:g} of the training scenes "
        f"({len(results['labelled_scenes'])}): mAP@0.25 {results['mAP@0.25']:.3f}, mAP@0.5 "
        f"{results['mAP@0.5']:.3f}, mAR@0.25 {results['mAR@0.25']:.3f} over "
        f"{results['num_val_boxes']} boxes of {results['num_val_scenes']} val scenes; loss "
        f"{results['train_loss'][0]:.3f} -> {results['train_loss'][-1]:.3f}")
  chance = results["random_proposals"]
  print(f"Random proposals ({chance['per_scene']} per scene, mean of {chance['draws']} draws): "
        f"mAP@0.25 {chance['mAP@0.25']:.4f}, mAP@0.5 {chance['mAP@0.5']:.4f}, mAR@0.25 "
        f"{chance['mAR@0.25']:.3f}")


if __name__ == "__main__":
  app.run(main)
