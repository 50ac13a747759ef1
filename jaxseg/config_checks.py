"""Checks of a run's config, before any work: a bad value gets one line naming the field.

Everything here is cheap and runs before data preparation or compilation, so a typo costs seconds, not the
minutes of a preprocessing pass or an XLA compile.
"""

from __future__ import annotations

import ml_collections

from jaxseg import labels as labels_lib
from jaxseg.models import MODELS, downsampling_factor
from jaxseg.train.optim import OPTIMIZERS

LAYOUTS = ("atlas", "atlas2", "msd", "nnunet", "manifest", "phantom")


class ConfigError(ValueError):
  """A config value that cannot work; the message starts with the field's name."""


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ConfigError for the first bad field of ``config`` on a mesh of ``num_devices``."""
  d, m = config.data, config.model
  try:
    labels_lib.check_organs(d.organs)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if m.name not in MODELS:
    raise ConfigError(f"model.name: unknown model {m.name!r}; known: {', '.join(MODELS)}")
  if len(m.features) != len(m.blocks_per_stage):
    raise ConfigError(f"model.blocks_per_stage: {len(m.blocks_per_stage)} stages, but model.features has "
                      f"{len(m.features)}")
  if m.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"model.dtype: {m.dtype!r} is not float32 or bfloat16")
  if m.conv not in ("native", "depth_folded"):
    raise ConfigError(f"model.conv: {m.conv!r} is not native or depth_folded")
  if len(d.patch_size) != 3:
    raise ConfigError(f"data.patch_size: {tuple(d.patch_size)} must have 3 sides")
  f = downsampling_factor(m)
  bad = [s for s in d.patch_size if s % f or s <= 0]
  if bad:
    raise ConfigError(f"data.patch_size: {tuple(d.patch_size)} is not divisible by the network's total "
                      f"stride {f} (2 per stage of model.features); use multiples of {f}")
  if d.batch_size <= 0 or d.batch_size % num_devices:
    raise ConfigError(f"data.batch_size: {d.batch_size} does not divide by the {num_devices} devices; use a "
                      f"multiple of {num_devices}")
  if d.layout not in LAYOUTS:
    raise ConfigError(f"data.layout: unknown layout {d.layout!r}; known: {', '.join(LAYOUTS)}")
  if not d.root and d.layout != "phantom":
    raise ConfigError("data.root: no data set given (set --config.data.root=<dir>)")
  if len(d.spacing) != 3 or min(d.spacing) <= 0:
    raise ConfigError(f"data.spacing: {tuple(d.spacing)} must be three positive millimetre values")
  if not d.hu_window[0] < d.hu_window[1]:
    raise ConfigError(f"data.hu_window: {tuple(d.hu_window)} must be (low, high) with low < high")
  if not 0.0 <= d.fg_oversample <= 1.0:
    raise ConfigError(f"data.fg_oversample: {d.fg_oversample} must be in [0, 1]")
  if not 0.0 <= d.get("organ_centred", 0.0) <= 1.0:
    raise ConfigError(f"data.organ_centred: {d.organ_centred} must be in [0, 1]")
  if not 0.0 <= d.synth_fraction <= 1.0:
    raise ConfigError(f"data.synth_fraction: {d.synth_fraction} must be in [0, 1]")
  if not 0.0 <= config.synth.prob <= 1.0:
    raise ConfigError(f"synth.prob: {config.synth.prob} must be in [0, 1]")
  if config.synth.contrast not in ("absolute", "relative"):
    raise ConfigError(f"synth.contrast: {config.synth.contrast!r} is not absolute or relative")
  if config.optim.name not in OPTIMIZERS:
    raise ConfigError(f"optim.name: unknown optimizer {config.optim.name!r}; known: {', '.join(OPTIMIZERS)}")
  if config.optim.learning_rate <= 0:
    raise ConfigError(f"optim.learning_rate: {config.optim.learning_rate} must be positive")
  t = config.train
  if t.num_steps <= 0:
    raise ConfigError(f"train.num_steps: {t.num_steps} must be positive")
  for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if t[field] <= 0:
      raise ConfigError(f"train.{field}: {t[field]} must be positive")
  if t.eval_every < 0:
    raise ConfigError(f"train.eval_every: {t.eval_every} must be >= 0 (0: at the end only)")
  if not 0.0 <= config.eval.min_tumor_confidence < 1.0:
    raise ConfigError(f"eval.min_tumor_confidence: {config.eval.min_tumor_confidence} must be in [0, 1) "
                      "(0: off)")
