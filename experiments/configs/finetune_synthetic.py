"""3D semantic segmentation on the synthetic rooms: fine-tuning or linear probing the student.

    python -m experiments.finetune --config experiments/configs/finetune_synthetic.py \
        --workdir /tmp/ft_ppkt_10 --config.init.checkpoint=/tmp/ppkt_synthetic \
        --config.labels.fraction=0.1 [--config.mode=linear_probe]
    python -m experiments.finetune --config experiments/configs/finetune_synthetic.py:runlocal \
        --workdir /tmp/ft_local      # seconds on a 2-core CPU, tiny generated rooms

`init.checkpoint` is a pretraining work dir (experiments/pretrain.py; its latest checkpoint),
a `checkpoints/<step>` dir, or empty for a randomly initialised backbone ("scratch"); the
student must be the one pretrained (`student`). `labels.fraction` labels that share of the
training scenes (1%, 5%, 10%, 25%, 100%: nested subsets at one `labels.seed`, at least one
scene); the step count stays the same for every fraction.

Hardware: a 2-core CPU. Runtime, measured on 60 generated rooms (39 train, 9 val scenes of
about 150k points; 250 steps of 8 crops of 2048 points, then every point of the val scenes):
about 14 s per fine-tuning run and 10 s per linear probe once compiled, plus about 10 s of
compilation for the first run of each mode in a process. Runs in one process with the same
student, shapes and optimiser settings share the compiled steps; share the scenes too with
`finetune.load_data(config)` -> `train_and_evaluate(config, data=...)`.
Expected result: the training loss falls (2.6 -> 1.5 at 100% of the labels) and the mIoU
rises with the label fraction: from scratch, mIoU 0.11 / OA 0.54 with 100% and mIoU 0.04 /
OA 0.28 with 10% on the rooms above. A PPKT-pretrained backbone should beat scratch most
clearly at the smallest fractions and in linear probing (the paper's trend: +2.2 mIoU at 15%
of ScanNet's labels).
"""

from p2p_jax.configs import finetune as schema


def get_config(arg=None):
  c = schema.base()
  if arg == "runlocal":
    c.data.manual_dir = "/tmp/finetune_runlocal/rooms"
    c.data.data_dir = "/tmp/finetune_runlocal/tfds"
    c.data.synthetic.update(scenes=4, frames_per_scene=1, val_fraction=0.25,
                            points_per_m2=100.0)
    c.crop.num_points = 256
    c.batch_size = 4
    c.total_steps = 30
    c.optimizer.warmup_steps = 0
    c.eval.batch_size = 4
    c.log_every = 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'runlocal' or none")
  return c
