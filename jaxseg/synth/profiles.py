"""Organ profiles of the tumour synthesizer, as config data (not code).

docs/SYNTHESIS.md gives the rules per organ: size classes and counts, semi-axis ranges, elastic strength, where
centres go, what the tumour is clipped to, and how the intensity changes. Keeping them as one
ml_collections ConfigDict per organ lets a user change any of them from the command line, for example
``--config.synth.profiles.liver.delta=(50,120)``, without touching the synthesizer.

Liver, pancreas and kidney follow the published rules (Hu et al. 2023; Chen et al. 2024). Colon, esophagus
and uterus have no published rule-based synthesizer: their rows are this project's starting choice (wall-
thickening soft-tissue masses; a hypodense uterine mass) and are meant to be changed.

Fields of one profile (all lengths in millimetres; converted with the patch's voxel spacing):
  classes: size classes drawn uniformly per sample ("tiny", "small", "medium", "large", "mix").
  radius_mm: base radius R per class.
  counts: inclusive (lo, hi) tumour count per class; mix_counts: the counts of each class inside "mix".
  axis_factor: (lo, hi) of each semi-axis as a multiple of R, per class.
  elastic_sigma_mm: (lo, hi) of the control-point displacement std, per class.
  center_rule: "eroded" (organ voxel after an in-plane erosion), "wall" (organ boundary voxel) or "organ".
  axial_ranges: fractions of the organ's axial extent tried in order for centres (the last is the fallback).
  erosion_mm: half-width of the in-plane square erosion (2 mm = the reference's 5x5 kernel at 1 mm).
  large_at_box_center: large tumours are centred at the centre of the organ's bounding box (pancreas).
  clip_margin_mm: the tumour is clipped to the organ dilated by this much (0: the organ itself).
  exophytic_prob, exophytic_classes: probability that a tumour of these classes is not clipped at all (kidney).
  intensity: "hypodense" (image - texture * edge * delta inside the organ) or "replace" (a soft-tissue mass
    of mass_hu replaces lumen and wall inside the allowed region).
  delta: (lo, hi) of the HU drop (hypodense); mass_hu: (lo, hi) of the mass HU (replace);
  mass_texture_hu: amplitude of the texture in the mass (replace).
  fat_fill, fat_hu_max: raise voxels <= fat_hu_max HU inside the tumour to the organ's non-fat mean first.
  edge_sigma_mm: (lo, hi) of the soft-edge Gaussian.
  texture_*: the texture recipe of step 4 (sigma banks in mm, rescale, Bernoulli, beta).
  realistic: the ingredients of config.synth.mode = "realistic" (jaxseg/synth/realistic.py), below.
  profile_file: "" or a python file whose get_profile() returns this organ's profile (profile_file.py), e.g.
    the calibration tool's output: ``--config.synth.profiles.liver.profile_file=profile.py``.

Fields of ``realistic`` (docs/SYNTHESIS.md, "Realistic mode"; defaults fitted by launch/calibrate_synthesis.py
on the real liver metastases of real_lesions.json, source ircad_p1_iso1; every ingredient can be switched off):
  count: inclusive (lo, hi) tumours per synthesis (static slots: hi).
  diameter_mm, diameter_skew: (lo, hi) of the equivalent diameter (6 V / pi)^(1/3) of the whole lesion, drawn
    log-uniformly, bent by the skew (realistic.skewed: > 0 towards hi, < 0 towards lo, 0 uniform); the
    lobulated shape is scaled to that volume.
  axis_factor: (lo, hi) of each semi-axis of the main ellipsoid (ovoid), before the volume scaling.
  lobes: inclusive (lo, hi) count of extra overlapping ellipsoids (0: one ellipsoid).
  lobe_size: (lo, hi) of a lobe's radius as a share of the main lobe's.
  lobulation: (lo, hi) of a lobe centre's offset from the main centre, as a share of the main radius
    (0: lobes inside the main ellipsoid, no lobulation).
  irregularity: (lo, hi) std of a smooth 3D deformation (3 x 3 x 3 control points) as a share of the radius.
  roughness_mm, roughness_scale_mm: (lo, hi) std (mm) of fine bumps of the outline: smoothed noise of
    roughness_scale_mm added to the depth ((0, 0): a smooth outline).
  contrast, contrast_skew: (lo, hi) (and skew, as diameter_skew's) of the tumour's mean relative drop: mean
    over the tumour of (local organ HU - tumour HU)
    / local organ HU, where local organ HU is a Gaussian (local_sigma_mm) mean of the organ around this
    tumour's centre (per tumour; nothing is standardised over the draw).
  std_ratio, heterogeneity: (lo, hi) of the tumour's HU std / the organ interior's std; the smoothed noise
    (texture_sigma_mm) added inside the tumour brings it there (heterogeneity False: no added noise).
  edge_width_mm: (lo, hi) of the 10-90% width of the inner intensity transition.
  label_at_outer_edge: the label ends at the transition's outer (10%) edge, as real annotations do (False: at
    its middle, as the published rule's soft edge is).
  core_depth_mm, core_share: the drop keeps growing towards the centre over core_depth_mm past the
    transition; core_share of the drop is that growth (0: a flat plateau).
  replace_vessels, vessel_k: inside the tumour, voxels further than vessel_k x the organ's std from the local
    organ HU (vessels; partial-volume fat at the organ's edge) are pulled to the local organ HU before the
    drop (replaced by tumour tissue).
  rim_prob, rim_hu, rim_offset_mm, rim_sigma_mm, rim_min_volume_mm3: with probability rim_prob a tumour of at
    least rim_min_volume_mm3 gets a ring rim_hu brighter than the organ, a Gaussian of rim_sigma_mm centred
    rim_offset_mm outside its label (0: no rim).
  mass_effect_mm: (lo, hi) of the outward displacement of the tissue and labels at the tumour's edge, decaying
    as 1 / r^2 beyond it (volume-preserving); (0, 0) switches it off (and its cost).
  local_sigma_mm: the Gaussian scale of the local organ HU.
"""

from __future__ import annotations

import ml_collections

SIZE_GROUPS: tuple[str, ...] = ("tiny", "small", "medium", "large")
SIZE_CLASSES: tuple[str, ...] = SIZE_GROUPS + ("mix",)


def _per_class(tiny, small, medium, large) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(tiny=tiny, small=small, medium=medium, large=large))


def _base_profile() -> ml_collections.ConfigDict:
  """The liver profile: the published reference behaviour."""
  p = ml_collections.ConfigDict()
  p.classes = SIZE_CLASSES
  p.radius_mm = _per_class(4.0, 8.0, 16.0, 32.0)
  p.counts = _per_class((3, 10), (3, 10), (2, 5), (1, 3))
  p.mix_counts = _per_class((3, 10), (5, 10), (2, 5), (1, 3))
  p.axis_factor = _per_class((0.75, 1.25), (0.75, 1.25), (0.75, 1.25), (0.75, 1.25))
  p.elastic_sigma_mm = _per_class((0.5, 1.0), (1.0, 2.0), (3.0, 6.0), (5.0, 10.0))
  p.center_rule = "eroded"
  p.axial_ranges = ((0.3, 0.7), (0.2, 0.8), (0.1, 0.9), (0.0, 1.0))
  p.erosion_mm = 2.0
  p.large_at_box_center = False
  p.clip_margin_mm = 0.0
  p.exophytic_prob = 0.0
  p.exophytic_classes = ("medium", "large")
  p.intensity = "hypodense"
  p.delta = (65.0, 145.0)
  p.mass_hu = (30.0, 70.0)
  p.mass_texture_hu = 20.0
  p.fat_fill = False
  p.fat_hu_max = 65.0
  p.edge_sigma_mm = (1.0, 2.0)
  p.texture_sigma_a_mm = (3.0, 6.0, 9.0, 12.0, 15.0)
  p.texture_sigma_b_mm = (4.0, 7.0)
  p.texture_scale = (0.19, 0.21)
  p.texture_base = (0.04, 0.06)
  p.texture_u0 = (0.5, 0.55)
  p.texture_threshold = 0.12
  p.realistic = realistic_defaults()
  p.profile_file = ""
  return p


def realistic_defaults() -> ml_collections.ConfigDict:
  """The realistic mode's ingredients (module docstring).

  diameter_mm, contrast, std_ratio, edge_width_mm and roughness_mm are what
  ``python launch/calibrate_synthesis.py --figures=real_lesions.json:ircad_p1_iso1 --organ=liver`` fits (7
  real liver metastases; docs/SYNTHESIS.md); the lobes, core darkening (5-8 mm) and rim (3 of 6 lesions of
  at least 500 mm^3, 5-10 HU, 0.5-3 mm outside) follow what a reader sees on the same lesions.
  """
  r = ml_collections.ConfigDict()
  r.count = (1, 3)
  r.diameter_mm = (12.9, 46.5)
  r.diameter_skew = -0.757
  r.axis_factor = (0.75, 1.25)
  r.lobes = (0, 3)
  r.lobe_size = (0.45, 0.8)
  r.lobulation = (0.4, 0.9)
  r.irregularity = (0.04, 0.1)
  r.roughness_mm = (0.50, 1.50)
  r.roughness_scale_mm = 1.5
  r.contrast = (0.028, 0.315)
  r.contrast_skew = 1.287
  r.std_ratio = (1.30, 1.75)
  r.heterogeneity = True
  r.texture_sigma_mm = 1.5
  r.edge_width_mm = (1.78, 2.96)
  r.label_at_outer_edge = True
  r.core_depth_mm = (5.0, 8.0)
  r.core_share = 0.5
  r.replace_vessels = True
  r.vessel_k = 1.5
  r.rim_prob = 0.5
  r.rim_hu = (5.0, 10.0)
  r.rim_offset_mm = 1.5
  r.rim_sigma_mm = 0.8
  r.rim_min_volume_mm3 = 500.0
  r.mass_effect_mm = (0.5, 2.0)
  r.local_sigma_mm = 10.0
  return r


def liver_profile() -> ml_collections.ConfigDict:
  return _base_profile()


def pancreas_profile() -> ml_collections.ConfigDict:
  p = _base_profile()
  p.classes = ("tiny", "small", "medium", "large")
  p.counts = _per_class((1, 3), (1, 3), (1, 1), (1, 1))
  p.mix_counts = _per_class((0, 0), (0, 0), (0, 0), (0, 0))
  p.axis_factor.large = (0.75, 2.0)
  p.large_at_box_center = True
  p.fat_fill = True
  return p


def kidney_profile() -> ml_collections.ConfigDict:
  p = pancreas_profile()
  p.large_at_box_center = False
  p.fat_fill = False
  p.exophytic_prob = 0.5   # medium and large tumours grow out of the kidney half the time
  return p


def colon_profile() -> ml_collections.ConfigDict:
  p = _base_profile()
  p.classes = ("small", "medium")
  p.counts = _per_class((0, 0), (1, 2), (1, 2), (0, 0))
  p.mix_counts = _per_class((0, 0), (0, 0), (0, 0), (0, 0))
  p.center_rule = "wall"
  p.clip_margin_mm = 10.0
  p.intensity = "replace"
  p.mass_hu = (30.0, 70.0)
  return p


def esophagus_profile() -> ml_collections.ConfigDict:
  p = colon_profile()
  p.counts = _per_class((0, 0), (1, 1), (1, 1), (0, 0))
  p.center_rule = "organ"
  p.mass_hu = (30.0, 60.0)
  return p


def uterus_profile() -> ml_collections.ConfigDict:
  p = _base_profile()
  p.classes = ("small", "medium", "large")
  p.counts = _per_class((0, 0), (1, 2), (1, 2), (1, 2))
  p.mix_counts = _per_class((0, 0), (0, 0), (0, 0), (0, 0))
  p.delta = (30.0, 90.0)
  return p


def default_profiles_config() -> ml_collections.ConfigDict:
  """All six organ profiles: ``config.synth.profiles.<organ>``."""
  c = ml_collections.ConfigDict()
  c.liver = liver_profile()
  c.pancreas = pancreas_profile()
  c.kidney = kidney_profile()
  c.colon = colon_profile()
  c.esophagus = esophagus_profile()
  c.uterus = uterus_profile()
  return c
