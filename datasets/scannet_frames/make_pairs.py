"""Finds the overlapping frame pairs of a built scannet_frames split, for PointContrast.

    python -m datasets.scannet_frames.make_pairs --data_dir /data/tfds --config skip25 \
        --split train [--voxel_size 0.05] [--match_radius_voxels 1.5] [--min_overlap 0.3] \
        [--max_frame_distance N] [--overwrite]

Writes `<data_dir>/scannet_frames/<config>/<version>/pairs_<split>.npz` next to the dataset
(source indices into `load_frames(data_dir, split, config)` and each pair's overlap, see
`p2p_jax.data.frame_pairs.mine_pairs`) and prints how many candidate pairs were kept and
rejected and how many frames are in no pair.
"""

import argparse
import logging
import sys

import jax

from p2p_jax.data import frame_pairs
from p2p_jax.data.scannet_frames import ScannetFrames


def main(argv: list[str] | None = None) -> int:
  """Parses the command line, computes and stores the pairs and prints their counts."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", required=True, help="the TFDS data dir of scannet_frames")
  parser.add_argument("--config", default=ScannetFrames.DEFAULT_CONFIG_NAME,
                      choices=[c.name for c in ScannetFrames.BUILDER_CONFIGS])
  parser.add_argument("--split", default="train")
  defaults = frame_pairs.OverlapConfig()
  parser.add_argument("--voxel_size", type=float, default=defaults.voxel_size,
                      help="voxel edge of the downsampled clouds, metres")
  parser.add_argument("--match_radius_voxels", type=float, default=defaults.match_radius_voxels,
                      help="points match within this many voxels")
  parser.add_argument("--min_overlap", type=float, default=defaults.min_overlap)
  parser.add_argument("--max_frame_distance", type=int, default=None,
                      help="only pairs whose frame indices differ by at most this "
                           "(default: every pair of a scene)")
  parser.add_argument("--overwrite", action="store_true", help="recompute an existing file")
  args = parser.parse_args(argv)
  # Host work: leave any accelerator, and its memory, to the jobs that train.
  jax.config.update("jax_platforms", "cpu")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  overlap = frame_pairs.OverlapConfig(
      voxel_size=args.voxel_size, match_radius_voxels=args.match_radius_voxels,
      min_overlap=args.min_overlap, max_frame_distance=args.max_frame_distance)
  pairs = frame_pairs.mine_pairs(args.data_dir, args.split, args.config, overlap,
                                 overwrite=args.overwrite)
  s = pairs.stats
  print(f"scannet_frames/{args.config} {args.split}: {s['frames']} frames of {s['scenes']} "
        f"scenes; {s['candidates']} candidate pairs, {s['kept']} kept, {s['rejected']} rejected "
        f"(overlap < {args.min_overlap}); {s['frames_without_pair']} frames in no pair")
  print(f"written to {frame_pairs.pairs_path(args.data_dir, args.split, args.config)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
