"""The data-scaling study: arms that differ only in synthesis (from the loaders), the statistics, and the
whole study at toy size through its CLI (every run, the tables, the plot, resume)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxseg import labels as labels_lib
from jaxseg import scaling
from jaxseg.synth.profile_file import flat_fields
from jaxseg.default_config import config_from_file
from jaxseg.metrics.bootstrap import crossed_auc_bootstrap, crossed_bootstrap
from jaxseg.metrics.detection import auc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "scaling_phantom.py")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
  """The toy study's phantoms, made once for this module (the CLI test reuses them through data.root)."""
  return str(tmp_path_factory.mktemp("scaling") / "phantoms")


def test_arms_draw_the_same_cases_and_patches_and_differ_only_in_synthesis(toy_data, monkeypatch):
  from jaxseg.data import cache, pipeline, split  # pylint: disable=import-outside-toplevel
  from jaxseg.data.pipeline import make_train_loader  # pylint: disable=import-outside-toplevel
  from jaxseg.data.prepare import prepare_data  # pylint: disable=import-outside-toplevel
  config = config_from_file(CONFIG, "toy")
  config.data.root = toy_data
  assert scaling.run_names(config) == ["synth_n0_s0", "real_n1_s0", "synth_n1_s0", "real_n2_s0", "synth_n2_s0"]
  # The configs: the same but for the synthesis switch.
  real, synth = scaling.run_config(config, "real_n2_s0"), scaling.run_config(config, "synth_n2_s0")
  fr, fs = flat_fields(real.to_dict()), flat_fields(synth.to_dict())
  assert {k for k in fr if fr[k] != fs.get(k)} == {"synth.enabled"}
  assert fr["synth.enabled"] is False and fs["synth.enabled"] is True and fr["data.num_real_tumor_cases"] == 2

  # The realistic arm: the same as real+synth but for the synthesis mode.
  realistic = flat_fields(scaling.run_config(config, "realistic_n2_s0").to_dict())
  assert {k for k in fs if fs[k] != realistic.get(k)} == {"synth.mode"} and realistic["synth.mode"] == "realistic"

  cache_dir = prepare_data(config.data)
  cases = cache.list_cases(cache_dir)
  organs = tuple(config.data.organs)
  train_ids, _ = split.split_cases(cases, config.data.num_val, config.data.split_seed, organs)
  # The patches carry no case id: record it by wrapping the production sampler (one process, no workers).
  sample = pipeline.PatchSampler.__call__

  def with_case(self, unit, rng):
    return dict(sample(self, unit, rng), case_index=np.int32(train_ids.index(unit[0])))

  monkeypatch.setattr(pipeline.PatchSampler, "__call__", with_case)
  is_tumour = {c["case_id"]: split.is_tumor_case(c, organs) for c in cases}

  def batches(name, n=40):  # as jaxseg/train/loop.py builds the loader
    c = scaling.run_config(config, name)
    it = make_train_loader(c.data, cache_dir, train_ids, seed=c.seed)
    return [next(it) for _ in range(n)]

  tumour = labels_lib.tumor_label(organs, "liver")
  for n in (1, 2):
    a, b = batches(f"real_n{n}_s0"), batches(f"synth_n{n}_s0")
    for x, y in zip(a, b):  # the same patches of the same cases in the same order
      for k in ("case_index", "image", "label", "synth_organ", "spacing"):
        np.testing.assert_array_equal(x[k], y[k])
    organ_idx = np.concatenate([x["synth_organ"] for x in a])
    drawn = [train_ids[i] for x in a for i in x["case_index"]]
    # Control patches are in the real arm's stream too (as negatives: synthesis is off there), from
    # control cases; the tumour cases drawn are N of them.
    assert (organ_idx >= 0).any() and (organ_idx < 0).any()
    assert all(not is_tumour[cid] for cid, o in zip(drawn, organ_idx) if o >= 0)
    assert len({cid for cid, o in zip(drawn, organ_idx) if o < 0}) == n
  # As the train loop builds it (with config.synth): the realistic arm crops the same patches as the real one.
  def loop_batches(name, n=20):
    c = scaling.run_config(config, name)
    it = make_train_loader(c.data, cache_dir, train_ids, seed=c.seed, synth_cfg=c.synth)
    return [next(it) for _ in range(n)]

  for x, y in zip(loop_batches("real_n2_s0"), loop_batches("realistic_n2_s0")):
    for k in ("case_index", "image", "label", "synth_organ", "spacing"):
      np.testing.assert_array_equal(x[k], y[k])
  # N = 0: the loader still works and draws control patches only, without any real tumour.
  zero = batches("synth_n0_s0")
  assert all((x["synth_organ"] >= 0).all() and not (x["label"] == tumour).any() for x in zero)
  assert not any(is_tumour[train_ids[i]] for x in zero for i in x["case_index"])
  # Nested subsets: the real tumour cases of N = 1 are among those of N = 2.
  seen = {}
  for n in (1, 2):
    c = scaling.run_config(config, f"real_n{n}_s0")
    from jaxseg.data.split import first_tumor_cases  # pylint: disable=import-outside-toplevel
    seen[n] = set(first_tumor_cases(cases, train_ids, c.data.num_real_tumor_cases, c.data.split_seed, organs))
  assert seen[1] < seen[2]


def test_sampling_report_compares_training_patches_with_heldout_windows(toy_data):
  config = config_from_file(CONFIG, "toy")
  config.data.root = toy_data
  r = scaling.sampling_report(config, num_batches=20)
  assert r["num_real"] == 2 and r["patches"] == 40 and 0 < r["patches_showing_organ"] <= 40
  assert 0 <= r["train_share_with_tumour_real_arm"] <= r["train_share_with_tumour_real_synth_arm_at_most"] <= 1
  assert r["train_share_control_patches"] > 0 and r["heldout_windows_showing_organ"] > 0
  assert 0 <= r["heldout_share_with_tumour"] <= r["heldout_share_with_tumour_in_tumour_cases"] <= 1


def _fake_run(arm, n, seed, dsc, fp, organ=0.9, fp_tumour=0):
  """A finished run's result with per-case figures: tumour cases t0.. with ``dsc`` (and ``fp_tumour`` false
  positives each), controls c0.. with ``fp``."""
  cases = [dict(case=f"t{i}", tumor_case=True, tumor_dsc=d, tumor_nsd=d, gt_tumors=2, detected_tumors=int(d > 0.3)
                + int(d > 0.6), case_positive=d > 0.3, fp_components=fp_tumour, organ_dsc=organ)
           for i, d in enumerate(dsc)]
  cases += [dict(case=f"c{i}", tumor_case=False, tumor_dsc=float("nan"), tumor_nsd=float("nan"), gt_tumors=0,
                 detected_tumors=0, case_positive=f > 0, fp_components=f, organ_dsc=organ) for i, f in enumerate(fp)]
  return {"run": f"{'synth' if arm == 'real+synth' else 'real'}_n{n}_s{seed}", "arm": arm, "num_real": n,
          "seed": seed, "cases": cases}


def test_statistics_means_intervals_and_paired_differences():
  rng = np.random.default_rng(0)
  base = rng.uniform(0.2, 0.8, 10)  # per-case difficulty, shared by the arms
  rows = []
  for seed in (0, 1, 2):
    rows.append(_fake_run("real", 5, seed, list(base + 0.01 * seed), [1, 0, 2, 0]))
    rows.append(_fake_run("real+synth", 5, seed, list(np.clip(base + 0.05 + 0.01 * seed, 0, 1)), [0, 0, 1, 0],
                          fp_tumour=seed))
  rows.append(_fake_run("real+synth", 0, 0, list(base * 0.5), [3, 3, 3, 3]))
  stats = scaling.statistics(rows, num_bootstrap=500)
  pts = {(p["arm"], p["num_real"]): p for p in stats["points"]}
  assert set(pts) == {("real", 5), ("real+synth", 5), ("synth", 0)}
  real = pts[("real", 5)]
  assert real["runs"] == 3 and real["num_cases"] == 14
  assert real["tumor_dsc"] == pytest.approx(np.mean(base) + 0.01)
  assert real["tumor_dsc_lo"] < real["tumor_dsc"] < real["tumor_dsc_hi"]
  assert real["specificity"] == pytest.approx(0.5) and real["fp_per_control_case"] == pytest.approx(0.75)
  assert pts[("synth", 0)]["specificity"] == 0.0 and pts[("synth", 0)]["fp_per_control_case"] == 3.0
  (d,) = stats["differences"]
  assert d["num_real"] == 5 and d["seeds"] == [0, 1, 2]
  # Paired by seed and case, the difference is exactly 0.05 in every cell (no clipping here): a zero-width
  # interval, where the unpaired intervals of the two arms overlap widely.
  assert np.all(base + 0.07 <= 1)
  assert d["tumor_dsc"] == pytest.approx(0.05) and d["tumor_dsc_lo"] == pytest.approx(0.05)
  assert d["tumor_dsc_hi"] == pytest.approx(0.05)
  assert pts[("real+synth", 5)]["tumor_dsc_lo"] < real["tumor_dsc_hi"]
  assert d["fp_per_control_case"] == pytest.approx(-0.5)
  # False positives on the tumour cases count only there (the controls' 0.75 does not leak in).
  assert real["fp_per_tumor_case"] == 0.0 and pts[("real+synth", 5)]["fp_per_tumor_case"] == pytest.approx(1.0)
  assert d["fp_per_tumor_case"] == pytest.approx(1.0)
  # Deterministic, and the table names its intervals.
  assert scaling.statistics(rows, num_bootstrap=500) == stats
  md = scaling.markdown_table(stats, rows)
  assert "95% bootstrap interval" in md
  assert "| 5 | 0,1,2 | +0.050 [+0.050, +0.050]" in md
  assert "| 0 | synth |" in md and "| 5 | real | 1/1/1 | 0/0/0 | 2/2/2 | 0/0/0 |" in md


def test_realistic_arm_names_pairs_and_placement_check():
  config = config_from_file(CONFIG)
  assert "real+realistic" in config.scaling.arms
  names = scaling.run_names(config)
  # The CPU grid: N in {0, 2, 20} for real and real+synth, the realistic arm at N = 20 only.
  assert "realistic_n20_s2" in names and "realistic_n0_s0" not in names and len(names) == 15 + 3
  config.scaling.num_real_realistic = ()
  assert "realistic_n0_s0" in scaling.run_names(config) and len(scaling.run_names(config)) == 24
  config.scaling.num_real_realistic = (6,)
  with pytest.raises(ValueError, match="num_real_realistic"):
    scaling.run_names(config)
  config.scaling.num_real_realistic = (20,)
  assert scaling.parse_name("realistic_n6_s1") == ("real+realistic", 6, 1)
  assert scaling.arm_name("real+realistic", 0) == "realistic"
  rng = np.random.default_rng(0)
  base = rng.uniform(0.2, 0.8, 6)
  rows = [_fake_run("real", 5, 0, list(base), [1, 0]), _fake_run("real+synth", 5, 0, list(base + 0.05), [0, 0]),
          dict(_fake_run("real+realistic", 5, 0, list(base + 0.08), [0, 0]), run="realistic_n5_s0")]
  stats = scaling.statistics(rows, num_bootstrap=100)
  diffs = {d["pair"]: d for d in stats["differences"]}
  assert set(diffs) == {"real+synth - real", "real+realistic - real", "real+realistic - real+synth"}
  assert diffs["real+realistic - real+synth"]["tumor_dsc"] == pytest.approx(0.03)
  assert "Paired difference real+realistic - real+synth" in scaling.markdown_table(stats, rows)
  config.synth.mode = "reference"   # realistic mode places as patch mode: the crops would differ too
  with pytest.raises(ValueError, match="real\\+realistic needs synth.mode='patch'"):
    scaling.run_names(config)


def test_crossed_bootstrap_covers_the_seed_spread():
  """With one seed far from the others, the interval widens; resampling only cases would not show it."""
  numer = np.tile(np.linspace(0.4, 0.6, 8), (3, 1))
  numer[2] += 0.3
  denom = np.ones_like(numer)
  m, lo, hi = crossed_bootstrap(numer, denom, 2000, seed=0)
  assert m == pytest.approx(0.6) and lo <= 0.51 and hi >= 0.69
  m1, lo1, hi1 = crossed_bootstrap(numer[:1], denom[:1], 2000, seed=0)
  assert hi1 - lo1 < (hi - lo) / 2
  # One counted case: nothing to resample, no interval.
  one = np.zeros_like(denom)
  one[:, 3] = 1
  m, lo, hi = crossed_bootstrap(numer, one, 100)
  assert np.isfinite(m) and np.isnan(lo) and np.isnan(hi)
  with pytest.raises(ValueError):
    crossed_bootstrap(numer, denom[:, :3], 10)


def test_crossed_auc_bootstrap_means_seed_aucs_and_pairs_arms():
  """The case-level AUC: the mean of each seed's AUC, an interval that widens with the seed spread, and a
  paired difference on the same resamples."""
  rng = np.random.default_rng(0)
  positive = np.array([True] * 6 + [False] * 5)
  scores = rng.uniform(0, 1, (3, 11))
  scores[:, :6] += np.array([[0.5], [0.0], [0.2]])    # seed 0 separates well, seed 1 not at all
  m, lo, hi = crossed_auc_bootstrap(scores, positive, 2000, seed=0)
  assert m == pytest.approx(np.mean([auc(s[positive], s[~positive]) for s in scores]))
  assert lo < m < hi
  m0, lo0, hi0 = crossed_auc_bootstrap(scores[:1], positive, 2000, seed=0)
  assert m0 == pytest.approx(auc(scores[0, positive], scores[0, ~positive]))
  # Controls outscoring every tumour case: 0; ties count one half; a missing case is left out everywhere.
  flat = np.where(positive, 0.2, 0.9)[None].repeat(2, 0)
  assert crossed_auc_bootstrap(flat, positive, 100) == (0.0, 0.0, 0.0)
  assert crossed_auc_bootstrap(np.ones((2, 11)), positive, 100)[0] == 0.5
  gap = scores.copy()
  gap[1, 0] = np.nan
  assert crossed_auc_bootstrap(gap, positive, 0)[0] == pytest.approx(
      np.mean([auc(s[1:6], s[6:]) for s in scores]))
  # Paired: the same arm against itself is exactly 0; against the flat arm, the difference of the AUCs.
  assert crossed_auc_bootstrap(scores, positive, 500, paired_scores=scores) == (0.0, 0.0, 0.0)
  d, dlo, dhi = crossed_auc_bootstrap(scores, positive, 500, paired_scores=np.ones((3, 11)))
  assert d == pytest.approx(m - 0.5) and dlo < d < dhi
  with pytest.raises(ValueError, match="positive"):
    crossed_auc_bootstrap(scores, positive[:3], 10)


def test_statistics_report_the_case_auc_from_scores_and_old_reports(tmp_path):
  """Scores in the results give a case-AUC column; a result written before scores were recorded gets them
  from its run's evaluation report."""
  rows = []
  for seed in (0, 1):
    for arm, bump in (("real", 0.0), ("real+synth", 0.3)):
      r = _fake_run(arm, 5, seed, [0.5, 0.6, 0.7], [1, 1, 0])
      for c in r["cases"]:
        c["score"] = (0.6 + bump) if c["tumor_case"] else 0.7
      rows.append(r)
  stats = scaling.statistics(rows, num_bootstrap=200)
  pts = {p["arm"]: p for p in stats["points"]}
  assert pts["real"]["auc"] == 0.0 and pts["real+synth"]["auc"] == 1.0
  assert stats["differences"][0]["auc"] == 1.0
  assert "case AUC" in scaling.markdown_table(stats, rows)
  # An old result: no score in its cases, the run's report has them.
  old = _fake_run("real", 5, 0, [0.5], [1])
  report = tmp_path / "eval" / "step_7"
  report.mkdir(parents=True)
  head = ("case,label,label_id,is_tumor,dsc,nsd,tumor_case,gt_tumors,detected_tumors,case_positive,"
          "fp_components,score\n")
  report.joinpath("cases.csv").write_text(head + "t0,liver_tumor,2,1,0.5,0.5,1,2,1,1,0,0.8\n"
                                          "c0,liver_tumor,2,1,,,0,0,0,1,1,0.3\n")
  old["steps"] = 7
  scaling._attach_scores(old, str(tmp_path))  # pylint: disable=protected-access
  assert [c["score"] for c in old["cases"]] == [0.8, 0.3]


def _study(workdir, data_root, *extra):
  cmd = [sys.executable, os.path.join(ROOT, "launch", "scaling.py"), f"--config={CONFIG}:toy",
         f"--workdir={workdir}", f"--config.data.root={data_root}", *extra]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_toy_study_runs_collects_and_resumes(tmp_path, toy_data):
  workdir = str(tmp_path / "study")
  names = _study(workdir, toy_data, "--list").stdout.split()
  assert names == ["synth_n0_s0", "real_n1_s0", "synth_n1_s0", "real_n2_s0", "synth_n2_s0"]
  out = _study(workdir, toy_data).stdout
  assert "| N | arm | runs (seeds) | tumour DSC" in out and "Paired difference real+synth - real" in out
  assert "case AUC" in out
  with open(os.path.join(workdir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  points = [(r["arm"], int(r["num_real"])) for r in table if r["kind"] == "point"]
  assert points == [("synth", 0), ("real", 1), ("real+synth", 1), ("real", 2), ("real+synth", 2)]
  assert [int(r["num_real"]) for r in table if r["kind"] == "paired difference"] == [1, 2]
  for r in table:
    if r["kind"] == "point":
      for k in ("tumor_dsc", "organ_dsc", "ood_tumor_dsc"):
        v, lo, hi = float(r[k]), float(r[k + "_lo"] or "nan"), float(r[k + "_hi"] or "nan")
        assert 0.0 <= v <= 1.0, (r, k)
        if k == "tumor_dsc":  # one held-out tumour case at toy size: no interval
          assert np.isnan(lo) and np.isnan(hi), (r, k)
        else:
          assert lo - 1e-9 <= v <= hi + 1e-9, (r, k)
  with open(os.path.join(workdir, "cases.csv")) as f:
    cases = list(csv.DictReader(f))
  assert {c["set"] for c in cases} == {"held_out", "ood"}
  assert {c["run"] for c in cases} == set(names)
  # Every run saw the same held-out cases.
  held = {}
  for c in cases:
    if c["set"] == "held_out":
      held.setdefault(c["run"], set()).add(c["case"])
  assert len({frozenset(v) for v in held.values()}) == 1
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["runs_finished"] == 5 and summary["runs_total"] == 5
  assert os.path.getsize(os.path.join(workdir, "scaling.png")) > 10_000
  assert os.path.exists(os.path.join(workdir, "table.md"))
  # Resume: a finished run is not redone (its result file is untouched); --collect prints the table.
  marker = os.path.join(workdir, "runs", "real_n1_s0", "result.json")
  before = os.path.getmtime(marker)
  out = _study(workdir, toy_data, "--collect").stdout
  assert "| 0 | synth | 1 (0) |" in out
  _study(workdir, toy_data, "--only=real_n1_s0")
  assert os.path.getmtime(marker) == before
  # What lies under the run's false positives: every held-out case predicted again, one row per component,
  # kept for the next call; the table has a row per arm and N asked for, with the confidence AUC.
  out = _study(workdir, toy_data, "--false_positives=real_n1_s0,synth_n1_s0").stdout
  runs = json.loads(out.strip().splitlines()[-1])
  assert "| 1 | real | 1 |" in out and "| 1 | real+synth | 1 |" in out and "confidence AUC" in out
  result = json.load(open(marker))
  assert runs["real_n1_s0"]["components"] == sum(c["fp_components"] for c in result["cases"]
                                                 if not c["tumor_case"])
  csv_path = os.path.join(workdir, "runs", "real_n1_s0", "eval", "components.csv")
  before = os.path.getmtime(csv_path)
  again = _study(workdir, toy_data, "--false_positives=real_n1_s0").stdout
  assert os.path.getmtime(csv_path) == before and "| 1 | real | 1 |" in again
