"""A texture bank held on the device, as the published generator holds one in each data worker.

The published code builds one texture per (sigma_a, sigma_b) pair once (uniform noise blurred with sigma_a,
min-max rescaled over the whole bank to scale * x + base, a Bernoulli draw per voxel, blurred with sigma_b,
multiplied by u0 over the bank's mean above the threshold and clipped; scale, base and u0 drawn once per
texture), and each synthesis reads one texture, chosen at random, at a random offset. ``config.synth.texture
= "bank"`` does the same on the device: ``build`` runs once when the train state is made (the bank is the
synthesizer's frozen parameters, so it is checkpointed and identical after a resume), and a synthesis reads
a window of it with a dynamic slice, so a tumour's texture costs a copy instead of the per-sample noise and
blurs over the patch (``texture = "field"``, jaxseg/synth/synthesizer.py ``make_texture``).

What differs from the field texture: a draw's texture is a window of one of P textures instead of fresh
noise, its scale, base and u0 are the bank texture's (drawn when the bank was built), and the rescale
statistics are the bank's own (like "bank" rescaling, which reproduces the published bank's constants).
The tumour masks do not change: the shape draws come first and are the same for a key.

The bank's voxels are the run's voxels (config.data.spacing, which every cached case is resampled to):
a window is read voxel for voxel, so a patch at another spacing would get a texture of the wrong scale.
Each texture is ``patch + margin`` voxels per axis, so a window's offset is uniform in [0, margin].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.synth import ops


@dataclasses.dataclass(frozen=True)
class BankRecipe:
  """The texture recipe of a profile (static): the sigma pairs and the ranges drawn per texture."""
  sigma_a_mm: tuple[float, ...]
  sigma_b_mm: tuple[float, ...]
  scale: tuple[float, float]
  base: tuple[float, float]
  u0: tuple[float, float]
  threshold: float

  @property
  def textures(self) -> int:
    return len(self.sigma_a_mm) * len(self.sigma_b_mm)


def recipe(spec) -> BankRecipe:
  return BankRecipe(spec.texture_sigma_a_mm, spec.texture_sigma_b_mm, spec.texture_scale, spec.texture_base,
                    spec.texture_u0, spec.texture_threshold)


def bank_shape(patch: tuple[int, ...], margin: int) -> tuple[int, ...]:
  return tuple(int(n) + int(margin) for n in patch)


def _one_texture(key: jax.Array, sigma_a_vox: jax.Array, sigma_b_vox: jax.Array, r: BankRecipe,
                 shape: tuple[int, ...]) -> jax.Array:
  k_noise, k_bern, k_scale, k_base, k_u0 = jax.random.split(key, 5)
  u = lambda k, lohi: lohi[0] + (lohi[1] - lohi[0]) * jax.random.uniform(k)
  a = ops.gaussian_blur(jax.random.uniform(k_noise, shape), sigma_a_vox)
  a = u(k_scale, r.scale) * (a - jnp.min(a)) / jnp.maximum(jnp.max(a) - jnp.min(a), 1e-6) + u(k_base, r.base)
  bern = (a > jax.random.uniform(k_bern, shape)).astype(jnp.float32)
  b = ops.gaussian_blur(bern, sigma_b_vox)
  above = b > r.threshold
  mean_above = jnp.sum(jnp.where(above, b, 0.0)) / jnp.maximum(jnp.sum(above), 1)
  return jnp.clip(b * u(k_u0, r.u0) / jnp.maximum(mean_above, 1e-6), 0.0, 1.0)


def build(key: jax.Array, spec, patch: tuple[int, ...], spacing_mm) -> jax.Array:
  """The bank of ``spec``'s recipe for ``patch``-sized patches at ``spacing_mm``: float32 [P, *(patch +
  spec.bank_margin)], texture sigma_a_index * len(sigma_b) + sigma_b_index, as ``draw`` indexes it.

  One texture at a time (lax.map), so peak memory is a few volumes of the bank's shape beyond the bank.
  """
  r = recipe(spec)
  shape = bank_shape(patch, spec.bank_margin)
  spacing = jnp.asarray(np.asarray(spacing_mm, np.float32).reshape(3))
  pairs = [(sa, sb) for sa in r.sigma_a_mm for sb in r.sigma_b_mm]
  sig = jnp.asarray(pairs, jnp.float32)
  keys = jax.random.split(key, len(pairs))
  fn = jax.jit(lambda k, s: jax.lax.map(
      lambda a: _one_texture(a[0], a[1][0] / spacing, a[1][1] / spacing, r, shape), (k, s)))
  return fn(keys, sig)


def read(bank: jax.Array, index: jax.Array, offset: jax.Array, patch: tuple[int, ...]) -> jax.Array:
  """The ``patch``-sized window of texture ``index`` starting at bank voxel ``offset`` [3]."""
  return jax.lax.dynamic_slice(bank, (index, *offset), (1, *patch))[0]
