"""The model zoo: one entry per ``config.model.name``, each a small spec of how to build and check it.

Adding a model is one new module under jaxseg/models/ plus one ``register(...)`` line at the bottom of this
file (or in the caller's own code): the spec says how to build the Linen module from ``config.model``, the
factor every patch side must divide by, and which config fields are invalid. ``jaxseg.models`` delegates
``build_model``, ``downsampling_factor``, ``check_model_config`` and ``MODELS`` here.

Fields every model reads: ``name``, ``dtype`` (float32 | bfloat16 compute; parameters stay float32),
``conv`` (auto | native | depth_folded | im2col) and ``deep_supervision``. Model-specific widths and depths
come from the name (``mednext_s`` is MedNeXt-S); ``resenc_unet`` alone reads ``features`` and
``blocks_per_stage``. A spec's ``defaults`` lists any optional field it reads beyond these, with the value
used when the config lacks it (a config file may add it, e.g. ``c.model.init_filters = 8`` for a small
MedNeXt on a CPU).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxseg.models.mednext import PRESETS as MEDNEXT_PRESETS
from jaxseg.models.mednext import MedNeXt
from jaxseg.models.segresnet_ds import SegResNetDS
from jaxseg.models.swin_unetr import SwinUNETR
from jaxseg.models.unet import ResEncUNet
from jaxseg.registry import closest

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONVS = ("auto", "native", "depth_folded", "im2col")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build and check one model.

  Attributes:
    builder: (model_cfg, num_classes) -> Linen module; called after ``check``.
    downsampling_factor: model_cfg -> the integer every patch side must divide by.
    check: model_cfg -> None; raises ValueError naming the offending ``model.<field>``. The common fields
      (dtype, conv) are checked for every model before it.
    defaults: optional fields the model reads, with their values when absent from the config.
    mirrors: the reference implementation whose structure and parameter count it reproduces.
  """

  builder: Callable[[ml_collections.ConfigDict, int], nn.Module]
  downsampling_factor: Callable[[ml_collections.ConfigDict], int]
  check: Callable[[ml_collections.ConfigDict], None] = lambda cfg: None
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  mirrors: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, spec: ModelSpec) -> None:
  """Adds (or replaces) the model ``name``; replacing lets a test or experiment swap one in."""
  _REGISTRY[name] = spec


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> ModelSpec:
  """The spec of ``name``; ValueError naming ``model.name`` if unknown."""
  if name not in _REGISTRY:
    raise ValueError(f"model.name: unknown model {name!r}; known: {', '.join(_REGISTRY)}"
                     f"{closest(name, _REGISTRY)}")
  return _REGISTRY[name]


def field(model_cfg: ml_collections.ConfigDict, key: str, defaults: Mapping[str, Any]) -> Any:
  """``model_cfg.<key>``, or ``defaults[key]`` when the config does not have the field."""
  return model_cfg[key] if key in model_cfg else defaults[key]


def check_model_config(model_cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid ``model.<field>`` (name, dtype, conv, then the model's)."""
  spec = get(model_cfg.name)
  if model_cfg.dtype not in DTYPES:
    raise ValueError(f"model.dtype: {model_cfg.dtype!r} is not one of {', '.join(DTYPES)}")
  if model_cfg.conv not in CONVS:
    raise ValueError(f"model.conv: {model_cfg.conv!r} is not one of {', '.join(CONVS)}")
  spec.check(model_cfg)


def build_model(model_cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The Linen module ``model_cfg`` names, after ``check_model_config``."""
  check_model_config(model_cfg)
  return get(model_cfg.name).builder(model_cfg, num_classes)


def downsampling_factor(model_cfg: ml_collections.ConfigDict) -> int:
  """The factor every patch side must divide by (the model's total downsampling)."""
  return get(model_cfg.name).downsampling_factor(model_cfg)


def _common(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  return dict(conv=model_cfg.conv, dtype=DTYPES[model_cfg.dtype])


def _check_positive_int(model_cfg, key, defaults) -> int:
  value = field(model_cfg, key, defaults)
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"model.{key}: {value!r} is not a positive integer")
  return value


# resenc_unet: nnU-Net's ResidualEncoderUNet, sized by model.features / model.blocks_per_stage.

def _check_resenc(model_cfg):
  if len(model_cfg.features) != len(model_cfg.blocks_per_stage):
    raise ValueError(f"model.blocks_per_stage: {len(model_cfg.blocks_per_stage)} stages given but "
                     f"model.features has {len(model_cfg.features)}")
  if not model_cfg.features:
    raise ValueError("model.features: at least one stage is needed")


def _build_resenc(model_cfg, num_classes):
  return ResEncUNet(num_classes=num_classes, features=tuple(model_cfg.features),
                    blocks_per_stage=tuple(model_cfg.blocks_per_stage),
                    deep_supervision=bool(model_cfg.deep_supervision), **_common(model_cfg))


register("resenc_unet", ModelSpec(
    builder=_build_resenc, downsampling_factor=lambda cfg: 2 ** (len(cfg.features) - 1), check=_check_resenc,
    mirrors="dynamic_network_architectures ResidualEncoderUNet (nnU-Net ResEnc presets)"))


# mednext_{s,b,m,l}: MONAI MedNeXt presets (4 downsamplings); optional model.init_filters (default 32).

_WIDTH_DEFAULTS = {"init_filters": 32}


def _check_width(model_cfg):
  _check_positive_int(model_cfg, "init_filters", _WIDTH_DEFAULTS)


def _mednext_spec(variant: str) -> ModelSpec:
  enc, dec, bott, down, n_bott, up = MEDNEXT_PRESETS[variant]

  def build(model_cfg, num_classes):
    return MedNeXt(num_classes=num_classes, init_filters=field(model_cfg, "init_filters", _WIDTH_DEFAULTS),
                   encoder_expansion=enc, decoder_expansion=dec, bottleneck_expansion=bott, blocks_down=down,
                   blocks_bottleneck=n_bott, blocks_up=up, kernel_size=3,
                   deep_supervision=bool(model_cfg.deep_supervision), **_common(model_cfg))

  return ModelSpec(builder=build, downsampling_factor=lambda cfg: 2 ** len(down), check=_check_width,
                   defaults=_WIDTH_DEFAULTS, mirrors=f"MONAI MedNeXt{variant} (create_mednext, kernel 3)")


for _v in ("s", "b", "m", "l"):
  register(f"mednext_{_v}", _mednext_spec(_v.upper()))


# segresnet_ds: MONAI SegResNetDS, blocks_down 1-2-2-4-4; optional model.init_filters (default 32).

SEGRESNET_BLOCKS = (1, 2, 2, 4, 4)  # public: launch/bench_peers.py builds MONAI's network with the same blocks


def _build_segresnet(model_cfg, num_classes):
  return SegResNetDS(num_classes=num_classes, init_filters=field(model_cfg, "init_filters", _WIDTH_DEFAULTS),
                     blocks_down=SEGRESNET_BLOCKS, deep_supervision=bool(model_cfg.deep_supervision),
                     **_common(model_cfg))


register("segresnet_ds", ModelSpec(
    builder=_build_segresnet, downsampling_factor=lambda cfg: 2 ** (len(SEGRESNET_BLOCKS) - 1),
    check=_check_width, defaults=_WIDTH_DEFAULTS,
    mirrors="MONAI SegResNetDS (init_filters 32, blocks_down 1-2-2-4-4)"))


# swin_unetr: MONAI SwinUNETR v1 (patch sides divisible by 32); optional model.feature_size (default 48).

_SWIN_DEFAULTS = {"feature_size": 48}


def _check_swin(model_cfg):
  fs = _check_positive_int(model_cfg, "feature_size", _SWIN_DEFAULTS)
  if fs % 12:
    raise ValueError(f"model.feature_size: {fs} is not a multiple of 12 (MONAI's SwinUNETR requires it)")


def _build_swin(model_cfg, num_classes):
  return SwinUNETR(num_classes=num_classes, feature_size=field(model_cfg, "feature_size", _SWIN_DEFAULTS),
                   **_common(model_cfg))


register("swin_unetr", ModelSpec(
    builder=_build_swin, downsampling_factor=lambda cfg: 32, check=_check_swin, defaults=_SWIN_DEFAULTS,
    mirrors="MONAI SwinUNETR (use_v2=False, feature_size 48); no deep supervision"))
