"""The residual-encoder 3D U-Net of the nnU-Net family (ResEnc), as a Flax Linen module.

Encoder stages of residual blocks (conv-norm-act-conv-norm + skip, then act), instance normalisation and
leaky ReLU as nnU-Net uses them; the first block of each stage after the first downsamples by stride 2. The
decoder upsamples with transposed convolutions, concatenates the skip, and applies one conv-norm-act block
per stage (the ResEnc presets). With deep supervision the module returns the logits of every decoder level,
full resolution first, so the loss can weight them; at inference only the full-resolution logits are built.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.conv import Conv3D


def _act(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.01)


class _Norm(nn.Module):
  """Instance normalisation over the spatial axes, statistics in float32 (stable under bf16)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.InstanceNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32)(x.astype(jnp.float32))
    return y.astype(self.dtype)


class ResidualBlock(nn.Module):
  features: int
  stride: int = 1
  conv: str = "native"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = (self.stride,) * 3
    y = Conv3D(self.features, strides=s, use_bias=False, impl=self.conv, dtype=self.dtype)(x)
    y = _act(_Norm(self.dtype)(y))
    y = Conv3D(self.features, use_bias=False, impl=self.conv, dtype=self.dtype)(y)
    y = _Norm(self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = Conv3D(self.features, kernel_size=(1, 1, 1), strides=s, use_bias=False, impl=self.conv,
                 dtype=self.dtype)(x)
      x = _Norm(self.dtype)(x)
    return _act(y + x)


class ResEncUNet(nn.Module):
  """Residual-encoder U-Net.

  Attributes:
    num_classes: output channels (background included).
    features: channels per resolution stage, highest resolution first; the patch must divide by
      2 ** (len(features) - 1).
    blocks_per_stage: residual blocks per encoder stage.
    deep_supervision: return the logits of every decoder level in training mode.
    conv: convolution implementation ("native" or "depth_folded").
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
    h = Conv3D(self.features[0], use_bias=False, **conv)(x)
    h = _act(_Norm(self.dtype)(h))
    skips = []
    for stage, (feat, blocks) in enumerate(zip(self.features, self.blocks_per_stage)):
      for b in range(blocks):
        h = ResidualBlock(feat, stride=2 if (stage > 0 and b == 0) else 1, conv=self.conv,
                          dtype=self.dtype)(h)
      skips.append(h)
    outputs = []
    for stage in range(len(self.features) - 2, -1, -1):
      feat = self.features[stage]
      h = nn.ConvTranspose(feat, (2, 2, 2), strides=(2, 2, 2), use_bias=False, dtype=self.dtype,
                           param_dtype=jnp.float32)(h)
      h = jnp.concatenate([h, skips[stage]], axis=-1)
      h = Conv3D(feat, use_bias=False, **conv)(h)
      h = _act(_Norm(self.dtype)(h))
      is_last = stage == 0
      if is_last or (train and self.deep_supervision):
        head = Conv3D(self.num_classes, kernel_size=(1, 1, 1), impl="native", dtype=self.dtype,
                      name=f"head_{stage}")
        outputs.append(head(h).astype(jnp.float32))
    if train and self.deep_supervision:
      return outputs[::-1]
    return outputs[-1]
