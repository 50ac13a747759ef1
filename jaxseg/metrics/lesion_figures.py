"""How liver lesions look on CT: size and contrast figures per lesion, to calibrate phantoms against real ones.

The definitions follow the usual measurement of real liver metastases (one figure per 26-connected tumour
component; components under ``min_volume_mm3`` are dropped):

  volume_mm3, eq_diam_mm = (6 V / pi)^(1/3);
  mean_hu, std_hu: mean and standard deviation of HU inside the component;
  shell_mean_hu: mean HU of liver parenchyma (liver and no tumour) at 5 < d <= 10 mm from the component
    (Euclidean distance in mm);
  contrast_hu = shell_mean_hu - mean_hu (positive: hypodense), rel_contrast = contrast_hu / shell_mean_hu;
  std_ratio = std_hu / std of interior parenchyma (liver and no tumour, > 5 mm from the liver's edge and
    from any tumour);
  edge_ratio_s1 = mean |grad HU| (HU/mm) on the component's boundary voxels (tumour voxels with a
    6-neighbour outside it) / the same mean over interior parenchyma, both on the CT smoothed with a
    Gaussian of sigma 1 mm; edge_grad_s1 is the numerator, edge_width_mm = contrast_hu / edge_grad_s1 (a
    contrast-independent width of the transition);
  n_boundary: the number of those boundary voxels; sphericity_boundary = n_boundary of a digital ball with
    the component's volume on the same grid / n_boundary (1 for a ball, lower for a lobulated or irregular
    outline). real_lesions.json records n_vox and n_boundary per lesion, so the real lesions' value is known
    (``boundary_sphericity_of_counts``).

Pure numpy / scipy. ``summarize`` gives n, median, p10, p90, mean, min and max per figure, pooled over images.
"""

from __future__ import annotations

import functools
import glob
import math
import os
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

FIGURES = ("volume_mm3", "eq_diam_mm", "mean_hu", "std_hu", "shell_mean_hu", "contrast_hu", "rel_contrast",
           "std_ratio", "edge_ratio_s1", "edge_grad_s1", "edge_width_mm", "n_boundary", "sphericity_boundary")
_C26 = np.ones((3, 3, 3), bool)
_C6 = ndimage.generate_binary_structure(3, 1)


def _grad(ct: np.ndarray, spacing: np.ndarray) -> np.ndarray:
  g = np.gradient(ct, *spacing)
  return np.sqrt(sum(x * x for x in g))


def _mean(x: np.ndarray) -> float:
  return float(x.mean()) if x.size else math.nan


@functools.lru_cache(maxsize=4096)
def ball_boundary_voxels(n_vox: int, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> int:
  """Boundary voxels (a 6-neighbour outside) of the digital ball of ``n_vox`` voxels on a grid of ``spacing``.

  The ball is the n_vox voxels nearest (in mm) to a voxel centre, so its volume matches exactly.
  """
  sp = np.asarray(spacing, np.float64)
  r_mm = (3.0 * n_vox * sp.prod() / (4.0 * math.pi)) ** (1.0 / 3.0)
  half = np.ceil(r_mm / sp).astype(int) + 2
  axes = [np.arange(-h, h + 1) * s for h, s in zip(half, sp)]
  x, y, z = np.meshgrid(*axes, indexing="ij")
  dist = np.sqrt(x * x + y * y + z * z)
  ball = dist <= np.sort(dist.ravel())[int(n_vox) - 1]
  return int((ball & ~ndimage.binary_erosion(ball, structure=_C6, border_value=1)).sum())


def boundary_sphericity_of_counts(n_vox: int, n_boundary: int, spacing=(1.0, 1.0, 1.0)) -> float:
  """sphericity_boundary from a component's voxel and boundary-voxel counts (e.g. real_lesions.json)."""
  return ball_boundary_voxels(int(n_vox), tuple(float(s) for s in spacing)) / float(n_boundary)


def measure_lesions(ct: np.ndarray, liver: np.ndarray, tumor: np.ndarray, spacing: Sequence[float],
                    min_volume_mm3: float = 10.0, shell_mm: tuple[float, float] = (5.0, 10.0)) -> list[dict]:
  """Figures of every tumour component of one image (see the module docstring).

  Args:
    ct: HU [X, Y, Z].
    liver: liver mask (with or without its tumours).
    tumor: tumour mask.
    spacing: voxel spacing in mm.
    min_volume_mm3: smaller components are dropped.
    shell_mm: the parenchyma shell around a component for its reference HU.

  Returns:
    One dict of figures per kept component.
  """
  ct = np.asarray(ct, np.float32)
  liver, tumor = np.asarray(liver, bool), np.asarray(tumor, bool)
  sp = np.asarray(spacing, np.float64)
  paren = liver & ~tumor
  grad_s1 = _grad(ndimage.gaussian_filter(ct, 1.0 / sp), sp)
  d_edge = ndimage.distance_transform_edt(liver, sampling=sp)
  d_tum = ndimage.distance_transform_edt(~tumor, sampling=sp) if tumor.any() else np.full(ct.shape, np.inf)
  interior = paren & (d_edge > 5.0) & (d_tum > 5.0)
  interior_std = float(ct[interior].std()) if interior.any() else math.nan
  bg_s1 = _mean(grad_s1[interior])
  lab, n = ndimage.label(tumor, structure=_C26)
  counts = np.bincount(lab.ravel(), minlength=n + 1)
  boxes = ndimage.find_objects(lab)
  margin = np.ceil((shell_mm[1] + 2.0) / sp).astype(int)
  voxel = float(np.prod(sp))
  out = []
  for i in range(1, n + 1):
    vol = counts[i] * voxel
    if vol < min_volume_mm3:
      continue
    sl = tuple(slice(max(b.start - m, 0), min(b.stop + m, s)) for b, m, s in zip(boxes[i - 1], margin, ct.shape))
    comp = lab[sl] == i
    c = ct[sl]
    d = ndimage.distance_transform_edt(~comp, sampling=sp)
    shell = (d > shell_mm[0]) & (d <= shell_mm[1]) & paren[sl]
    boundary = comp & ~ndimage.binary_erosion(comp, structure=_C6, border_value=1)
    r = {"volume_mm3": vol, "eq_diam_mm": (6.0 * vol / math.pi) ** (1.0 / 3.0), "mean_hu": float(c[comp].mean()),
         "std_hu": float(c[comp].std()), "shell_mean_hu": _mean(c[shell])}
    r["contrast_hu"] = r["shell_mean_hu"] - r["mean_hu"]
    r["rel_contrast"] = r["contrast_hu"] / r["shell_mean_hu"] if r["shell_mean_hu"] else math.nan
    r["std_ratio"] = r["std_hu"] / interior_std if interior_std else math.nan
    r["edge_grad_s1"] = _mean(grad_s1[sl][boundary])
    r["edge_ratio_s1"] = r["edge_grad_s1"] / bg_s1 if bg_s1 else math.nan
    r["edge_width_mm"] = r["contrast_hu"] / r["edge_grad_s1"] if r["edge_grad_s1"] else math.nan
    r["n_boundary"] = int(boundary.sum())
    r["sphericity_boundary"] = boundary_sphericity_of_counts(int(counts[i]), r["n_boundary"], tuple(sp))
    out.append(r)
  return out


def summarize(rows: Iterable[dict], figures: Sequence[str] = FIGURES) -> dict:
  """{figure: {n, median, p10, p90, mean, min, max}} over the finite values of ``rows``."""
  rows = list(rows)
  out = {}
  for f in figures:
    v = np.asarray([r[f] for r in rows if f in r and r[f] is not None and np.isfinite(r[f])], np.float64)
    if v.size:
      out[f] = {"n": int(v.size), "median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
                "p90": float(np.percentile(v, 90)), "mean": float(v.mean()), "min": float(v.min()),
                "max": float(v.max())}
  return out


def measure_atlas_cases(root: str, organ: str = "liver", min_volume_mm3: float = 10.0) -> list[dict]:
  """Figures of the ``<organ>_tumor`` components of every case of an AbdomenAtlas-layout folder."""
  def load(path):
    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.dataobj), tuple(float(s) for s in img.header.get_zooms()[:3])

  rows = []
  for case in sorted(glob.glob(os.path.join(root, "*", "ct.nii.gz"))):
    seg = os.path.join(os.path.dirname(case), "segmentations")
    tpath = os.path.join(seg, f"{organ}_tumor.nii.gz")
    if not os.path.exists(tpath):
      continue
    ct, sp = load(case)
    tumor = load(tpath)[0] > 0
    organ_mask = load(os.path.join(seg, f"{organ}.nii.gz"))[0] > 0
    for r in measure_lesions(ct, organ_mask | tumor, tumor, sp, min_volume_mm3):
      rows.append(dict(r, case=os.path.basename(os.path.dirname(case))))
  return rows


# Real liver metastases on portal-venous CT (3D-IRCADb-01 patient 1, 7 lesions, native grid 0.57 x 0.57 x
# 1.6 mm), measured with the definitions above: (p10, median, p90) per figure. The phantom generator's
# liver lesions are calibrated to these (tests/test_phantom.py measures them the same way).
REAL_LIVER_METASTASES = {
    "eq_diam_mm": (13.79, 19.26, 37.86),
    "contrast_hu": (7.63, 31.75, 37.96),
    "rel_contrast": (0.0725, 0.261, 0.3212),
    "std_ratio": (1.015, 1.289, 1.575),
    "edge_ratio_s1": (2.250, 2.503, 2.972),
    "mean_hu": (76.04, 89.92, 108.44),
    "shell_mean_hu": (109.40, 117.64, 125.73),
    "edge_width_mm": (0.6425, 2.444, 2.969),
}
# The same 7 lesions resampled to 1 mm (real_lesions.json, source ircad_p1_iso1): sphericity_boundary from
# each lesion's n_vox and n_boundary there (boundary_sphericity_of_counts; the native grid's counts are
# anisotropic), and the figures that change most with the grid.
REAL_LIVER_METASTASES_1MM = {
    "sphericity_boundary": (0.7607, 0.8302, 0.8640),
    "rel_contrast": (0.0709, 0.256, 0.3196),
    "std_ratio": (1.0817, 1.5244, 1.7098),
    "edge_ratio_s1": (2.262, 2.7925, 3.2824),
    "eq_diam_mm": (13.71, 19.40, 37.78),
}


def comparison_table(summary: dict, reference: dict = REAL_LIVER_METASTASES) -> str:
  """A markdown table of ``summary`` (from ``summarize``) beside the reference's (p10, median, p90)."""
  lines = ["| figure | phantom median [p10, p90] (n) | real median [p10, p90] | phantom median in real [p10, p90] |",
           "| --- | --- | --- | --- |"]
  for f, (lo, med, hi) in reference.items():
    s = summary.get(f)
    if s is None:
      continue
    inside = "yes" if lo <= s["median"] <= hi else "no"
    lines.append(f"| {f} | {s['median']:.3g} [{s['p10']:.3g}, {s['p90']:.3g}] ({s['n']}) | {med:.3g} [{lo:.3g}, "
                 f"{hi:.3g}] | {inside} |")
  return "\n".join(lines)
