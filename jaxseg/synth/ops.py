"""Small jittable volume operations the synthesizer is built from, written for speed on CPU and GPU.

A separable Gaussian blur as three small matmuls (about 10 ms at 96^3 here) instead of lax.conv, which is
pathologically slow for one channel on CPU; the matrices take a traced sigma, so one compiled program serves
every spacing. Morphology uses a dynamic radius (from the spacing) under a static maximum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_matrix(pos_out: jax.Array, pos_in: jax.Array, sigma: jax.Array) -> jax.Array:
  """Row-normalised Gaussian weights [N_out, N_in] between voxel positions; sigma in voxels (traced)."""
  sigma = jnp.maximum(sigma, 1e-3)
  w = jnp.exp(-0.5 * jnp.square((pos_out[:, None] - pos_in[None, :]) / sigma))
  return w / jnp.sum(w, axis=1, keepdims=True)


def apply_separable(v: jax.Array, mx: jax.Array, my: jax.Array, mz: jax.Array) -> jax.Array:
  """out[i,j,k] = sum mx[i,a] my[j,b] mz[k,c] v[a,b,c]: [A, B, C] -> [I, J, K]."""
  v = jnp.einsum("ia,abc->ibc", mx, v)
  v = jnp.einsum("jb,ibc->ijc", my, v)
  return jnp.einsum("kc,ijc->ijk", mz, v)


def gaussian_blur(v: jax.Array, sigma_vox: jax.Array) -> jax.Array:
  """Gaussian blur of [X, Y, Z] with per-axis sigma [3] in voxels (renormalised at the patch border)."""
  mats = [gaussian_matrix(jnp.arange(n, dtype=jnp.float32), jnp.arange(n, dtype=jnp.float32), sigma_vox[a])
          for a, n in enumerate(v.shape)]
  return apply_separable(v, *mats)


def coarse_to_fine_blur(v: jax.Array, factor: int, sigma_vox: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Blurs a field given on a grid ``factor`` times coarser and returns it at full resolution ``shape``.

  A coarse voxel j covers fine voxels [factor*j, factor*j + factor); its value sits at its centre. For a
  blur much wider than a coarse voxel this equals blurring the fine field (noise or a pooled Bernoulli
  field) at a fraction of the cost.
  """
  mats = []
  for a, n in enumerate(shape):
    pos_in = factor * jnp.arange(v.shape[a], dtype=jnp.float32) + 0.5 * (factor - 1)
    mats.append(gaussian_matrix(jnp.arange(n, dtype=jnp.float32), pos_in, sigma_vox[a]))
  return apply_separable(v, *mats)


def linear_upsample_matrix(n: int, step: int) -> np.ndarray:
  """Static [n, m] matrix interpolating linearly from grid points 0, step, 2*step, ... to 0..n-1."""
  m = (n - 1 + step - 1) // step + 1
  u = np.zeros((n, m), np.float32)
  for i in range(n):
    j, w = divmod(i, step)
    u[i, j] += 1.0 - w / step
    if w:
      u[i, j + 1] += w / step
  return u


def _shift(m: jax.Array, s: int, axis: int, fill: bool) -> jax.Array:
  """m shifted by s voxels along axis (out[i] = m[i + s]), padded with ``fill``."""
  n = m.shape[axis]
  pad = [(0, 0)] * m.ndim
  pad[axis] = (max(-s, 0), max(s, 0))
  p = jnp.pad(m, pad, constant_values=fill)
  start = max(s, 0)
  return jax.lax.slice_in_dim(p, start, start + n, axis=axis)


def box_morphology(m: jax.Array, radius: jax.Array, rmax: tuple[int, ...], erode: bool) -> jax.Array:
  """Erosion (pad True: the patch border does not erode) or dilation (pad False) with a box.

  Args:
    m: bool [X, Y, Z].
    radius: int32 [3] half-widths per axis (traced, from the spacing); 0 leaves that axis alone.
    rmax: static maximum half-width per axis; a larger radius is cut to it.
    erode: erosion if True, else dilation.

  Returns:
    bool [X, Y, Z].
  """
  for axis in range(m.ndim):
    out = m
    for s in range(1, rmax[axis] + 1):
      use = s <= radius[axis]
      for sign in (1, -1):
        sh = _shift(m, sign * s, axis, fill=erode)
        out = (out & (sh | ~use)) if erode else (out | (sh & use))
    m = out
  return m
