"""Fits the realistic mode's profile to real lesions: measure them, then invert a forward model.

1. Measure: every annotated lesion of the given cases with jaxseg/metrics/lesion_figures.py (the definitions
   real_lesions.json was measured with), or take the per-lesion figures of such a JSON directly.
2. Forward model: the realistic synthesizer itself puts single tumours at the centre of a phantom organ
   with the measured parenchyma's HU and noise, each with its own parameters drawn over wide ranges
   (equivalent diameter, contrast, std ratio, edge width, outline roughness), and the same figures are
   measured on them. A linear fit (least squares) says what the parameters do to the figures under the
   measurement's own biases (transition, noise, grid).
3. Invert: each figure is fitted on all drawn parameters at once (a figure can move with more than its own
   parameter), and each profile range (lo, hi) is the parameter range whose figure range matches the real one:
   the contrast (lo, hi, skew) from the real p10, median and p90 (realistic.skewed), their spread first
   narrowed by the measurement's own scatter (the forward fit's residual); the diameter the same way on a
   log scale; the edge width and roughness from the real median (+-25%, +-50%: the few real lesions do not
   pin a spread); the std ratio is the real median +-15% as it is (the synthesizer aims each tumour's std
   at its drawn ratio).

Pure numpy/scipy on the measuring side; the forward model is one jitted program (the parameters it varies
are drawn per tumour, so it compiles once).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import nibabel as nib
import numpy as np
from scipy import ndimage

from jaxseg.io.nifti import read_volume
from jaxseg.metrics import lesion_figures
from jaxseg.synth import realism, realistic, spec as spec_lib
from jaxseg.synth.profiles import default_profiles_config

# (profile field, figure, how the range is inverted)
FITS = (("diameter_mm", "eq_diam_mm", "log"), ("contrast", "rel_contrast", "uniform"),
        ("std_ratio", "std_ratio", "identity"), ("edge_width_mm", "edge_width_mm", "median"),
        ("roughness_mm", "sphericity_boundary", "median"))
# Forward model: the ranges each parameter is drawn over (wide, so the fitted lines hold across real data).
FORWARD_RANGES = {"diameter_mm": (6.0, 36.0), "contrast": (0.08, 0.45), "std_ratio": (0.9, 3.0),
                  "edge_width_mm": (0.8, 4.5), "roughness_mm": (0.0, 1.6)}
# +- share around the fitted median. The std ratio is the synthesizer's own target (noise is added up to it),
# so its range is the real median itself (identity): in the forward model its figure follows the contrast
# (the darkening profile's spread) far more than the target, and inverting that weak slope was unstable.
MEDIAN_SPREAD = {"std_ratio": 0.15, "edge_width_mm": 0.25, "roughness_mm": 0.5}
MIN_LESIONS = 3


@dataclasses.dataclass
class Case:
  """One annotated image: HU, organ and tumour masks (canonical RAS), spacing in mm, and its name."""
  ct: np.ndarray
  organ: np.ndarray
  tumor: np.ndarray
  spacing: tuple[float, float, float]
  name: str


def _labels(arr: np.ndarray, ids: Sequence[int]) -> np.ndarray:
  return np.isin(arr, list(ids)) if ids else arr > 0


def load_case(ct_path: str, labels_path: str, organ_labels: Sequence[int], tumor_labels: Sequence[int],
              iso_mm: float | None = None) -> Case:
  """A (CT, label map) pair: organ = organ_labels or tumour, tumour = tumor_labels; optionally resampled.

  Raises:
    ValueError: one line naming the file (missing, unreadable, shapes differ, no tumour voxel).
  """
  img, ct = read_volume(ct_path)
  _, lab = read_volume(labels_path, dtype=None)
  if ct.shape != lab.shape:
    raise ValueError(f"{labels_path}: shape {lab.shape} does not match the CT {ct_path} {ct.shape}")
  tumor = _labels(lab, tumor_labels)
  if not tumor.any():
    raise ValueError(f"{labels_path}: no tumour voxel (--tumor_labels={','.join(map(str, tumor_labels))})")
  organ = _labels(lab, organ_labels) | tumor
  return _canonical_case(img, ct, organ, tumor, iso_mm, os.path.basename(ct_path))


def rows_from_atlas(root: str, organ: str = "liver", iso_mm: float | None = None) -> list[dict]:
  """Lesion rows of every case of an AbdomenAtlas-layout folder with a ``<organ>_tumor`` mask."""
  import glob  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(root):
    raise ValueError(f"--atlas: {root}: no such folder")
  cases = []
  for ct_path in sorted(glob.glob(os.path.join(root, "*", "ct.nii.gz"))):
    seg = os.path.join(os.path.dirname(ct_path), "segmentations")
    tpath, opath = (os.path.join(seg, f"{organ}{s}.nii.gz") for s in ("_tumor", ""))
    if not (os.path.exists(tpath) and os.path.exists(opath)):
      continue
    img, ct = read_volume(ct_path)
    masks = [read_volume(p, dtype=None)[1] > 0 for p in (opath, tpath)]
    for p, m in zip((opath, tpath), masks):
      if m.shape != ct.shape:
        raise ValueError(f"{p}: shape {m.shape} does not match the CT {ct_path} {ct.shape}")
    if not masks[1].any():
      continue
    cases.append(_canonical_case(img, ct, masks[0] | masks[1], masks[1], iso_mm,
                                 os.path.basename(os.path.dirname(ct_path))))
  if not cases:
    raise ValueError(f"--atlas: {root}: no case with segmentations/{organ}.nii.gz and a non-empty {organ}_tumor.nii.gz")
  return measure_cases(cases)


def _canonical_case(img: nib.Nifti1Image, ct: np.ndarray, organ: np.ndarray, tumor: np.ndarray,
                    iso_mm: float | None, name: str) -> Case:
  """Reoriented to RAS, optionally resampled to iso_mm (CT linear, masks nearest)."""
  ornt = nib.orientations.io_orientation(img.affine)
  ct, organ, tumor = (nib.orientations.apply_orientation(a, ornt) for a in (ct, organ, tumor))
  sp = tuple(float(s) for s in np.asarray(nib.affines.voxel_sizes(img.affine))[np.argsort(ornt[:, 0])])
  if iso_mm:
    zoom = np.asarray(sp) / iso_mm
    ct = ndimage.zoom(ct.astype(np.float32), zoom, order=1)
    organ = ndimage.zoom(organ.astype(np.uint8), zoom, order=0) > 0
    tumor = ndimage.zoom(tumor.astype(np.uint8), zoom, order=0) > 0
    sp = (float(iso_mm),) * 3
  return Case(np.asarray(ct, np.float32), np.asarray(organ, bool), np.asarray(tumor, bool), sp, name)


def measure_cases(cases: Iterable[Case]) -> list[dict]:
  """Lesion figures of every tumour component of the cases, each row with its case name and the
  interior parenchyma's std (the forward phantom's noise)."""
  rows = []
  for c in cases:
    for r in lesion_figures.measure_lesions(c.ct, c.organ, c.tumor, c.spacing):
      rows.append(dict(r, case=c.name, interior_std_hu=r["std_hu"] / r["std_ratio"] if r["std_ratio"] else math.nan))
  return rows


def rows_from_figures_json(path: str) -> list[dict]:
  """Per-lesion rows of a measure.py JSON (real_lesions.json): ``file.json`` or ``file.json:source``.

  sphericity_boundary comes from each lesion's n_vox and n_boundary on the source's grid (its ``iso``);
  a source without an isotropic grid gets none (the roughness then keeps the profile's default).
  """
  file, _, source = path.partition(":")
  if not os.path.isfile(file):
    raise ValueError(f"--figures: {file}: no such file")
  try:
    with open(file) as f:
      db = json.load(f)
    sources = db["sources"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"--figures: {file}: not a measure.py JSON with 'sources' ({type(e).__name__})") from None
  name = source or next(iter(sources))
  if name not in sources:
    raise ValueError(f"--figures: {file}: no source {name!r}; sources: {', '.join(sources)}")
  src = sources[name]
  iso = (src.get("meta") or {}).get("iso")
  rows = []
  for c in src.get("components", []):
    missing = [k for k in ("eq_diam_mm", "rel_contrast", "std_ratio", "contrast_hu", "edge_grad_s1") if k not in c]
    if missing:
      raise ValueError(f"--figures: {file}:{name}: a component lacks field {missing[0]!r}")
    r = dict(c, case=name, interior_std_hu=c["std_hu"] / c["std_ratio"] if c.get("std_ratio") else math.nan)
    r["edge_width_mm"] = c["contrast_hu"] / c["edge_grad_s1"] if c["edge_grad_s1"] else math.nan
    if iso and "n_vox" in c and "n_boundary" in c:
      r["sphericity_boundary"] = lesion_figures.boundary_sphericity_of_counts(c["n_vox"], c["n_boundary"],
                                                                                (iso,) * 3)
    rows.append(r)
  return rows


def _finite(rows: list[dict], key: str) -> np.ndarray:
  return np.asarray([r[key] for r in rows if key in r and r[key] is not None and np.isfinite(r[key])], np.float64)


def forward_model(shell_hu: float, noise_hu: float, spacing_mm: float = 1.0, n: int = 56, tumours: int = 32,
                  seed: int = 0, organ: str = "liver", base: ml_collections.ConfigDict | None = None,
                  ranges: dict | None = None, texture_mm: float = 3.0) -> list[dict]:
  """Single realistic tumours in a phantom organ, with per-tumour parameters drawn over FORWARD_RANGES.

  The other ingredients (lobes, rim, mass effect, ...) are those of ``base`` (default: the organ's default
  profile), so the fitted profile is judged as it will be used.

  Each tumour gets its own phantom (its own noise realisation): with one phantom for all, every tumour sat on
  the same patch of noise at the centre, whose mean is not the shell's (seed 0: 9 HU darker within 6 mm),
  so the fitted contrast carried that one realisation's offset (+0.04 on the relative contrast, more for
  small tumours) and rendered tumours measured 0.16-0.18 against the real 0.26.

  Returns:
    One row per measured tumour: its lesion figures plus "param_<field>" (the drawn value).
  """
  phantom = lambda i: realism.phantom_volume(n, shell_hu, noise_hu, seed=seed * 100_003 + i, spacing_mm=spacing_mm,
                                             texture_mm=texture_mm)
  vol = phantom(0)
  p = default_profiles_config()[organ] if base is None else copy.deepcopy(base)
  r = p.realistic
  r.count = (1, 1)                  # one tumour, at the centre: its figures belong to its own draws
  for field, lohi in (ranges or FORWARD_RANGES).items():
    r[field] = lohi
  spec = spec_lib.make_spec(p, name=organ, mode="realistic", min_spacing_mm=spacing_mm)
  shape = vol.ct.shape
  sp = jnp.full((3,), spacing_mm, jnp.float32)
  centre = jnp.asarray([[s // 2 for s in shape]], jnp.int32)

  @jax.jit
  def one(ct, k):
    d = realistic.draw(k, spec, shape)
    out, tumour, _ = realistic.render(ct, jnp.asarray(vol.organ), sp, d, spec, centers=centre)
    return out, tumour, {f: d[f][0] for f in FORWARD_RANGES}

  rows = []
  for i in range(tumours):
    ct = vol.ct if i == 0 else phantom(i).ct     # the organ mask depends on n only
    out, tumour, params = one(jnp.asarray(ct), jax.random.key(seed * 100_003 + i))
    measured = lesion_figures.measure_lesions(np.asarray(out), vol.organ, np.asarray(tumour), vol.spacing)
    if len(measured) != 1:
      continue
    rows.append(dict(measured[0], **{f"param_{f}": float(v) for f, v in params.items()}))
  return rows


def texture_scale_for(grad_per_std: float, spacing_mm: float = 1.0, n: int = 64) -> float:
  """The phantom parenchyma's noise scale (mm) whose smoothed gradient / std matches the real parenchyma's.

  The edge ratio is measured against the parenchyma's gradient, so the forward phantom's texture must have
  the real one's gradient per HU of std. Measured on noise volumes for a few scales, then interpolated.
  """
  rng = np.random.default_rng(0)
  white = rng.normal(size=(n, n, n))
  scales = np.linspace(1.0, 6.0, 11)
  ratios = []
  for s in scales:
    v = ndimage.gaussian_filter(white, s / spacing_mm)
    g = lesion_figures._grad(ndimage.gaussian_filter(v, 1.0 / spacing_mm), np.full(3, spacing_mm))  # pylint: disable=protected-access
    inner = (slice(12, -12),) * 3
    ratios.append(g[inner].mean() / v[inner].std())
  ratios = np.asarray(ratios)          # falls with the scale (above about 1.5 mm)
  return float(np.interp(grad_per_std, ratios[::-1], scales[::-1]))


def _design(forward: list[dict]) -> tuple[np.ndarray, list[str]]:
  """[N, 1 + P] design matrix of the forward tumours' drawn parameters (diameter in log)."""
  fields = [f for f, _, _ in FITS]
  cols = [np.log(np.asarray([f[f"param_{k}"] for f in forward])) if how == "log"
          else np.asarray([f[f"param_{k}"] for f in forward]) for k, _, how in FITS]
  return np.column_stack([np.ones(len(forward))] + cols), fields


def fit(rows: list[dict], forward: list[dict], organ: str = "liver") -> tuple[ml_collections.ConfigDict, dict]:
  """The organ's profile with ``realistic`` fitted to ``rows`` through the ``forward`` model.

  Each figure is fitted on every drawn parameter at once (least squares: figure ~ a + sum b_i p_i, the
  diameter in log), since a figure can move with more than its own parameter (the std ratio with the
  contrast, through the darkening profile). A field's range is then inverted from its figure with the other
  parameters at their own fitted medians (two passes).

  Returns:
    (profile, report): report holds per fitted field the real figure's [p10, median, p90], its own slope
    and the fitted range.
  """
  if len(rows) < MIN_LESIONS:
    raise ValueError(f"calibration needs at least {MIN_LESIONS} measured lesions, got {len(rows)}")
  profile = default_profiles_config()[organ]
  report: dict = {"lesions": len(rows)}
  x, fields = _design(forward)
  centre = {k: float(np.mean(x[:, 1 + i])) for i, k in enumerate(fields)}   # others' values, pass 1
  targets, coefs, resid = {}, {}, {}
  for field, figure, how in FITS:
    real = _finite(rows, figure)
    if len(real) < MIN_LESIONS:
      report[field] = {"kept": list(profile.realistic[field]), "why": f"{len(real)} lesions with {figure}"}
      continue
    y = np.asarray([f.get(figure, np.nan) for f in forward], np.float64)
    ok = np.isfinite(y)
    if how == "log":
      y = np.log(np.where(ok, y, 1.0))
    coefs[field] = np.linalg.lstsq(x[ok], y[ok], rcond=None)[0]
    resid[field] = float(np.std(y[ok] - x[ok] @ coefs[field]))
    q = np.percentile(real, (10, 50, 90))
    targets[field] = np.log(q) if how == "log" else q
    report[field] = {"figure": figure, "real_p10_median_p90": [float(v) for v in q]}
  for _ in range(2):
    solved = {}
    for field, figure, how in FITS:
      if field not in coefs:
        continue
      if how == "identity":
        solved[field] = [float(t) for t in targets[field]]
        continue
      c = coefs[field]
      j = fields.index(field)
      if abs(c[1 + j]) < 1e-6:
        raise ValueError(f"calibration: {figure} does not change with {field} in the forward model")
      rest = c[0] + sum(c[1 + i] * centre[k] for i, k in enumerate(fields) if k != field)
      solved[field] = [(t - rest) / c[1 + j] for t in targets[field]]
    for field, vals in solved.items():
      centre[field] = float(vals[1])
  for field, figure, how in FITS:
    if field not in solved:
      continue
    q10, qmed, q90 = solved[field]
    if how == "identity":
      mid = float(np.median(_finite(rows, figure)))
      s = MEDIAN_SPREAD[field]
      rng = (mid * (1 - s), mid * (1 + s))
    elif how == "median":
      lo_b, hi_b = FORWARD_RANGES[field]
      mid = float(np.clip(qmed, lo_b, hi_b))
      s = MEDIAN_SPREAD[field]
      rng = (max(mid * (1 - s), 0.0), mid * (1 + s))
    else:
      # The measured spread is the parameters' spread plus the measurement's own scatter (noise, grid; the
      # forward fit's residual): take the latter out (errors in variables) before fitting the range.
      slope = abs(coefs[field][1 + fields.index(field)])
      s_obs = abs(q90 - q10) / 2.563
      shrink = math.sqrt(max(1.0 - (resid[field] / slope / s_obs) ** 2, 0.25)) if s_obs > 0 else 1.0
      q10, q90 = qmed - (qmed - q10) * shrink, qmed + (q90 - qmed) * shrink
      report[field]["spread_kept"] = shrink
      lo_, hi_, skew = skewed_range(q10, qmed, q90)
      rng = (math.exp(lo_), math.exp(hi_)) if how == "log" else (lo_, hi_)
      profile.realistic[_SKEW[field]] = round(skew, 4)
      report[field]["skew"] = skew
    lo, hi = _clip_range(field, rng)
    profile.realistic[field] = (round(lo, 4), round(hi, 4))
    report[field].update(slope=float(coefs[field][1 + fields.index(field)]), fitted=[lo, hi])
  return profile, report


_SKEW = {"diameter_mm": "diameter_skew", "contrast": "contrast_skew"}


def skewed_range(q10: float, q50: float, q90: float) -> tuple[float, float, float]:
  """(lo, hi, skew) of realistic.skewed whose p10, median and p90 are the given ones.

  The skew sets where the median lies between p10 and p90 (0: half-way); bisection on it, then lo and hi.
  """
  q10, q90 = min(q10, q90), max(q10, q90)
  share = float(np.clip((q50 - q10) / (q90 - q10), 0.02, 0.98)) if q90 > q10 else 0.5
  quant = lambda s, u: realistic.skewed(np.float64(u), s)
  ratio = lambda s: (quant(s, 0.5) - quant(s, 0.1)) / (quant(s, 0.9) - quant(s, 0.1))
  lo_s, hi_s = -40.0, 40.0          # ratio rises with the skew
  for _ in range(80):
    mid = 0.5 * (lo_s + hi_s)
    lo_s, hi_s = (mid, hi_s) if ratio(mid) < share else (lo_s, mid)
  skew = 0.5 * (lo_s + hi_s)
  width = (q90 - q10) / (quant(skew, 0.9) - quant(skew, 0.1))
  lo = q10 - width * quant(skew, 0.1)
  return float(lo), float(lo + width), float(skew)


def _clip_range(field: str, rng: tuple[float, float]) -> tuple[float, float]:
  """Keeps a fitted range inside what realistic_spec accepts (a near-isodense real lesion can pull the
  contrast's lower end below 0: a brighter-than-organ tumour is real, but not below -0.1)."""
  bounds = {"diameter_mm": (1.0, 200.0), "contrast": (-0.1, 0.9), "std_ratio": (0.5, 5.0),
            "edge_width_mm": (0.3, 10.0), "roughness_mm": (0.0, 5.0)}[field]
  lo, hi = (float(np.clip(v, *bounds)) for v in rng)
  return min(lo, hi), max(lo, hi)


def profile_source(profile: ml_collections.ConfigDict, report: dict, organ: str, inputs: str) -> str:
  """A python profile file (``get_profile()``) for ``--config.synth.profiles.<organ>.profile_file``."""
  lines = [f'"""Realistic-mode profile for the {organ}, fitted by launch/calibrate_synthesis.py.', "",
           f"Inputs: {inputs}", f"Lesions measured: {report['lesions']}.", "",
           "Per field: real figure [p10, median, p90] -> its slope in the forward model -> fitted range.", ""]
  for field, _, _ in FITS:
    r = report[field]
    if "fitted" in r:
      lines.append(f"  {field}: {r['figure']} {np.round(r['real_p10_median_p90'], 4).tolist()} -> slope "
                   f"{r['slope']:.4g} -> {np.round(r['fitted'], 4).tolist()}")
    else:
      lines.append(f"  {field}: kept {r['kept']} ({r['why']})")
  lines += [f"", f"Use: --config.synth.mode=realistic --config.synth.profiles.{organ}.profile_file=<this file>",
            '"""', "", "from jaxseg.synth.profiles import default_profiles_config", "", "",
            "def get_profile():", f"  p = default_profiles_config().{organ}"]
  for field, _, _ in FITS:
    lines.append(f"  p.realistic.{field} = {tuple(profile.realistic[field])!r}")
    if field in _SKEW:
      lines.append(f"  p.realistic.{_SKEW[field]} = {profile.realistic[_SKEW[field]]!r}")
  lines += ["  return p", ""]
  return "\n".join(lines)


def calibrate(rows: list[dict], organ: str = "liver", spacing_mm: float = 1.0, tumours: int = 32,
              seed: int = 0) -> tuple[ml_collections.ConfigDict, dict]:
  """Forward model at the measured parenchyma's HU and noise, then ``fit``."""
  if len(rows) < MIN_LESIONS:
    raise ValueError(f"calibration needs at least {MIN_LESIONS} measured lesions, got {len(rows)}")
  shell = float(np.median(_finite(rows, "shell_mean_hu")))
  noise = float(np.median(_finite(rows, "interior_std_hu")))
  if not (np.isfinite(shell) and np.isfinite(noise) and shell > 0 and noise > 0):
    raise ValueError(f"calibration: the parenchyma's HU ({shell}) and noise ({noise}) must be positive; "
                     "relative contrast needs a parenchyma brighter than 0 HU")
  # The forward tumours' diameters and contrasts follow the real ones (their quantiles inverted directly),
  # so the lines are fitted where the real lesions are: sphericity and edge width depend on size and
  # contrast too, and not linearly over a wide range.
  ranges = dict(FORWARD_RANGES)
  for field, figure, how in FITS[:2]:
    q10, q90 = np.percentile(_finite(rows, figure), (10, 90))
    if how == "log":
      q10, q90 = np.log(max(q10, 1.0)), np.log(max(q90, 1.0))
    width = (q90 - q10) / 0.8
    lo, hi = q10 - 0.1 * width, q90 + 0.1 * width
    lo, hi = (math.exp(lo), math.exp(hi)) if how == "log" else (lo, hi)
    ranges[field] = tuple(float(np.clip(v, *FORWARD_RANGES[field])) for v in (lo, hi))
    if ranges[field][1] - ranges[field][0] < 0.2 * (FORWARD_RANGES[field][1] - FORWARD_RANGES[field][0]):
      ranges[field] = FORWARD_RANGES[field]   # too narrow to fit a slope on: the wide range
  bg = _finite([dict(g=r["edge_grad_s1"] / r["edge_ratio_s1"]) for r in rows
                if r.get("edge_ratio_s1") and r.get("edge_grad_s1") is not None], "g")
  texture = texture_scale_for(float(np.median(bg)) / noise, spacing_mm) if len(bg) else 3.0
  forward = forward_model(shell, noise, spacing_mm, tumours=tumours, seed=seed, organ=organ, ranges=ranges,
                          texture_mm=texture)
  profile, report = fit(rows, forward, organ)
  report.update(shell_hu=shell, noise_hu=noise, texture_mm=texture, forward_tumours=len(forward),
                forward_ranges=ranges)
  return profile, report
