"""The data-scaling study at toy size, through its CLI: every run, the table, the plot, and resume."""

import csv
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _study(workdir, data_root, *extra):
  cmd = [sys.executable, os.path.join(ROOT, "launch", "scaling.py"),
         "--config=" + os.path.join(ROOT, "configs", "scaling_phantom.py") + ":toy", f"--workdir={workdir}",
         f"--config.data.root={data_root}", *extra]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_toy_study_runs_collects_and_resumes(tmp_path):
  workdir, data_root = str(tmp_path / "study"), str(tmp_path / "phantoms")
  names = _study(workdir, data_root, "--list").stdout.split()
  assert names == ["real_n1_s0", "synth_n1_s0", "real_n2_s0", "synth_n2_s0"]
  _study(workdir, data_root)
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["run"] for r in rows) == sorted(names)
  for r in rows:
    for k in ("tumor_dsc", "tumor_sensitivity", "ood_tumor_dsc"):
      assert 0.0 <= float(r[k]) <= 1.0, (r["run"], k, r[k])
  # The arms differ only in synthesis: same data subset and seed, another config switch.
  cfg_real = json.load(open(os.path.join(workdir, "runs", "real_n2_s0", "config.json")))
  cfg_synth = json.load(open(os.path.join(workdir, "runs", "synth_n2_s0", "config.json")))
  assert cfg_real["synth"]["enabled"] is False and cfg_synth["synth"]["enabled"] is True
  assert cfg_real["data"]["num_real_tumor_cases"] == cfg_synth["data"]["num_real_tumor_cases"] == 2
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["runs_finished"] == 4 and set(summary["curves"]) == {"real", "real+synth"}
  assert os.path.getsize(os.path.join(workdir, "scaling.png")) > 10_000
  # Resume: a finished run is not redone (its result file is untouched).
  marker = os.path.join(workdir, "runs", "real_n1_s0", "result.json")
  before = os.path.getmtime(marker)
  _study(workdir, data_root)
  assert os.path.getmtime(marker) == before
