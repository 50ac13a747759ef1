"""Flax 3D segmentation networks, built by name from ``config.model``."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from jaxseg.models.unet import ResEncUNet

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODELS = ("resenc_unet",)


def check_model_config(model_cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad ``model.*`` field."""
  if model_cfg.name not in MODELS:
    raise ValueError(f"model.name: unknown model {model_cfg.name!r}; known: {', '.join(MODELS)}")
  if model_cfg.dtype not in _DTYPES:
    raise ValueError(f"model.dtype: {model_cfg.dtype!r} is not one of {', '.join(_DTYPES)}")
  if model_cfg.conv not in ("native", "depth_folded"):
    raise ValueError(f"model.conv: {model_cfg.conv!r} is not 'native' or 'depth_folded'")
  if len(model_cfg.features) != len(model_cfg.blocks_per_stage):
    raise ValueError(f"model.blocks_per_stage: {len(model_cfg.blocks_per_stage)} stages given but "
                     f"model.features has {len(model_cfg.features)}")


def build_model(model_cfg: ml_collections.ConfigDict, num_classes: int) -> ResEncUNet:
  """Returns the Linen module that ``model_cfg`` names.

  Raises:
    ValueError: an unknown model name, dtype or convolution, or mismatched stage lists.
  """
  check_model_config(model_cfg)
  return ResEncUNet(num_classes=num_classes, features=tuple(model_cfg.features),
                    blocks_per_stage=tuple(model_cfg.blocks_per_stage),
                    deep_supervision=bool(model_cfg.deep_supervision), conv=model_cfg.conv,
                    dtype=_DTYPES[model_cfg.dtype])


def downsampling_factor(model_cfg: ml_collections.ConfigDict) -> int:
  """The factor every patch side must divide by: 2 per downsampling stage."""
  return 2 ** (len(model_cfg.features) - 1)
