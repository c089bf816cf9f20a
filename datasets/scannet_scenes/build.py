"""Builds the scannet_scenes dataset from a ScanNet export.

    python -m datasets.scannet_scenes.build --manual_dir /data/scannet \
        --data_dir /data/tfds

Scenes whose meshes are missing or malformed are logged, skipped and summarised at the end
of each split; the counts are stored with the dataset (`builder.info.metadata`).
"""

import argparse
import logging
import sys

from p2p_jax.data import scannet_scenes as builder_lib


def main(argv: list[str] | None = None) -> int:
  """Parses the command line, builds the dataset and prints the size of each split."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--manual_dir", required=True,
                      help="the export: scans/<scene>/<scene>_vh_clean_2*.ply, split lists")
  parser.add_argument("--data_dir", required=True, help="the TFDS data dir to write to")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  builder = builder_lib.build_scenes(args.manual_dir, args.data_dir)
  for split, info in builder.info.splits.items():
    skipped = builder.info.metadata["splits"][split]["skipped"]
    print(f"{builder.info.full_name} {split}: {info.num_examples} scenes, skipped {skipped}")
  print(f"written to {builder.data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
