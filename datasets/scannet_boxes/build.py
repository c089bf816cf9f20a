"""Builds the scannet_boxes dataset (3D detection) from a ScanNet export.

    python -m datasets.scannet_boxes.build --manual_dir /data/scannet \
        --data_dir /data/tfds

Scenes whose meshes, instance annotation or axis alignment are missing or malformed are
logged, skipped and summarised at the end of each split; so are the notes on written scenes
(unknown segments, vertices claimed twice, unknown categories, empty instances, scenes without
an axis alignment). The counts are stored with the dataset (`builder.info.metadata`).
"""

import argparse
import logging
import sys

from p2p_jax.data import scannet_boxes as builder_lib


def main(argv: list[str] | None = None) -> int:
  """Parses the command line, builds the dataset and prints the size of each split."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--manual_dir", required=True,
                      help="the export: scans/<scene>/..., scannetv2-labels.combined.tsv, "
                           "split lists")
  parser.add_argument("--data_dir", required=True, help="the TFDS data dir to write to")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  builder = builder_lib.build_boxes(args.manual_dir, args.data_dir)
  for split, info in builder.info.splits.items():
    skipped = builder.info.metadata["splits"][split]["skipped"]
    noted = builder.info.metadata["notes"][split]["counts"]
    print(f"{builder.info.full_name} {split}: {info.num_examples} scenes, skipped {skipped}, "
          f"notes {noted}")
  print(f"written to {builder.data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
