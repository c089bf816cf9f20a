"""Builds the scannet_frames dataset from a ScanNet export.

    python -m datasets.scannet_frames.build --manual_dir /data/scannet \
        --data_dir /data/tfds --config skip25

Skipped frames are logged as they are met and summarised at the end of each split; the
counts are stored with the dataset (`builder.info.metadata`).
"""

import argparse
import logging
import sys

import jax

from p2p_jax.data import scannet_frames as builder_lib


def main(argv: list[str] | None = None) -> int:
  """Parses the command line, builds the dataset and prints the size of each split."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--manual_dir", required=True,
                      help="the export: scans/<scene>/..., optional split lists and label map")
  parser.add_argument("--data_dir", required=True, help="the TFDS data dir to write to")
  parser.add_argument("--config", default=builder_lib.ScannetFrames.DEFAULT_CONFIG_NAME,
                      choices=[c.name for c in builder_lib.ScannetFrames.BUILDER_CONFIGS])
  args = parser.parse_args(argv)
  # The build is host work (JAX only adjusts intrinsics): leave any accelerator, and its
  # memory, to the jobs that train.
  jax.config.update("jax_platforms", "cpu")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  builder = builder_lib.build_frames(args.manual_dir, args.data_dir, args.config)
  for split, info in builder.info.splits.items():
    skipped = builder.info.metadata["splits"][split]["skipped"]
    print(f"{builder.info.full_name} {split}: {info.num_examples} frames, skipped {skipped}")
  print(f"written to {builder.data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
