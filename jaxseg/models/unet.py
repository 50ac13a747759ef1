"""The residual-encoder 3D U-Net of nnU-Net (ResEnc), as a Flax Linen module.

It mirrors dynamic_network_architectures' ResidualEncoderUNet as nnU-Net's ResEnc presets build it, so its
parameter count equals the reference's (ResEnc M, 5 stages 32-320, blocks 1-3-4-6-6, 1 input channel,
3 classes: 62,810,412):

- stem: one conv (with bias) - instance norm - leaky ReLU at the first stage's width;
- encoder stages of BasicBlockD residual blocks (ResNet-D): conv-norm-act, conv-norm, plus the skip, then
  act. The first block of every stage after the first has stride 2 in its first conv; its skip average-pools
  by 2 (instead of a strided 1x1 conv, which would drop 7 of 8 voxels) and, only where the channel count
  changes, applies a 1x1 conv (no bias) and a norm;
- decoder: a transposed conv (kernel 2, stride 2, with bias; ``UpConv3D``) per stage, concatenated with
  the skip, then one conv-norm-act block;
- a 1x1 segmentation head (with bias) on every decoder level, always built (as nnU-Net does) so that a model
  trained with deep supervision and one without share a parameter tree.

Convolutions carry a bias as nnU-Net's ResEnc presets configure them (conv_bias=True), although the
instance norm that follows cancels it. With deep supervision the module returns the logits of every decoder
level, full resolution first, in training mode; at inference only the full-resolution logits are computed.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.conv import Conv3D, UpConv3D
from jaxseg.models.layers import InstanceNorm


def _act(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.01)


class ResidualBlock(nn.Module):
  """nnU-Net's BasicBlockD: [B, X, Y, Z, C_in] -> [B, X/s, Y/s, Z/s, features]."""

  features: int
  stride: int = 1
  conv: str = "native"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = (self.stride,) * 3
    y = Conv3D(self.features, strides=s, impl=self.conv, dtype=self.dtype, frozen_bias=True)(x)
    y = _act(InstanceNorm(dtype=self.dtype)(y))
    y = Conv3D(self.features, impl=self.conv, dtype=self.dtype, frozen_bias=True)(y)
    y = InstanceNorm(dtype=self.dtype)(y)
    skip = x.astype(self.dtype)
    if self.stride != 1:
      skip = nn.avg_pool(skip, s, strides=s)
    if x.shape[-1] != self.features:
      skip = Conv3D(self.features, kernel_size=(1, 1, 1), use_bias=False, impl="native", dtype=self.dtype)(skip)
      skip = InstanceNorm(dtype=self.dtype)(skip)
    return _act(y + skip)


class ResEncUNet(nn.Module):
  """Residual-encoder U-Net.

  Attributes:
    num_classes: output channels (background included).
    features: channels per resolution stage, highest resolution first; the patch must divide by
      2 ** (len(features) - 1).
    blocks_per_stage: residual blocks per encoder stage.
    deep_supervision: return the logits of every decoder level in training mode.
    conv: convolution form (auto | native | depth_folded | im2col; ``conv.resolve_impl``).
    dtype: compute dtype (float32 or bfloat16); parameters stay float32, logits are returned in float32.
  """

  num_classes: int
  features: Sequence[int] = (32, 64, 128, 256, 320)
  blocks_per_stage: Sequence[int] = (1, 3, 4, 6, 6)
  deep_supervision: bool = True
  conv: str = "native"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
    """x: [B, X, Y, Z, C] -> logits [B, X, Y, Z, K] (or a list over decoder levels, finest first)."""
    conv = dict(impl=self.conv, dtype=self.dtype)
    h = Conv3D(self.features[0], frozen_bias=True, **conv)(x)
    h = _act(InstanceNorm(dtype=self.dtype)(h))
    skips = []
    for stage, (feat, blocks) in enumerate(zip(self.features, self.blocks_per_stage)):
      for b in range(blocks):
        h = ResidualBlock(feat, stride=2 if (stage > 0 and b == 0) else 1, conv=self.conv,
                          dtype=self.dtype)(h)
      skips.append(h)
    outputs = []
    every_level = (train and self.deep_supervision) or self.is_initializing()
    for stage in range(len(self.features) - 2, -1, -1):
      feat = self.features[stage]
      # Named as the flax.linen.ConvTranspose it replaces was, so earlier checkpoints load.
      h = UpConv3D(feat, dtype=self.dtype, name=f"ConvTranspose_{len(self.features) - 2 - stage}")(h)
      h = Conv3D(feat, frozen_bias=True, **conv)((h, skips[stage]))  # their channels concatenated
      h = _act(InstanceNorm(dtype=self.dtype)(h))
      if stage == 0 or every_level:
        head = Conv3D(self.num_classes, kernel_size=(1, 1, 1), impl="native", dtype=self.dtype,
                      name=f"head_{stage}")
        outputs.append(head(h).astype(jnp.float32))
    if train and self.deep_supervision:
      return outputs[::-1]
    return outputs[-1]
