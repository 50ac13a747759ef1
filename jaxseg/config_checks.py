"""A run's config, resolved and checked once at entry: a bad value gets one line naming the field.

``resolve_config`` completes a config from the defaults (a config file or a saved config.json written
before a field existed gets that field's default, so no module needs ``cfg.get(field, fallback)``) and
refuses a field the defaults do not know, naming the closest valid names. ``check_config`` then checks
the values; each model, optimizer, layout and synthesizer checks its own block through its registry.
Everything here is cheap and runs before data preparation or compilation, so a typo costs seconds, not
the minutes of a preprocessing pass or an XLA compile.
"""

from __future__ import annotations

import ml_collections

from jaxseg import labels as labels_lib
from jaxseg.default_config import get_config as default_config
from jaxseg.infer.predict import check_resample_config
from jaxseg.io.layouts import LAYOUTS
from jaxseg.models import check_model_config, downsampling_factor
from jaxseg.registry import closest
from jaxseg.synth.stage import check_synthesizer_config
from jaxseg.train.optim import check_optim_config
from jaxseg.train.tb_log import check_track_config

# Top-level blocks a config may add beyond the defaults (a study's own settings).
EXTRA_BLOCKS = ("scaling",)
# Config fields holding free-form mappings (per-organ profiles may carry organ-specific keys).
_OPEN_FIELDS = ("synth.profiles",)


class ConfigError(ValueError):
  """A config value that cannot work; the message starts with the field's name."""


def _kind(value) -> str:
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, (int, float)):
    return "number"
  if isinstance(value, str):
    return "string"
  if isinstance(value, (tuple, list)):
    return "sequence"
  if isinstance(value, (dict, ml_collections.ConfigDict)):
    return "block"
  return type(value).__name__


def _merge(given: ml_collections.ConfigDict, default: ml_collections.ConfigDict, path: str) -> None:
  """Fills ``given`` from ``default`` in place; raises ConfigError for an unknown or mistyped field."""
  for key in given.keys():
    name = f"{path}{key}"
    if key not in default:
      if not path and key in EXTRA_BLOCKS:
        continue
      raise ConfigError(f"{name}: no such config field{closest(key, default.keys())}")
    have, want = given[key], default[key]
    if name in _OPEN_FIELDS:
      continue
    if _kind(have) != _kind(want) and have is not None and want is not None:
      raise ConfigError(f"{name}: expected a {_kind(want)} like {want!r}, got {have!r}")
    if _kind(want) == "block":
      _merge(have, want, f"{name}.")
  for key in default.keys():
    if key not in given:
      given[key] = default[key]


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A complete copy of ``config``: missing fields take their defaults; unknown or mistyped fields fail.

  Raises:
    ConfigError: a field the defaults do not know (with the closest names), or a value of the wrong kind.
  """
  resolved = ml_collections.ConfigDict(config.to_dict())
  with resolved.unlocked():
    _merge(resolved, default_config(), "")
  return resolved


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ConfigError for the first bad field of a resolved ``config`` on a mesh of ``num_devices``."""
  try:
    _check(config, num_devices)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check(config: ml_collections.ConfigDict, num_devices: int) -> None:
  d = config.data
  labels_lib.check_organs(d.organs)
  check_model_config(config.model)
  if len(d.patch_size) != 3:
    raise ConfigError(f"data.patch_size: {tuple(d.patch_size)} must have 3 sides")
  f = downsampling_factor(config.model)
  bad = [s for s in d.patch_size if s % f or s <= 0]
  if bad:
    raise ConfigError(f"data.patch_size: {tuple(d.patch_size)} is not divisible by the network's total "
                      f"stride {f}; use multiples of {f}")
  if d.batch_size <= 0 or d.batch_size % num_devices:
    raise ConfigError(f"data.batch_size: {d.batch_size} does not divide by the {num_devices} devices; use a "
                      f"multiple of {num_devices}")
  if d.layout not in LAYOUTS:
    raise ConfigError(f"data.layout: unknown layout {d.layout!r}; known: {', '.join(LAYOUTS)}"
                      f"{closest(d.layout, LAYOUTS)}")
  if not d.root and d.layout != "phantom":
    raise ConfigError("data.root: no data set given (set --config.data.root=<dir>)")
  if len(d.spacing) != 3 or min(d.spacing) <= 0:
    raise ConfigError(f"data.spacing: {tuple(d.spacing)} must be three positive millimetre values")
  if not d.hu_window[0] < d.hu_window[1]:
    raise ConfigError(f"data.hu_window: {tuple(d.hu_window)} must be (low, high) with low < high")
  for field in ("fg_oversample", "organ_centred", "synth_fraction"):
    if not 0.0 <= d[field] <= 1.0:
      raise ConfigError(f"data.{field}: {d[field]} must be in [0, 1]")
  check_synthesizer_config(config)
  check_optim_config(config.optim)
  t = config.train
  if t.num_steps <= 0:
    raise ConfigError(f"train.num_steps: {t.num_steps} must be positive")
  for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if t[field] <= 0:
      raise ConfigError(f"train.{field}: {t[field]} must be positive")
  if t.eval_every < 0:
    raise ConfigError(f"train.eval_every: {t.eval_every} must be >= 0 (0: at the end only)")
  check_track_config(config)
  check_resample_config(config)
  if not 0.0 <= config.eval.min_tumor_confidence < 1.0:
    raise ConfigError(f"eval.min_tumor_confidence: {config.eval.min_tumor_confidence} must be in [0, 1) "
                      "(0: off)")
