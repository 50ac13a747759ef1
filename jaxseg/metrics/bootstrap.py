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


def crossed_auc_bootstrap(scores, positive, num: int, seed: int = 0, level: float = 0.95,
                          paired_scores=None) -> tuple[float, float, float]:
  """Estimate and percentile interval of the case-level AUC over a [seeds, cases] grid of case scores.

  The AUC (P(score of a tumour case > score of a control), ties one half) is a rank statistic, not a mean
  over cases, so ``crossed_bootstrap`` cannot carry it; this is its counterpart: the estimate is the mean
  over seeds of each seed's AUC, and each resample draws seeds, tumour cases and controls with replacement
  (tumour cases and controls separately, as ``bootstrap_auc_ci`` does), the same draw for every seed.
  With ``paired_scores`` (a second arm's grid) the statistic is the difference, this arm - the paired one,
  on the same resamples.

  Args:
    scores: [seeds, cases] case scores (e.g. the largest tumour probability); NaN where a case is missing.
    positive: [cases] True for a tumour case, False for a control.
    num, seed, level: resamples, their seed, the interval level.

  Returns:
    (estimate, low, high); NaN without a tumour case or a control scored in every seed; no interval with
    num < 1 or fewer than two of either.
  """
  s = np.asarray(scores, np.float64)
  pos = np.asarray(positive, bool)
  if s.ndim != 2 or pos.shape != (s.shape[1],):
    raise ValueError(f"crossed_auc_bootstrap: scores {s.shape} must be [seeds, cases] and positive "
                     f"{pos.shape} one flag per case")
  grids = [s] if paired_scores is None else [s, np.asarray(paired_scores, np.float64)]
  if grids[-1].shape != s.shape:
    raise ValueError(f"crossed_auc_bootstrap: paired scores {grids[-1].shape} must match {s.shape}")
  keep = np.all([np.isfinite(g).all(axis=0) for g in grids], axis=0)  # cases scored in every seed and arm
  p_idx, n_idx = np.flatnonzero(keep & pos), np.flatnonzero(keep & ~pos)
  if p_idx.size == 0 or n_idx.size == 0:
    return float("nan"), float("nan"), float("nan")
  # wins[s, p, q]: 1 when tumour case p outscores control q in seed s, 1/2 on a tie.
  wins = [(g[:, p_idx, None] > g[:, None, n_idx]) + 0.5 * (g[:, p_idx, None] == g[:, None, n_idx])
          for g in grids]
  point = float(wins[0].mean())
  if len(wins) == 2:
    point -= float(wins[1].mean())
  if num < 1 or p_idx.size < 2 or n_idx.size < 2:
    return point, float("nan"), float("nan")
  rows, cols_p = _crossed_weights(s.shape[0], p_idx.size, num, seed)
  _, cols_n = _crossed_weights(1, n_idx.size, num, seed + 1)

  def stats(w):
    per_seed = np.einsum("bp,spq,bq->bs", cols_p, w, cols_n) / (cols_p.sum(1) * cols_n.sum(1))[:, None]
    return (rows * per_seed).sum(1) / rows.sum(1)

  st = stats(wins[0]) - (stats(wins[1]) if len(wins) == 2 else 0.0)
  a = (1.0 - level) / 2.0
  return point, float(np.quantile(st, a)), float(np.quantile(st, 1.0 - a))


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
