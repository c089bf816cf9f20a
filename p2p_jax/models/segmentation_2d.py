"""A 2D segmentation network: a ResNet with per-pixel class logits, which trains the teacher."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from p2p_jax.data import labels as labels_lib


class SegmentationNet(nn.Module):
  """A ResNet with per-pixel class logits from 1x1 convolutions on some of its stages.

  Params are {"backbone": the ResNet's, "head_<layer>": ...}, so the backbone's variables
  are saved alone in the teacher checkpoint format.

  Attributes:
    backbone: a `resnet.ResNet`.
    num_classes: output classes.
    head_layers: the stages read by the head, e.g. ("layer4",) or ("layer4", "layer3").
  """
  backbone: nn.Module
  num_classes: int = labels_lib.NUM_CLASSES
  head_layers: Sequence[str] = ("layer4",)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False):
    """Args: images [B, H, W, 3] normalised (`resnet.preprocess`).

    Returns:
      (logits [B, H, W, num_classes], the backbone's aux).
    """
    _, aux = self.backbone(images, train=train)
    out_shape = images.shape[:3] + (self.num_classes,)
    logits = 0.0
    for layer in self.head_layers:
      x = nn.Conv(self.num_classes, (1, 1), name=f"head_{layer}")(aux[layer])
      logits = logits + jax.image.resize(x, out_shape, "bilinear")
    return logits, aux
