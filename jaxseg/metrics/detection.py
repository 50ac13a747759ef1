"""Lesion detection: tumours as 26-connected components, matched by overlap, binned by size.

The early tumours that screening cares about are small, and a DSC averaged over voxels hides whether
they were found at all; so every ground-truth tumour is scored as detected or missed, and its
equivalent diameter (of the sphere of the same volume) puts it in a size bin.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage, stats

CONNECTIVITY = np.ones((3, 3, 3), bool)  # 26-connectivity
SIZE_BINS = ("lt10", "10to20", "gt20")   # equivalent diameter < 10 mm, 10-20 mm, > 20 mm
SIZE_BIN_NAMES = {"lt10": "<10 mm", "10to20": "10-20 mm", "gt20": ">20 mm"}


def equivalent_diameter(volume_mm3: float | np.ndarray) -> np.ndarray:
  """Diameter (mm) of the sphere of ``volume_mm3``: (6 V / pi)^(1/3)."""
  return np.cbrt(6.0 * np.asarray(volume_mm3, np.float64) / np.pi)


def size_bin(diameter_mm: float) -> str:
  """The size bin of a tumour: "lt10" (< 10 mm), "10to20" (10-20 mm, both included), "gt20" (> 20 mm)."""
  if diameter_mm < 10.0:
    return "lt10"
  return "10to20" if diameter_mm <= 20.0 else "gt20"


def components(mask: np.ndarray, spacing: Sequence[float], min_volume_mm3: float = 0.0
               ) -> tuple[np.ndarray, int]:
  """26-connected components of ``mask`` [X, Y, Z] of at least ``min_volume_mm3``.

  Returns:
    (int32 label image [X, Y, Z] numbering the kept components 1..n, n).
  """
  lab, n = ndimage.label(np.asarray(mask, bool), structure=CONNECTIVITY)
  if n == 0 or min_volume_mm3 <= 0:
    return lab.astype(np.int32), int(n)
  vol = np.bincount(lab.ravel(), minlength=n + 1)[1:] * float(np.prod(spacing))
  keep = vol >= min_volume_mm3
  remap = np.zeros(n + 1, np.int32)
  remap[1:][keep] = np.arange(1, int(keep.sum()) + 1)
  return remap[lab], int(keep.sum())


def tumor_detection(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                    min_volume_mm3: float = 0.0) -> dict:
  """Matches ground-truth tumours with predicted tumour components of one case.

  A ground-truth tumour (a 26-connected component of ``gt``) is detected when any predicted component
  of at least ``min_volume_mm3`` overlaps it.

  Args:
    gt: bool [X, Y, Z] ground-truth tumour mask.
    pred: bool [X, Y, Z] predicted tumour mask.
    spacing: voxel spacing (sx, sy, sz) in mm.
    min_volume_mm3: predicted components below this volume are ignored.

  Returns:
    dict: "tumors" (list of dicts volume_mm3, diameter_mm, bin, detected), "pred_components" (kept
    predicted components), "fp_components" (kept predicted components that overlap no tumour),
    "pred_volume_mm3" (volume of the kept components).
  """
  gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
  voxel = float(np.prod(spacing))
  gl, ng = components(gt, spacing)
  pl, npred = components(pred, spacing, min_volume_mm3)
  tumors = []
  if ng:
    vols = np.bincount(gl.ravel(), minlength=ng + 1)[1:] * voxel
    hit = np.bincount(gl[pl > 0].ravel(), minlength=ng + 1)[1:] > 0
    for v, h in zip(vols, hit):
      d = float(equivalent_diameter(v))
      tumors.append({"volume_mm3": float(v), "diameter_mm": d, "bin": size_bin(d), "detected": bool(h)})
  true_pred = int(np.count_nonzero(np.bincount(pl[gt].ravel(), minlength=npred + 1)[1:]))
  return {"tumors": tumors, "pred_components": npred, "fp_components": npred - true_pred,
          "pred_volume_mm3": float(np.count_nonzero(pl) * voxel)}


def auc(scores_pos: Sequence[float], scores_neg: Sequence[float]) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative), ties counting one half.

  NaN when either group is empty.
  """
  pos = np.asarray(scores_pos, np.float64)
  neg = np.asarray(scores_neg, np.float64)
  if pos.size == 0 or neg.size == 0:
    return float("nan")
  # Mann-Whitney U from average ranks: O(n log n), ties get half credit.
  ranks = stats.rankdata(np.concatenate([pos, neg]))
  u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0
  return float(u / (pos.size * neg.size))


def roc_curve(scores_pos: Sequence[float], scores_neg: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """(false-positive rate, true-positive rate) at every threshold, from (0, 0) to (1, 1)."""
  pos = np.asarray(scores_pos, np.float64)
  neg = np.asarray(scores_neg, np.float64)
  thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
  fpr = [0.0] + [float((neg >= t).mean()) if neg.size else 0.0 for t in thresholds] + [1.0]
  tpr = [0.0] + [float((pos >= t).mean()) if pos.size else 0.0 for t in thresholds] + [1.0]
  return np.asarray(fpr), np.asarray(tpr)
