"""On-device augmentation of windowed patches and their labels, nnU-Net-like, keyed per sample.

It runs inside the jitted train step after synthesis and the intensity window, so the host only crops.
Each sample is augmented alone (vmap) from its own key: the result does not depend on the batch split.
Mirroring and 90-degree in-plane rotations move image and label together exactly; the optional small
rotations/scalings resample the image linearly and the label by nearest neighbour.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.synth import ops


def _rotation_matrix(angles: jax.Array) -> jax.Array:
  """Rotation [3, 3] from angles [3] (radians) about x, y, z."""
  cx, cy, cz = jnp.cos(angles)
  sx, sy, sz = jnp.sin(angles)
  rx = jnp.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  ry = jnp.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rz = jnp.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return rz @ ry @ rx


def _spatial(image: jax.Array, label: jax.Array, key: jax.Array, cfg: ml_collections.ConfigDict):
  """Small rotation about each axis and an isotropic scaling about the patch centre."""
  k_rot, k_scale, k_do = jax.random.split(key, 3)
  max_rad = np.deg2rad(float(cfg.rotation_deg))
  angles = jax.random.uniform(k_rot, (3,), minval=-max_rad, maxval=max_rad)
  lo, hi = (float(s) for s in cfg.scale)
  scale = jax.random.uniform(k_scale, (), minval=lo, maxval=hi)
  prob = float(cfg.spatial_prob)
  do = jax.random.uniform(k_do) < prob
  mat = jnp.where(do, _rotation_matrix(angles) / scale, jnp.eye(3))
  shape = image.shape
  center = jnp.array([(n - 1) / 2.0 for n in shape])
  grid = jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32) for n in shape], indexing="ij"))
  coords = jnp.einsum("ij,j...->i...", mat, grid - center[:, None, None, None]) + center[:, None, None, None]
  img = jax.scipy.ndimage.map_coordinates(image, list(coords), order=1, mode="nearest")
  lab = jax.scipy.ndimage.map_coordinates(label, list(coords), order=0, mode="nearest")
  return jnp.where(do, img, image), jnp.where(do, lab, label)


def augment_sample(image: jax.Array, label: jax.Array, key: jax.Array, cfg: ml_collections.ConfigDict
                   ) -> tuple[jax.Array, jax.Array]:
  """One sample: image float32 [X, Y, Z] (windowed), label int32 [X, Y, Z]."""
  keys = jax.random.split(key, 10)
  if cfg.spatial:
    image, label = _spatial(image, label, keys[0], cfg)
  if cfg.mirror:
    flips = jax.random.bernoulli(keys[1], 0.5, (3,))
    for axis in range(3):
      image = jnp.where(flips[axis], jnp.flip(image, axis), image)
      label = jnp.where(flips[axis], jnp.flip(label, axis), label)
  if cfg.rot90 and image.shape[0] == image.shape[1]:
    k = jax.random.randint(keys[2], (), 0, 4)
    branches = [lambda x, r=r: jnp.rot90(x, r, axes=(0, 1)) for r in range(4)]
    image = jax.lax.switch(k, branches, image)
    label = jax.lax.switch(k, branches, label)
  blur_prob = float(cfg.blur_prob)
  if blur_prob > 0:
    lo, hi = (float(s) for s in cfg.blur_sigma)
    sigma = jax.random.uniform(keys[3], (), minval=lo, maxval=hi)
    blurred = ops.gaussian_blur(image, jnp.full((3,), sigma))
    image = jnp.where(jax.random.uniform(keys[4]) < blur_prob, blurred, image)
  noise_prob = float(cfg.noise_prob)
  if noise_prob > 0:
    std = jax.random.uniform(keys[5], (), maxval=float(cfg.noise_std))
    noisy = image + std * jax.random.normal(keys[6], image.shape)
    image = jnp.where(jax.random.uniform(keys[7]) < noise_prob, noisy, image)
  lo, hi = (float(s) for s in cfg.intensity_scale)
  image = image * jax.random.uniform(keys[8], (), minval=lo, maxval=hi)
  lo, hi = (float(s) for s in cfg.intensity_shift)
  image = image + jax.random.uniform(keys[9], (), minval=lo, maxval=hi)
  return image, label


def augment_batch(images: jax.Array, labels: jax.Array, keys: jax.Array, aug_cfg: ml_collections.ConfigDict
                  ) -> tuple[jax.Array, jax.Array]:
  """Augments a batch, each sample from its own key.

  Args:
    images: float32 [B, X, Y, Z], already windowed and normalised.
    labels: int32 [B, X, Y, Z].
    keys: typed key array [B].
    aug_cfg: config.augment (mirror, rot90, intensity_scale, intensity_shift, spatial, rotation_deg, scale,
      noise_prob, noise_std, blur_prob, blur_sigma; optional spatial_prob, default 0.2).

  Returns:
    (images [B, X, Y, Z], labels [B, X, Y, Z]).
  """
  return jax.vmap(lambda i, l, k: augment_sample(i, l, k, aug_cfg))(images, labels, keys)
