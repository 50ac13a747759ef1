"""launch/compare_reports.py: two evaluation reports compared on the same held-out cases."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxseg.metrics.compare import compare_reports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["case", "label", "is_tumor", "dsc", "nsd", "tumor_case", "gt_tumors", "detected_tumors",
           "case_positive", "fp_components"]


def _report(folder, tumour_dsc, controls_fp):
  """cases.csv with tumour cases t0.. (DSC given) and control cases c0.. (false positives given)."""
  os.makedirs(folder, exist_ok=True)
  rows = []
  for i, d in enumerate(tumour_dsc):
    rows.append(dict(case=f"t{i}", label="liver", is_tumor=0, dsc=0.9, nsd=0.8))
    rows.append(dict(case=f"t{i}", label="liver_tumor", is_tumor=1, dsc=d, nsd=d / 2, tumor_case=1,
                     gt_tumors=2, detected_tumors=int(d > 0.5) + 1, case_positive=1, fp_components=0))
  for i, fp in enumerate(controls_fp):
    rows.append(dict(case=f"c{i}", label="liver", is_tumor=0, dsc=0.9, nsd=0.8))
    rows.append(dict(case=f"c{i}", label="liver_tumor", is_tumor=1, dsc="", nsd="", tumor_case=0,
                     gt_tumors=0, detected_tumors=0, case_positive=int(fp > 0), fp_components=fp))
  with open(os.path.join(folder, "cases.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, COLUMNS)
    w.writeheader()
    w.writerows(rows)
  return folder


def test_paired_difference_is_narrower_than_the_runs_own_intervals(tmp_path):
  rng = np.random.default_rng(0)
  base = rng.uniform(0.0, 1.0, 12)                  # cases differ a lot; run B adds a steady 0.05
  a = _report(str(tmp_path / "a"), base, [0, 1, 2, 0])
  b = _report(str(tmp_path / "b"), np.clip(base + 0.05, 0, 1), [0, 0, 1, 0])
  r = compare_reports(a, b, num_bootstrap=2000)
  assert r["num_tumor_cases"] == 12 and len(r["cases"]) == 16
  dsc = r["metrics"]["tumor_dsc"]
  est, lo, hi = dsc["b_minus_a"]
  assert est == pytest.approx(np.mean(np.clip(base + 0.05, 0, 1) - base))
  assert 0.0 < lo <= est <= hi                        # a steady gain is resolved by pairing
  assert dsc["a"][1] < dsc["b"][1] < dsc["a"][2]      # the runs' own intervals overlap
  assert hi - lo < 0.5 * (dsc["a"][2] - dsc["a"][1])
  assert r["metrics"]["specificity"]["a"][0] == pytest.approx(0.5)    # 2 of 4 controls clean
  assert r["metrics"]["specificity"]["b"][0] == pytest.approx(0.75)
  assert r["metrics"]["fp_per_control_case"]["b_minus_a"][0] == pytest.approx(-0.5)


def test_reports_that_disagree_fail_in_one_line(tmp_path):
  a = _report(str(tmp_path / "a"), [0.5, 0.6], [0])
  b = _report(str(tmp_path / "b"), [0.5], [0, 0])
  with open(os.path.join(b, "cases.csv")) as f:
    text = f.read().replace("c1,", "t1,")             # t1: a tumour case in A, a control case in B
  with open(os.path.join(b, "cases.csv"), "w") as f:
    f.write(text)
  with pytest.raises(ValueError, match="disagree on which cases are tumour cases"):
    compare_reports(a, b, num_bootstrap=10)
  out = subprocess.run([sys.executable, os.path.join(REPO, "launch", "compare_reports.py"), f"--a={a}",
                        f"--b={tmp_path / 'missing'}"], capture_output=True, text=True)
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith("error:") and "no cases.csv" in out.stderr
  assert "Traceback" not in out.stderr
