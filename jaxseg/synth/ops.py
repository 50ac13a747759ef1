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


def blur_separable(v: jax.Array, mx: jax.Array, my: jax.Array, mz: jax.Array) -> jax.Array:
  """``apply_separable``'s result, summed in another order: three matrix products whose operands need no
  transposed copies.

  Each product contracts the last axis and puts the new one first ([a, b, c] -> [k, a, b] -> [j, k, a] ->
  [i, j, k]), so every operand is a reshape of the previous result: 0.65-0.86 of the einsums' time on this
  CPU from 19^3 -> 35^3 to 96^3 -> 96^3 (``python launch/bench_synthesis.py --forms``). Rounding differs
  from ``apply_separable`` (about 1e-7 relative), so it serves blurs whose values are used as they are (soft
  edges, textures, augmentation), not fields that are thresholded into masks (the shapes' upsampling uses
  ``linear_upsample`` or ``apply_separable``, whose values are the masks' of earlier commits).
  """
  (i, a), (j, b), (k, c) = mx.shape, my.shape, mz.shape
  nt = (((1,), (1,)), ((), ()))                               # A @ B.T
  t = jax.lax.dot_general(mz, v.reshape(a * b, c), nt)        # [k, a * b]
  t = jax.lax.dot_general(my, t.reshape(k * a, b), nt)        # [j, k * a]
  t = jax.lax.dot_general(mx, t.reshape(j * k, a), nt)        # [i, j * k]
  return t.reshape(i, j, k)


def gaussian_blur(v: jax.Array, sigma_vox: jax.Array) -> jax.Array:
  """Gaussian blur of [X, Y, Z] with per-axis sigma [3] in voxels (renormalised at the patch border)."""
  mats = [gaussian_matrix(jnp.arange(n, dtype=jnp.float32), jnp.arange(n, dtype=jnp.float32), sigma_vox[a])
          for a, n in enumerate(v.shape)]
  return blur_separable(v, *mats)


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
  return blur_separable(v, *mats)


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


def linear_upsample(v: jax.Array, step: int, shape: tuple[int, ...]) -> jax.Array:
  """``v`` on grid points 0, step, 2 step, ... of each axis, linearly interpolated to ``shape``: the values of
  ``apply_separable(v, *[linear_upsample_matrix(n, step) for n in shape])`` (bit for bit at steps 1 and 2,
  whose weights make every product exact; to rounding beyond), computed by shifted slices (two neighbours
  per output voxel) instead of dense products whose rows hold two nonzeros among m.

  Every output reads two neighbours per axis, so ``v`` should be materialised (XLA fuses an elementwise
  producer into the slices and recomputes it up to eight times; an optimization barrier does not stop it).
  """
  for axis, n in enumerate(shape):
    m = v.shape[axis]
    lo = jax.lax.slice_in_dim(v, 0, m - 1, axis=axis)
    hi = jax.lax.slice_in_dim(v, 1, m, axis=axis)
    parts = [lo if r == 0 else (1.0 - r / step) * lo + (r / step) * hi for r in range(step)]
    inner = jnp.stack(parts, axis=axis + 1)
    inner = inner.reshape(v.shape[:axis] + ((m - 1) * step,) + v.shape[axis + 1:])
    last = jax.lax.slice_in_dim(v, m - 1, m, axis=axis)
    v = jax.lax.slice_in_dim(jnp.concatenate([inner, last], axis=axis), 0, n, axis=axis)
  return v


def any_along(m: jax.Array, axis=None) -> jax.Array:
  """``jnp.any(m, axis)`` for a bool volume, as a max over uint8: XLA:CPU reduced bool about 3x slower (0.8
  ms against 0.26 ms for the z profile of a 96^3 mask in a one-off timing here, not kept in the repo)."""
  return jnp.max(m.astype(jnp.uint8), axis=axis) > 0


# Up to this static radius an axis is eroded / dilated by 2 rmax shifted reads fused into one pass; beyond it
# by the window sums of one cumulative scan (log-depth, several passes over the patch, any radius).
_SHIFTED_READS_UP_TO = 6


def _morphology_by_shifts(m: jax.Array, r: jax.Array, rm: int, axis: int, erode: bool) -> jax.Array:
  """One axis of ``box_morphology`` for a small static maximum radius: OR of the shifted masks within r."""
  x = ~m if erode else m                       # the voxels that decide; outside the patch counts unset
  pad = [(0, 0)] * m.ndim
  pad[axis] = (rm, rm)
  xp = jnp.pad(x, pad)
  n = m.shape[axis]
  hit = x
  for k in range(1, rm + 1):
    near = jax.lax.slice_in_dim(xp, rm + k, rm + k + n, axis=axis) | jax.lax.slice_in_dim(xp, rm - k, rm - k + n,
                                                                                          axis=axis)
    hit = hit | (near & (k <= r))
  return ~hit if erode else hit


def _morphology_by_scan(m: jax.Array, r: jax.Array, rm: int, axis: int, erode: bool) -> jax.Array:
  """One axis of ``box_morphology``, any static maximum radius: window sums of one cumulative scan."""
  # Count the voxels that decide: unset ones for erosion, set ones for dilation; outside counts 0 for both.
  # In uint8 where a window's count (at most 2 rm + 1) fits: the running sum wraps modulo 256, but the
  # difference of two running sums is exact modulo 256, hence exact; a quarter of int32's memory traffic
  # (the erosion alone 4-5x faster in a one-off timing of an earlier session; same result, tests/test_synth.py).
  x = (~m if erode else m).astype(jnp.uint8 if 2 * rm + 1 < 256 else jnp.int32)
  pad = [(0, 0)] * m.ndim
  pad[axis] = (rm + 1, rm)
  c = jax.lax.associative_scan(jnp.add, jnp.pad(x, pad), axis=axis)
  n = m.shape[axis]
  upper = jax.lax.dynamic_slice_in_dim(c, rm + 1 + r, n, axis)      # sum of x up to i + r
  lower = jax.lax.dynamic_slice_in_dim(c, rm - r, n, axis)          # sum of x up to i - r - 1
  hits = upper - lower
  return (hits == 0) if erode else (hits > 0)


def box_morphology(m: jax.Array, radius: jax.Array, rmax: tuple[int, ...], erode: bool) -> jax.Array:
  """Erosion (outside the patch counts as set: the border does not erode) or dilation with a box.

  Per axis with a small static maximum radius (<= _SHIFTED_READS_UP_TO: the centre candidates' in-plane
  erosion, rmax 2-4), the OR of 2 rmax shifted reads in one fused pass. With a larger one, a window sum of
  a cumulative sum: two shifted reads of one associative scan, whatever the radius, instead of 2 x rmax
  shifted copies of the patch (an erosion at 96^3 with rmax 20 read the patch 80 times), counted in uint8
  where a window's count fits. jnp.cumsum is not used: on CPU it lowers to a reduce_window that is
  quadratic in the axis length; lax.associative_scan is log-depth. At rmax 2-4 on a 96^3 mask the shifted
  reads took 0.37-0.42 against the scan's 0.81-0.94 ms for the in-plane erosion (one run of ``python
  launch/bench_synthesis.py --forms``).

  Args:
    m: bool [X, Y, Z].
    radius: int32 [3] half-widths per axis (traced, from the spacing); 0 leaves that axis alone.
    rmax: static maximum half-width per axis; a larger radius is cut to it.
    erode: erosion if True, else dilation.

  Returns:
    bool [X, Y, Z].
  """
  for axis in range(m.ndim):
    if rmax[axis] <= 0:
      continue
    rm = int(rmax[axis])
    r = jnp.clip(radius[axis], 0, rm)
    by_shifts = rm <= _SHIFTED_READS_UP_TO
    m = (_morphology_by_shifts if by_shifts else _morphology_by_scan)(m, r, rm, axis, erode)
  return m
