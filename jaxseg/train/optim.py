"""Optimizers and learning-rate schedules, chosen by ``config.optim.name`` from a registry.

Two recipes: nnU-Net's SGD with Nesterov momentum 0.99 and polynomial decay, and the synthetic-tumour
papers' AdamW with linear warmup and cosine decay. Both clip the global gradient norm first. A new
optimizer is one ``OPTIMIZERS.register`` line with its update rule and its decay schedule.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections
import optax

from jaxseg.registry import Registry


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
  """``transform(optim_cfg, schedule)`` builds the update rule; ``decay(optim_cfg, lr, steps)`` the schedule."""
  transform: Callable[[ml_collections.ConfigDict, optax.Schedule], optax.GradientTransformation]
  decay: Callable[[ml_collections.ConfigDict, float, int], optax.Schedule]


OPTIMIZERS: Registry[OptimizerEntry] = Registry("optim.name")
OPTIMIZERS.register("sgd", OptimizerEntry(
    transform=lambda c, s: optax.chain(optax.add_decayed_weights(float(c.weight_decay)),
                                       optax.sgd(s, momentum=float(c.momentum), nesterov=True)),
    decay=lambda c, lr, n: optax.polynomial_schedule(lr, 0.0, float(c.poly_power), n)))
OPTIMIZERS.register("adamw", OptimizerEntry(
    transform=lambda c, s: optax.adamw(s, weight_decay=float(c.weight_decay)),
    decay=lambda c, lr, n: optax.cosine_decay_schedule(lr, n)))


def check_optim_config(optim_cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad ``optim.*`` field."""
  OPTIMIZERS.get(optim_cfg.name)
  if optim_cfg.learning_rate <= 0:
    raise ValueError(f"optim.learning_rate: {optim_cfg.learning_rate} must be positive")
  if optim_cfg.warmup_steps < 0:
    raise ValueError(f"optim.warmup_steps: {optim_cfg.warmup_steps} must be >= 0")


def make_schedule(optim_cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step."""
  lr = float(optim_cfg.learning_rate)
  warmup = int(optim_cfg.warmup_steps)
  decay = OPTIMIZERS.get(optim_cfg.name).decay(optim_cfg, lr, max(num_steps - warmup, 1))
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(optim_cfg: ml_collections.ConfigDict,
                   num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule) for ``optim_cfg``.

  Raises:
    ValueError: unknown optimizer name (the message names optim.name and the closest known names).
  """
  entry = OPTIMIZERS.get(optim_cfg.name)
  schedule = make_schedule(optim_cfg, num_steps)
  opt = entry.transform(optim_cfg, schedule)
  if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(float(optim_cfg.clip_norm)), opt)
  return opt, schedule
