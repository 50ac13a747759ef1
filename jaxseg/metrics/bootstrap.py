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
