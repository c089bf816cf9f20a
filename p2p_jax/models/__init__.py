"""Flax linen networks; one file per network, each `__call__` returns `(output, aux)`.

    resnet       the frozen 2D teacher (torchvision layout) and its ImageNet preprocessing
    segmentation_2d  a ResNet with a per-pixel head: the network that trains the 2D teacher
    convert      torchvision / timm ResNet weights (.pth or .safetensors) -> Flax variables
    projector    PPKT's upsampling feature projection layer (UPL)
    student      the 3D student's wrapper (`PointModel`), its heads and the backbone protocol
    pointnet2    PointNet++ backbones
    sparse_unet  the paper's sparse residual U-Nets (SR-UNet, MinkUNet layout)
    layers       masked BatchNorm and pointwise layers shared by the 3D backbones

A new 3D student is one file here and one line in `STUDENTS`; configs name it by its key.
"""

import importlib

# Student name -> "module:constructor" in this package. Each constructor takes the backbone's
# keyword arguments (e.g. `bn_axis_name`) and returns a backbone following the protocol in
# `p2p_jax.models.student`. Imported on use, so naming one student loads only its module.
STUDENTS = {
    "pointnet2_seg": "pointnet2:PointNet2Seg",
    "pointnet2_small": "pointnet2:PointNet2Small",
    "pointnet2_tiny": "pointnet2:PointNet2Tiny",
    "sr_unet34c": "sparse_unet:SparseUNet34C",
    "sr_unet18a": "sparse_unet:SparseUNet18A",
    "sr_unet14a": "sparse_unet:SparseUNet14A",
    "sr_unet_tiny": "sparse_unet:SparseUNetTiny",
}


def backbone(name: str, **kwargs):
  """The student backbone registered as `name`, built with `kwargs`."""
  if name not in STUDENTS:
    raise ValueError(f"unknown student {name!r}; expected one of {sorted(STUDENTS)}")
  module, constructor = STUDENTS[name].split(":")
  return getattr(importlib.import_module(f"p2p_jax.models.{module}"), constructor)(**kwargs)


def backbone_kwargs(student: str, sparse) -> dict:
  """A config's keyword arguments for `backbone(student, ...)`: the `sparse` settings
  (`p2p_jax.configs.common.sparse`) for SR-UNets, nothing for the others; checked for all."""
  if sparse.conv_impl not in ("pairs", "dense"):
    raise ValueError(f"sparse.conv_impl: {sparse.conv_impl!r}; expected 'pairs' or 'dense'")
  pairs = tuple(sparse.pairs_per_voxel)
  if len(pairs) != 5 or min(pairs) <= 0:
    raise ValueError(f"sparse.pairs_per_voxel: {pairs}; expected 5 positive numbers "
                     "(levels 0-4)")
  ratios = tuple(sparse.coarse_capacity_ratios)
  if ratios and (len(ratios) != 4 or min(ratios) <= 0):
    raise ValueError(f"sparse.coarse_capacity_ratios: {ratios}; expected () or 4 positive "
                     "numbers (levels 1-4)")
  if sparse.voxel_size < 0:
    raise ValueError(f"sparse.voxel_size: {sparse.voxel_size}; expected >= 0 (0: default)")
  if not student.startswith("sr_unet"):
    return {}
  kwargs = {"conv_impl": sparse.conv_impl, "pairs_per_voxel": pairs}
  if ratios:
    kwargs["coarse_capacity_ratios"] = ratios
  if sparse.voxel_size:
    kwargs["voxel_size"] = sparse.voxel_size
  return kwargs
