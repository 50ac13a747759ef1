"""A profile ConfigDict turned into static, hashable tables: slots per size group, count bounds per class.

Under jit the number of tumours must be static, so every size group gets a fixed number of slots (the most
any class of the profile can ask for) and an active mask. Both the JAX synthesizer and the numpy reference
read these tables, so they agree on what a draw means.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxseg.synth.profiles import SIZE_CLASSES, SIZE_GROUPS
from jaxseg.synth.realistic_spec import RealisticSpec, realistic_spec

CENTER_RULES = ("eroded", "wall", "organ")
INTENSITY_RULES = ("hypodense", "replace")
CONTRASTS = ("absolute",)
# Retired contrast rules -> the one-line reason (docs/SYNTHESIS.md, "Realistic mode").
RETIRED_CONTRASTS = {
    "relative": "config.synth.contrast='relative' is retired: it standardised one texture over all tumours of "
                "a draw, which shifted whole tumours by about +-24 HU and made 15-31% of them brighter than the "
                "organ; use config.synth.mode='realistic' (contrast relative to each tumour's local organ HU)"}
MODES = ("reference", "patch", "realistic")
DEFORMATIONS = ("field3d", "sequential2d")
TEXTURE_RESCALES = ("patch", "bank")
TEXTURE_SOURCES = ("field", "bank")   # config.synth.texture: per-sample field, or the device bank (device_bank.py)
MIN_SPACING_MM = 1.0   # default finest spacing the static box and morphology sizes are made for
SPACING_RANGE_MM = (0.5, 5.0)   # spacings the synthesizer is built and tested for
MAX_DISPLACEMENT_SIGMAS = 3.0   # control-point displacements are clipped to +-3 sigma (bounded boxes)

# Statistics of the published generator's texture bank (420 x 300 x 320 voxels at 1 mm, scipy
# gaussian_filter, one texture per sigma pair; measured once by texture_bank.py, docs/SYNTHESIS.md step 4):
# sigma_a -> (min, max, std) of the blurred uniform noise over the whole bank, and
# (sigma_a, sigma_b) -> mean of the final blurred Bernoulli field over its voxels above 0.12, at the
# central rescale (scale 0.2, base 0.05). "bank" rescaling uses these constants instead of the patch's own
# min, max and mean, so a patch's texture has the bank's statistics whatever the patch size.
BANK_NOISE = {
    3.0: (0.446849, 0.552432, 0.00853566),
    6.0: (0.480363, 0.520628, 0.00309251),
    9.0: (0.487753, 0.512763, 0.00170827),
    12.0: (0.494417, 0.505374, 0.00112408),
    15.0: (0.495232, 0.504724, 0.00083581)}
BANK_MEAN_ABOVE = {
    (3.0, 4.0): 0.150629,
    (3.0, 7.0): 0.15058,
    (6.0, 4.0): 0.148085,
    (6.0, 7.0): 0.147414,
    (9.0, 4.0): 0.148755,
    (9.0, 7.0): 0.148195,
    (12.0, 4.0): 0.154678,
    (12.0, 7.0): 0.153495,
    (15.0, 4.0): 0.152658,
    (15.0, 7.0): 0.151925}
BANK_SCALE, BANK_BASE = 0.2, 0.05


@dataclasses.dataclass(frozen=True)
class GroupSpec:
  name: str
  slots: int
  radius_mm: float
  axis_factor: tuple[float, float]
  sigma_mm: tuple[float, float]
  count_lo: tuple[int, ...]   # per class of the profile (0 when the class does not use the group)
  count_hi: tuple[int, ...]
  exophytic: bool

  def half_extent_mm(self) -> float:
    """Largest distance from the centre a tumour of this group can reach, in mm."""
    return self.radius_mm * self.axis_factor[1] + MAX_DISPLACEMENT_SIGMAS * self.sigma_mm[1]


@dataclasses.dataclass(frozen=True)
class ProfileSpec:
  """Static view of one organ profile (see profiles.py for the meaning of each field)."""
  name: str
  classes: tuple[str, ...]
  groups: tuple[GroupSpec, ...]
  center_rule: str
  axial_ranges: tuple[tuple[float, float], ...]
  erosion_mm: float
  large_at_box_center: bool
  clip_margin_mm: float
  exophytic_prob: float
  intensity: str
  delta: tuple[float, float]
  mass_hu: tuple[float, float]
  mass_texture_hu: float
  fat_fill: bool
  fat_hu_max: float
  edge_sigma_mm: tuple[float, float]
  texture_sigma_a_mm: tuple[float, ...]
  texture_sigma_b_mm: tuple[float, ...]
  texture_scale: tuple[float, float]
  texture_base: tuple[float, float]
  texture_u0: tuple[float, float]
  texture_threshold: float
  contrast: str = "absolute"
  min_spacing_mm: float = MIN_SPACING_MM   # static sizes (boxes, morphology) are made for this spacing
  deformation: str = "field3d"             # "field3d" (one smooth 3D field) | "sequential2d" (reference)
  texture_rescale: str = "patch"           # "patch" (per-patch min-max and mean) | "bank" (reference)
  mode: str = "patch"                      # config.synth.mode: "reference" | "patch" | "realistic"
  realistic: RealisticSpec | None = None  # the realistic ingredients (profile.realistic); None: not available
  texture_source: str = "field"            # config.synth.texture: "field" (per sample) | "bank" (device_bank.py)
  bank_margin: int = 32                    # config.synth.bank_margin: bank texture side = patch side + this

  def half_extent_mm(self, group: "GroupSpec") -> float:
    """Largest distance from the centre a tumour of ``group`` can reach, in mm.

    Sequential 2D passes displace every axis twice (two of the three passes touch it), so the bound on
    the displacement doubles.
    """
    passes = 2.0 if self.deformation == "sequential2d" else 1.0
    return group.radius_mm * group.axis_factor[1] + passes * MAX_DISPLACEMENT_SIGMAS * group.sigma_mm[1]

  def class_index(self, size_class: str) -> int:
    if size_class not in self.classes:
      raise ValueError(f"synth profile {self.name}: size class {size_class!r} not in {self.classes}")
    return self.classes.index(size_class)


def _pair(v: Any, what: str) -> tuple[float, float]:
  v = tuple(float(x) for x in v)
  if len(v) != 2 or v[0] > v[1]:
    raise ValueError(f"synth profile: {what} must be (lo, hi) with lo <= hi, got {v}")
  return v


def check_min_spacing(min_spacing_mm: float, field: str = "config.synth.min_spacing_mm") -> float:
  lo, hi = SPACING_RANGE_MM
  v = float(min_spacing_mm)
  if not lo <= v <= hi:
    raise ValueError(f"{field}={v} mm is outside the supported {lo}-{hi} mm")
  return v


def check_spacing(spacing, min_spacing_mm: float, where: str = "spacing") -> None:
  """Host check: a spacing finer than the static sizes were made for would silently cut tumours."""
  sp = np.asarray(spacing, np.float64).reshape(-1)
  lo, hi = SPACING_RANGE_MM
  if sp.min() < min_spacing_mm - 1e-6:
    raise ValueError(f"{where}: spacing {tuple(round(float(x), 3) for x in sp)} mm is finer than "
                     f"config.synth.min_spacing_mm={min_spacing_mm} (set it to <= {sp.min():.3g})")
  if sp.max() > hi + 1e-6 or sp.min() < lo - 1e-6:
    raise ValueError(f"{where}: spacing {tuple(round(float(x), 3) for x in sp)} mm is outside the "
                     f"synthesizer's supported {lo}-{hi} mm")


def mode_settings(mode: str) -> dict:
  """What a synthesis mode changes in the spec (placement itself is the loader's; see docs/SYNTHESIS.md).

  "realistic" places like "patch" (sites drawn in the patch, crops centred on an organ voxel) and renders
  with jaxseg/synth/realistic.py where the profile's intensity rule is hypodense; elsewhere it renders as
  "patch" (no real lesions to calibrate a soft-tissue mass on).
  """
  if mode not in MODES:
    raise ValueError(f"config.synth.mode must be one of {MODES}, got {mode!r}")
  if mode == "reference":
    return dict(deformation="sequential2d", texture_rescale="bank", mode=mode)
  return dict(deformation="field3d", texture_rescale="patch", mode=mode)


def check_contrast(contrast: str) -> str:
  """config.synth.contrast, or a one-line ValueError (a retired rule names its replacement)."""
  if contrast in RETIRED_CONTRASTS:
    raise ValueError(RETIRED_CONTRASTS[contrast])
  if contrast not in CONTRASTS:
    raise ValueError(f"config.synth.contrast must be one of {CONTRASTS}, got {contrast!r}")
  return contrast


def check_texture(texture: str, mode: str) -> str:
  """config.synth.texture, or a one-line ValueError (the bank serves the patch and reference renders)."""
  if texture not in TEXTURE_SOURCES:
    raise ValueError(f"config.synth.texture must be one of {TEXTURE_SOURCES}, got {texture!r}")
  if texture == "bank" and mode == "realistic":
    raise ValueError("config.synth.texture='bank' works with config.synth.mode 'patch' or 'reference'; realistic "
                     "mode draws its own texture (set config.synth.texture='field')")
  return texture


def bank_constants(sigma_a_mm: float, sigma_b_mm: float) -> tuple[float, float, float, float]:
  """(min, max, std, mean_above) of the reference bank for one sigma pair; ValueError if not measured."""
  if sigma_a_mm not in BANK_NOISE or (sigma_a_mm, sigma_b_mm) not in BANK_MEAN_ABOVE:
    raise ValueError(f"synth profile texture_sigma_a_mm/texture_sigma_b_mm: no reference-bank constants for "
                     f"({sigma_a_mm}, {sigma_b_mm}); measured: {sorted(BANK_MEAN_ABOVE)} (use mode 'patch')")
  lo, hi, std = BANK_NOISE[sigma_a_mm]
  return lo, hi, std, BANK_MEAN_ABOVE[(sigma_a_mm, sigma_b_mm)]


def make_spec(profile: Any, name: str = "organ", contrast: str = "absolute",
              size_class: str | None = None, mode: str | None = None,
              min_spacing_mm: float | None = None, texture: str | None = None,
              bank_margin: int | None = None) -> ProfileSpec:
  """Builds the static spec of ``profile`` (a ConfigDict or ProfileSpec).

  Args:
    profile: one organ profile (profiles.py), or an existing ProfileSpec.
    name: organ name for error messages.
    contrast: "absolute" (config.synth.contrast; "relative" is retired: ValueError).
    size_class: if given, only this class is drawn and groups it does not use get no slots (faster).
    mode: "patch", "reference" or "realistic" (config.synth.mode): the deformation and texture rescale it implies;
      None keeps a ProfileSpec's own (a ConfigDict gets "patch").
    min_spacing_mm: finest spacing the static sizes must serve (config.synth.min_spacing_mm); None keeps a
      ProfileSpec's own (a ConfigDict gets 1 mm).
    texture: "field" or "bank" (config.synth.texture); None keeps a ProfileSpec's own ("field" otherwise).
    bank_margin: config.synth.bank_margin (voxels); None keeps a ProfileSpec's own (32 otherwise).

  Returns:
    The ProfileSpec.
  """
  check_contrast(contrast)
  extra = {}
  if mode is not None or not isinstance(profile, ProfileSpec):
    extra.update(mode_settings(mode or "patch"))
  if min_spacing_mm is not None or not isinstance(profile, ProfileSpec):
    extra["min_spacing_mm"] = check_min_spacing(MIN_SPACING_MM if min_spacing_mm is None else min_spacing_mm)
  if texture is not None:
    extra["texture_source"] = check_texture(texture, mode or getattr(profile, "mode", "patch"))
  if bank_margin is not None:
    if int(bank_margin) != bank_margin or bank_margin < 0:
      raise ValueError(f"config.synth.bank_margin must be a whole number of voxels >= 0, got {bank_margin}")
    extra["bank_margin"] = int(bank_margin)
  if isinstance(profile, ProfileSpec):
    spec = dataclasses.replace(profile, contrast=contrast, **extra)
    if size_class is None:
      return spec
    profile, name = None, spec.name
  else:
    spec = None
  if spec is not None and size_class is not None:
    classes = (spec.class_index(size_class),)
    groups = tuple(dataclasses.replace(g, count_lo=(g.count_lo[classes[0]],), count_hi=(g.count_hi[classes[0]],),
                                       slots=g.count_hi[classes[0]]) for g in spec.groups)
    return dataclasses.replace(spec, classes=(size_class,), groups=tuple(g for g in groups if g.slots > 0))
  p = profile
  classes = tuple(p.classes)
  for c in classes:
    if c not in SIZE_CLASSES:
      raise ValueError(f"synth profile {name}: unknown size class {c!r}; known: {SIZE_CLASSES}")
  if size_class is not None:
    if size_class not in classes:
      raise ValueError(f"synth profile {name}: size class {size_class!r} not in {classes}")
    classes = (size_class,)
  groups = []
  for g in SIZE_GROUPS:
    lo, hi = [], []
    for c in classes:
      if c == "mix":
        bounds = tuple(p.mix_counts[g])
      elif c == g:
        bounds = tuple(p.counts[g])
      else:
        bounds = (0, 0)
      b0, b1 = int(bounds[0]), int(bounds[1])
      if b0 < 0 or b1 < b0:
        raise ValueError(f"synth profile {name}: counts for {g} in class {c} must be 0 <= lo <= hi, got {bounds}")
      lo.append(b0)
      hi.append(b1)
    slots = max(hi)
    if slots == 0:
      continue
    groups.append(GroupSpec(
        name=g, slots=slots, radius_mm=float(p.radius_mm[g]), axis_factor=_pair(p.axis_factor[g], f"{g} axis_factor"),
        sigma_mm=_pair(p.elastic_sigma_mm[g], f"{g} elastic_sigma_mm"), count_lo=tuple(lo), count_hi=tuple(hi),
        exophytic=g in tuple(p.exophytic_classes) and float(p.exophytic_prob) > 0))
  if p.center_rule not in CENTER_RULES:
    raise ValueError(f"synth profile {name}: center_rule must be one of {CENTER_RULES}, got {p.center_rule!r}")
  if p.intensity not in INTENSITY_RULES:
    raise ValueError(f"synth profile {name}: intensity must be one of {INTENSITY_RULES}, got {p.intensity!r}")
  spec = ProfileSpec(
      name=name, classes=classes, groups=tuple(groups), center_rule=str(p.center_rule),
      axial_ranges=tuple(_pair(r, "axial_ranges") for r in p.axial_ranges), erosion_mm=float(p.erosion_mm),
      large_at_box_center=bool(p.large_at_box_center), clip_margin_mm=float(p.clip_margin_mm),
      exophytic_prob=float(p.exophytic_prob), intensity=str(p.intensity), delta=_pair(p.delta, "delta"),
      mass_hu=_pair(p.mass_hu, "mass_hu"), mass_texture_hu=float(p.mass_texture_hu), fat_fill=bool(p.fat_fill),
      fat_hu_max=float(p.fat_hu_max), edge_sigma_mm=_pair(p.edge_sigma_mm, "edge_sigma_mm"),
      texture_sigma_a_mm=tuple(float(s) for s in p.texture_sigma_a_mm),
      texture_sigma_b_mm=tuple(float(s) for s in p.texture_sigma_b_mm),
      texture_scale=_pair(p.texture_scale, "texture_scale"), texture_base=_pair(p.texture_base, "texture_base"),
      texture_u0=_pair(p.texture_u0, "texture_u0"), texture_threshold=float(p.texture_threshold),
      contrast=contrast, realistic=realistic_spec(p, name) if "realistic" in p else None, **extra)
  if spec.texture_rescale == "bank":
    for sa in spec.texture_sigma_a_mm:
      for sb in spec.texture_sigma_b_mm:
        bank_constants(sa, sb)
  return spec


def box_size(group: GroupSpec, n: int, spec: ProfileSpec | None = None) -> int:
  """Static side (voxels) of the box a tumour of ``group`` fits in at the finest supported spacing."""
  ext = spec.half_extent_mm(group) if spec is not None else group.half_extent_mm()
  ms = spec.min_spacing_mm if spec is not None else MIN_SPACING_MM
  half = int(math.ceil(ext / ms)) + 1
  return min(n, 2 * half + 1)


def coarse_step(group: GroupSpec, spec: ProfileSpec | None = None) -> int:
  """Static grid step (voxels) at which a group evaluated over the whole patch is sampled.

  The shape is evaluated as sqrt of the ellipsoid function, which is distance-like, so linear
  interpolation moves the boundary by about step^2 / (8 * semi-axis) voxels: below 0.2 voxel here at 1 mm.
  """
  ms = spec.min_spacing_mm if spec is not None else MIN_SPACING_MM
  smallest_axis_vox = group.radius_mm * group.axis_factor[0] / ms
  return int(np.clip(smallest_axis_vox // 6, 1, 4))


def use_box(group: GroupSpec, shape: tuple[int, ...], spec: ProfileSpec | None = None) -> bool:
  """Small tumours are evaluated in their own box; big ones over the whole patch (on a coarse grid)."""
  vol = np.prod([box_size(group, n, spec) for n in shape])
  return bool(vol * 8 <= np.prod(shape))
