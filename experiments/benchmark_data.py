"""Throughput of the data path on this machine: rendering, building, the input pipeline.

    python -m experiments.benchmark_data [--frames 200]

Renders synthetic rooms at 240x320 and 480x640 (frames/s of the whole write path), builds
them into scannet_frames, and measures the pretraining pipeline on the built data source at
batch 8, N = 8192 points, K = 4096 pairs: the host half (read, decode, augment, batch) and the
device half (`make_pairs`, here on the CPU), each in frames/s. Both run concurrently with the
training step in practice (host threads and the accelerator); on a CPU-only machine their sum
is what a step pays.
"""

import argparse
import tempfile
import time

import jax

from experiments.benchmarking import print_table
from p2p_jax.data import pipeline, synthetic
from p2p_jax.data.scannet_frames import build_frames, load_frames


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", type=int, default=200, help="frames rendered per resolution")
  parser.add_argument("--batches", type=int, default=6)
  args = parser.parse_args(argv)
  rows = []
  for hw in ((240, 320), (480, 640)):
    name = f"{hw[0]}x{hw[1]}"
    with tempfile.TemporaryDirectory() as tmp:
      stats = synthetic.generate(f"{tmp}/rooms", num_scenes=4, frames_per_scene=args.frames // 4,
                                 height=hw[0], width=hw[1], seed=0, val_fraction=0.0)
      rows.append((f"synthetic rooms render + write {name}",
                   f"{1e3 / stats['frames_per_second']:9.1f}",
                   f"{stats['frames_per_second']:6.1f} frames/s",
                   "20 frames/s" if hw == (240, 320) else "", ""))
      start = time.perf_counter()
      build_frames(f"{tmp}/rooms", f"{tmp}/tfds", config="skip1")
      rate = stats["frames"] / (time.perf_counter() - start)
      rows.append((f"scannet_frames build {name}", f"{1e3 / rate:9.1f}", f"{rate:6.1f} frames/s",
                   "", ""))
      source = load_frames(f"{tmp}/tfds", "train", config="skip1")
      config = pipeline.PairConfig(image_hw=hw, num_points=8192, num_pairs=4096)
      ds = pipeline.pretrain_dataset(source, config, seed=0, num_devices=1, per_device_batch=8,
                                     process_index=0, process_count=1)
      it = pipeline.prefetch(ds)
      batches = [next(it) for _ in range(2)]  # warm-up: thread start, first reads
      start = time.perf_counter()
      batches = [next(it) for _ in range(args.batches)]
      host = 8 * args.batches / (time.perf_counter() - start)
      jax.block_until_ready(pipeline.make_pairs_jit(batches[0], config))  # compile
      start = time.perf_counter()
      for batch in batches:
        jax.block_until_ready(pipeline.make_pairs_jit(batch, config))
      device = 8 * args.batches / (time.perf_counter() - start)
      rows.append((f"pipeline host half {name}, batch 8", f"{1e3 / host:9.1f}",
                   f"{host:6.1f} frames/s", "", ""))
      rows.append((f"pipeline make_pairs (CPU) {name}, batch 8", f"{1e3 / device:9.1f}",
                   f"{device:6.1f} frames/s", "", ""))
  print_table(rows, f"ms per frame; pipeline rows over {args.batches} batches of 8 after 2 "
              "warm-up batches, the host half including zlib decoding of the stored arrays")


if __name__ == "__main__":
  main()
