"""The data-scaling study of the AbdomenAtlas 2.0 paper: tumour DSC against the number of real tumour cases.

Arms (docs/SCALING.md): for each N of ``config.scaling.num_real`` and each seed,
  * "real": the first N real tumour cases of the train split plus every control case of it, the controls
    as negatives (synthesis off);
  * "real+synth": the same cases, the same patches in the same order, with synthetic tumours placed on the
    control patches on the device (synthesis on) - the only difference;
  * "synth": real+synth at N = 0 (the label-free setting: control cases with synthetic tumours only). At
    N = 0 the real arm has no tumour to learn from and is not run;
  * "real+realistic" (optional; "realistic" at N = 0): real+synth with config.synth.mode = "realistic" (the
    tumours calibrated on real lesions, docs/SYNTHESIS.md) - the only difference from real+synth, so the
    paired difference real+realistic - real+synth says whether realism pays. Realistic mode places tumours
    as patch mode does, so the study's synth.mode must be "patch" (with "reference" the crops would differ).
Every run has the same step budget and is evaluated on the same held-out real tumour and control cases
(and on an out-of-distribution set when ``config.scaling.ood`` names one). Runs are separate work
directories under ``<workdir>/runs``; a run whose ``result.json`` exists is not redone, so the study
resumes, and runs can be dispatched as separate jobs (``run_names`` + ``run_one``) and collected
afterwards (``collect``).

Statistics (``collect``): per point (arm, N) the mean over seeds and held-out cases with a 95% crossed
bootstrap interval (seeds and cases resampled independently, jaxseg/metrics/bootstrap.crossed_bootstrap);
per N the paired differences real+synth - real, and with the realistic arm real+realistic - real and
real+realistic - real+synth (paired by seed and held-out case), with their intervals. Beside the per-case
means, the case-level AUC (tumour cases against controls by each case's largest tumour probability) with
its own crossed bootstrap: threshold-free, so it says whether any confidence rule could separate the
control cases without choosing one (a rule tuned on one arm would favour it).
"""

from __future__ import annotations

import copy
import csv
import json
import os

import ml_collections
import numpy as np
from absl import logging

from jaxseg import assembly, labels as labels_lib
from jaxseg.data import cache, split
from jaxseg.data.phantom import ensure_phantoms
from jaxseg.data.pipeline import make_train_loader
from jaxseg.data.prepare import prepare_data
from jaxseg.infer import false_positives
from jaxseg.infer.evaluate import evaluate_checkpoint
from jaxseg.metrics.bootstrap import crossed_auc_bootstrap, crossed_bootstrap
from jaxseg.metrics.compare import CASE_METRICS, case_figure, read_case_figures
from jaxseg.train.loop import train_and_evaluate

ARMS = ("real", "real+synth", "real+realistic")
# Run-name prefix of each arm (N = 0 runs of a synthetic arm are the label-free setting).
_PREFIX = {"real": "real", "real+synth": "synth", "real+realistic": "realistic"}
# Paired differences reported, (arm, minus arm), when both were run.
PAIRS = (("real+synth", "real"), ("real+realistic", "real"), ("real+realistic", "real+synth"))
METRICS = ("tumor_dsc", "tumor_nsd", "tumor_sensitivity", "patient_sensitivity", "specificity",
           "fp_per_control_case", "fp_per_tumor_case", "organ_dsc")
# The table's columns: (key, heading, digits).
TABLE = (("tumor_dsc", "tumour DSC", 3), ("tumor_sensitivity", "tumour-wise sensitivity", 2),
         ("specificity", "specificity", 2), ("fp_per_control_case", "FP per control", 2),
         ("fp_per_tumor_case", "FP per tumour case", 2),
         ("auc", "case AUC", 2),
         ("organ_dsc", "organ DSC", 3), ("ood_tumor_dsc", "OOD tumour DSC", 3))


def arm_name(arm: str, num_real: int) -> str:
  """The arm as reported: "synth" ("realistic") for real+synth (real+realistic) at N = 0, else the arm."""
  return _PREFIX[arm] if arm != "real" and int(num_real) == 0 else arm


def run_names(config: ml_collections.ConfigDict) -> list[str]:
  """Every run of the study, in a fixed order: ``<arm>_n<N>_s<seed>`` (arm "real+synth" spelled "synth").

  N = 0 has only the synthetic arm (the real arm would have no tumour to learn from). The real+realistic
  arm runs at the N of ``scaling.num_real_realistic`` when that is set (a subset of num_real), else at every N.
  """
  s = config.scaling
  realistic_n = tuple(int(n) for n in s.get("num_real_realistic", ()) or s.num_real)
  if not set(realistic_n) <= {int(n) for n in s.num_real}:
    raise ValueError(f"scaling.num_real_realistic: {realistic_n} must be a subset of scaling.num_real "
                     f"{tuple(s.num_real)}")
  for arm in s.arms:
    if arm not in ARMS:
      raise ValueError(f"scaling.arms: unknown arm {arm!r}; known: {', '.join(ARMS)}")
  if any(int(n) < 0 for n in s.num_real):
    raise ValueError(f"scaling.num_real: {tuple(s.num_real)} must be >= 0 (0: synthetic tumours only)")
  if "real+realistic" in s.arms and str(config.synth.mode) != "patch":
    raise ValueError(f"scaling.arms: real+realistic needs synth.mode='patch' (realistic mode places tumours as "
                     f"patch mode does), got {config.synth.mode!r}: the arms would differ in their crops too")
  return [f"{_PREFIX[arm]}_n{n}_s{seed}"
          for n in s.num_real for arm in s.arms for seed in s.seeds
          if not (int(n) == 0 and arm == "real") and not (arm == "real+realistic" and int(n) not in realistic_n)]


def parse_name(name: str) -> tuple[str, int, int]:
  """``<arm>_n<N>_s<seed>`` -> (arm, N, seed) with arm one of ARMS."""
  prefix, n, seed = name.split("_")
  arm = {v: k for k, v in _PREFIX.items()}[prefix]
  return arm, int(n[1:]), int(seed[1:])


def run_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The training config of one run: the study's config with N, the synthesis switch and the seed set.

  Nothing else differs between the arms: the data stream (real tumour cases and control cases, mixed by
  data.synth_fraction) is the same, config.synth.enabled decides whether control patches get synthetic
  tumours on the device or stay negatives, and config.synth.mode = "realistic" makes real+realistic.
  """
  arm, n, seed = parse_name(name)
  c = copy.deepcopy(config)
  c.data.num_real_tumor_cases = n
  c.synth.enabled = arm != "real"
  if arm == "real+realistic":
    c.synth.mode = "realistic"
  c.seed = seed
  return c


def _ood_eval(config, workdir: str) -> tuple[dict, list[dict]]:
  """Evaluates the run's final checkpoint on the out-of-distribution data set named by scaling.ood."""
  spec = config.scaling.ood
  if spec == "phantom_ood":
    d = copy.deepcopy(config.data)
    d.root, d.phantom.ood = "", True
    d.phantom.num_cases = int(config.scaling.ood_cases)
    spec = f"atlas:{ensure_phantoms(d)}"
  out_dir = os.path.join(workdir, "eval", "ood")
  summary = evaluate_checkpoint(workdir, spec, None, config.eval, out_dir)
  return ({f"ood_{k}": summary.get(k, float("nan")) for k in METRICS},
          read_case_figures(os.path.join(out_dir, "cases.csv")))


def run_one(config: ml_collections.ConfigDict, workdir: str, name: str) -> dict:
  """Trains and evaluates one run (skipped when its result exists) and returns its result row.

  The row holds the headline metrics and, under "cases" (and "ood_cases"), the per-case figures of the
  held-out evaluation that the study's intervals are computed from.
  """
  run_dir = os.path.join(workdir, "runs", name)
  result_path = os.path.join(run_dir, "result.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  c = run_config(config, name)
  logging.info("scaling study: run %s", name)
  summary = train_and_evaluate(c, run_dir)
  arm, n, seed = parse_name(name)
  row = {"run": name, "arm": arm, "num_real": n, "seed": seed, "steps": int(c.train.num_steps)}
  row.update({k: summary.get(k, float("nan")) for k in METRICS})
  eval_dir = summary.get("eval_dir") or os.path.join(run_dir, "eval", f"step_{int(c.train.num_steps)}")
  row["cases"] = read_case_figures(os.path.join(eval_dir, "cases.csv"))
  if config.scaling.ood:
    ood, row["ood_cases"] = _ood_eval(config, run_dir)
    row.update(ood)
  with open(result_path + ".tmp", "w") as f:
    json.dump(row, f, indent=1, default=float)
  os.replace(result_path + ".tmp", result_path)  # The marker that the run is finished.
  return row


def _grid(runs: list[dict], key: str, seeds: list[int], cases: list[str], metric: str):
  """[seeds, cases] numerator and denominator grids of ``metric`` from the runs' per-case figures."""
  numer, denom = np.zeros((len(seeds), len(cases))), np.zeros((len(seeds), len(cases)))
  col = {c: j for j, c in enumerate(cases)}
  for r in runs:
    i = seeds.index(r["seed"])
    for case in r.get(key, []):
      numer[i, col[case["case"]]], denom[i, col[case["case"]]] = case_figure(case, metric)
  return numer, denom


def _metric_keys(runs: list[dict]) -> list[tuple[str, str, str]]:
  """(reported metric, per-case list key, per-case metric) available in ``runs``."""
  keys = [(m, "cases", m) for m in CASE_METRICS]
  if any("ood_cases" in r for r in runs):
    keys += [(f"ood_{m}", "ood_cases", m) for m in CASE_METRICS]
  return keys


def _auc_keys(runs: list[dict]) -> list[tuple[str, str]]:
  """(reported metric, per-case list key) of the case-level AUC, where the runs carry case scores."""
  return [(("" if key == "cases" else "ood_") + "auc", key) for key in ("cases", "ood_cases")
          if any(np.isfinite(c.get("score", np.nan)) for r in runs for c in r.get(key, []))]


def _score_grid(runs: list[dict], key: str, seeds: list[int], cases: list[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """[seeds, cases] case scores (NaN where missing) and [cases] tumour-case flags, for the AUC."""
  if cases is None:
    cases = sorted({c["case"] for r in runs for c in r.get(key, [])})
  col = {c: j for j, c in enumerate(cases)}
  scores, positive = np.full((len(seeds), len(cases)), np.nan), np.zeros(len(cases), bool)
  for r in runs:
    for case in r.get(key, []):
      scores[seeds.index(r["seed"]), col[case["case"]]] = case.get("score", np.nan)
      positive[col[case["case"]]] = bool(case.get("tumor_case"))
  return scores, positive


def _attach_scores(row: dict, run_dir: str) -> None:
  """Case scores for a result written before results carried them, from the run's evaluation reports."""
  for key, folder in (("cases", f"step_{int(row.get('steps', 0))}"), ("ood_cases", "ood")):
    path = os.path.join(run_dir, "eval", folder, "cases.csv")
    if any("score" not in c for c in row.get(key, [])) and os.path.exists(path):
      score = {c["case"]: c.get("score", float("nan")) for c in read_case_figures(path)}
      for c in row[key]:
        c.setdefault("score", score.get(c["case"], float("nan")))


def statistics(rows: list[dict], num_bootstrap: int, seed: int = 0, level: float = 0.95) -> dict:
  """Points (arm, N) with means and intervals, and per-N paired differences real+synth - real.

  Args:
    rows: finished runs' results (``run_one``), each with per-case figures.
    num_bootstrap: bootstrap resamples.
    seed: bootstrap seed.
    level: interval level.

  Returns:
    {"points": [{arm, num_real, runs, seeds, cases, <metric>, <metric>_lo, <metric>_hi, ...}] (with "auc"
     and "ood_auc" where the runs' cases carry scores),
     "differences": [{num_real, seeds, pair, <metric>, <metric>_lo, <metric>_hi, ...}]} for each pair of
    PAIRS run, where a difference is over the seeds both arms finished.
  """
  groups: dict[tuple[str, int], list[dict]] = {}
  for r in rows:
    groups.setdefault((r["arm"], int(r["num_real"])), []).append(r)
  points, diffs = [], []
  for (arm, n), runs in sorted(groups.items(), key=lambda kv: (kv[0][1], ARMS.index(kv[0][0]))):
    seeds = sorted(r["seed"] for r in runs)
    p = {"arm": arm_name(arm, n), "num_real": n, "runs": len(runs), "seeds": seeds}
    for metric, key, per_case in _metric_keys(runs):
      cases = sorted({c["case"] for r in runs for c in r.get(key, [])})
      if not cases:
        continue
      numer, denom = _grid(runs, key, seeds, cases, per_case)
      p[metric], p[metric + "_lo"], p[metric + "_hi"] = crossed_bootstrap(numer, denom, num_bootstrap, seed,
                                                                            level)
      p["num_" + key] = len(cases)
    for metric, key in _auc_keys(runs):
      scores, positive = _score_grid(runs, key, seeds)
      p[metric], p[metric + "_lo"], p[metric + "_hi"] = crossed_auc_bootstrap(scores, positive, num_bootstrap,
                                                                                seed, level)
    points.append(p)
  for arm_a, arm_b in PAIRS:
    for n in sorted({n for _, n in groups}):
      a, b = groups.get((arm_a, n)), groups.get((arm_b, n))
      if not a or not b:
        continue
      seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
      if not seeds:
        continue
      a = [r for r in a if r["seed"] in seeds]
      b = [r for r in b if r["seed"] in seeds]
      d = {"num_real": n, "seeds": seeds, "pair": f"{arm_a} - {arm_b}"}
      for metric, key, per_case in _metric_keys(a + b):
        cases = sorted({c["case"] for r in a + b for c in r.get(key, [])})
        if not cases:
          continue
        na, da = _grid(a, key, seeds, cases, per_case)
        nb, db = _grid(b, key, seeds, cases, per_case)
        d[metric], d[metric + "_lo"], d[metric + "_hi"] = crossed_bootstrap(
            na, da, num_bootstrap, seed, level, paired_numer=nb, paired_denom=db)
      for metric, key in _auc_keys(a + b):
        cases = sorted({c["case"] for r in a + b for c in r.get(key, [])})
        (sa, positive), (sb, _) = _score_grid(a, key, seeds, cases), _score_grid(b, key, seeds, cases)
        d[metric], d[metric + "_lo"], d[metric + "_hi"] = crossed_auc_bootstrap(
            sa, positive, num_bootstrap, seed, level, paired_scores=sb)
      diffs.append(d)
  return {"points": points, "differences": diffs, "bootstrap": num_bootstrap, "level": level}


def _fmt(p: dict, key: str, digits: int, signed: bool = False) -> str:
  v = p.get(key)
  if v is None or not np.isfinite(v):
    return "n/a"
  f = f"{{:{'+' if signed else ''}.{digits}f}}"
  lo, hi = p.get(key + "_lo"), p.get(key + "_hi")
  if lo is None or not np.isfinite(lo):
    return f.format(v)
  return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def markdown_table(stats: dict, rows: list[dict]) -> str:
  """The study's tables in markdown: points, paired differences, false positives per control case."""
  cols = [c for c in TABLE if any(c[0] in p for p in stats["points"])]
  level = int(round(100 * stats.get("level", 0.95)))
  out = [f"Mean over seeds and held-out cases [{level}% bootstrap interval, seeds and cases resampled "
         f"({stats.get('bootstrap')} resamples)].", "",
         "| N | arm | runs (seeds) | " + " | ".join(c[1] for c in cols) + " |",
         "| --- | --- | --- | " + " | ".join("---" for _ in cols) + " |"]
  for p in stats["points"]:
    out.append(f"| {p['num_real']} | {p['arm']} | {p['runs']} ({','.join(map(str, p['seeds']))}) | "
               + " | ".join(_fmt(p, k, d) for k, _, d in cols) + " |")
  notes = []
  if any(len(p["seeds"]) < 3 for p in stats["points"]):
    notes.append("Points with fewer than 3 seeds: their intervals say little about the seed-to-seed spread "
                 "(one seed: none).")
  if any(k in p and not np.isfinite(p.get(k + "_lo", np.nan)) for p in stats["points"] for k, _, _ in cols):
    notes.append("A value without an interval: fewer than 2 held-out cases count for it.")
  if notes:
    out += [""] + notes
  for pair in dict.fromkeys(d.get("pair", "real+synth - real") for d in stats["differences"]):
    out += ["", f"Paired difference {pair} (same seeds and held-out cases) [{level}% bootstrap "
            "interval]; an interval that excludes 0 is a difference this study resolves.", "",
            "| N | seeds | " + " | ".join(f"delta {c[1]}" for c in cols) + " |",
            "| --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for d in stats["differences"]:
      if d.get("pair", "real+synth - real") == pair:
        out.append(f"| {d['num_real']} | {','.join(map(str, d['seeds']))} | "
                   + " | ".join(_fmt(d, k, dg, signed=True) for k, _, dg in cols) + " |")
  fp = _fp_per_control(rows)
  if fp["cases"]:
    out += ["", "False-positive tumour components per held-out control case (one number per seed):", "",
            "| N | arm | " + " | ".join(fp["cases"]) + " |",
            "| --- | --- | " + " | ".join("---" for _ in fp["cases"]) + " |"]
    for (n, arm), per_case in fp["rows"]:
      out.append(f"| {n} | {arm} | " + " | ".join("/".join(str(x) for x in per_case.get(c, [])) or "-"
                                                   for c in fp["cases"]) + " |")
  return "\n".join(out)


def _fp_per_control(rows: list[dict]) -> dict:
  cases = sorted({c["case"] for r in rows for c in r.get("cases", []) if not c.get("tumor_case")})
  table: dict[tuple[int, str], dict[str, list[int]]] = {}
  for r in sorted(rows, key=lambda r: (r["num_real"], ARMS.index(r["arm"]), r["seed"])):
    per = table.setdefault((r["num_real"], arm_name(r["arm"], r["num_real"])), {})
    for c in r.get("cases", []):
      if not c.get("tumor_case"):
        per.setdefault(c["case"], []).append(int(c["fp_components"]))
  return {"cases": cases, "rows": list(table.items())}


def _write_csv(path: str, rows: list[dict]) -> None:
  keys = []
  for r in rows:
    keys += [k for k in r if k not in keys]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, keys)
    w.writeheader()
    for r in rows:
      w.writerow({k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})


def collect(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Reads every finished run and writes the study's results (returns the summary).

  Writes into ``workdir``: results.csv (one row per point and per paired difference, with intervals),
  runs.csv (one row per run, headline metrics), cases.csv (one row per run and held-out case),
  summary.json, table.md (``markdown_table``) and scaling.png.
  """
  rows = []
  for name in run_names(config):
    path = os.path.join(workdir, "runs", name, "result.json")
    if os.path.exists(path):
      with open(path) as f:
        rows.append(json.load(f))
      _attach_scores(rows[-1], os.path.dirname(path))
  if not rows:
    raise ValueError(f"{workdir}: no finished run of the study yet")
  missing = [r["run"] for r in rows if "cases" not in r]
  if missing:
    raise ValueError(f"{workdir}: runs without per-case results (made by an older jaxseg): {missing[:4]}; "
                     "remove their result.json to redo them")
  stats = statistics(rows, int(config.scaling.get("bootstrap", 2000)))
  table = [dict(p, kind="point") for p in stats["points"]]
  table += [dict(d, kind="paired difference", arm=d["pair"]) for d in stats["differences"]]
  _write_csv(os.path.join(workdir, "results.csv"), table)
  _write_csv(os.path.join(workdir, "runs.csv"),
             [{k: v for k, v in r.items() if k not in ("cases", "ood_cases")} for r in rows])
  _write_csv(os.path.join(workdir, "cases.csv"),
             [dict(run=r["run"], arm=arm_name(r["arm"], r["num_real"]), num_real=r["num_real"], seed=r["seed"],
                   set=key.replace("_cases", "").replace("cases", "held_out"), **c)
              for r in rows for key in ("cases", "ood_cases") for c in r.get(key, [])])
  md = markdown_table(stats, rows)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(md + "\n")
  summary = {"runs_finished": len(rows), "runs_total": len(run_names(config)),
             "num_steps": int(config.train.num_steps), "seeds": list(config.scaling.seeds), **stats,
             "table": md}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, default=float)
  _plot(stats, os.path.join(workdir, "scaling.png"))
  return summary


def _plot(stats: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  metrics = [m for m in ("tumor_dsc", "tumor_sensitivity", "ood_tumor_dsc") if any(m in p for p in stats["points"])]
  ns = sorted({p["num_real"] for p in stats["points"]})
  x_of = {n: i for i, n in enumerate(ns)}  # evenly spaced N (N = 0 has no place on a log axis)
  panels = len(metrics) + 1
  fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4), squeeze=False)
  level = int(round(100 * stats.get("level", 0.95)))
  styles = {"real": ("tab:blue", "o"), "real+synth": ("tab:orange", "s"), "synth": ("tab:green", "D"),
            "real+realistic": ("tab:red", "^"), "realistic": ("tab:brown", "v")}
  offset = {"real": -0.06, "real+synth": 0.06, "synth": 0.0, "real+realistic": 0.12, "realistic": 0.12}
  for ax, metric in zip(axes[0], metrics):
    for arm in styles:
      pts = [p for p in stats["points"] if p["arm"] == arm and metric in p]
      if not pts:
        continue
      x = np.array([x_of[p["num_real"]] for p in pts]) + offset[arm]
      y = np.array([p[metric] for p in pts])
      err = np.array([[max(p[metric] - p[metric + "_lo"], 0) if np.isfinite(p[metric + "_lo"]) else 0,
                       max(p[metric + "_hi"] - p[metric], 0) if np.isfinite(p[metric + "_hi"]) else 0]
                      for p in pts]).T
      color, marker = styles[arm]
      ax.errorbar(x, y, yerr=err, marker=marker, color=color, capsize=3, label=arm,
                  linestyle="-" if arm.startswith("real") else "none")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, 1)
  ax = axes[0][-1]
  colours = {"real+synth - real": "tab:purple", "real+realistic - real": "tab:red",
             "real+realistic - real+synth": "tab:gray"}
  for k, (pair, colour) in enumerate(colours.items()):
    diffs = [d for d in stats["differences"] if d.get("pair", "real+synth - real") == pair]
    if not diffs:
      continue
    x = np.array([x_of[d["num_real"]] for d in diffs]) + 0.08 * k
    y = np.array([d.get("tumor_dsc", np.nan) for d in diffs])
    err = np.array([[max(d["tumor_dsc"] - d["tumor_dsc_lo"], 0), max(d["tumor_dsc_hi"] - d["tumor_dsc"], 0)]
                    if np.isfinite(d.get("tumor_dsc_lo", np.nan)) else [0, 0] for d in diffs]).T
    ax.errorbar(x, y, yerr=err, marker="s", color=colour, capsize=3, label=pair)
  ax.axhline(0, color="gray", lw=0.8)
  ax.set_ylabel("paired difference in tumour DSC")
  for ax in axes[0]:
    ax.set_xticks(range(len(ns)), [str(n) for n in ns])
    ax.set_xlim(-0.5, len(ns) - 0.5)
    ax.set_xlabel("real tumour cases (N)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"Mean over seeds and held-out cases; error bars: {level}% bootstrap interval "
               "(seeds and cases resampled)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _run_components(workdir: str, name: str) -> tuple[list[dict], dict[str, bool]]:
  """(one row per predicted tumour component of the run's held-out cases, {case: is a tumour case}).

  Predicts each held-out case with the run's final checkpoint (the one its result was measured with) and
  keeps the rows in ``<run>/eval/components.csv``; a later call reads them from there.
  """
  run_dir = os.path.join(workdir, "runs", name)
  result_path = os.path.join(run_dir, "result.json")
  if not os.path.exists(result_path):
    raise ValueError(f"{result_path}: run {name!r} has not finished (no result)")
  with open(result_path) as f:
    result = json.load(f)
  cases = {c["case"]: bool(c.get("tumor_case")) for c in result["cases"]}
  path = os.path.join(run_dir, "eval", "components.csv")
  if os.path.exists(path):
    with open(path) as f:
      rows = [r for r in csv.DictReader(f) if r.get("case")]
    for r in rows:
      r.update({k: float(r[k]) for k in ("volume_mm3", "share_in_organ", "structure_share", "mean_prob",
                                         "max_prob", "case_score")})
      r.update(on_lesion=r["on_lesion"] == "True", true_positive=r["true_positive"] == "True")
    return rows, cases
  config, params, _ = assembly.restore_for_inference(run_dir, int(result["steps"]))
  cache_dir = prepare_data(copy.deepcopy(config.data))
  rows = []
  for case_id in cases:
    rows += [dict(run=name, **r) for r in false_positives.case_components(config, params, cache_dir, case_id)]
  _write_csv(path + ".tmp", rows or [{"run": name}])
  os.replace(path + ".tmp", path)
  return rows, cases


def _median(values: list[float]) -> str:
  return f"{float(np.median(values)):.2f}" if values else "-"


def false_positive_anatomy(config: ml_collections.ConfigDict, workdir: str, names: str,
                           num_bootstrap: int = 2000) -> dict:
  """Where the false-positive tumours of finished runs lie, and whether a confidence rule could drop them.

  Args:
    config: the study config.
    workdir: the study folder.
    names: comma-separated run names, or "all" for every finished run.
    num_bootstrap: resamples for the AUC's interval.

  Returns:
    {"runs": {name: {"controls", "components", "by_structure"}}, "table": markdown}: per (N, arm), false-
    positive components per control case in the organ's own parenchyma, on other annotated structures
    (the most frequent named), on another organ's real lesion, and outside any annotated structure; and the
    confidence AUC: tumour cases against controls by each case's most confident component (its mean tumour
    probability, what ``eval.min_tumor_confidence`` thresholds; 0 without a component), 0.5 meaning no
    threshold of that rule separates them.
  """
  if names == "all":
    chosen = [n for n in run_names(config) if os.path.exists(os.path.join(workdir, "runs", n, "result.json"))]
  else:
    chosen = [n.strip() for n in names.split(",") if n.strip()]
  if not chosen:
    raise ValueError(f"{workdir}: no finished run to read false positives from")
  organ = labels_lib.check_organs(config.data.organs)[0]
  per_run, groups = {}, {}
  for name in chosen:
    rows, cases = _run_components(workdir, name)
    fps = [r for r in rows if not cases[r["case"]]]
    per_run[name] = {"controls": sum(not t for t in cases.values()), "components": len(fps),
                     "by_structure": false_positives.summarize(fps)}
    arm, n, seed = parse_name(name)
    g = groups.setdefault((n, arm), {"controls": 0, "runs": [], "fps": [], "hits": []})
    g["controls"] += per_run[name]["controls"]
    g["fps"] += fps
    g["hits"] += [r["mean_prob"] for r in rows if r["true_positive"]]
    confidence = {c: 0.0 for c in cases}
    for r in rows:
      confidence[r["case"]] = max(confidence[r["case"]], r["mean_prob"])
    g["runs"].append({"seed": seed, "cases": [{"case": c, "tumor_case": t, "score": confidence[c]}
                                              for c, t in cases.items()]})
  out = [f"False-positive tumour components per held-out control case, by what lies under them ({organ}: the "
         "organ's own parenchyma; neighbour: another annotated structure; lesion: another organ's real lesion; "
         "outside: no annotated structure), mean over the runs' control cases; and the confidence AUC [95% "
         "bootstrap interval, seeds and cases resampled]: tumour cases against controls by their most "
         "confident component's mean tumour probability (0.5: no eval.min_tumor_confidence separates them); "
         "and the median of that mean probability over the components that hit a tumour and over the false "
         "positives in the organ.",
         "", "| N | arm | runs | all | in the " + organ + " (controls with one) | on neighbours (most: name, "
         "count) | on another organ's lesion | outside | confidence AUC | mean probability: hits / in-organ FPs |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for (n, arm), g in sorted(groups.items(), key=lambda kv: (kv[0][0], ARMS.index(kv[0][1]))):
    fps, c = g["fps"], max(g["controls"], 1)
    lesion = [r for r in fps if r["on_lesion"]]
    rest = [r for r in fps if not r["on_lesion"]]
    inside = [r for r in rest if r["structure"] == organ]
    outside = [r for r in rest if r["structure"] == false_positives.NONE]
    neighbours = [r for r in rest if r["structure"] not in (organ, false_positives.NONE)]
    counts = {}
    for r in neighbours:
      counts[r["structure"]] = counts.get(r["structure"], 0) + 1
    top = max(counts.items(), key=lambda kv: kv[1], default=("-", 0))
    with_inside = len({(r["run"], r["case"]) for r in inside})
    seeds = sorted(r["seed"] for r in g["runs"])
    scores, positive = _score_grid(g["runs"], "cases", seeds)
    a, lo, hi = crossed_auc_bootstrap(scores, positive, num_bootstrap)
    out.append(f"| {n} | {arm_name(arm, n)} | {len(g['runs'])} | {len(fps) / c:.2f} | {len(inside) / c:.2f} "
               f"({with_inside}/{g['controls']}) | {len(neighbours) / c:.2f} ({top[0]}: {top[1] / c:.2f}) | "
               f"{len(lesion) / c:.2f} | {len(outside) / c:.2f} | {_fmt({'a': a, 'a_lo': lo, 'a_hi': hi}, 'a', 2)} | "
               f"{_median([float(v) for v in g['hits']])} / {_median([r['mean_prob'] for r in inside])} |")
  return {"runs": per_run, "table": "\n".join(out)}


def sampling_report(config: ml_collections.ConfigDict, num_batches: int = 200) -> dict:
  """How tumour-rich training patches are, against the held-out sliding windows (a specificity diagnostic).

  Draws ``num_batches`` batches from the real arm's loader at the largest N (the real+synth arm draws the
  same patches) and counts the patches that show an organ of the run: the share with a real tumour, and
  the share of control patches, ``synth.prob`` of which get a synthetic tumour in the real+synth arm (an
  upper bound: a synthesis may fail to place its tumour). Then tiles each held-out case with windows of
  ``data.patch_size`` at ``eval.overlap`` and counts the windows that show an organ and a tumour.
  """
  organs = tuple(config.data.organs)
  organ_ids = [labels_lib.organ_label(organs, o) for o in organs]
  tumour_ids = [labels_lib.tumor_label(organs, o) for o in organs]
  cache_dir = prepare_data(config.data)
  cases = cache.list_cases(cache_dir)
  train_ids, val_ids = split.split_cases(cases, config.data.num_val, config.data.split_seed, organs)
  n = max(int(x) for x in config.scaling.num_real)
  c = run_config(config, f"real_n{n}_s{config.scaling.seeds[0]}")
  it = make_train_loader(c.data, cache_dir, train_ids, seed=c.seed, synth_cfg=c.synth)
  shown = real = control = 0
  for _ in range(num_batches):
    b = next(it)
    for lab, so in zip(b["label"], b["synth_organ"]):
      if np.isin(lab, organ_ids + tumour_ids).any():
        shown += 1
        real += bool(np.isin(lab, tumour_ids).any())
        control += bool(so >= 0)
  close = getattr(it, "close", None)
  if close is not None:
    close()
  size = np.asarray(config.data.patch_size)
  stride = np.maximum((size * (1.0 - float(config.eval.overlap))).astype(int), 1)
  windows = {"tumour cases": [0, 0], "control cases": [0, 0]}  # [with a tumour, showing an organ]
  by_id = {x["case_id"]: x for x in cases}
  for cid in val_ids:
    _, lab, _ = cache.load_case(cache_dir, cid, mmap=True)
    kind = "tumour cases" if split.is_tumor_case(by_id[cid], organs) else "control cases"
    starts = [range(0, max(d - s, 0) + 1, st) for d, s, st in zip(lab.shape, size, stride)]
    for x in starts[0]:
      for y in starts[1]:
        for z in starts[2]:
          w = np.asarray(lab[x:x + size[0], y:y + size[1], z:z + size[2]])
          if np.isin(w, organ_ids + tumour_ids).any():
            windows[kind][1] += 1
            windows[kind][0] += bool(np.isin(w, tumour_ids).any())
  prob = float(config.synth.prob)
  tw, cw = windows["tumour cases"], windows["control cases"]
  return {"num_real": n, "patches": num_batches * int(config.data.batch_size), "patches_showing_organ": shown,
          "train_share_with_tumour_real_arm": real / max(shown, 1),
          "train_share_with_tumour_real_synth_arm_at_most": (real + prob * control) / max(shown, 1),
          "train_share_control_patches": control / max(shown, 1),
          "heldout_windows_showing_organ": tw[1] + cw[1],
          "heldout_share_with_tumour": (tw[0] + cw[0]) / max(tw[1] + cw[1], 1),
          "heldout_share_with_tumour_in_tumour_cases": tw[0] / max(tw[1], 1)}


def run_study(config: ml_collections.ConfigDict, workdir: str, only: str = "") -> dict:
  """Runs every unfinished run of the study (or just ``only``) and collects the tables and plot."""
  os.makedirs(workdir, exist_ok=True)
  names = run_names(config)
  if only:
    if only not in names:
      raise ValueError(f"--only: {only!r} is not a run of this study; runs: {', '.join(names)}")
    names = [only]
  for name in names:
    run_one(config, workdir, name)
  return collect(config, workdir)
