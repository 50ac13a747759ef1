"""Synthesis as a stage of the train step, chosen by ``config.synth.name``.

A synthesizer turns the raw HU batch into a batch with synthetic tumours on its control samples. It has
two parts, so that a learned synthesizer can follow the rule-based one without touching the step:

- ``init(rng) -> params``: frozen parameters (a pytree: empty for rule-based synthesis, or its texture
  banks with ``config.synth.texture = "bank"``). They live in the train state under ``"synth_params"``, are
  checkpointed with it and are never updated by the optimizer.
- ``apply(params, images_hu, labels, batch, keys) -> (images_hu, labels)``: pure and jittable; ``keys`` holds
  one typed key per sample, so a sample's tumour does not depend on the batch size or the device count.

Adding one is a module with a class like ``RuleBasedSynthesizer`` plus one ``SYNTHESIZERS.register`` line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import ml_collections
from jax.sharding import Mesh

from jaxseg import labels as labels_lib
from jaxseg.registry import Registry
from jaxseg.synth.batch import apply_synthesis, build_banks
from jaxseg.synth import spec as spec_lib
from jaxseg.synth.config import check_synth_config


class Synthesizer(Protocol):
  """What the train step needs from a synthesizer."""

  def init(self, rng: jax.Array) -> Any:
    ...

  def apply(self, params: Any, images_hu: jax.Array, labels: jax.Array, batch: dict,
            keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    ...


@dataclasses.dataclass(frozen=True)
class RuleBasedSynthesizer:
  """The published rule-based generator (shape, texture, placement rules per organ profile); no weights."""

  organs: tuple[str, ...]
  synth_cfg: ml_collections.ConfigDict
  mesh: Mesh | None = None
  data_cfg: ml_collections.ConfigDict | None = None   # patch size and spacing, for the texture banks

  def init(self, rng: jax.Array) -> dict:
    """The texture banks when ``synth.texture == "bank"`` (built once, on the device), else nothing."""
    if str(self.synth_cfg.get("texture", "field")) != "bank":
      return {}
    if self.data_cfg is None:
      raise ValueError("config.synth.texture='bank' needs config.data (patch_size, spacing) to build its banks")
    return build_banks(rng, self.organs, self.synth_cfg, tuple(self.data_cfg.patch_size),
                       tuple(self.data_cfg.spacing))

  def apply(self, params, images_hu, labels, batch, keys):
    return apply_synthesis(images_hu, labels, batch, keys, self.organs, self.synth_cfg, self.mesh,
                           banks=params)


@dataclasses.dataclass(frozen=True)
class NoSynthesizer:
  """Synthesis off (the real-only arm): the batch passes unchanged."""

  def init(self, rng: jax.Array) -> dict:
    del rng
    return {}

  def apply(self, params, images_hu, labels, batch, keys):
    del params, batch, keys
    return images_hu, labels


@dataclasses.dataclass(frozen=True)
class SynthesizerEntry:
  """``build(organs, synth_cfg, mesh, data_cfg)`` makes the synthesizer; ``check(config)`` raises ValueError
  on a bad field."""
  build: Callable[[tuple[str, ...], ml_collections.ConfigDict, Mesh | None, ml_collections.ConfigDict],
                  Synthesizer]
  check: Callable[[ml_collections.ConfigDict], None] = lambda config: None


SYNTHESIZERS: Registry[SynthesizerEntry] = Registry("synth.name")
SYNTHESIZERS.register("rule_based", SynthesizerEntry(build=RuleBasedSynthesizer, check=check_synth_config))


def build_synthesizer(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Synthesizer:
  """The synthesizer of a run: ``config.synth.name``, or NoSynthesizer when ``synth.enabled`` is off.

  ``mesh``: the run's mesh, so that per-sample work can stay on the device that holds the sample.
  """
  if not config.synth.enabled:
    return NoSynthesizer()
  organs = labels_lib.check_organs(config.data.organs)
  return SYNTHESIZERS.get(config.synth.name).build(organs, config.synth, mesh, config.data)


def check_synthesizer_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad ``synth.*`` field."""
  entry = SYNTHESIZERS.get(config.synth.name)
  if not 0.0 <= config.synth.prob <= 1.0:
    raise ValueError(f"synth.prob: {config.synth.prob} must be in [0, 1]")
  spec_lib.check_contrast(str(config.synth.contrast))
  for organ in config.data.organs:
    if organ not in config.synth.profiles:
      raise ValueError(f"synth.profiles: no profile for organ {organ!r} of data.organs")
  entry.check(config)
