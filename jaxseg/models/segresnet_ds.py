"""SegResNetDS (MONAI; Myronenko 2018, arXiv:1810.11654, with deep supervision), as a Flax Linen module.

It mirrors MONAI's ``SegResNetDS`` with isotropic kernels (no ``resolution``), ``upsample_mode="deconv"``
and one block per decoder level, so its parameter count equals MONAI's: 87,163,331 for init_filters 32,
blocks_down 1-2-2-4-4, 1 input channel, 3 classes and one output (dsdepth 1).

Layout: a 3^3 stem conv (no bias); per encoder level a stack of pre-activation residual blocks
(norm - ReLU - conv - norm - ReLU - conv, plus the input; convs without bias) followed, except at the last
level, by a stride-2 3^3 conv doubling the channels; per decoder level a stride-2 3^3 transposed conv (no
bias) halving the channels, added (not concatenated) to the encoder's features, then a residual block; a 1x1
head with bias.

One deliberate difference: MONAI defaults to batch norm; here the norm is an affine instance norm (as
MONAI's Auto3DSeg SegResNet configures it), with the same number of parameters. jaxseg's train state holds
no batch statistics, and at 1-2 patches per device they would be noise.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.conv import Conv3D
from jaxseg.models.layers import InstanceNorm


class SegResBlock(nn.Module):
  """Pre-activation residual block: [B, X, Y, Z, C] -> same shape."""

  conv: str = "native"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = x.astype(self.dtype)
    y = Conv3D(c, use_bias=False, impl=self.conv, dtype=self.dtype)(nn.relu(InstanceNorm(dtype=self.dtype)(x)))
    y = Conv3D(c, use_bias=False, impl=self.conv, dtype=self.dtype)(nn.relu(InstanceNorm(dtype=self.dtype)(y)))
    return y + x


class SegResNetDS(nn.Module):
  """SegResNetDS.

  Attributes:
    num_classes: output channels (background included).
    init_filters: channels of the first level; each downsampling doubles them.
    blocks_down: residual blocks per encoder level; the patch must divide by 2 ** (len(blocks_down) - 1).
    deep_supervision: in training mode return a head's logits at every decoder level, finest first (MONAI's
      dsdepth = number of decoder levels, as Auto3DSeg trains it); otherwise one head (dsdepth 1).
    conv: convolution form (auto | native | depth_folded | im2col; ``conv.resolve_impl``).
    dtype: compute dtype; parameters stay float32, logits are float32.
  """

  num_classes: int
  init_filters: int = 32
  blocks_down: Sequence[int] = (1, 2, 2, 4, 4)
  deep_supervision: bool = False
  conv: str = "native"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
    """x: [B, X, Y, Z, C] -> logits [B, X, Y, Z, K] (or a list over decoder levels, finest first)."""
    conv = dict(impl=self.conv, dtype=self.dtype)
    f = self.init_filters
    h = Conv3D(f, use_bias=False, **conv)(x)
    skips = []
    for i, n in enumerate(self.blocks_down):
      for _ in range(n):
        h = SegResBlock(self.conv, self.dtype)(h)
      skips.append(h)
      if i < len(self.blocks_down) - 1:
        h = Conv3D(2 * f * 2 ** i, strides=(2, 2, 2), use_bias=False, **conv)(h)
    n_up = len(self.blocks_down) - 1
    with_ds = self.deep_supervision and (train or self.is_initializing())
    outputs = []
    for i in range(n_up):
      level = n_up - 1 - i
      # PyTorch's ConvTranspose3d(3, stride 2, padding 1, output_padding 1) on the 2x-dilated input.
      h = Conv3D(f * 2 ** level, use_bias=False, input_dilation=2, padding=((1, 2),) * 3, **conv)(h)
      h = SegResBlock(self.conv, self.dtype)(h + skips[level])
      if level == 0 or with_ds:
        head = Conv3D(self.num_classes, (1, 1, 1), impl="native", dtype=self.dtype, name=f"head_{level}")
        outputs.append(head(h).astype(jnp.float32))
    if self.deep_supervision and train:
      return outputs[::-1]
    return outputs[-1]
