"""Flax 3D segmentation networks, built by name from ``config.model`` through the registry.

The zoo lives in jaxseg/models/registry.py (docs/MODELS.md lists it); these names are what the rest of
jaxseg imports. ``MODELS`` is the tuple of names registered when this package was imported; call
``registry.names()`` to see models registered later.
"""

from __future__ import annotations

from jaxseg.models.registry import ModelSpec, build_model, check_model_config, downsampling_factor, register
from jaxseg.models.registry import names as _names

MODELS = _names()

__all__ = ["MODELS", "ModelSpec", "build_model", "check_model_config", "downsampling_factor", "register"]
