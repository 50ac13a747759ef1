"""The data-scaling study of the AbdomenAtlas 2.0 paper: tumour DSC against the number of real tumour cases.

For each N of ``config.scaling.num_real`` and each arm ("real": real tumour cases only; "real+synth": the
same real cases plus synthetic tumours placed on control cases), for each seed, one run with the same step
budget trains and is evaluated on the same held-out real tumour cases (and on an out-of-distribution set
when ``config.scaling.ood`` names one). Runs are separate work directories under ``<workdir>/runs``; a run
whose ``result.json`` exists is not redone, so the study resumes, and runs can be dispatched as separate
jobs (``run_names`` + ``run_one``) and collected afterwards (``collect``).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os

import ml_collections
import numpy as np
from absl import logging

from jaxseg.data.phantom import ensure_phantoms
from jaxseg.infer.evaluate import evaluate_checkpoint
from jaxseg.train.loop import train_and_evaluate

ARMS = ("real", "real+synth")
METRICS = ("tumor_dsc", "tumor_nsd", "tumor_sensitivity", "patient_sensitivity", "specificity", "organ_dsc")


def run_names(config: ml_collections.ConfigDict) -> list[str]:
  """Every run of the study, in a fixed order: ``<arm>_n<N>_s<seed>`` (arm "real+synth" spelled "synth")."""
  s = config.scaling
  for arm in s.arms:
    if arm not in ARMS:
      raise ValueError(f"scaling.arms: unknown arm {arm!r}; known: {', '.join(ARMS)}")
  return [f"{'synth' if arm == 'real+synth' else 'real'}_n{n}_s{seed}"
          for n in s.num_real for arm in s.arms for seed in s.seeds]


def run_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The training config of one run of the study."""
  arm, n, seed = name.split("_")
  c = copy.deepcopy(config)
  c.data.num_real_tumor_cases = int(n[1:])
  c.synth.enabled = arm == "synth"
  c.seed = int(seed[1:])
  return c


def _ood_eval(config, workdir: str) -> dict:
  """Evaluates the run's final checkpoint on the out-of-distribution data set named by scaling.ood."""
  spec = config.scaling.ood
  if spec == "phantom_ood":
    d = copy.deepcopy(config.data)
    d.root, d.phantom.ood = "", True
    d.phantom.num_cases = int(config.scaling.ood_cases)
    spec = f"atlas:{ensure_phantoms(d)}"
  summary = evaluate_checkpoint(workdir, spec, None, config.eval, os.path.join(workdir, "eval", "ood"))
  return {f"ood_{k}": summary.get(k, float("nan")) for k in METRICS}


def run_one(config: ml_collections.ConfigDict, workdir: str, name: str) -> dict:
  """Trains and evaluates one run (skipped when its result exists) and returns its result row."""
  run_dir = os.path.join(workdir, "runs", name)
  result_path = os.path.join(run_dir, "result.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  c = run_config(config, name)
  logging.info("scaling study: run %s", name)
  summary = train_and_evaluate(c, run_dir)
  arm, n, seed = name.split("_")
  row = {"run": name, "arm": "real+synth" if arm == "synth" else "real", "num_real": int(n[1:]),
         "seed": int(seed[1:]), "steps": int(c.train.num_steps)}
  row.update({k: summary.get(k, float("nan")) for k in METRICS})
  if config.scaling.ood:
    row.update(_ood_eval(config, run_dir))
  with open(result_path + ".tmp", "w") as f:
    json.dump(row, f, indent=2, default=float)
  os.replace(result_path + ".tmp", result_path)  # The marker that the run is finished.
  return row


def _band(values: list[float]) -> tuple[float, float, float]:
  """Mean and a 95% band over seeds (t-interval from the seeds' spread; min..max with fewer than 3)."""
  v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
  if v.size == 0:
    return float("nan"), float("nan"), float("nan")
  m = float(v.mean())
  if v.size < 3:
    return m, float(v.min()), float(v.max())
  t = {3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}.get(v.size, 1.96)
  h = t * float(v.std(ddof=1)) / math.sqrt(v.size)
  return m, m - h, m + h


def collect(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Reads every finished run, writes results.csv, summary.json and scaling.png; returns the summary."""
  rows = []
  for name in run_names(config):
    path = os.path.join(workdir, "runs", name, "result.json")
    if os.path.exists(path):
      with open(path) as f:
        rows.append(json.load(f))
  if not rows:
    raise ValueError(f"{workdir}: no finished run of the study yet")
  keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("run", "arm", "num_real", "seed"), k))
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, keys)
    w.writeheader()
    w.writerows(rows)
  metrics = [k for k in keys if k.endswith(METRICS) and isinstance(rows[0].get(k), (int, float))]
  curves = {}
  for arm in config.scaling.arms:
    for n in config.scaling.num_real:
      sel = [r for r in rows if r["arm"] == arm and r["num_real"] == n]
      if not sel:
        continue
      entry = {"num_real": n, "runs": len(sel)}
      for k in metrics:
        entry[k], entry[k + "_lo"], entry[k + "_hi"] = _band([r.get(k) for r in sel])
      curves.setdefault(arm, []).append(entry)
  summary = {"runs_finished": len(rows), "runs_total": len(run_names(config)), "curves": curves,
             "num_steps": int(config.train.num_steps), "seeds": list(config.scaling.seeds)}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, default=float)
  _plot(curves, [m for m in ("tumor_dsc", "tumor_sensitivity", "ood_tumor_dsc") if m in metrics],
        os.path.join(workdir, "scaling.png"))
  return summary


def _plot(curves: dict, metrics: list[str], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for arm, pts in curves.items():
      x = [p["num_real"] for p in pts]
      ax.plot(x, [p[metric] for p in pts], marker="o", label=arm)
      ax.fill_between(x, [p[metric + "_lo"] for p in pts], [p[metric + "_hi"] for p in pts], alpha=0.2)
    ax.set_xscale("log")
    ticks = sorted({p["num_real"] for pts in curves.values() for p in pts})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("real tumour cases (N)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("Tumour segmentation against the number of real tumour cases (mean over seeds, 95% band)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run_study(config: ml_collections.ConfigDict, workdir: str, only: str = "") -> dict:
  """Runs every unfinished run of the study (or just ``only``) and collects the table and plot."""
  os.makedirs(workdir, exist_ok=True)
  names = run_names(config)
  if only:
    if only not in names:
      raise ValueError(f"--only: {only!r} is not a run of this study; runs: {', '.join(names)}")
    names = [only]
  for name in names:
    run_one(config, workdir, name)
  return collect(config, workdir)
