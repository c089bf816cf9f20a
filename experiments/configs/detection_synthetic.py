"""VoteNet detection on the synthetic rooms: the CPU-sized study of PPKT's detection transfer.

    python -m experiments.finetune_detection \
        --config experiments/configs/detection_synthetic.py --workdir /tmp/det_ppkt \
        --config.data.manual_dir=work_dirs/demo/rooms --config.data.data_dir=/tmp/det_tfds \
        --config.init.checkpoint=work_dirs/demo/ppkt [--config.labels.fraction=0.1]
    python -m experiments.finetune_detection \
        --config experiments/configs/detection_synthetic.py:runlocal --workdir /tmp/det_local

The student is the demo's (`pointnet2_small`, geometry only: its pretraining saw no colours),
so a PPKT checkpoint of `make demo` loads into it; `manual_dir` is the demo's world (72
training rooms with 5-20 boxes each, 12 val rooms). VoteNet at CPU size: 8192 points per room,
512 seeds, 128 proposals, batch 8. docs/demo/detection_study.md records a measured run
(scratch against PPKT at 10% of the training rooms). `runlocal` generates 24 small rooms and
trains 600 steps of 4096 points (about 1.5 minutes); its mAP@0.25 on its 6 val rooms is well
above that of random proposals (`results.json`'s "random_proposals").
Hardware: a 2-core CPU.
"""

from p2p_jax.configs import detection as schema


def get_config(arg=None):
  c = schema.base()
  c.data.manual_dir = "work_dirs/demo/rooms"
  c.data.data_dir = "work_dirs/detection/tfds"
  c.student = "pointnet2_small"
  c.points.update(num_points=8192, colors=False)
  c.model.update(num_seeds=512, num_proposals=128)
  c.boxes.max_boxes = 32
  c.batch_size = 8
  c.total_steps = 1500
  c.optimizer.update(learning_rate=3e-3, warmup_steps=50)
  c.eval.batch_size = 4
  c.log_every = 10
  if arg == "runlocal":
    c.data.manual_dir = "/tmp/detection_synthetic_runlocal/rooms"
    c.data.data_dir = "/tmp/detection_synthetic_runlocal/tfds"
    # 18 training and 6 val rooms (a few seconds to generate). Fewer points per room leave
    # the backbone's 0.2 m balls nearly empty, and fewer steps leave the votes scattered: then
    # the run no longer beats random proposals on the val rooms.
    c.data.synthetic.update(scenes=24, frames_per_scene=1, val_fraction=0.25,
                            points_per_m2=100.0)
    c.points.num_points = 4096
    c.model.update(num_seeds=512, num_proposals=256, hidden=64)
    c.batch_size = 4
    c.total_steps = 600
    c.optimizer.update(learning_rate=5e-3, warmup_steps=20)
    c.eval.batch_size = 1
    c.log_every = 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'runlocal' or none")
  return c
