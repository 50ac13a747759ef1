"""Dice + cross-entropy and the deep-supervision weights, against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseg.train import losses


def test_deep_supervision_weights_follow_nnunet():
  np.testing.assert_allclose(losses.deep_supervision_weights(3), [0.5 / 0.75, 0.25 / 0.75, 0.0])
  assert losses.deep_supervision_weights(1) == [1.0]


def test_cross_entropy_matches_optax():
  logits = jax.random.normal(jax.random.key(0), (2, 4, 4, 4, 3))
  labels = jax.random.randint(jax.random.key(1), (2, 4, 4, 4), 0, 3)
  ours = losses.cross_entropy_loss(logits, jax.nn.one_hot(labels, 3))
  ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_dice_perfect_and_absent_classes():
  labels = jnp.zeros((1, 4, 4, 4), jnp.int32).at[:, :2].set(1)
  onehot = jax.nn.one_hot(labels, 3)
  perfect = 1e4 * (onehot - 0.5)  # Softmax puts ~all mass on the right class.
  # Class 2 is absent from target and prediction: Dice 1 by convention, so the loss is ~0.
  assert float(losses.soft_dice_loss(perfect, onehot)) < 1e-4
  wrong = 1e4 * (jax.nn.one_hot(1 - labels, 3) - 0.5)
  assert float(losses.soft_dice_loss(wrong, onehot)) > 0.49


def test_segmentation_loss_uses_downsampled_targets():
  labels = jax.random.randint(jax.random.key(1), (1, 8, 8, 8), 0, 3)
  full = 30.0 * jax.nn.one_hot(labels, 3)
  half = 30.0 * jax.nn.one_hot(labels[:, ::2, ::2, ::2], 3)
  coarse = jnp.zeros((1, 2, 2, 2, 3))  # Weight 0: ignored whatever it holds.
  loss = losses.segmentation_loss([full, half, coarse], labels, 3)
  assert float(loss) < 1e-3


def test_batch_dice_pools_the_batch():
  labels = jnp.zeros((2, 4, 4, 4), jnp.int32).at[0, :2].set(1)  # Sample 1 has no foreground.
  onehot = jax.nn.one_hot(labels, 2)
  logits = 1e4 * (onehot - 0.5)
  logits = logits.at[1, 0, 0, 0].set(jnp.array([-1e4, 1e4]))  # One false-positive voxel in sample 1.
  per_sample = float(losses.soft_dice_loss(logits, onehot))
  pooled = float(losses.soft_dice_loss(logits, onehot, batch_dice=True))
  assert per_sample > 0.49  # Sample 1's Dice is ~0: one voxel wrong out of one predicted.
  np.testing.assert_allclose(pooled, 1 - 2 * 32 / (33 + 32), rtol=1e-4)
