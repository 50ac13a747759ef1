"""Soft Dice + cross-entropy, the nnU-Net loss, with deep-supervision weighting.

Cross-entropy is written against one-hot targets: optax's integer-label form made XLA constant-fold a
scatter and added seconds of compile time at 96^3 on CPU (docs/DESIGN.md).

Partial labels. A case may annotate only some classes (a liver data set mixed with a kidney data set):
its unannotated organ is labelled background although it is there. Given the per-sample mask of annotated
classes (``annotated`` [B, K], from the cache through the loader), the loss is the marginal loss of
Shi et al. / Fang & Yan (2020, "marginal and exclusion loss"): an unannotated class u is merged into the
classes its voxels may carry in the label map, and the loss sees only the merged probabilities:

  * u merges into background; an unannotated tumour of an annotated organ merges into the organ as well
    (its voxels may be labelled organ or background, depending on whether the organ mask covers them);
  * CE on a voxel labelled y is -log(sum of p_c over y and every u merged into y);
  * Dice is computed for annotated foreground classes only, on the same merged probabilities, and the mean
    skips a sample's unannotated classes (batch Dice pools each class over the samples annotating it).

So the loss depends on the logits of background and an unannotated organ only through their summed
probability: it cannot push the unannotated organ towards background (or the reverse). This is not
nnU-Net's ignore label (an ignored voxel set): here whole classes are unknown per case, voxel-wise they
are mixed into background. With every class annotated the loss is the plain Dice + CE, computed by the
plain code path.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def soft_dice_loss(logits: jax.Array, onehot: jax.Array, smooth: float = 1e-5,
                   batch_dice: bool = False) -> jax.Array:
  """1 - mean soft Dice over foreground classes (and samples, unless ``batch_dice``).

  Args:
    logits: [B, X, Y, Z, K].
    onehot: [B, X, Y, Z, K] float targets.
    smooth: added to numerator and denominator.
    batch_dice: pool the batch into one Dice per class (nnU-Net's batch Dice): small lesions and patches
      without any lesion no longer make single-sample Dice terms that swing between 0 and 1.
  Returns:
    scalar loss. A class absent from both prediction and target scores Dice 1 (nnU-Net's convention).
  """
  probs = jax.nn.softmax(logits, axis=-1)
  axes = (0, 1, 2, 3) if batch_dice else (1, 2, 3)
  inter = jnp.sum(probs * onehot, axes)
  denom = jnp.sum(probs, axes) + jnp.sum(onehot, axes)
  dice = (2.0 * inter + smooth) / (denom + smooth)
  return 1.0 - jnp.mean(dice[..., 1:])


def cross_entropy_loss(logits: jax.Array, onehot: jax.Array) -> jax.Array:
  """Mean voxel cross-entropy. logits, onehot: [B, X, Y, Z, K]."""
  return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def merge_matrix(annotated: jax.Array) -> jax.Array:
  """[B, K] annotated-class mask -> [B, K, K] float: m[b, y, c] = 1 where class c counts as label y.

  Identity for annotated classes; an unannotated class c > 0 counts as background, and an unannotated
  tumour (even id 2i+2) of an annotated organ (2i+1) counts as that organ too (labels: jaxseg/labels.py).
  """
  ann = annotated.astype(bool)
  b, k = ann.shape
  m = jnp.broadcast_to(jnp.eye(k, dtype=bool), (b, k, k))
  m = m.at[:, 0, 1:].set(~ann[:, 1:])            # unannotated -> background
  for c in range(2, k, 2):                       # tumour c of organ c - 1 (static, K is small)
    m = m.at[:, c - 1, c].set(ann[:, c - 1] & ~ann[:, c])
  return m.astype(jnp.float32)


def partial_label_loss(logits: jax.Array, onehot: jax.Array, annotated: jax.Array, dice_weight: float,
                       ce_weight: float, batch_dice: bool = False, smooth: float = 1e-5) -> jax.Array:
  """Marginal Dice + CE for one output (see the module docstring).

  Args:
    logits: [B, X, Y, Z, K] float32.
    onehot: [B, X, Y, Z, K] float targets (labels never hold an unannotated class).
    annotated: [B, K] 0/1 (background's entry is ignored: it is always a target).
    dice_weight, ce_weight, batch_dice, smooth: as in soft_dice_loss / segmentation_loss.
  Returns:
    scalar loss.
  """
  m = merge_matrix(annotated)                                   # [B, K(y), K(c)]
  allowed = jnp.einsum("bxyzk,bkc->bxyzc", onehot, m)            # classes that count as the voxel's label
  lse = jax.nn.logsumexp(logits, axis=-1)
  lse_target = jax.nn.logsumexp(jnp.where(allowed > 0, logits, -jnp.inf), axis=-1)
  ce = jnp.mean(lse - lse_target)
  probs = jax.nn.softmax(logits, axis=-1)
  merged = jnp.einsum("bxyzc,bkc->bxyzk", probs, m)             # merged probability of each label
  ann = annotated.astype(jnp.float32)[:, 1:]                    # [B, K-1] foreground classes scored
  axes = (1, 2, 3)
  inter = jnp.sum(merged * onehot, axes)[:, 1:]
  denom = (jnp.sum(merged, axes) + jnp.sum(onehot, axes))[:, 1:]
  if batch_dice:
    inter, denom = jnp.sum(inter * ann, 0), jnp.sum(denom * ann, 0)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    present = (jnp.sum(ann, 0) > 0).astype(jnp.float32)
  else:
    dice = (2.0 * inter + smooth) / (denom + smooth)
    present = ann
  dice_loss = 1.0 - jnp.sum(dice * present) / jnp.maximum(jnp.sum(present), 1.0)
  return dice_weight * dice_loss + ce_weight * ce


def deep_supervision_weights(levels: int) -> list[float]:
  """nnU-Net's weights: halve per level, drop the coarsest, normalise to sum 1."""
  w = [0.5 ** i for i in range(levels)]
  if levels > 1:
    w[-1] = 0.0
  total = sum(w)
  return [x / total for x in w]


def segmentation_loss(outputs: jax.Array | Sequence[jax.Array], labels: jax.Array, num_classes: int,
                      dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = False,
                      annotated: jax.Array | None = None) -> jax.Array:
  """Dice + CE over one output or a deep-supervision list (finest first).

  Args:
    outputs: logits [B, X, Y, Z, K], or a list of them at resolutions 1, 1/2, 1/4, ...
    labels: int [B, X, Y, Z]; coarser targets are taken by strided (nearest) downsampling.
    num_classes: K.
    dice_weight, ce_weight: weights of the two terms.
    batch_dice: see soft_dice_loss.
    annotated: [B, K] per-sample annotated classes (partial labels), or None: every class annotated.
  Returns:
    scalar loss in float32.
  """
  if not isinstance(outputs, (list, tuple)):
    outputs = [outputs]
  weights = deep_supervision_weights(len(outputs))
  total = jnp.float32(0.0)
  for level, (logits, w) in enumerate(zip(outputs, weights)):
    if w == 0.0:
      continue
    f = 2 ** level
    target = labels[:, ::f, ::f, ::f]
    onehot = jax.nn.one_hot(target, num_classes, dtype=jnp.float32)
    logits = logits.astype(jnp.float32)
    if annotated is None:
      loss = dice_weight * soft_dice_loss(logits, onehot, batch_dice=batch_dice) + ce_weight * cross_entropy_loss(logits, onehot)
    else:
      loss = partial_label_loss(logits, onehot, annotated, dice_weight, ce_weight, batch_dice)
    total = total + w * loss
  return total
