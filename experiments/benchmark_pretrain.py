"""Speed of the PPKT pretraining step on this machine.

    python -m experiments.benchmark_pretrain [--steps 5] [--teacher resnet50]

One device, batch 8 frames of 240x320 from synthetic rooms, N = 8192 points per frame and
K = 4096 pairs per batch (512 per frame, as PPKT draws 4096 pairs over the whole batch), the classic PointNet++ student with a 128-d head, the UPL on a frozen
ResNet teacher: the pmapped step of `p2p_jax.train.ppkt` (pair sampling, teacher forward,
student and UPL forward and backward, SGD update). Prints compile time, step time, frames/s
and pairs/s, and XLA's FLOP count of the step against the measured float32 matmul peak
(XLA counts a loop body once, so the FPS loops are undercounted; they are a small share).
"""

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from datasets.scannet_frames import build_frames, load_frames
from datasets.synthetic_rooms import generate
from experiments.benchmarking import matmul_peak_gflops, print_table
from p2p_jax.data import pipeline
from p2p_jax.models import pointnet2, projector, resnet
from p2p_jax.train import ppkt


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--teacher", default="resnet50", choices=sorted(resnet.VARIANTS))
  args = parser.parse_args(argv)
  devices = jax.local_devices()[:1]
  pairs = pipeline.PairConfig(image_hw=(240, 320), num_points=8192, num_pairs=512)
  with tempfile.TemporaryDirectory() as tmp:
    generate.generate(f"{tmp}/rooms", num_scenes=2, frames_per_scene=8 * (args.steps + 1) // 2,
                      seed=0, val_fraction=0.0)
    build_frames(f"{tmp}/rooms", f"{tmp}/tfds", config="skip1")
    dataset = pipeline.pretrain_dataset(load_frames(f"{tmp}/tfds", "train", config="skip1"),
                                        pairs, seed=0, num_devices=1, per_device_batch=8)
    batches = [dataset[i] for i in range(args.steps + 1)]

  teacher = resnet.VARIANTS[args.teacher]()
  teacher_vars = jax.jit(teacher.init)(jax.random.key(0), jnp.zeros((1, 240, 320, 3)))
  model = ppkt.PPKTModel(
      projector=projector.UpsamplingProjector(features=128),
      student=pointnet2.PointModel(pointnet2.PointNet2Seg(bn_axis_name=ppkt.AXIS),
                                   pointnet2.ProjectionHead(128)))
  schedule = ppkt.make_schedule(0.5, 1000)
  tx = ppkt.make_optimizer("sgd", learning_rate=0.5, weight_decay=1e-4, total_steps=1000)
  example = jax.tree.map(lambda x: x[0], pipeline.make_pairs_jit(batches[0], pairs))
  layer4, _ = jax.jit(teacher.apply)(teacher_vars, resnet.preprocess(example["image"]))
  state = jax.jit(lambda k: ppkt.init_state(model, tx, k, layer4, example))(jax.random.key(1))
  step = ppkt.make_train_step(devices=devices, model=model, teacher=teacher, tx=tx,
                              pair_config=pairs, loss_config=ppkt.LossConfig(),
                              schedule=schedule)
  state = ppkt.replicate(state, devices)
  teacher_vars = ppkt.replicate(teacher_vars, devices)

  start = time.perf_counter()
  compiled = step.lower(state, teacher_vars, batches[0]).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  state, metrics = step(state, teacher_vars, batches[0])  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for batch in batches[1:]:
    start = time.perf_counter()
    state, metrics = step(state, teacher_vars, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  ms = 1e3 * float(np.median(times))
  peak = matmul_peak_gflops(10)
  gflops = flops / ms / 1e6
  rows = [
      ("matmul 2048^3 float32 (peak)", "", f"{peak:6.1f} GFLOP/s", "", ""),
      (f"PPKT step, {args.teacher} teacher, compile", f"{1e3 * compile_s:9.0f}", "", "", ""),
      (f"PPKT step, {args.teacher} teacher, batch 8", f"{ms:9.1f}",
       f"{8e3 / ms:5.2f} frames/s, {4096e3 / ms:7.0f} pairs/s", "", ""),
      ("  XLA-counted work of the step", "",
       f"{flops / 1e9:6.1f} GFLOP = {gflops:5.1f} GFLOP/s ({gflops / peak:4.0%} of peak)", "", ""),
  ]
  print_table(rows, f"median of {args.steps} steps after a warm-up step; no teacher cache")


if __name__ == "__main__":
  main()
