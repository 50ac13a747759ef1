"""evaluate_cases (checkpoint path, with an oracle predictor) and evaluate_folder (NIfTI folders, CLI)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.data import cache
from jaxseg.default_config import get_config
from jaxseg.infer.evaluate import evaluate_cases
from jaxseg.io import nifti
from jaxseg.metrics.folder import evaluate_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORGAN_HU, TUMOR_HU, BG_HU = 100, 0, -175   # normalised 0.65, 0.41, 0 in the -175..250 window


def _oracle(x):
  """Classifies windows by intensity: background < 0.2 < tumour < 0.55 < organ."""
  v = x[..., 0]
  return jnp.stack([0.2 - v, v - 0.55, jnp.minimum(v - 0.2, 0.55 - v)], axis=-1)  # labels 0, 1, 2


def _case(tumors_visible=(), tumors_hidden=(), fp_inside=None, fp_outside=None):
  shape = (28, 24, 20)
  image = np.full(shape, BG_HU, np.int16)
  label = np.zeros(shape, np.uint8)
  image[4:22, 4:20, 4:16] = ORGAN_HU
  label[4:22, 4:20, 4:16] = 1
  for sl in tumors_visible:
    image[sl], label[sl] = TUMOR_HU, 2
  for sl in tumors_hidden:      # annotated, but looks like organ: the oracle misses it
    label[sl] = 2
  if fp_inside is not None:     # looks like tumour inside the organ, not annotated
    image[fp_inside] = TUMOR_HU
  if fp_outside is not None:    # looks like tumour far from the organ: post-processing removes it
    image[fp_outside] = TUMOR_HU
  return image, label


def _write_cache(tmp_path):
  d = str(tmp_path / "cache")
  s = np.s_
  cases = {
      "t1": _case(tumors_visible=[s[8:12, 8:12, 8:12], s[15:17, 14:16, 10:12]]),
      "t2": _case(tumors_hidden=[s[10:13, 10:13, 10:13]]),
      "c1": _case(fp_outside=s[25:27, 1:3, 17:19]),
      "c2": _case(fp_inside=s[16:18, 6:8, 6:8]),
  }
  for cid, (image, label) in cases.items():
    meta = {"case_id": cid, "shape": list(image.shape), "spacing": [2.0, 2.0, 2.0],
            "organs": {"liver": "tumor" if (label == 2).any() else "control"}, "counts": {}, "locs": {}}
    cache.write_case(d, cid, image, label, np.zeros((0, 3), np.uint16), meta)
  return d, list(cases)


def _config():
  c = get_config()
  c.data.organs = ("liver",)
  c.data.spacing = (2.0, 2.0, 2.0)
  c.data.patch_size = (16, 16, 16)
  c.eval.bootstrap = 100
  return c


def test_evaluate_cases_with_oracle(tmp_path):
  cache_dir, ids = _write_cache(tmp_path)
  out = str(tmp_path / "eval")
  s = evaluate_cases(_config(), None, cache_dir, ids, out, checkpoint_step=7, predict_fn=_oracle,
                     progress=False)
  for key in ("tumor_dsc", "tumor_nsd", "tumor_sensitivity", "specificity", "organ_dsc"):
    assert isinstance(s[key], float)
  assert s["tumor_sensitivity"] == pytest.approx(2 / 3)      # two found in t1, the hidden one missed
  assert s["patient_sensitivity"] == pytest.approx(0.5)
  assert s["specificity"] == pytest.approx(0.5)              # c1's outside blob removed, c2's kept
  assert s["fp_per_control_case"] == pytest.approx(0.5)
  assert s["tumor_dsc"] == pytest.approx(0.5)                # t1 exact, t2 empty prediction -> 0
  # Scores (largest tumour probability in the allowed region): t1 and c2 the same high value, t2 and c1
  # the same low one: AUC = (t1>c1: 1 + t1=c2: 1/2 + t2=c1: 1/2 + t2<c2: 0) / 4.
  assert s["auc"] == pytest.approx(0.5)
  rows = {(r["case"], r["label"]): r for r in csv.DictReader(open(os.path.join(out, "cases.csv")))}
  score = {c: float(rows[(c, "liver_tumor")]["score"]) for c in ("t1", "t2", "c1", "c2")}
  assert score["t1"] == score["c2"] > score["t2"] == score["c1"]
  assert s["organ_dsc"] > 0.95 and s["checkpoint_step"] == 7
  for f in ("cases.csv", "tumors.csv", "summary.json", "dsc_per_case.png", "detection_by_size.png",
            "roc.png"):
    assert os.path.getsize(os.path.join(out, f)) > 0, f
  rows = list(csv.DictReader(open(os.path.join(out, "cases.csv"))))
  assert len(rows) == 8 and {"case", "label", "dsc", "nsd", "hd95", "gt_tumors", "detected_tumors",
                             "fp_components", "score"} <= set(rows[0])
  saved = json.load(open(os.path.join(out, "summary.json")))
  assert saved["tumor_sensitivity"] == pytest.approx(2 / 3) and saved["config"]["data"]["organs"] == ["liver"]


def _write_folders(tmp_path):
  gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
  affine = np.diag([0.8, 0.8, 2.5, 1.0])
  organ = np.zeros((20, 20, 10), np.uint8)
  organ[3:17, 3:17, 2:8] = 1
  a_gt = organ.copy()
  a_gt[5:8, 5:8, 3:5] = 2
  a_pred = organ.copy()
  a_pred[5:8, 5:8, 3:5] = 2
  b_gt = organ.copy()
  b_pred = organ.copy()
  b_pred[10:12, 10:12, 4:6] = 2  # a false positive on a control case
  for name, g, p in (("a", a_gt, a_pred), ("b", b_gt, b_pred)):
    nifti.save_nifti(g, affine, str(gt_dir / f"{name}.nii.gz"), dtype=np.uint8)
    nifti.save_nifti(p, affine, str(pred_dir / f"{name}.nii.gz"), dtype=np.uint8)
  return str(pred_dir), str(gt_dir)


def test_evaluate_folder(tmp_path):
  pred_dir, gt_dir = _write_folders(tmp_path)
  out = str(tmp_path / "out")
  s = evaluate_folder(pred_dir, gt_dir, "liver:1,liver_tumor:2", out, num_bootstrap=50, progress=False)
  assert s["tumor_dsc"] == 1.0 and s["tumor_nsd"] == 1.0
  n = 14 * 14 * 6  # organ voxels; case b's false positive takes 8 of them from the predicted organ
  assert s["organ_dsc"] == pytest.approx((1.0 + 2 * (n - 8) / (2 * n - 8)) / 2)
  assert s["specificity"] == 0.0 and s["fp_per_control_case"] == 1.0 and s["tumor_sensitivity"] == 1.0
  rows = list(csv.DictReader(open(os.path.join(out, "cases.csv"))))
  assert [(r["case"], r["label"]) for r in rows] == [("a", "liver"), ("a", "liver_tumor"), ("b", "liver"),
                                                     ("b", "liver_tumor")]
  assert rows[3]["dsc"] == "" and rows[3]["fp_components"] == "1"
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["labels"]["liver_tumor"]["num_control_cases"] == 1
  assert summary["tumor_hd95"] == 0.0 and math.isfinite(summary["labels"]["liver"]["dsc"]["ci95"][0])


def test_evaluate_folder_errors(tmp_path):
  pred_dir, gt_dir = _write_folders(tmp_path)
  os.remove(os.path.join(pred_dir, "b.nii.gz"))
  with pytest.raises(ValueError, match="no prediction for 1 case"):
    evaluate_folder(pred_dir, gt_dir, "liver:1", str(tmp_path / "o"), progress=False)
  nifti.save_nifti(np.zeros((5, 5, 5), np.uint8), np.eye(4), os.path.join(pred_dir, "b.nii.gz"))
  with pytest.raises(ValueError, match="b.nii.gz: shape"):
    evaluate_folder(pred_dir, gt_dir, "liver:1,liver_tumor:2", str(tmp_path / "o"), progress=False)


def test_evaluate_folder_refuses_unlisted_ground_truth_labels(tmp_path):
  pred_dir, gt_dir = _write_folders(tmp_path)
  out = str(tmp_path / "o")
  with pytest.raises(ValueError, match=r"a.nii.gz: ground-truth label value\(s\) \[2\] are not in --labels"):
    evaluate_folder(pred_dir, gt_dir, "liver:1", out, progress=False)
  assert not os.path.exists(out)  # Refused before anything was written.
  s = evaluate_folder(pred_dir, gt_dir, "liver:1", out, num_bootstrap=10, progress=False,
                      ignore_unlisted_labels=True)
  assert s["organ_dsc"] > 0.9 and "liver_tumor/dsc" not in s


def test_evaluate_folder_cli(tmp_path):
  pred_dir, gt_dir = _write_folders(tmp_path)
  cmd = [sys.executable, os.path.join(ROOT, "launch", "evaluate_folder.py"), f"--pred_dir={pred_dir}",
         f"--gt_dir={gt_dir}", "--labels=liver:1,liver_tumor:2", f"--out={tmp_path / 'o'}", "--bootstrap=20",
         "--noplots"]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert res.returncode == 0, res.stderr[-2000:]
  assert json.loads(res.stdout.strip().splitlines()[-1])["tumor_dsc"] == 1.0
  assert os.path.exists(tmp_path / "o" / "cases.csv")
  res = subprocess.run(cmd[:-3] + ["--labels=liver", f"--out={tmp_path / 'o2'}"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
  assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: --labels")
