"""The jitted, sharded train step: synthesis, window, augmentation, forward, loss, update.

Everything heavy happens here, on the accelerator: the host hands over raw HU patches and labels. Per-sample
keys come from ``fold_in(fold_in(rng, step), global_sample_index)``, so a sample's synthetic tumour and
augmentation do not depend on how many devices or processes share the batch.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from jaxseg import augment, labels as labels_lib, parallel, synth
from jaxseg.train import losses
from jaxseg.train.preprocessing import normalize_hu


def sample_keys(rng: jax.Array, step: jax.Array, batch_size: int) -> jax.Array:
  """Typed keys [B, 2]: (synthesis, augmentation) for each global sample index of this step."""
  step_key = jax.random.fold_in(rng, step)
  per_sample = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(batch_size))
  return jax.vmap(lambda k: jax.random.split(k, 2))(per_sample)


def prepare_inputs(config: ml_collections.ConfigDict, batch: dict, keys: jax.Array):
  """Raw batch -> (model input [B, X, Y, Z, 1] float, labels [B, X, Y, Z] int32), on the device.

  Synthetic tumours go in first, in HU (their contrast is defined in HU), then the window, then the
  augmentation of image and label together.
  """
  organs = tuple(config.data.organs)
  images = batch["image"].astype(jnp.float32)
  labels = batch["label"].astype(jnp.int32)
  if config.synth.enabled:
    images, labels = synth.apply_synthesis(images, labels, batch, keys[:, 0], organs, config.synth)
  x = normalize_hu(images, config.data.hu_window)
  x, labels = augment.augment_batch(x, labels, keys[:, 1], config.augment)
  return x[..., None], labels


def make_train_step(config: ml_collections.ConfigDict, model, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh) -> Callable:
  """Returns ``step(state, batch) -> (state, metrics)``, jitted over ``mesh`` with the state donated.

  ``batch`` holds global arrays split over the "data" axis (see parallel.global_batch); metrics are
  replicated scalars: loss, grad_norm, learning_rate.
  """
  num_classes = labels_lib.num_classes(tuple(config.data.organs))
  compute_dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32

  def step_fn(state, batch):
    keys = sample_keys(state["rng"], state["step"], batch["image"].shape[0])
    x, labels = prepare_inputs(config, batch, keys)

    def loss_fn(params):
      outputs = model.apply({"params": params}, x.astype(compute_dtype), train=True)
      return losses.segmentation_loss(outputs, labels, num_classes, config.loss.dice_weight,
                                      config.loss.ce_weight, config.loss.batch_dice)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
               "learning_rate": jnp.asarray(schedule(state["step"]), jnp.float32)}
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
    return new_state, metrics

  rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  return jax.jit(step_fn, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=(0,))
