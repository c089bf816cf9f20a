"""Converts torchvision / timm ResNet weights to an Orbax checkpoint of the frozen teacher.

    python -m experiments.convert_weights --input resnet50-0676ba61.pth --arch resnet50 \
        --output ~/teachers/resnet50

`--input` is a state dict saved by PyTorch (.pth / .pt, needs torch) or a .safetensors file
(e.g. timm's `model.safetensors`, needs no torch). The names and shapes are checked against
the Flax model, every problem is reported at once, and `{"params", "batch_stats"}` is written
to `--output`; training restores it with `convert.load_teacher_checkpoint` and needs no torch.
Takes seconds for ResNet-50 on a 2-core CPU.
"""

import argparse
import os
import sys

import jax
import numpy as np

from p2p_jax.models import convert, resnet


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help=".pth, .pt or .safetensors state dict")
  parser.add_argument("--arch", required=True, choices=sorted(resnet.VARIANTS))
  parser.add_argument("--output", required=True, help="checkpoint directory to create")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing checkpoint at --output")
  args = parser.parse_args(argv)
  if not os.path.isfile(args.input):
    parser.error(f"--input {args.input}: no such file")
  output = os.path.abspath(os.path.expanduser(args.output))
  if os.path.exists(output) and not args.overwrite:
    parser.error(f"--output {output} exists; pass --overwrite to replace it")

  model = resnet.VARIANTS[args.arch]()
  try:
    state = convert.load_state_dict(args.input)
  except (ValueError, ImportError, OSError) as e:  # These name the file already.
    print(f"error: {e}", file=sys.stderr)
    return 1
  try:
    variables = convert.torchvision_resnet_to_flax(state, model)
  except ValueError as e:
    print(f"error: {args.input}: {e}", file=sys.stderr)
    return 1
  convert.save_teacher_checkpoint(output, variables, overwrite=args.overwrite)
  count = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
  print(f"wrote {args.arch} ({count / 1e6:.2f}M parameters, feature_dim {model.feature_dim}) "
        f"to {output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
