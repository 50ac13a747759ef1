"""Evaluation reports: cases.csv, tumors.csv, summary.json and PNG plots a person would rather look at.

Plots use matplotlib's Agg backend so that reports are written on headless machines and clusters.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Sequence

import numpy as np

from jaxseg.metrics import detection
from jaxseg.metrics.evaluation import CSV_COLUMNS, LabelSpec


def _clean(x):
  """JSON-safe copy: NaN and inf become null, numpy scalars plain numbers."""
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def _fmt(v):
  if isinstance(v, (bool, np.bool_)):
    return int(v)
  if isinstance(v, (float, np.floating)):
    return "" if math.isnan(v) else f"{float(v):.6g}"
  return v


def write_csv(rows: Sequence[dict], path: str, columns: Sequence[str]) -> None:
  """Writes ``rows`` with ``columns`` (missing values empty; booleans as 0/1; NaN empty)."""
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(columns)
    for r in rows:
      w.writerow([_fmt(r.get(c, "")) for c in columns])


def write_summary(summary: dict, path: str) -> None:
  """Writes ``summary`` as strict JSON (NaN as null)."""
  with open(path, "w") as f:
    json.dump(_clean(summary), f, indent=2, sort_keys=False)
    f.write("\n")


def plot_case_dsc(rows: Sequence[dict], labels: Sequence[LabelSpec], path: str) -> None:
  """Per-case DSC, one panel per label, cases sorted by DSC."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(labels), 1, figsize=(max(6, 0.25 * len(rows) / max(len(labels), 1) + 3),
                                                    2.6 * len(labels)), squeeze=False)
  for ax, lab in zip(axes[:, 0], labels):
    rs = sorted([r for r in rows if r["label"] == lab.name and np.isfinite(r["dsc"])], key=lambda r: r["dsc"])
    ax.bar(range(len(rs)), [r["dsc"] for r in rs], color="tab:red" if lab.is_tumor else "tab:blue")
    ax.set_xticks(range(len(rs)))
    ax.set_xticklabels([r["case"] for r in rs], rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    mean = np.mean([r["dsc"] for r in rs]) if rs else float("nan")
    ax.set_title(f"{lab.name}: DSC per case (mean {mean:.3f}, n={len(rs)})", fontsize=9)
    ax.set_ylabel("DSC")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_detection_by_size(summary: dict, labels: Sequence[LabelSpec], path: str) -> None:
  """Tumour-wise sensitivity per size bin, with bootstrap intervals and counts."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tumor_labels = [l for l in labels if l.is_tumor]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  width = 0.8 / max(len(tumor_labels), 1)
  keys = list(detection.SIZE_BINS) + ["all"]
  for i, lab in enumerate(tumor_labels):
    s = summary["labels"][lab.name]
    entries = [s[f"tumor_sensitivity_{b}"] for b in detection.SIZE_BINS] + [s["tumor_sensitivity"]]
    vals = [e["value"] if np.isfinite(e["value"]) else 0.0 for e in entries]
    err = np.array([[max(v - (e["ci95"][0] if np.isfinite(e["ci95"][0]) else v), 0),
                     max((e["ci95"][1] if np.isfinite(e["ci95"][1]) else v) - v, 0)]
                    for v, e in zip(vals, entries)]).T
    x = np.arange(len(keys)) + i * width
    ax.bar(x, vals, width, yerr=err, capsize=3, label=lab.name)
    for xi, v, e in zip(x, vals, entries):
      ax.text(xi, v + 0.02, f"{e['numerator']}/{e['denominator']}", ha="center", fontsize=7)
  ax.set_xticks(np.arange(len(keys)) + width * (len(tumor_labels) - 1) / 2)
  ax.set_xticklabels([detection.SIZE_BIN_NAMES.get(k, "all") for k in keys])
  ax.set_ylim(0, 1.15)
  ax.set_ylabel("tumour-wise sensitivity")
  ax.set_xlabel("equivalent diameter")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_roc(rows: Sequence[dict], labels: Sequence[LabelSpec], summary: dict, path: str) -> None:
  """Case-level ROC of the tumour score (tumour cases against control cases)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(4.2, 4.2))
  for lab in [l for l in labels if l.is_tumor]:
    rs = [r for r in rows if r["label"] == lab.name]
    pos = [r["score"] for r in rs if r["tumor_case"]]
    neg = [r["score"] for r in rs if not r["tumor_case"]]
    if pos and neg:
      fpr, tpr = detection.roc_curve(pos, neg)
      ax.plot(fpr, tpr, drawstyle="steps-post",
              label=f"{lab.name} AUC {summary['labels'][lab.name]['auc']['value']:.3f}")
  ax.plot([0, 1], [0, 1], ":", color="gray")
  ax.set_xlabel("1 - specificity")
  ax.set_ylabel("patient-wise sensitivity")
  ax.set_title("ROC of the case tumour score", fontsize=9)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(out_dir: str, rows: Sequence[dict], tumors: Sequence[dict], summary: dict,
                 labels: Sequence[LabelSpec], plots: bool = True) -> None:
  """Writes cases.csv, tumors.csv, summary.json and (optionally) dsc_per_case.png,
  detection_by_size.png and roc.png into ``out_dir``."""
  os.makedirs(out_dir, exist_ok=True)
  write_csv(rows, os.path.join(out_dir, "cases.csv"), CSV_COLUMNS)
  write_csv(tumors, os.path.join(out_dir, "tumors.csv"),
            ("case", "label", "volume_mm3", "diameter_mm", "bin", "detected"))
  write_summary(summary, os.path.join(out_dir, "summary.json"))
  if plots:
    plot_case_dsc(rows, labels, os.path.join(out_dir, "dsc_per_case.png"))
    if any(l.is_tumor for l in labels):
      plot_detection_by_size(summary, labels, os.path.join(out_dir, "detection_by_size.png"))
      plot_roc(rows, labels, summary, os.path.join(out_dir, "roc.png"))
