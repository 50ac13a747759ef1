"""Tests of the on-device augmentation: image and label move together, keys decide, shapes stay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from configs.default import get_config
from jaxseg.augment import augment_batch


def test_geometry_moves_image_and_label_together_and_is_keyed():
  cfg = get_config().augment
  cfg.intensity_scale, cfg.intensity_shift = (1.0, 1.0), (0.0, 0.0)
  cfg.noise_prob, cfg.blur_prob = 0.0, 0.0
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, (4, 12, 12, 10)).astype(np.int32)
  images = labels.astype(np.float32) / 4.0
  keys = jax.random.split(jax.random.key(0), 4)
  fn = jax.jit(lambda i, l, k: augment_batch(i, l, k, cfg))
  out_i, out_l = map(np.asarray, fn(images, labels, keys))
  assert out_i.shape == images.shape and out_l.dtype == np.int32
  np.testing.assert_allclose(out_i, out_l / 4.0)            # the same transform on both
  assert any(not np.array_equal(out_l[b], labels[b]) for b in range(4))
  for b in range(4):                                        # a permutation of voxels only
    assert np.array_equal(np.sort(out_l[b].ravel()), np.sort(labels[b].ravel()))
  again = np.asarray(fn(images, labels, keys)[1])
  assert np.array_equal(again, out_l)


def test_intensity_and_spatial_options():
  cfg = get_config().augment
  cfg.spatial, cfg.spatial_prob = True, 1.0
  cfg.noise_prob, cfg.blur_prob = 1.0, 1.0
  images = np.full((2, 16, 16, 16), 0.5, np.float32)
  labels = np.zeros((2, 16, 16, 16), np.int32)
  labels[:, 6:10, 6:10, 6:10] = 2
  out_i, out_l = augment_batch(jnp.asarray(images), jnp.asarray(labels), jax.random.split(jax.random.key(1), 2), cfg)
  out_i, out_l = np.asarray(out_i), np.asarray(out_l)
  assert set(np.unique(out_l)) <= {0, 2} and (out_l == 2).sum() > 20   # nearest-neighbour labels
  assert 0.5 * 0.9 - 0.1 - 0.5 < out_i.mean() < 0.5 * 1.1 + 0.1 + 0.5
  assert out_i.std() > 0   # noise applied
