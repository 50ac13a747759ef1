"""Overlap metrics: the Dice similarity coefficient, with the conventions for empty masks made explicit."""

from __future__ import annotations

import numpy as np


def dsc(gt: np.ndarray, pred: np.ndarray) -> float:
  """Dice similarity coefficient 2|G & P| / (|G| + |P|) of two masks of one shape.

  Conventions: NaN when both masks are empty (nothing to score: a control case has no tumour DSC);
  0 when exactly one is empty (an empty prediction on a tumour case scores 0).
  """
  gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
  if gt.shape != pred.shape:
    raise ValueError(f"dsc: masks of different shapes {gt.shape} and {pred.shape}")
  total = int(gt.sum()) + int(pred.sum())
  if total == 0:
    return float("nan")
  return float(2.0 * np.logical_and(gt, pred).sum() / total)
