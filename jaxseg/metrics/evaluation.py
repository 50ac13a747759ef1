"""Per-case metric rows and their summary: the one place that fixes the protocol's conventions.

Both entry points (a folder of NIfTI predictions, a checkpoint on cached cases) produce the same rows
and the same summary through these functions.

Conventions (docs/EVALUATION.md):
  * one row per case and label; organ and tumour labels both get DSC, NSD and HD95;
  * a case whose ground truth has no voxel of a tumour label is a control case for it: its DSC, NSD and
    HD95 are NaN (not averaged) and it counts in specificity instead;
  * an empty prediction where the ground truth is not empty scores DSC 0 and NSD 0; its HD95 is the
    diagonal of the image in mm (the worst possible value, instead of an infinity that breaks means);
  * predicted tumour components under ``min_tumor_volume_mm3`` do not count for detection;
  * the per-case tumour score for the AUC is the caller's (e.g. the largest tumour probability); without
    one it is the predicted tumour volume in mm^3;
  * a label the case does not annotate (partial labels: a liver-only case's kidney, an AbdomenAtlas case
    without a lesion file) gets no row: its ground truth is unknown, not empty, so it is neither scored nor
    counted as a control (``annotated_label_specs``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from jaxseg import labels as labels_lib
from jaxseg.metrics import bootstrap, detection, segmentation, surface

_TUMOR_WORDS = ("tumor", "tumour", "lesion", "cancer")


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """One label to evaluate: its name, its id in the label maps, and whether it is a tumour label."""
  name: str
  id: int
  is_tumor: bool


def annotated_label_specs(labels: Sequence[LabelSpec], annotated: Sequence[int] | np.ndarray) -> list[LabelSpec]:
  """The labels a case annotates: ``annotated`` is its 0/1 mask over label ids (cache.annotated_mask)."""
  annotated = np.asarray(annotated)
  return [l for l in labels if 0 <= l.id < annotated.size and annotated[l.id]]


def labels_for_organs(organs: Sequence[str]) -> list[LabelSpec]:
  """The labels of jaxseg's label space for ``organs`` (organ i -> 2i+1, its tumour -> 2i+2)."""
  organs = labels_lib.check_organs(organs)
  out = []
  for o in organs:
    out.append(LabelSpec(o, labels_lib.organ_label(organs, o), False))
    out.append(LabelSpec(f"{o}_tumor", labels_lib.tumor_label(organs, o), True))
  return out


def parse_labels(text: str) -> list[LabelSpec]:
  """Parses "liver:1,liver_tumor:2"; names containing tumor/tumour/lesion/cancer are tumour labels."""
  out = []
  for item in [t.strip() for t in text.split(",") if t.strip()]:
    name, sep, value = item.partition(":")
    if not sep or not name.strip() or not value.strip().isdigit() or int(value) == 0:
      raise ValueError(f"--labels: {item!r} is not name:id with an id >= 1 (e.g. liver:1,liver_tumor:2)")
    name = name.strip()
    out.append(LabelSpec(name, int(value), any(w in name.lower() for w in _TUMOR_WORDS)))
  if not out:
    raise ValueError("--labels: no labels given (e.g. liver:1,liver_tumor:2)")
  if len({l.id for l in out}) != len(out) or len({l.name for l in out}) != len(out):
    raise ValueError(f"--labels: duplicate name or id in {text!r}")
  return out


def evaluate_case(case_id: str, gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                  labels: Sequence[LabelSpec], nsd_tolerance_mm: float = 2.0,
                  min_tumor_volume_mm3: float = 0.0, scores: dict[int, float] | None = None
                  ) -> tuple[list[dict], list[dict]]:
  """Metrics of one case for every label.

  Args:
    case_id: name of the case.
    gt: integer label map [X, Y, Z].
    pred: integer label map [X, Y, Z], same grid.
    spacing: voxel spacing (sx, sy, sz) in mm.
    labels: the labels to score.
    nsd_tolerance_mm: NSD tolerance.
    min_tumor_volume_mm3: smallest predicted tumour component that counts for detection.
    scores: optional per-tumour-label case score (label id -> float) for the AUC.

  Returns:
    (rows: one dict per label with the cases.csv columns,
     tumors: one dict per ground-truth tumour with case, label, volume_mm3, diameter_mm, bin, detected).
  """
  gt, pred = np.asarray(gt), np.asarray(pred)
  if gt.shape != pred.shape:
    raise ValueError(f"{case_id}: prediction shape {pred.shape} != ground truth shape {gt.shape}")
  spacing = tuple(float(s) for s in spacing)
  voxel = float(np.prod(spacing))
  diagonal = float(np.linalg.norm(np.asarray(gt.shape) * np.asarray(spacing)))
  rows, tumors = [], []
  for lab in labels:
    g, p = gt == lab.id, pred == lab.id
    ng, npr = int(g.sum()), int(p.sum())
    row = {"case": case_id, "label": lab.name, "label_id": lab.id, "is_tumor": lab.is_tumor,
           "gt_voxels": ng, "pred_voxels": npr, "gt_volume_mm3": ng * voxel,
           "pred_volume_mm3": npr * voxel}
    scored = ng > 0 or (npr > 0 and not lab.is_tumor)
    if scored:
      sd = surface.surface_distances(g, p, spacing)
      hd = surface.hd_from_distances(sd, 95.0)
      row.update(dsc=segmentation.dsc(g, p), nsd=surface.nsd_from_distances(sd, nsd_tolerance_mm),
                 hd95=diagonal if math.isinf(hd) else hd)
    else:
      row.update(dsc=math.nan, nsd=math.nan, hd95=math.nan)
    if lab.is_tumor:
      det = detection.tumor_detection(g, p, spacing, min_tumor_volume_mm3)
      row["tumor_case"] = ng > 0
      row["gt_tumors"] = len(det["tumors"])
      row["detected_tumors"] = sum(t["detected"] for t in det["tumors"])
      for b in detection.SIZE_BINS:
        row[f"gt_tumors_{b}"] = sum(t["bin"] == b for t in det["tumors"])
        row[f"detected_{b}"] = sum(t["bin"] == b and t["detected"] for t in det["tumors"])
      row["pred_components"] = det["pred_components"]
      row["fp_components"] = det["fp_components"]
      row["case_positive"] = det["pred_components"] > 0
      score = None if scores is None else scores.get(lab.id)
      row["score"] = float(det["pred_volume_mm3"] if score is None else score)
      for t in det["tumors"]:
        tumors.append({"case": case_id, "label": lab.name, **t})
    rows.append(row)
  return rows, tumors


CSV_COLUMNS = ("case", "label", "label_id", "is_tumor", "gt_voxels", "pred_voxels", "gt_volume_mm3",
               "pred_volume_mm3", "dsc", "nsd", "hd95", "tumor_case", "gt_tumors", "detected_tumors",
               *[f"{p}_{b}" for b in detection.SIZE_BINS for p in ("gt_tumors", "detected")],
               "pred_components", "fp_components", "case_positive", "score")


def _stat(values: Sequence[float], num: int, seed: int) -> dict:
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  lo, hi = bootstrap.bootstrap_ci(v, num, seed)
  return {"mean": float(v.mean()) if v.size else math.nan,
          "median": float(np.median(v)) if v.size else math.nan,
          "ci95": [lo, hi], "n": int(v.size)}


def _ratio(num: Sequence[float], den: Sequence[float], boot: int, seed: int) -> dict:
  n, d = float(np.sum(num)), float(np.sum(den))
  lo, hi = bootstrap.bootstrap_ratio_ci(num, den, boot, seed)
  return {"value": n / d if d else math.nan, "ci95": [lo, hi], "numerator": int(n), "denominator": int(d)}


def summarize(rows: Sequence[dict], labels: Sequence[LabelSpec], num_bootstrap: int = 1000,
              seed: int = 0, meta: dict | None = None) -> dict:
  """Means, medians and bootstrap 95% intervals per label, detection rates, and headline keys.

  Headline keys (floats; NaN when undefined) are those of the first organ label ("organ_dsc",
  "organ_nsd", "organ_hd95") and the first tumour label ("tumor_dsc", "tumor_nsd", "tumor_hd95",
  "tumor_sensitivity" (tumour-wise), "tumor_sensitivity_<bin>", "patient_sensitivity", "specificity",
  "auc", "fp_per_control_case", "fp_per_tumor_case"). Per-label results are under "labels"; every label's
  key also appears flat as "<label>/<key>".

  Returns:
    The summary dict (``meta`` is copied in, e.g. checkpoint, config and data).
  """
  per_label = {}
  for k, lab in enumerate(labels):
    rs = [r for r in rows if r["label"] == lab.name]
    s = {"num_cases": len(rs)}
    for m in ("dsc", "nsd", "hd95"):
      s[m] = _stat([r[m] for r in rs], num_bootstrap, seed + k)
    if lab.is_tumor:
      pos = [r for r in rs if r["tumor_case"]]
      neg = [r for r in rs if not r["tumor_case"]]
      s["num_tumor_cases"], s["num_control_cases"] = len(pos), len(neg)
      s["tumor_sensitivity"] = _ratio([r["detected_tumors"] for r in pos], [r["gt_tumors"] for r in pos],
                                      num_bootstrap, seed + k)
      for b in detection.SIZE_BINS:
        s[f"tumor_sensitivity_{b}"] = _ratio([r[f"detected_{b}"] for r in pos],
                                             [r[f"gt_tumors_{b}"] for r in pos], num_bootstrap, seed + k)
      s["patient_sensitivity"] = _ratio([r["case_positive"] for r in pos], [1] * len(pos),
                                        num_bootstrap, seed + k)
      s["specificity"] = _ratio([not r["case_positive"] for r in neg], [1] * len(neg),
                                num_bootstrap, seed + k)
      fp = [r["fp_components"] for r in neg]
      s["fp_per_control_case"] = _stat(fp, num_bootstrap, seed + k)
      # The same count on the tumour cases (components that touch no tumour): set beside the controls' it
      # tells a model that fires everywhere (both grow) from one confused by what controls hold.
      s["fp_per_tumor_case"] = _stat([r["fp_components"] for r in pos], num_bootstrap, seed + k)
      sp, sn = [r["score"] for r in pos], [r["score"] for r in neg]
      s["auc"] = {"value": detection.auc(sp, sn),
                  "ci95": list(bootstrap.bootstrap_auc_ci(sp, sn, num_bootstrap, seed + k))}
    per_label[lab.name] = s

  summary: dict = dict(meta or {})
  summary["num_cases"] = len({r["case"] for r in rows})
  organ = next((l for l in labels if not l.is_tumor), None)
  tumor = next((l for l in labels if l.is_tumor), None)
  for prefix, lab in (("organ", organ), ("tumor", tumor)):
    for m in ("dsc", "nsd", "hd95"):
      summary[f"{prefix}_{m}"] = per_label[lab.name][m]["mean"] if lab else math.nan
  t = per_label[tumor.name] if tumor else {}
  summary["tumor_sensitivity"] = t["tumor_sensitivity"]["value"] if t else math.nan
  for b in detection.SIZE_BINS:
    summary[f"tumor_sensitivity_{b}"] = t[f"tumor_sensitivity_{b}"]["value"] if t else math.nan
  for key in ("patient_sensitivity", "specificity", "auc"):
    summary[key] = t[key]["value"] if t else math.nan
  summary["fp_per_control_case"] = t["fp_per_control_case"]["mean"] if t else math.nan
  summary["fp_per_tumor_case"] = t["fp_per_tumor_case"]["mean"] if t else math.nan
  for name, s in per_label.items():
    for key, val in s.items():
      if isinstance(val, dict):
        summary[f"{name}/{key}"] = val.get("mean", val.get("value"))
  summary["labels"] = per_label
  return summary
