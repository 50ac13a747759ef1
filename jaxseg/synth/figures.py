"""The realism figures of docs/SYNTHESIS.md's "measured weakness" table, computed on a synthesized volume.

They compare a tumour with the organ around it (shell contrast, its ratio to the shell's HU, tumour mean HU,
edge sharpness, internal texture, size), so the absolute and relative contrast rules can be measured against
the published real-metastasis figures rather than judged by eye.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

REAL_METASTASES = {"shell_minus_tumor_hu": 31.0, "contrast_ratio": 0.26, "tumor_mean_hu": 90.0,
                   "edge_gradient_ratio": 1.4, "internal_std_ratio": 1.5, "equivalent_diameter_mm": 19.0}


def tumor_figures(image: np.ndarray, tumor: np.ndarray, organ: np.ndarray, spacing) -> list[dict[str, float]]:
  """Figures per tumour component (components under 8 voxels are skipped).

  Args:
    image: HU [X, Y, Z] after synthesis.
    tumor: bool [X, Y, Z] tumour mask.
    organ: bool [X, Y, Z] organ mask (without the tumour's label change).
    spacing: [3] mm.

  Returns:
    One dict per component with the keys of REAL_METASTASES.
  """
  spacing = np.asarray(spacing, float)
  image = image.astype(np.float32)
  grad = np.sqrt(sum(np.square(g / s) for g, s in zip(np.gradient(image), spacing)))
  organ_interior = ndimage.binary_erosion(organ & ~tumor, iterations=1)
  organ_grad = float(np.mean(grad[organ_interior])) if organ_interior.any() else np.nan
  organ_std = float(np.std(image[organ_interior])) if organ_interior.any() else np.nan
  comps, n = ndimage.label(tumor)
  out = []
  for c in range(1, n + 1):
    t = comps == c
    if t.sum() < 8:
      continue
    dist = ndimage.distance_transform_edt(~t, sampling=spacing)
    shell = organ & ~tumor & (dist > 5.0) & (dist <= 10.0)
    if not shell.any():
      shell = organ & ~tumor & (dist <= 10.0)
    if not shell.any():
      continue
    edge = t & ~ndimage.binary_erosion(t)
    inner = ndimage.binary_erosion(t)
    shell_mean, tumor_mean = float(image[shell].mean()), float(image[t].mean())
    out.append({
        "shell_minus_tumor_hu": shell_mean - tumor_mean,
        "contrast_ratio": (shell_mean - tumor_mean) / max(abs(shell_mean), 1.0),
        "tumor_mean_hu": tumor_mean,
        "edge_gradient_ratio": float(grad[edge].mean()) / organ_grad,
        "internal_std_ratio": (float(image[inner].std()) if inner.sum() > 1 else np.nan) / organ_std,
        "equivalent_diameter_mm": float((6.0 * t.sum() * np.prod(spacing) / np.pi) ** (1.0 / 3.0)),
    })
  return out


def summarize(rows: list[dict[str, float]]) -> dict[str, list[float]]:
  """median [p10, p90] of each figure over tumours."""
  if not rows:
    return {}
  return {k: [round(float(np.nanpercentile([r[k] for r in rows], q)), 3) for q in (50, 10, 90)] for k in rows[0]}
