"""Builds the s3dis dataset from Stanford3dDataset_v1.2_Aligned_Version.

    python -m datasets.s3dis.build --manual_dir /data/s3dis --data_dir /data/tfds

`--manual_dir` is the folder that holds Stanford3dDataset_v1.2_Aligned_Version/. Rooms
without annotated points are logged, skipped and summarised at the end of each area; repairs
of known defects are logged and summarised too. Both are stored with the dataset
(`builder.info.metadata`).
"""

import argparse
import logging
import sys

from p2p_jax.data import s3dis as builder_lib


def main(argv: list[str] | None = None) -> int:
  """Parses the command line, builds the dataset and prints the size of each split."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--manual_dir", required=True,
                      help=f"the folder holding {builder_lib.ROOT}/Area_<n>/<room>/")
  parser.add_argument("--data_dir", required=True, help="the TFDS data dir to write to")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  builder = builder_lib.build_s3dis(args.manual_dir, args.data_dir)
  for split, info in builder.info.splits.items():
    skipped = builder.info.metadata["splits"][split]["skipped"]
    repairs = builder.info.metadata["repairs"][split]["counts"]
    print(f"{builder.info.full_name} {split}: {info.num_examples} rooms, skipped {skipped}, "
          f"repaired {repairs}")
  print(f"written to {builder.data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
