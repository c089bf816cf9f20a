"""The frozen 2D teacher of PPKT: an ImageNet ResNet in the torchvision v1.5 layout.

Liu et al., "Learning from 2D: Contrastive Pixel-to-Point Knowledge Transfer for 3D
Pretraining", arXiv 2104.04687 (2021): a ResNet pretrained on ImageNet encodes the
images and stays frozen while the 3D network learns to match its pixel features.

The layout is torchvision's (He et al. 2016 with the stride on the 3x3 convolution of the
bottleneck, "v1.5"), and every padding is explicit, so weights converted from PyTorch with
`p2p_jax.models.convert` give PyTorch's outputs. Module names follow PyTorch's (`conv1`,
`bn1`, `layer3_2` for `layer3.2`, `downsample_conv` / `downsample_bn` for `downsample.0/1`).

    model = ResNet50()
    variables = convert.load_teacher_checkpoint(path, model)
    features, aux = frozen_features(model, variables, preprocess(images))
"""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's init (kaiming_normal_, mode="fan_out", relu); only matters when training anew.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
  """PyTorch's symmetric `padding=kernel // 2`; flax's 'SAME' pads (0, 1) at stride 2."""
  padding = "VALID" if kernel == 1 else ((kernel // 2,) * 2,) * 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding, use_bias=False,
                 kernel_init=_CONV_INIT, dtype=dtype, name=name)


def _norm(train: bool, name: str, dtype: Any) -> nn.BatchNorm:
  # torch.nn.BatchNorm2d defaults: eps 1e-5, momentum 0.1 on the new statistic.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34).

  Attributes:
    planes: output channels.
    stride: stride of the first convolution and of the shortcut.
    dtype: computation dtype; parameters stay float32.
  """
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    shortcut = x
    y = _conv(self.planes, 3, self.stride, "conv1", self.dtype)(x)
    y = nn.relu(_norm(train, "bn1", self.dtype)(y))
    y = _conv(self.planes, 3, 1, "conv2", self.dtype)(y)
    y = _norm(train, "bn2", self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = _conv(self.planes, 1, self.stride, "downsample_conv", self.dtype)(x)
      shortcut = _norm(train, "downsample_bn", self.dtype)(shortcut)
    return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection (ResNet-50+).

  Attributes:
    planes: channels of the 3x3 convolution; the output has `4 * planes`.
    stride: stride of the 3x3 convolution (v1.5) and of the shortcut.
    dtype: computation dtype; parameters stay float32.
  """
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    shortcut = x
    out_channels = self.planes * self.expansion
    y = _conv(self.planes, 1, 1, "conv1", self.dtype)(x)
    y = nn.relu(_norm(train, "bn1", self.dtype)(y))
    y = _conv(self.planes, 3, self.stride, "conv2", self.dtype)(y)
    y = nn.relu(_norm(train, "bn2", self.dtype)(y))
    y = _conv(out_channels, 1, 1, "conv3", self.dtype)(y)
    y = _norm(train, "bn3", self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != out_channels:
      shortcut = _conv(out_channels, 1, self.stride, "downsample_conv", self.dtype)(x)
      shortcut = _norm(train, "downsample_bn", self.dtype)(shortcut)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet backbone without the classifier, returning every stage's feature map.

  Attributes:
    stage_sizes: blocks in each of the four stages.
    block_cls: `BasicBlock` or `Bottleneck`.
    num_filters: channels of the stem and of the first stage's blocks; doubled per stage.
    dtype: computation dtype; parameters and batch statistics stay float32.
  """
  stage_sizes: tuple[int, ...]
  block_cls: type[nn.Module]
  num_filters: int = 64
  dtype: Any = jnp.float32

  @property
  def feature_dim(self) -> int:
    """Channels of the layer4 feature map: 512 for ResNet-18/34, 2048 for ResNet-50/101."""
    return self.num_filters * 2 ** (len(self.stage_sizes) - 1) * self.block_cls.expansion

  @nn.compact
  def __call__(self, images: jax.Array, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes normalised images.

    Args:
      images: [B, H, W, 3] float images, normalised as by `preprocess`.
      train: normalise with the batch's statistics and update the running averages (needs
        `mutable=["batch_stats"]`) instead of using them. Flax averages the biased batch
        variance where PyTorch averages the unbiased one.

    Returns:
      `(features, aux)`: features is the layer4 map [B, H/32, W/32, feature_dim] (sizes
      rounded up at each stride-2 step, as in PyTorch); aux holds "stem" (stride 4, after
      the max pool) and "layer1" .. "layer4" (strides 4, 8, 16, 32).
    """
    x = _conv(self.num_filters, 7, 2, "conv1", self.dtype)(images)
    x = nn.relu(_norm(train, "bn1", self.dtype)(x))
    # Padded with -inf, like torch.nn.MaxPool2d(3, 2, padding=1).
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    aux = {"stem": x}
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(self.num_filters * 2 ** i, stride, dtype=self.dtype,
                           name=f"layer{i + 1}_{j}")(x, train)
      aux[f"layer{i + 1}"] = x
    return x, aux


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
# For tests: every code path of the bottleneck network (strides, shortcuts), 33k parameters.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=Bottleneck,
                               num_filters=4)
# Names for configs and command lines.
VARIANTS = {"resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50,
            "resnet101": ResNet101, "tiny": ResNetTiny}


def preprocess(images: jax.Array) -> jax.Array:
  """ImageNet normalisation expected by torchvision and timm weights.

  Args:
    images: [..., 3] RGB, uint8 or float in [0, 255].

  Returns:
    float32 `(images / 255 - mean) / std` with mean (0.485, 0.456, 0.406) and std
    (0.229, 0.224, 0.225) per channel, same shape.
  """
  images = jnp.asarray(images, jnp.float32) / 255.0
  return (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def frozen_features(model: ResNet, variables: Any,
                    images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Applies the teacher as a fixed function: running BN statistics, no gradient to weights.

  Args:
    model: the ResNet.
    variables: `{"params": ..., "batch_stats": ...}`, e.g. from `convert`.
    images: [B, H, W, 3] normalised images (see `preprocess`).

  Returns:
    `model`'s `(features, aux)` with train=False; batch statistics are read, never updated.
  """
  return model.apply(jax.lax.stop_gradient(variables), images, train=False)
