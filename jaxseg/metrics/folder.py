"""Evaluation of a folder of NIfTI predictions against a folder of ground-truth label maps.

This is the tool-independent path: any method's predictions (nnU-Net, MONAI, jaxseg) are scored with
the same code, on each file's own voxel grid and spacing.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tqdm

from jaxseg.io import nifti
from jaxseg.metrics import evaluation, report

_SUFFIXES = (".nii.gz", ".nii")


def _case_files(folder: str) -> dict[str, str]:
  if not os.path.isdir(folder):
    raise ValueError(f"{folder}: not a folder")
  out = {}
  for name in sorted(os.listdir(folder)):
    for suf in _SUFFIXES:
      if name.endswith(suf):
        out[name[:-len(suf)]] = os.path.join(folder, name)
  return out


def evaluate_folder(pred_dir: str, gt_dir: str, labels: Sequence[evaluation.LabelSpec] | str,
                    out_dir: str, nsd_tolerance_mm: float = 2.0, min_tumor_volume_mm3: float = 0.0,
                    num_bootstrap: int = 1000, seed: int = 0, plots: bool = True,
                    progress: bool = True, ignore_unlisted_labels: bool = False) -> dict:
  """Scores every ground-truth file of ``gt_dir`` against the prediction of the same name.

  Args:
    pred_dir: folder of predicted label maps (.nii.gz or .nii).
    gt_dir: folder of ground-truth label maps; the case set.
    labels: LabelSpecs or "name:id,..." (names with "tumor" are tumour labels).
    out_dir: where cases.csv, tumors.csv, summary.json and the plots go.
    nsd_tolerance_mm, min_tumor_volume_mm3, num_bootstrap, seed: see ``evaluation``.
    plots: write the PNG plots.
    progress: show a progress bar over cases.
    ignore_unlisted_labels: score only ``labels`` even when a ground truth holds other values. Off by
      default: a ground-truth value missing from ``labels`` is usually a mistyped id (liver:1,tumor:3 for a
      data set whose tumour is 2), which would otherwise score a tumour-free data set without a word.

  Returns:
    The summary dict (also written to summary.json).

  Raises:
    ValueError: a folder is missing or empty, a prediction is missing, a prediction's grid (shape or
      affine) differs from its ground truth's, a ground truth's voxel sizes are not positive and finite,
      or a ground truth holds a label value missing from ``labels`` (unless ignore_unlisted_labels); the
      message names the file.
  """
  if not nsd_tolerance_mm > 0:
    raise ValueError(f"nsd_tolerance_mm: {nsd_tolerance_mm} must be positive")
  if isinstance(labels, str):
    labels = evaluation.parse_labels(labels)
  gts, preds = _case_files(gt_dir), _case_files(pred_dir)
  if not gts:
    raise ValueError(f"{gt_dir}: no .nii.gz or .nii files")
  missing = [c for c in gts if c not in preds]
  if missing:
    raise ValueError(f"{pred_dir}: no prediction for {len(missing)} case(s): {', '.join(missing[:5])}")
  listed = {0} | {int(l.id) for l in labels}
  rows, tumors = [], []
  for case in tqdm.tqdm(list(gts), desc="evaluate", disable=not progress):
    gimg, g = nifti.read_volume(gts[case], dtype=None)
    pimg, p = nifti.read_volume(preds[case], dtype=None)
    if g.shape != p.shape:
      raise ValueError(f"{preds[case]}: shape {p.shape} differs from the ground truth's {g.shape}")
    if not np.allclose(gimg.affine, pimg.affine, atol=1e-3):
      raise ValueError(f"{preds[case]}: affine differs from the ground truth's ({gts[case]})")
    spacing = [float(z) for z in gimg.header.get_zooms()[:3]]
    if not all(np.isfinite(z) and z > 0 for z in spacing):
      raise ValueError(f"{gts[case]}: voxel sizes {tuple(spacing)} mm are not positive and finite (distances "
                       "and volumes cannot be measured)")
    gi = np.rint(g).astype(np.int32)
    if not ignore_unlisted_labels:
      unlisted = sorted(set(np.unique(gi).tolist()) - listed)
      if unlisted:
        raise ValueError(f"{gts[case]}: ground-truth label value(s) {unlisted[:10]} are not in --labels "
                         f"({', '.join(f'{l.name}:{l.id}' for l in labels)}); add them, or pass "
                         "--ignore_unlisted_labels to score only the listed ones")
    r, t = evaluation.evaluate_case(case, gi, np.rint(p).astype(np.int32),
                                    spacing, labels, nsd_tolerance_mm, min_tumor_volume_mm3)
    rows += r
    tumors += t
  meta = {"pred_dir": os.path.abspath(pred_dir), "gt_dir": os.path.abspath(gt_dir),
          "labels": {l.name: l.id for l in labels}, "nsd_tolerance_mm": nsd_tolerance_mm,
          "min_tumor_volume_mm3": min_tumor_volume_mm3}
  summary = evaluation.summarize(rows, labels, num_bootstrap, seed, meta)
  report.write_report(out_dir, rows, tumors, summary, labels, plots)
  return summary
