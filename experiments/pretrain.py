"""PPKT pretraining: a thin main over p2p_jax.train.trainer.

    python -m experiments.pretrain --config experiments/configs/ppkt_synthetic.py:runlocal \
        --workdir /tmp/ppkt [--config.total_steps=100 ...]

Re-running with the same --workdir resumes from its latest checkpoint.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments.configs import common
from p2p_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work dir: checkpoints and metrics")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  last = trainer.train(_CONFIG.value, _WORKDIR.value, template=common.base())
  if last:
    print(f"step {last['step']}: loss {last['loss']:.4f}, pair top-1 {last['pair_accuracy']:.3f}")


if __name__ == "__main__":
  app.run(main)
