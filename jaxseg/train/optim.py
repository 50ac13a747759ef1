"""Optimizers and learning-rate schedules, chosen by ``config.optim.name``.

Two recipes: nnU-Net's SGD with Nesterov momentum 0.99 and polynomial decay, and the synthetic-tumour
papers' AdamW with linear warmup and cosine decay. Both clip the global gradient norm first.
"""

from __future__ import annotations

import ml_collections
import optax

OPTIMIZERS = ("sgd", "adamw")


def make_schedule(optim_cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step."""
  lr = float(optim_cfg.learning_rate)
  warmup = int(optim_cfg.warmup_steps)
  decay_steps = max(num_steps - warmup, 1)
  if optim_cfg.name == "sgd":
    decay = optax.polynomial_schedule(lr, 0.0, float(optim_cfg.poly_power), decay_steps)
  else:
    decay = optax.cosine_decay_schedule(lr, decay_steps)
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(optim_cfg: ml_collections.ConfigDict,
                   num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule) for ``optim_cfg``.

  Raises:
    ValueError: unknown optimizer name.
  """
  if optim_cfg.name not in OPTIMIZERS:
    raise ValueError(f"optim.name: unknown optimizer {optim_cfg.name!r}; known: {', '.join(OPTIMIZERS)}")
  schedule = make_schedule(optim_cfg, num_steps)
  if optim_cfg.name == "sgd":
    opt = optax.chain(optax.add_decayed_weights(float(optim_cfg.weight_decay)),
                      optax.sgd(schedule, momentum=float(optim_cfg.momentum), nesterov=True))
  else:
    opt = optax.adamw(schedule, weight_decay=float(optim_cfg.weight_decay))
  if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(float(optim_cfg.clip_norm)), opt)
  return opt, schedule
