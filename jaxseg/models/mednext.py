"""MedNeXt (Roy et al. 2023, arXiv:2303.09975), a ConvNeXt-style 3D U-Net, as a Flax Linen module.

It mirrors MONAI's ``MedNeXt`` and its ``create_mednext`` presets S, B, M, L (kernel 3, residual
connections, one-group-per-channel GroupNorm, no GRN), so the parameter counts equal MONAI's (1 input
channel, 3 classes, no deep supervision): S 5,550,947, B 10,510,883, M 17,533,539, L 61,726,787.

Layout: a 1x1 stem; per encoder level a stack of MedNeXt blocks (depthwise k^3 conv - norm - 1x1 expansion -
GELU - 1x1 compression, plus the input) and a down block (the same with a stride-2 depthwise conv, plus a
stride-2 1x1 conv on the skip path); a bottleneck stack; per decoder level an up block (a stride-2 transposed
depthwise conv, and a stride-2 transposed 1x1 conv on the skip path, both padded by one voxel at the start of
each axis as MONAI does) whose output is added (not concatenated) to the encoder's, then a block stack; a 1x1
head. Deep supervision adds MONAI's heads at every coarser decoder input, bottleneck included.

Norms are per-channel instance norms: GroupNorm with one group per channel is exactly that, with the same
per-channel affine parameters.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.conv import Conv3D
from jaxseg.models.layers import InstanceNorm

# MONAI's create_mednext variants: (encoder ratios, decoder ratios, bottleneck ratio, blocks_down,
# blocks_bottleneck, blocks_up).
PRESETS = {
    "S": ((2, 2, 2, 2), (2, 2, 2, 2), 2, (2, 2, 2, 2), 2, (2, 2, 2, 2)),
    "B": ((2, 3, 4, 4), (4, 4, 3, 2), 4, (2, 2, 2, 2), 2, (2, 2, 2, 2)),
    "M": ((2, 3, 4, 4), (4, 4, 3, 2), 4, (3, 4, 4, 4), 4, (4, 4, 4, 3)),
    "L": ((3, 4, 8, 8), (8, 8, 4, 3), 8, (3, 4, 8, 8), 8, (8, 8, 4, 3)),
}


def _pad_front(x: jax.Array) -> jax.Array:
  """One zero voxel before each spatial axis: MONAI's fix-up making a transposed conv's 2n-1 outputs 2n."""
  return jnp.pad(x, ((0, 0), (1, 0), (1, 0), (1, 0), (0, 0)))


class MedNeXtBlock(nn.Module):
  """One MedNeXt block: [B, X, Y, Z, C] -> [B, X', Y', Z', out_features].

  Attributes:
    out_features: output channels.
    expansion: width of the 1x1 expansion as a multiple of the input channels.
    kernel_size: depthwise kernel extent.
    mode: "same" (residual to the input), "down" (stride 2; 1x1 stride-2 conv on the skip) or "up"
      (transposed stride 2; transposed 1x1 conv on the skip; output padded at the front of each axis).
    conv: convolution form of the depthwise conv (auto | native | depth_folded | im2col).
    dtype: compute dtype.
  """

  out_features: int
  expansion: int
  kernel_size: int = 3
  mode: str = "same"
  conv: str = "native"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    k = (self.kernel_size,) * 3
    pad = ((self.kernel_size // 2,) * 2,) * 3
    if self.mode == "up":
      # PyTorch's ConvTranspose3d(k, stride 2, padding k // 2) as a stride-1 conv on the 2x-dilated input.
      dw = Conv3D(c, k, groups=c, input_dilation=2, padding=pad, impl=self.conv, dtype=self.dtype)
    else:
      dw = Conv3D(c, k, strides=(2,) * 3 if self.mode == "down" else (1,) * 3, groups=c, padding=pad,
                  impl=self.conv, dtype=self.dtype)
    y = InstanceNorm(dtype=self.dtype)(dw(x))
    y = nn.gelu(nn.Dense(self.expansion * c, dtype=self.dtype, param_dtype=jnp.float32)(y), approximate=False)
    y = nn.Dense(self.out_features, dtype=self.dtype, param_dtype=jnp.float32)(y)
    if self.mode == "same":
      return y + x.astype(self.dtype)
    if self.mode == "down":
      res = Conv3D(self.out_features, (1, 1, 1), strides=(2, 2, 2), impl="native", dtype=self.dtype)(x)
      return y + res
    res = Conv3D(self.out_features, (1, 1, 1), input_dilation=2, padding=((0, 0),) * 3, impl="native",
                 dtype=self.dtype)(x)
    return _pad_front(y) + _pad_front(res)


class MedNeXt(nn.Module):
  """MedNeXt.

  Attributes:
    num_classes: output channels (background included).
    init_filters: channels of the first level; each of the four downsamplings doubles them.
    encoder_expansion, decoder_expansion: expansion ratio per encoder / decoder level (decoder coarsest
      first, as MONAI orders it).
    bottleneck_expansion: expansion ratio of the bottleneck blocks.
    blocks_down, blocks_bottleneck, blocks_up: blocks per encoder level, bottleneck, decoder level.
    kernel_size: depthwise kernel extent (MONAI's presets default to 3).
    deep_supervision: in training mode, also return MONAI's coarser heads (finest first).
    conv: convolution implementation of the depthwise convs.
    dtype: compute dtype; parameters stay float32, logits are float32.
  """

  num_classes: int
  init_filters: int = 32
  encoder_expansion: Sequence[int] = (2, 2, 2, 2)
  decoder_expansion: Sequence[int] = (2, 2, 2, 2)
  bottleneck_expansion: int = 2
  blocks_down: Sequence[int] = (2, 2, 2, 2)
  blocks_bottleneck: int = 2
  blocks_up: Sequence[int] = (2, 2, 2, 2)
  kernel_size: int = 3
  deep_supervision: bool = False
  conv: str = "native"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
    """x: [B, X, Y, Z, C] (sides divisible by 16) -> logits [B, X, Y, Z, K] (or a list, finest first)."""
    block = dict(kernel_size=self.kernel_size, conv=self.conv, dtype=self.dtype)
    f = self.init_filters
    h = Conv3D(f, (1, 1, 1), impl="native", dtype=self.dtype, name="stem")(x)
    skips = []
    for i, n in enumerate(self.blocks_down):
      for _ in range(n):
        h = MedNeXtBlock(f * 2 ** i, self.encoder_expansion[i], **block)(h)
      skips.append(h)
      h = MedNeXtBlock(f * 2 ** (i + 1), self.encoder_expansion[i], mode="down", **block)(h)
    levels = len(self.blocks_down)
    for _ in range(self.blocks_bottleneck):
      h = MedNeXtBlock(f * 2 ** levels, self.bottleneck_expansion, **block)(h)
    with_ds = self.deep_supervision and (train or self.is_initializing())
    coarse = []
    for i, n in enumerate(self.blocks_up):
      if with_ds:
        coarse.append(Conv3D(self.num_classes, (1, 1, 1), impl="native", dtype=self.dtype,
                             name=f"head_{levels - i}")(h).astype(jnp.float32))
      out = f * 2 ** (levels - i - 1)
      h = MedNeXtBlock(out, self.decoder_expansion[i], mode="up", **block)(h) + skips[-(i + 1)]
      for _ in range(n):
        h = MedNeXtBlock(out, self.decoder_expansion[i], **block)(h)
    logits = Conv3D(self.num_classes, (1, 1, 1), impl="native", dtype=self.dtype, name="head_0")(h)
    logits = logits.astype(jnp.float32)
    if self.deep_supervision and train:
      return [logits, *coarse[::-1]]
    return logits
