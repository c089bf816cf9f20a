"""Speed of the core operations on this machine: a table of median times.

    python -m experiments.benchmark_ops [--repeats 20]

Each operation is jitted, compiled and run once before timing; the median over `--repeats`
runs is reported with its throughput where one is meaningful: GB/s of the arrays read and
written for memory-bound operations, or GFLOP/s of the loss's matmuls against the measured
peak of a large float32 matmul. The targets are those of the 2-core CPU reference machine.
"""

import argparse

import jax
import numpy as np

from experiments.benchmarking import matmul_peak_gflops, median_ms, nbytes, print_table
from p2p_jax import geometry, losses, pointops


def room_cloud(rng, num):
  """Points on the six faces of a 6 x 5 x 3 m room: the density of a depth frame's cloud."""
  pts = rng.uniform(0, 1, size=(num, 3)) * [6.0, 5.0, 3.0]
  face = rng.integers(0, 6, num)
  axis, high = face // 2, face % 2
  pts[np.arange(num), axis] = high * np.array([6.0, 5.0, 3.0])[axis]
  return pts.astype(np.float32)[None]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  rows = []

  def run(name, fn, inputs, target_ms=None, work="bytes"):
    """`work`: "bytes" (memory-bound: GB/s of inputs + outputs), a FLOP count, or None."""
    fn = jax.jit(fn)
    ms = median_ms(fn, inputs, args.repeats)
    if work == "bytes":
      out = jax.eval_shape(fn, *inputs)
      rate = f"{(nbytes(inputs) + nbytes(out)) / ms / 1e6:7.1f} GB/s"
    elif work is None:
      rate = ""
    else:
      gf = work / ms / 1e6
      rate = f"{gf:7.1f} GFLOP/s ({gf / peak:4.0%} of peak)"
    verdict = "" if target_ms is None else ("ok" if ms <= target_ms else "SLOWER")
    target = "" if target_ms is None else f"{target_ms:g} ms"
    rows.append((name, f"{ms:9.2f}", rate, target, verdict))

  peak = matmul_peak_gflops(args.repeats)
  rows.append(("matmul 2048^3 float32 (peak)", "", f"{peak:7.1f} GFLOP/s", "", ""))

  depth = rng.integers(0, 8000, size=(480, 640)).astype(np.uint16)
  k = np.array([[577.6, 0, 319.5], [0, 577.6, 239.5], [0, 0, 1]], np.float32)
  pose = np.eye(4, dtype=np.float32)
  pose[:3, 3] = [1.0, 2.0, 1.5]
  run("back_project 480x640 (+ pose)", geometry.back_project, (depth, k, pose), 2.0)

  cloud = room_cloud(rng, 8192)
  run("farthest_point_sample 1024 of 8192",
      lambda p: pointops.farthest_point_sample(p, 1024), (cloud,), 80.0, work=None)
  run("knn k=16, 8192 queries x 8192 points", lambda p: pointops.knn(p, p, 16), (cloud,), 250.0,
      work=None)

  centers = cloud[:, :1024]
  colours = rng.uniform(size=(1, 8192, 3)).astype(np.float32)
  run("ball_query r=0.1 ns=32, 1024 of 8192",
      lambda p, c: pointops.ball_query(p, c, 0.1, 32), (cloud, centers), work=None)
  idx, _ = jax.jit(lambda p, c: pointops.ball_query(p, c, 0.1, 32))(cloud, centers)
  run("group xyz+rgb -> [1,1024,32,6]", pointops.group, (cloud, centers, idx, colours))
  feats = rng.normal(size=(1, 1024, 128)).astype(np.float32)
  run("interpolate 3-NN, 1024 -> 8192, C=128",
      lambda t, s, f: pointops.interpolate(t, s, f), (cloud, centers, feats), work=None)

  a = rng.normal(size=(4096, 128)).astype(np.float32)
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  b = np.roll(a, 1, axis=1)
  loss = lambda a, b: losses.pixel_to_point_info_nce(a, b).sum()
  # Useful FLOPs: the K x K x C logit matmul forward; two more (d anchors, d positives) backward.
  logit_flops = 2 * 4096 * 4096 * 128
  run("pixel_to_point_info_nce fwd K=4096 C=128", loss, (a, b), work=logit_flops)
  run("pixel_to_point_info_nce fwd+bwd K=4096 C=128",
      jax.value_and_grad(loss, (0, 1)), (a, b), 30.0, work=3 * logit_flops)

  print_table(rows, f"median of {args.repeats} runs")
  print(f"Loss fwd+bwd needs at least 3 x {logit_flops / 1e9:.2f} GFLOP of matmul (logits, "
        f"d anchors, d positives): {3 * logit_flops / peak / 1e6:.1f} ms at the measured peak. "
        "The blockwise backward recomputes the logits (a 4th matmul) to keep memory O(K C).")


if __name__ == "__main__":
  main()
