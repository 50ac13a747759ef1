"""SwinUNETR v1 (Hatamizadeh et al. 2022, arXiv:2201.01266), as a Flax Linen module.

It mirrors MONAI's ``SwinUNETR`` with ``use_v2=False`` and its defaults (patch size 2, window 7, depths
2-2-2-2, heads 3-6-12-24, MLP ratio 4, qkv bias, ``downsample="merging"``, normalised stage outputs,
instance norm without affine parameters in the convolutional blocks), so its parameter count equals
MONAI's: 62,186,757 for feature_size 48, 1 input channel, 3 classes. The relative-position bias tables
depend on the window size only, so the count does not depend on the patch size.

Layout: a Swin transformer (2^3 patch embedding, then four stages of windowed / shifted-window attention
blocks, each ending in patch merging) gives features at 1/2 .. 1/32; residual conv blocks (UnetResBlock)
encode the input and the first stage outputs; the decoder upsamples with 2^3 transposed convs (no bias),
concatenates the skip and applies a residual conv block; a 1x1 head with bias.

Behaviours kept from MONAI on purpose, so that weights and counts correspond:
- windows shrink to the feature map where it is no larger than 7 (and are then not shifted); maps are
  zero-padded up to a multiple of the window, and the padded tokens take part in unshifted attention;
- a window smaller than 7^3 indexes the bias table with the top-left block of the 7^3 index, as MONAI does;
- "merging" patch merging concatenates MONAI's v0.9 slice list, which takes two of the eight 2^3 neighbours
  twice and two never (``PatchMerging`` vs ``PatchMergingV2`` in MONAI).
The patch side must divide by 32. There is no deep supervision: the module returns full-resolution logits.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.models.conv import Conv3D, UpConv3D
from jaxseg.models.layers import InstanceNorm, LayerNorm

WINDOW = 7
PATCH = 2


def _window_and_shift(size: Sequence[int], shift: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """MONAI's get_window_size: an axis no longer than the window uses its size as window and no shift."""
  window = tuple(s if s <= WINDOW else WINDOW for s in size)
  shifts = tuple(0 if s <= WINDOW else shift for s in size)
  return window, shifts


def _relative_position_index(n: int) -> np.ndarray:
  """[n, n] indices into the (2w-1)^3 bias table of the full 7^3 window, top-left block (MONAI's slicing)."""
  w = WINDOW
  coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), np.arange(w), indexing="ij")).reshape(3, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
  index = rel[..., 0] * (2 * w - 1) ** 2 + rel[..., 1] * (2 * w - 1) + rel[..., 2]
  return index[:n, :n]


def _partition(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """[B, D, H, W, C] -> [B * windows, prod(window), C], windows in raster order within each sample."""
  b, d, h, w, c = x.shape
  x = x.reshape(b, d // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
  return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, int(np.prod(window)), c)


def _reverse(windows: jax.Array, window: Sequence[int], dims: Sequence[int]) -> jax.Array:
  """Inverse of _partition: [B * windows, prod(window), C] -> [B, D, H, W, C]."""
  b, d, h, w = dims
  x = windows.reshape(b, d // window[0], h // window[1], w // window[2], *window, -1)
  return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def _shift_mask(dims: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> np.ndarray:
  """MONAI's compute_mask: [windows, N, N] with -100 between tokens from different regions of the roll."""
  img = np.zeros((1, *dims, 1), np.float32)
  cnt = 0
  for sd in (slice(-window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
    for sh in (slice(-window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
      for sw in (slice(-window[2]), slice(-window[2], -shift[2]), slice(-shift[2], None)):
        img[:, sd, sh, sw, :] = cnt
        cnt += 1
  b, d, h, w, c = img.shape
  m = img.reshape(b, d // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
  m = m.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, int(np.prod(window)))
  diff = m[:, None, :] - m[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  """Multi-head self-attention within windows, with a learned relative-position bias per head."""

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
    """x: [B * windows, N, C]; mask: [windows, N, N] or None -> [B * windows, N, C]."""
    bw, n, c = x.shape
    hd = c // self.num_heads
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * WINDOW - 1) ** 3, self.num_heads), jnp.float32)
    qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=jnp.float32, name="qkv")(x)
    qkv = qkv.reshape(bw, n, 3, self.num_heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * hd ** -0.5, qkv[1], qkv[2]
    attn = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
    bias = table[_relative_position_index(n).reshape(-1)].reshape(n, n, -1).transpose(2, 0, 1)
    attn = attn + bias[None]
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(bw // nw, nw, self.num_heads, n, n) + jnp.asarray(mask)[None, :, None]
      attn = attn.reshape(bw, self.num_heads, n, n)
    attn = jax.nn.softmax(attn, axis=-1).astype(self.dtype)
    y = jnp.einsum("bhqk,bhkd->bqhd", attn, v).reshape(bw, n, c)
    return nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, name="proj")(y)


class SwinBlock(nn.Module):
  """Pre-norm transformer block on (shifted) windows: [B, D, H, W, C] -> same shape."""

  num_heads: int
  shifted: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, d, h, w, c = x.shape
    window, shift = _window_and_shift((d, h, w), WINDOW // 2 if self.shifted else 0)
    y = LayerNorm(self.dtype)(x)
    pads = [(0, (win - s % win) % win) for s, win in zip((d, h, w), window)]
    y = jnp.pad(y, ((0, 0), *pads, (0, 0)))
    dims = (b, *y.shape[1:4])
    mask = None
    if any(s > 0 for s in shift):
      y = jnp.roll(y, [-s for s in shift], axis=(1, 2, 3))
      mask = _shift_mask(dims[1:], window, shift)
    y = WindowAttention(self.num_heads, self.dtype, name="attn")(_partition(y, window), mask)
    y = _reverse(y, window, dims)
    if any(s > 0 for s in shift):
      y = jnp.roll(y, list(shift), axis=(1, 2, 3))
    x = x.astype(self.dtype) + y[:, :d, :h, :w]
    z = LayerNorm(self.dtype)(x)
    z = nn.gelu(nn.Dense(4 * c, dtype=self.dtype, param_dtype=jnp.float32)(z), approximate=False)
    return x + nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32)(z)


class PatchMerging(nn.Module):
  """MONAI's v1 "merging": [B, D, H, W, C] (even sides) -> [B, D/2, H/2, W/2, 2C]."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    offsets = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))
    x = jnp.concatenate([x[:, i::2, j::2, k::2] for i, j, k in offsets], axis=-1)
    x = LayerNorm(self.dtype)(x)
    return nn.Dense(x.shape[-1] // 4, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                    name="reduction")(x)


def _normalize(x: jax.Array) -> jax.Array:
  """Layer norm over channels without parameters (MONAI's proj_out(normalize=True)), in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = ((x32 - mean) ** 2).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + 1e-5)).astype(x.dtype)


class UnetResBlock(nn.Module):
  """MONAI's UnetResBlock (k3, stride 1): conv-norm-lrelu-conv-norm plus a 1x1 projection where the
  channel count changes, then leaky ReLU; convs without bias, instance norm without affine parameters."""

  features: int
  conv: str = "native"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = lambda t: nn.leaky_relu(t, 0.01)  # noqa: E731
    y = Conv3D(self.features, use_bias=False, impl=self.conv, dtype=self.dtype)(x)
    y = act(InstanceNorm(affine=False, dtype=self.dtype)(y))
    y = Conv3D(self.features, use_bias=False, impl=self.conv, dtype=self.dtype)(y)
    y = InstanceNorm(affine=False, dtype=self.dtype)(y)
    skip = x.astype(self.dtype)
    if x.shape[-1] != self.features:
      skip = Conv3D(self.features, (1, 1, 1), use_bias=False, impl="native", dtype=self.dtype)(x)
      skip = InstanceNorm(affine=False, dtype=self.dtype)(skip)
    return act(y + skip)


class SwinUNETR(nn.Module):
  """SwinUNETR v1.

  Attributes:
    num_classes: output channels (background included).
    feature_size: embedding width of the first Swin stage (a multiple of 12, as MONAI requires).
    depths: Swin blocks per stage.
    num_heads: attention heads per stage.
    conv: convolution form of the 3^3 convs (auto | native | depth_folded | im2col).
    dtype: compute dtype; parameters stay float32, logits are float32.
  """

  num_classes: int
  feature_size: int = 48
  depths: Sequence[int] = (2, 2, 2, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  conv: str = "native"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [B, X, Y, Z, C] (sides divisible by 32) -> logits [B, X, Y, Z, K]."""
    del train  # no dropout, no deep supervision
    fs = self.feature_size
    if any(s % 32 for s in x.shape[1:4]):
      raise ValueError(f"SwinUNETR: patch sides {x.shape[1:4]} must divide by 32")
    h = Conv3D(fs, (PATCH,) * 3, strides=(PATCH,) * 3, padding=((0, 0),) * 3, impl="native",
               dtype=self.dtype, name="patch_embed")(x)
    hidden = [_normalize(h)]
    for stage, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      for i in range(depth):
        h = SwinBlock(heads, shifted=i % 2 == 1, dtype=self.dtype, name=f"layers{stage + 1}_block{i}")(h)
      h = PatchMerging(self.dtype, name=f"layers{stage + 1}_downsample")(h)
      hidden.append(_normalize(h))
    res = dict(conv=self.conv, dtype=self.dtype)
    enc0 = UnetResBlock(fs, **res, name="encoder1")(x)
    enc1 = UnetResBlock(fs, **res, name="encoder2")(hidden[0])
    enc2 = UnetResBlock(2 * fs, **res, name="encoder3")(hidden[1])
    enc3 = UnetResBlock(4 * fs, **res, name="encoder4")(hidden[2])
    y = UnetResBlock(16 * fs, **res, name="encoder10")(hidden[4])
    for name, feat, skip in (("decoder5", 8 * fs, hidden[3]), ("decoder4", 4 * fs, enc3),
                             ("decoder3", 2 * fs, enc2), ("decoder2", fs, enc1), ("decoder1", fs, enc0)):
      y = UpConv3D(feat, use_bias=False, dtype=self.dtype, name=f"{name}_transp_conv")(y)
      y = UnetResBlock(feat, **res, name=f"{name}_conv_block")(jnp.concatenate([y, skip.astype(self.dtype)], -1))
    logits = Conv3D(self.num_classes, (1, 1, 1), impl="native", dtype=self.dtype, name="out")(y)
    return logits.astype(jnp.float32)
