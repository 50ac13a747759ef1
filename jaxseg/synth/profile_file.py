"""An organ profile read from a python file: ``--config.synth.profiles.<organ>.profile_file=profile.py``.

ml_collections parses an override of a whole ConfigDict field only as a dict literal, so a profile file
(the calibration tool's output, launch/calibrate_synthesis.py) is named by the profile's ``profile_file``
field instead. The file defines ``get_profile()`` returning the organ's profile (a ConfigDict with the
fields of profiles.py). The file supplies the profile; a field also set on the command line (one that
differs from the built-in default) wins over the file, so ``--config.synth.profiles.liver.realistic.rim_prob=0``
still switches the rim off.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from jaxseg.synth.profiles import default_profiles_config


def flat_fields(d: dict, prefix: str = "") -> dict[str, Any]:
  """A nested dict as {"a.b.c": value} (how profile fields are named on the command line)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat_fields(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def load_profile_file(path: str, organ: str = "organ") -> ml_collections.ConfigDict:
  """``get_profile()`` of a python profile file, checked against the fields of profiles.py.

  Raises:
    ValueError: one line naming the file and the problem (missing file, no get_profile, unknown field).
  """
  where = f"config.synth.profiles.{organ}.profile_file={path}"
  if not os.path.isfile(path):
    raise ValueError(f"{where}: no such file")
  spec = importlib.util.spec_from_file_location("jaxseg_profile_" + os.path.splitext(os.path.basename(path))[0],
                                                path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  # a user's file: report it in one line
    raise ValueError(f"{where}: cannot be loaded: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
  if not callable(getattr(module, "get_profile", None)):
    raise ValueError(f"{where}: defines no get_profile() function")
  profile = module.get_profile()
  if not isinstance(profile, ml_collections.ConfigDict):
    raise ValueError(f"{where}: get_profile() returned {type(profile).__name__}, not an ml_collections.ConfigDict")
  known = flat_fields(default_profiles_config().liver.to_dict())
  unknown = sorted(set(flat_fields(profile.to_dict())) - set(known))
  if unknown:
    raise ValueError(f"{where}: unknown profile field {unknown[0]!r}")
  return profile


def resolve_profile(profile: Any, organ: str = "organ") -> Any:
  """The profile to use: ``profile`` itself, or its ``profile_file`` with the command line's changes on top.

  A ProfileSpec (already resolved) and a profile without the field pass unchanged.
  """
  if not isinstance(profile, ml_collections.ConfigDict) or not profile.get("profile_file", ""):
    return profile
  loaded = load_profile_file(str(profile.profile_file), organ)
  defaults = default_profiles_config()
  base = flat_fields(defaults[organ].to_dict()) if organ in defaults else {}
  given = flat_fields(profile.to_dict())
  merged = loaded.to_dict()
  for key, value in given.items():
    if key == "profile_file" or (key in base and base[key] == value):
      continue
    node = merged
    parts = key.split(".")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  merged["profile_file"] = ""
  return ml_collections.ConfigDict(merged)
