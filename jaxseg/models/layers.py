"""Normalisation layers shared by the model zoo, with statistics in float32 whatever the compute dtype.

Every network here normalises per sample (instance or layer normalisation), never over the batch: the train
state is a plain dict of parameters (jaxseg/train/state.py) with no mutable batch statistics, and the batch
per device is 1-2 patches, where batch statistics are noise.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class InstanceNorm(nn.Module):
  """Normalises each channel of each sample over the spatial axes (PyTorch's InstanceNorm3d, eps 1e-5).

  Attributes:
    affine: learn a per-channel scale and offset (nnU-Net, MedNeXt's one-group-per-channel GroupNorm and
      SegResNet do; MONAI's UNETR blocks, used by SwinUNETR, do not).
    dtype: dtype of the output; statistics are taken in float32 so bfloat16 compute stays stable.
  """

  affine: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, X, Y, Z, C] -> same shape."""
    y = nn.InstanceNorm(epsilon=1e-5, use_bias=self.affine, use_scale=self.affine, dtype=jnp.float32,
                        param_dtype=jnp.float32)(x.astype(jnp.float32))
    return y.astype(self.dtype)


class LayerNorm(nn.Module):
  """Layer normalisation over the last axis (PyTorch's nn.LayerNorm, eps 1e-5), statistics in float32."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., C] -> same shape."""
    y = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32)(x.astype(jnp.float32))
    return y.astype(self.dtype)
