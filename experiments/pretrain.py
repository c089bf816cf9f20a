"""Pretraining (PPKT or PointContrast): a thin main over p2p_jax.train.pretrain.

    python -m experiments.pretrain --config experiments/configs/ppkt_synthetic.py:runlocal \
        --workdir /tmp/ppkt [--config.total_steps=100 ...]

Re-running with the same --workdir resumes from its latest checkpoint.

Several processes (every host of a TPU pod slice runs the same command):

    python -m experiments.pretrain --config ... --workdir gs://bucket/run --distributed

`--distributed` calls `jax.distributed.initialize()`, which finds the other processes on TPU
pods and SLURM; elsewhere name them, e.g. two processes on one machine:

    python -m experiments.pretrain ... --coordinator_address 127.0.0.1:12345 \
        --num_processes 2 --process_id {0,1}
"""

import json

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from p2p_jax.configs import pretrain as schema
from p2p_jax.train import config as config_lib
from p2p_jax.train import loop, pretrain

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work dir: checkpoints and metrics")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                  "run as one of several processes (jax.distributed)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0; implies --distributed")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  loop.handle_sigterm()  # first: a stop during setup still exits cleanly
  config_lib.check_or_exit(schema.check, _CONFIG.value)  # before any data is touched
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.info("process %d of %d, %d of %d devices local", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
  pretrain.prepare(_CONFIG.value, _WORKDIR.value)
  try:
    last = pretrain.train(_CONFIG.value, _WORKDIR.value,
                          template=schema.base(_CONFIG.value.method))
  except loop.StoppedError as e:
    logging.warning("%s", e)
    return
  if last:
    print(f"step {last['step']}: loss {last['loss']:.4f}, pair top-1 {last['pair_accuracy']:.3f}")
    print("final metrics:", json.dumps(last))


if __name__ == "__main__":
  app.run(main)
