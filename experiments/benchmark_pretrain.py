"""Speed of the PPKT pretraining step on this machine.

    python -m experiments.benchmark_pretrain [--steps 5] [--teacher resnet50]

One device, batch 8 frames of 240x320 from synthetic rooms, N = 8192 points per frame and
K = 4096 pairs per batch (512 per frame, as PPKT draws 4096 pairs over the whole batch),
the classic PointNet++ student with a 128-d head, the UPL on a frozen
ResNet teacher: the pmapped step of `p2p_jax.methods.ppkt` (pair sampling, teacher forward,
student and UPL forward and backward, SGD update). Prints compile time, step time, frames/s
and pairs/s, and XLA's FLOP count of the step against the measured float32 matmul peak
(XLA counts a loop body once, so the FPS loops are undercounted; they are a small share).
Then the same with a teacher feature cache (2 fixed views per frame, float16 layer4 in
array_record): the step reads the features instead of running the teacher. Also prints the
one-off cost of building the cache and the host time to prepare a batch either way.
"""

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarking import matmul_peak_gflops, print_table
from p2p_jax.data import pipeline, synthetic, teacher_cache
from p2p_jax.data.scannet_frames import build_frames, load_frames
from p2p_jax.methods import ppkt
from p2p_jax.models import pointnet2, projector, resnet, student
from p2p_jax.train import contrastive, parallel
from p2p_jax.train import state as state_lib


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--teacher", default="resnet50", choices=sorted(resnet.VARIANTS))
  args = parser.parse_args(argv)
  devices = jax.local_devices()[:1]
  pairs = pipeline.PairConfig(image_hw=(240, 320), num_points=8192, num_pairs=512,
                              views_per_frame=2)
  teacher = resnet.VARIANTS[args.teacher]()
  teacher_vars = jax.jit(teacher.init)(jax.random.key(0), jnp.zeros((1, 240, 320, 3)))
  with tempfile.TemporaryDirectory() as tmp:
    synthetic.generate(f"{tmp}/rooms", num_scenes=2, frames_per_scene=8 * (args.steps + 1) // 2,
                       seed=0, val_fraction=0.0)
    build_frames(f"{tmp}/rooms", f"{tmp}/tfds", config="skip1")
    source = load_frames(f"{tmp}/tfds", "train", config="skip1")
    layer4_fn = ppkt.teacher_features(teacher, teacher_vars)
    layer4_fn(np.zeros((8, 240, 320, 3), np.uint8)).block_until_ready()  # compile
    start = time.perf_counter()
    cache = teacher_cache.build_cache(
        f"{tmp}/cache", source, layer4_fn, pairs, seed=0, progress=False,
        metadata=teacher_cache.cache_metadata(teacher=args.teacher, num_frames=len(source),
                                              seed=0, config=pairs))
    build_s = (time.perf_counter() - start) / len(source)
    host = {}
    for name, c in (("images", None), ("cache", cache)):
      dataset = pipeline.pretrain_dataset(source, pairs, seed=0, num_devices=1,
                                          per_device_batch=8, cache=c)
      start = time.perf_counter()
      host[name] = [dataset[i] for i in range(args.steps + 1)]
      host[name + "_s"] = (time.perf_counter() - start) / (args.steps + 1)

  model = ppkt.PPKTModel(
      projector=projector.UpsamplingProjector(features=128),
      student=student.PointModel(pointnet2.PointNet2Seg(bn_axis_name=parallel.AXIS),
                                 student.ProjectionHead(128)))
  optimizer = state_lib.OptimizerConfig("sgd", learning_rate=0.5, weight_decay=1e-4,
                                        total_steps=1000)
  schedule, tx = state_lib.make_schedule(optimizer), state_lib.make_optimizer(optimizer)
  example = jax.tree.map(lambda x: x[0], pipeline.make_pairs_jit(host["images"][0], pairs))
  layer4, _ = jax.jit(teacher.apply)(teacher_vars, resnet.preprocess(example["image"]))
  init_state = jax.jit(lambda k: ppkt.init_state(model, tx, k, layer4, example))
  step = contrastive.pmap_step(ppkt.train_step, devices, model=model, teacher=teacher, tx=tx,
                               pair_config=pairs, loss_config=ppkt.LossConfig(),
                               schedule=schedule)
  peak = matmul_peak_gflops(10)
  rows = [("matmul 2048^3 float32 (peak)", "", f"{peak:6.1f} GFLOP/s")]
  for name, variables in (("images", parallel.replicate(teacher_vars, devices)), ("cache", {})):
    batches = host[name]
    state = parallel.replicate(init_state(jax.random.key(1)), devices)
    start = time.perf_counter()
    compiled = step.lower(state, variables, batches[0]).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
    state, metrics = step(state, variables, batches[0])  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for batch in batches[1:]:
      start = time.perf_counter()
      state, metrics = step(state, variables, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    ms = 1e3 * float(np.median(times))
    gflops = flops / ms / 1e6
    label = f"{args.teacher} teacher" if name == "images" else "teacher cache"
    rows += [
        (f"PPKT step, {label}, compile", f"{1e3 * compile_s:9.0f}", ""),
        (f"PPKT step, {label}, batch 8", f"{ms:9.1f}",
         f"{8e3 / ms:5.2f} frames/s, {4096e3 / ms:7.0f} pairs/s"),
        ("  XLA-counted work of the step", "",
         f"{flops / 1e9:6.1f} GFLOP = {gflops:5.1f} GFLOP/s ({gflops / peak:4.0%} of peak)"),
        (f"  host batch preparation ({name})", f"{1e3 * host[name + '_s']:9.1f}", "per batch"),
    ]
  rows.append(("teacher cache build, per frame (2 views)", f"{1e3 * build_s:9.1f}",
               "once, before training"))
  print_table([r + ("", "") for r in rows], f"median of {args.steps} steps after a warm-up step")


if __name__ == "__main__":
  main()
