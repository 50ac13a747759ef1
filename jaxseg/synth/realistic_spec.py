"""The realistic mode's ingredients as a static, hashable table (from ``profile.realistic``; profiles.py).

Kept apart from spec.py's ProfileSpec so the published-rule fields and the calibrated-on-real-lesions fields
do not mix: realistic.py reads only this table (plus the profile's centre rule and clip margin), and the
calibration tool (calibrate.py) writes exactly these fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Fields of profile.realistic, in the order profiles.py documents them.
FIELDS = ("count", "diameter_mm", "diameter_skew", "axis_factor", "lobes", "lobe_size", "lobulation",
          "irregularity", "roughness_mm", "roughness_scale_mm", "contrast", "contrast_skew",
          "std_ratio", "heterogeneity", "texture_sigma_mm", "edge_width_mm", "label_at_outer_edge", "core_depth_mm",
          "core_share", "replace_vessels", "vessel_k", "rim_prob", "rim_hu", "rim_offset_mm", "rim_sigma_mm",
          "rim_min_volume_mm3", "mass_effect_mm", "local_sigma_mm")
MAX_LOBES = 6   # static upper bound on extra lobes (slots of the union)


@dataclasses.dataclass(frozen=True)
class RealisticSpec:
  """Static view of ``profile.realistic`` (see profiles.py for each field's meaning and default)."""
  count: tuple[int, int]
  diameter_mm: tuple[float, float]
  diameter_skew: float
  axis_factor: tuple[float, float]
  lobes: tuple[int, int]
  lobe_size: tuple[float, float]
  lobulation: tuple[float, float]
  irregularity: tuple[float, float]
  roughness_mm: tuple[float, float]
  roughness_scale_mm: float
  contrast: tuple[float, float]
  contrast_skew: float
  std_ratio: tuple[float, float]
  heterogeneity: bool
  texture_sigma_mm: float
  edge_width_mm: tuple[float, float]
  label_at_outer_edge: bool
  core_depth_mm: tuple[float, float]
  core_share: float
  replace_vessels: bool
  vessel_k: float
  rim_prob: float
  rim_hu: tuple[float, float]
  rim_offset_mm: float
  rim_sigma_mm: float
  rim_min_volume_mm3: float
  mass_effect_mm: tuple[float, float]
  local_sigma_mm: float

  @property
  def slots(self) -> int:
    return self.count[1]

  @property
  def mass_effect(self) -> bool:
    return self.mass_effect_mm[1] > 0


def _pair(v: Any, field: str, name: str, lo: float | None = None, hi: float | None = None,
          integer: bool = False) -> tuple:
  try:
    out = tuple(int(x) if integer else float(x) for x in v)
  except (TypeError, ValueError):
    raise ValueError(f"synth profile {name}: realistic.{field} must be (lo, hi), got {v!r}") from None
  if len(out) != 2 or out[0] > out[1]:
    raise ValueError(f"synth profile {name}: realistic.{field} must be (lo, hi) with lo <= hi, got {v!r}")
  if (lo is not None and out[0] < lo) or (hi is not None and out[1] > hi):
    raise ValueError(f"synth profile {name}: realistic.{field}={out} must lie within [{lo}, {hi}]")
  return out


def _num(v: Any, field: str, name: str, lo: float, hi: float) -> float:
  try:
    x = float(v)
  except (TypeError, ValueError):
    raise ValueError(f"synth profile {name}: realistic.{field} must be a number, got {v!r}") from None
  if not lo <= x <= hi:
    raise ValueError(f"synth profile {name}: realistic.{field}={x} must lie within [{lo}, {hi}]")
  return x


def realistic_spec(profile: Any, name: str = "organ") -> RealisticSpec:
  """Builds and checks the static table of ``profile.realistic`` (ValueError naming the field)."""
  r = profile.realistic
  missing = [f for f in FIELDS if f not in r]
  unknown = [f for f in r.keys() if f not in FIELDS]
  if missing or unknown:
    raise ValueError(f"synth profile {name}: realistic: missing fields {missing}, unknown fields {unknown}")
  inf = float("inf")
  return RealisticSpec(
      count=_pair(r.count, "count", name, 1, 16, integer=True),
      diameter_mm=_pair(r.diameter_mm, "diameter_mm", name, 1.0, 200.0),
      diameter_skew=_num(r.diameter_skew, "diameter_skew", name, -50.0, 50.0),
      axis_factor=_pair(r.axis_factor, "axis_factor", name, 0.2, 5.0),
      lobes=_pair(r.lobes, "lobes", name, 0, MAX_LOBES, integer=True),
      lobe_size=_pair(r.lobe_size, "lobe_size", name, 0.05, 1.5),
      lobulation=_pair(r.lobulation, "lobulation", name, 0.0, 2.0),
      irregularity=_pair(r.irregularity, "irregularity", name, 0.0, 0.5),
      roughness_mm=_pair(r.roughness_mm, "roughness_mm", name, 0.0, 20.0),
      roughness_scale_mm=_num(r.roughness_scale_mm, "roughness_scale_mm", name, 0.3, 20.0),
      contrast=_pair(r.contrast, "contrast", name, -1.0, 1.0),
      contrast_skew=_num(r.contrast_skew, "contrast_skew", name, -50.0, 50.0),
      std_ratio=_pair(r.std_ratio, "std_ratio", name, 0.0, 10.0),
      heterogeneity=bool(r.heterogeneity),
      texture_sigma_mm=_num(r.texture_sigma_mm, "texture_sigma_mm", name, 0.0, 20.0),
      edge_width_mm=_pair(r.edge_width_mm, "edge_width_mm", name, 0.1, 20.0),
      label_at_outer_edge=bool(r.label_at_outer_edge),
      core_depth_mm=_pair(r.core_depth_mm, "core_depth_mm", name, 0.1, 100.0),
      core_share=_num(r.core_share, "core_share", name, 0.0, 1.0),
      replace_vessels=bool(r.replace_vessels),
      vessel_k=_num(r.vessel_k, "vessel_k", name, 0.0, 10.0),
      rim_prob=_num(r.rim_prob, "rim_prob", name, 0.0, 1.0),
      rim_hu=_pair(r.rim_hu, "rim_hu", name, -200.0, 200.0),
      rim_offset_mm=_num(r.rim_offset_mm, "rim_offset_mm", name, 0.0, 20.0),
      rim_sigma_mm=_num(r.rim_sigma_mm, "rim_sigma_mm", name, 0.1, 20.0),
      rim_min_volume_mm3=_num(r.rim_min_volume_mm3, "rim_min_volume_mm3", name, 0.0, inf),
      mass_effect_mm=_pair(r.mass_effect_mm, "mass_effect_mm", name, 0.0, 20.0),
      local_sigma_mm=_num(r.local_sigma_mm, "local_sigma_mm", name, 1.0, 100.0))
