"""PPKT pretraining of the PointNet++ student on the synthetic rooms (the default experiment).

    python -m experiments.pretrain --config experiments/configs/ppkt_synthetic.py \
        --workdir /tmp/ppkt_synthetic [--config.ppkt.teacher.checkpoint=/path/to/teacher]
    python -m experiments.pretrain --config experiments/configs/ppkt_synthetic.py:runlocal \
        --workdir /tmp/ppkt_local      # seconds on a 2-core CPU: 20 steps of tiny models

Hardware: a 2-core CPU for `runlocal`; the full config (100 scenes x 50 frames at 240x320,
batch 8, 5000 steps) is sized for one accelerator and takes hours on a CPU.
Expected result: the loss falls and the pair top-1 accuracy rises; with a trained teacher
(experiments/train_teacher.py, or converted ImageNet weights) the student's features then
fine-tune better than from scratch (experiments/finetune.py).
"""

from p2p_jax.configs import pretrain as schema


def get_config(arg=None):
  c = schema.base()
  c.data.manual_dir = "data/rooms"
  c.data.data_dir = "data/tfds"
  c.data.synthetic.update(scenes=100, frames_per_scene=50)
  c.points.num_points = 8192
  c.ppkt.update(image_hw=(240, 320), num_pairs=512)  # 4096 per batch of 8
  c.ppkt.teacher.arch = "resnet18"
  c.loss.temperature = 0.07
  c.per_device_batch = 8
  c.total_steps = 5000
  c.checkpointing.every = 500
  if arg == "runlocal":
    schema.shrink_for_cpu(c, "/tmp/ppkt_runlocal")
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'runlocal' or none")
  return c
