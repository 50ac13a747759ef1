"""Bootstrap 95% confidence intervals: resampling cases, because cases (not voxels) are the samples."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxseg.metrics.detection import auc


def bootstrap_ci(values: Sequence[float], num: int, seed: int = 0,
                 statistic: Callable[[np.ndarray], float] = np.mean, level: float = 0.95
                 ) -> tuple[float, float]:
  """Percentile bootstrap interval of ``statistic`` over the finite ``values`` (one per case).

  Returns:
    (low, high); (nan, nan) without finite values or with ``num`` < 1.
  """
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if v.size == 0 or num < 1:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, v.size, size=(num, v.size))
  stats = np.array([statistic(v[i]) for i in idx]) if statistic is not np.mean else v[idx].mean(axis=1)
  a = (1.0 - level) / 2.0
  return float(np.quantile(stats, a)), float(np.quantile(stats, 1.0 - a))


def bootstrap_ratio_ci(numerators: Sequence[float], denominators: Sequence[float], num: int,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
  """Interval of sum(num) / sum(den) with cases resampled (a cluster bootstrap, e.g. tumours per case).

  Returns:
    (low, high); (nan, nan) when there is nothing to resample or every resample has a zero denominator.
  """
  n = np.asarray(numerators, np.float64)
  d = np.asarray(denominators, np.float64)
  if n.size == 0 or num < 1 or d.sum() == 0:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, n.size, size=(num, n.size))
  den = d[idx].sum(axis=1)
  ok = den > 0
  stats = n[idx].sum(axis=1)[ok] / den[ok]
  a = (1.0 - level) / 2.0
  return float(np.quantile(stats, a)), float(np.quantile(stats, 1.0 - a))


def bootstrap_auc_ci(pos: Sequence[float], neg: Sequence[float], num: int, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
  """Interval of the AUC with positives and negatives resampled separately (stratified)."""
  p, q = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
  if p.size == 0 or q.size == 0 or num < 1:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  stats = [auc(p[rng.integers(0, p.size, p.size)], q[rng.integers(0, q.size, q.size)])
           for _ in range(num)]
  a = (1.0 - level) / 2.0
  return float(np.quantile(stats, a)), float(np.quantile(stats, 1.0 - a))


def _crossed_weights(num_rows: int, num_cols: int, num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Multinomial resampling counts: rows (seeds) [num, R] and columns (cases) [num, C], independently."""
  rng = np.random.default_rng(seed)
  rows = np.stack([np.bincount(rng.integers(0, num_rows, num_rows), minlength=num_rows) for _ in range(num)])
  cols = np.stack([np.bincount(rng.integers(0, num_cols, num_cols), minlength=num_cols) for _ in range(num)])
  return rows.astype(np.float64), cols.astype(np.float64)


def _crossed_stats(numer: np.ndarray, denom: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  n = np.einsum("bs,sc,bc->b", rows, numer, cols)
  d = np.einsum("bs,sc,bc->b", rows, denom, cols)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(d > 0, n / np.where(d > 0, d, 1.0), np.nan)


def crossed_bootstrap(numer, denom, num: int, seed: int = 0, level: float = 0.95,
                      paired_numer=None, paired_denom=None) -> tuple[float, float, float]:
  """Estimate and percentile interval of sum(numer) / sum(denom) over a [seeds, cases] grid.

  The seeds (rows) and the held-out cases (columns) are resampled independently, with replacement (a
  two-way, "crossed" bootstrap: every seed is evaluated on the same cases, so neither is nested in the
  other): the interval reflects both the choice of cases and the training seed. A mean over cases is
  numer = value, denom = 1 (denom 0 where the case does not count, e.g. a control case for a DSC); a
  rate such as tumour-wise sensitivity is numer = detected, denom = tumours.

  With ``paired_numer``/``paired_denom`` (the same grid for a second arm), the statistic is the
  difference (this arm - the paired one), each resample drawing the same seeds and cases for both arms:
  the paired difference.

  Returns:
    (estimate, low, high); NaNs where nothing counts; low = high = NaN with num < 1 or when fewer than two
    cases (columns) count, where resampling cannot say anything about the choice of cases.
  """
  numer, denom = np.asarray(numer, np.float64), np.asarray(denom, np.float64)
  if numer.ndim != 2 or numer.shape != denom.shape:
    raise ValueError(f"crossed_bootstrap: numer {numer.shape} and denom {denom.shape} must be one [seeds, cases]")
  numer = np.where(denom > 0, numer, 0.0)

  def estimate(n, d):
    return float(n.sum() / d.sum()) if d.sum() > 0 else float("nan")

  point = estimate(numer, denom)
  if paired_numer is not None:
    pn, pd = np.asarray(paired_numer, np.float64), np.asarray(paired_denom, np.float64)
    if pn.shape != numer.shape or pd.shape != numer.shape:
      raise ValueError(f"crossed_bootstrap: paired grids {pn.shape} must match {numer.shape}")
    pn = np.where(pd > 0, pn, 0.0)
    point = point - estimate(pn, pd)
  counted = int(((denom > 0).any(axis=0)).sum())
  if paired_numer is not None:
    counted = min(counted, int(((pd > 0).any(axis=0)).sum()))
  if num < 1 or not np.isfinite(point) or counted < 2:
    return point, float("nan"), float("nan")
  rows, cols = _crossed_weights(numer.shape[0], numer.shape[1], num, seed)
  stats = _crossed_stats(numer, denom, rows, cols)
  if paired_numer is not None:
    stats = stats - _crossed_stats(pn, pd, rows, cols)
  stats = stats[np.isfinite(stats)]
  if stats.size == 0:
    return point, float("nan"), float("nan")
  a = (1.0 - level) / 2.0
  return point, float(np.quantile(stats, a)), float(np.quantile(stats, 1.0 - a))
