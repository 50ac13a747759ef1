"""Per-case figures of evaluation reports, and two reports compared on the same held-out cases.

``read_case_figures`` turns an evaluation's cases.csv into one dict per case; ``case_figure`` gives each
metric as (numerator, denominator) per case, so a mean over cases and a rate over tumours are the same
ratio of sums. The scaling study (jaxseg/scaling.py) builds its [seeds, cases] grids from them, and
``compare_reports`` compares two runs evaluated on the same cases (launch/compare_reports.py): each run's
figure with a bootstrap interval over cases, and the paired difference, each resample drawing the same
cases for both runs, so what the runs share (a hard case is hard for both) does not widen the interval.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from jaxseg.metrics.bootstrap import crossed_bootstrap

# The per-case metrics: (numerator, denominator) per held-out case from case_figure.
CASE_METRICS = ("tumor_dsc", "tumor_nsd", "tumor_sensitivity", "patient_sensitivity", "specificity",
           "fp_per_control_case", "fp_per_tumor_case", "organ_dsc")


def read_case_figures(path: str) -> list[dict]:
  """Per-case figures from an evaluation's cases.csv (first organ label and first tumour label).

  ``score`` is the case's tumour score for the AUC (the largest tumour probability where post-processing
  allows a tumour; NaN in a report written without one).
  """
  with open(path) as f:
    rows = list(csv.DictReader(f))

  def num(v):
    return float(v) if v not in ("", None) else math.nan

  tumor_label = next((r["label"] for r in rows if r["is_tumor"] == "1"), None)
  organ_label = next((r["label"] for r in rows if r["is_tumor"] == "0"), None)
  out = {}
  for r in rows:
    c = out.setdefault(r["case"], {"case": r["case"]})
    if r["label"] == tumor_label:
      c.update(tumor_case=r["tumor_case"] == "1", tumor_dsc=num(r["dsc"]), tumor_nsd=num(r["nsd"]),
               gt_tumors=int(num(r["gt_tumors"])), detected_tumors=int(num(r["detected_tumors"])),
               case_positive=r["case_positive"] == "1", fp_components=int(num(r["fp_components"])),
               score=num(r.get("score")))
    elif r["label"] == organ_label:
      c["organ_dsc"] = num(r["dsc"])
  return [out[k] for k in sorted(out)]


def case_figure(case: dict, metric: str) -> tuple[float, float]:
  """(numerator, denominator) of ``metric`` for one held-out case (denominator 0: the case does not count)."""
  tumor = bool(case.get("tumor_case"))
  if metric in ("tumor_dsc", "tumor_nsd", "organ_dsc"):
    v = case.get(metric, math.nan)
    ok = np.isfinite(v) and (tumor or metric == "organ_dsc")
    return (float(v), 1.0) if ok else (0.0, 0.0)
  if metric == "tumor_sensitivity":
    return (float(case["detected_tumors"]), float(case["gt_tumors"])) if tumor else (0.0, 0.0)
  if metric == "patient_sensitivity":
    return (float(case["case_positive"]), 1.0) if tumor else (0.0, 0.0)
  if metric == "specificity":
    return (0.0, 0.0) if tumor else (float(not case["case_positive"]), 1.0)
  if metric == "fp_per_control_case":
    return (0.0, 0.0) if tumor else (float(case["fp_components"]), 1.0)
  if metric == "fp_per_tumor_case":
    return (float(case["fp_components"]), 1.0) if tumor else (0.0, 0.0)
  raise ValueError(f"unknown per-case metric {metric!r}")


def _cases_csv(report: str) -> str:
  path = os.path.join(report, "cases.csv") if os.path.isdir(report) else report
  if not os.path.isfile(path):
    raise ValueError(f"{report}: no cases.csv (give an evaluation report folder, e.g. <workdir>/eval/step_2000)")
  return path


def compare_reports(report_a: str, report_b: str, num_bootstrap: int = 10_000, seed: int = 0,
                    level: float = 0.95) -> dict:
  """Run B against run A on the held-out cases both reports share.

  Args:
    report_a, report_b: evaluation report folders (or their cases.csv).
    num_bootstrap: resamples of the cases.
    seed, level: bootstrap seed and interval level.

  Returns:
    {"cases": [...], "metrics": {metric: {"a": (est, lo, hi), "b": (...), "b_minus_a": (...)}}}: means over
    the cases that count for the metric (tumour cases for DSC, controls for specificity) and percentile
    intervals with cases resampled; the difference is paired (the same resampled cases for both runs).
  """
  a = {c["case"]: c for c in read_case_figures(_cases_csv(report_a))}
  b = {c["case"]: c for c in read_case_figures(_cases_csv(report_b))}
  cases = sorted(set(a) & set(b))
  if not cases:
    raise ValueError(f"{report_a} and {report_b} share no held-out case")
  tumor_a = {k for k in cases if a[k].get("tumor_case")}
  tumor_b = {k for k in cases if b[k].get("tumor_case")}
  if tumor_a != tumor_b:
    raise ValueError(f"{report_a} and {report_b} disagree on which cases are tumour cases: "
                     f"{sorted(tumor_a ^ tumor_b)[:4]}")
  out = {}
  for metric in CASE_METRICS:
    grids = []
    for run in (a, b):
      nd = np.array([case_figure(run[k], metric) for k in cases], np.float64)
      grids.append((nd[None, :, 0], nd[None, :, 1]))
    (na, da), (nb, db) = grids
    if da.sum() == 0:
      continue
    out[metric] = {"a": crossed_bootstrap(na, da, num_bootstrap, seed, level),
                   "b": crossed_bootstrap(nb, db, num_bootstrap, seed, level),
                   "b_minus_a": crossed_bootstrap(nb, db, num_bootstrap, seed, level, paired_numer=na,
                                                  paired_denom=da)}
  return {"cases": cases, "num_tumor_cases": len(tumor_a), "metrics": out}
