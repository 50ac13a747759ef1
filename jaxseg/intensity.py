"""The intensity window: the one input transform shared by training and inference."""

from __future__ import annotations

import jax.numpy as jnp


def normalize_hu(image_hu, hu_window) -> jnp.ndarray:
  """Clips HU to ``hu_window`` = (low, high) and scales to [0, 1]. Works on numpy and jax arrays."""
  lo, hi = float(hu_window[0]), float(hu_window[1])
  return (jnp.clip(jnp.asarray(image_hu, jnp.float32), lo, hi) - lo) / (hi - lo)
