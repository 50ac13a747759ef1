"""Metrics against hand-computed cases: DSC, NSD/HD95 (surface elements), detection, AUC, bootstrap."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from jaxseg.metrics import bootstrap, detection, evaluation, segmentation, surface


def _box(shape, lo, hi):
  m = np.zeros(shape, bool)
  m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
  return m


# ---------------------------------------------------------------------------------------------- DSC
def test_dsc_hand_cases():
  a = _box((6, 6, 6), (0, 0, 0), (2, 2, 2))   # 8 voxels
  b = _box((6, 6, 6), (1, 0, 0), (3, 2, 2))   # 8 voxels, 4 shared
  assert segmentation.dsc(a, b) == pytest.approx(0.5)
  assert segmentation.dsc(a, a) == 1.0
  empty = np.zeros_like(a)
  assert segmentation.dsc(a, empty) == 0.0      # empty prediction on a tumour case
  assert segmentation.dsc(empty, a) == 0.0      # false positive on a control case
  assert math.isnan(segmentation.dsc(empty, empty))
  one = _box((6, 6, 6), (3, 3, 3), (4, 4, 4))
  assert segmentation.dsc(one, one) == 1.0


# ------------------------------------------------------------------------------------ surfel table
def test_surfel_areas_hand_computed_anisotropic():
  sx, sy, sz = 0.7, 1.3, 2.9
  areas = surface.surfel_areas((sx, sy, sz))
  corner = 0.125 * math.sqrt((sy * sz) ** 2 + (sx * sz) ** 2 + (sx * sy) ** 2)
  # One corner inside: one triangle cutting the corner off, for each of the 8 corners.
  for bit in range(8):
    assert areas[1 << bit] == pytest.approx(corner, rel=1e-12)
    assert areas[255 - (1 << bit)] == pytest.approx(corner, rel=1e-12)
  # Four corners on the face i == 0 (bits 128, 64, 32, 16) inside: a plane normal to x of area sy * sz.
  assert areas[128 + 64 + 32 + 16] == pytest.approx(sy * sz, rel=1e-12)
  assert areas[8 + 4 + 2 + 1] == pytest.approx(sy * sz, rel=1e-12)
  # Corners (1,1,0) and (1,1,1) (bits 2 and 1): an edge along z, a quad sz long, 0.5 hypot(sx, sy) wide.
  assert areas[2 + 1] == pytest.approx(sz * 0.5 * math.hypot(sx, sy), rel=1e-12)
  assert areas[0] == 0 and areas[255] == 0
  # Complement symmetry (the surface does not depend on which side is inside).
  np.testing.assert_allclose(areas, areas[::-1], rtol=1e-12)


def test_single_voxel_surface_area():
  m = _box((5, 5, 5), (2, 2, 2), (3, 3, 3))
  sd = surface.surface_distances(m, m, (1.0, 2.0, 3.0))
  corner = 0.125 * math.sqrt(6 ** 2 + 3 ** 2 + 2 ** 2)
  assert len(sd["areas_gt"]) == 8
  assert sd["areas_gt"].sum() == pytest.approx(8 * corner)
  assert surface.nsd(m, m, (1.0, 2.0, 3.0), 0.0) == 1.0
  assert surface.hd95(m, m, (1.0, 2.0, 3.0)) == 0.0


def test_one_voxel_objects_apart_anisotropic():
  # gt voxel at z=2, pred voxel at z=5 with sz = 2 mm: surface corners at z in {2, 3} and {5, 6}:
  # half of each surface lies 4 mm from the other, half 6 mm.
  g = _box((5, 5, 9), (2, 2, 2), (3, 3, 3))
  p = _box((5, 5, 9), (2, 2, 5), (3, 3, 6))
  sp = (1.0, 1.0, 2.0)
  assert surface.nsd(g, p, sp, 3.9) == 0.0
  assert surface.nsd(g, p, sp, 4.0) == pytest.approx(0.5)
  assert surface.nsd(g, p, sp, 5.9) == pytest.approx(0.5)
  assert surface.nsd(g, p, sp, 6.0) == 1.0
  assert surface.hd95(g, p, sp) == 6.0
  assert segmentation.dsc(g, p) == 0.0


def test_empty_conventions():
  g = _box((6, 6, 6), (1, 1, 1), (3, 3, 3))
  e = np.zeros_like(g)
  assert surface.nsd(g, e, (1, 1, 1)) == 0.0
  assert surface.nsd(e, g, (1, 1, 1)) == 0.0
  assert math.isinf(surface.hd95(g, e, (1, 1, 1)))
  assert math.isnan(surface.nsd(e, e, (1, 1, 1)))
  assert math.isnan(surface.hd95(e, e, (1, 1, 1)))


def _brute_force_nsd(g, p, spacing, tol):
  """The surface-element definition written out directly, corner by corner (slow, tiny inputs only)."""
  areas = surface.surfel_areas(spacing)
  bits = {c: 1 << (7 - (4 * c[0] + 2 * c[1] + c[2])) for c in itertools.product((0, 1), repeat=3)}

  def surfels(m):
    mp = np.pad(m, 1)
    pts, ars = [], []
    for idx in itertools.product(*[range(s + 1) for s in m.shape]):
      code = sum(b for c, b in bits.items() if mp[idx[0] + c[0], idx[1] + c[1], idx[2] + c[2]])
      if 0 < code < 255:
        pts.append(np.asarray(idx, float) * spacing)
        ars.append(areas[code])
    return np.asarray(pts), np.asarray(ars)

  pg, ag = surfels(g)
  pp, ap = surfels(p)
  dg = np.sqrt(((pg[:, None] - pp[None]) ** 2).sum(-1)).min(1)
  dp = np.sqrt(((pp[:, None] - pg[None]) ** 2).sum(-1)).min(1)
  return (ag[dg <= tol].sum() + ap[dp <= tol].sum()) / (ag.sum() + ap.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nsd_matches_surface_element_definition(seed):
  rng = np.random.default_rng(seed)
  shape = (9, 8, 7)
  g = ndimage.gaussian_filter(rng.normal(size=shape), 1.2) > 0.05
  p = ndimage.gaussian_filter(rng.normal(size=shape), 1.2) > 0.05
  spacing = np.asarray(rng.uniform(0.5, 3.0, 3))
  for tol in (0.5, 2.0, 3.3):
    assert surface.nsd(g, p, spacing, tol) == pytest.approx(_brute_force_nsd(g, p, spacing, tol), abs=1e-6)


def test_nsd_of_shifted_box_anisotropic():
  # A box and the box shifted by one slice (3 mm): x/y faces coincide except a 3 mm strip; the z faces are
  # 3 mm apart. At a 2 mm tolerance only surface elements within 2 mm count.
  g = _box((8, 8, 10), (2, 2, 2), (6, 6, 6))
  p = _box((8, 8, 10), (2, 2, 3), (6, 6, 7))
  sp = (1.0, 1.0, 3.0)
  assert surface.nsd(g, p, sp, 2.0) == pytest.approx(_brute_force_nsd(g, p, sp, 2.0), abs=1e-9)
  assert surface.nsd(g, p, sp, 3.0) == pytest.approx(1.0)
  assert surface.hd95(g, p, sp) == pytest.approx(3.0)


# -------------------------------------------------------------------------------------- detection
def test_tumor_detection_by_size():
  shape = (60, 60, 60)
  gt = np.zeros(shape, bool)
  gt[5, 5, 5] = True                                          # 1 mm^3: d = 1.24 mm, < 10 mm
  gt[10:18, 10:18, 10:18] = True                              # 512 mm^3: d = 9.93 mm, < 10 mm
  gt[30:43, 30:43, 30:43] = True                              # 2197 mm^3: d = 16.1 mm, 10-20 mm
  gt[20:28, 40:56, 40:56] = True                              # 2048 mm^3: 10-20 mm (missed)
  pred = np.zeros(shape, bool)
  pred[5, 5, 5] = True                                        # detects the one-voxel tumour
  pred[40, 40, 40] = True                                     # touches the 13^3 tumour
  pred[50:52, 5:7, 5:7] = True                                # a false positive of 8 voxels
  det = detection.tumor_detection(gt, pred, (1.0, 1.0, 1.0))
  t = sorted(det["tumors"], key=lambda t: t["volume_mm3"])
  assert [x["bin"] for x in t] == ["lt10", "lt10", "10to20", "10to20"]
  assert [x["detected"] for x in t] == [True, False, False, True]
  assert t[0]["diameter_mm"] == pytest.approx((6 / math.pi) ** (1 / 3))
  assert det["pred_components"] == 3 and det["fp_components"] == 1
  # A minimum volume of 2 mm^3 drops the two one-voxel predictions.
  det = detection.tumor_detection(gt, pred, (1.0, 1.0, 1.0), min_volume_mm3=2.0)
  assert det["pred_components"] == 1 and det["fp_components"] == 1
  assert not any(x["detected"] for x in det["tumors"])
  # Spacing enters the volume: the same voxels at 3 mm are 27x larger.
  det = detection.tumor_detection(gt, pred, (3.0, 3.0, 3.0))
  # Equivalent diameters 3.7, 29.8, 48.4 and 47.0 mm.
  assert sorted(x["bin"] for x in det["tumors"]) == ["gt20", "gt20", "gt20", "lt10"]


def test_diagonal_touching_voxels_are_one_tumour():
  gt = np.zeros((5, 5, 5), bool)
  gt[1, 1, 1] = gt[2, 2, 2] = True   # 26-connected
  assert len(detection.tumor_detection(gt, gt, (1, 1, 1))["tumors"]) == 1


def test_auc_hand_cases():
  assert detection.auc([3, 4], [1, 2]) == 1.0
  assert detection.auc([1, 2], [3, 4]) == 0.0
  assert detection.auc([1, 3], [2, 2]) == 0.5
  assert detection.auc([2], [2]) == 0.5
  assert detection.auc([0.9, 0.4, 0.8], [0.1, 0.5]) == pytest.approx(5 / 6)
  assert math.isnan(detection.auc([], [1]))
  fpr, tpr = detection.roc_curve([0.9, 0.4], [0.5])
  assert fpr[0] == 0 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)


def test_bootstrap_is_deterministic_and_brackets_the_mean():
  v = np.random.default_rng(0).uniform(size=40)
  lo, hi = bootstrap.bootstrap_ci(v, 500, seed=3)
  assert lo < v.mean() < hi and (lo, hi) == bootstrap.bootstrap_ci(v, 500, seed=3)
  assert bootstrap.bootstrap_ci([0.5, 0.5], 100) == (0.5, 0.5)
  assert all(math.isnan(x) for x in bootstrap.bootstrap_ci([], 100))
  lo, hi = bootstrap.bootstrap_ratio_ci([1, 0, 2, 1], [1, 1, 2, 2], 500)
  assert 0 <= lo <= 4 / 6 <= hi <= 1


# ---------------------------------------------------------------------------------- case summary
def test_evaluate_case_and_summary_by_hand():
  labels = evaluation.labels_for_organs(("liver",))
  shape, sp = (20, 20, 20), (1.0, 1.0, 2.0)
  organ = _box(shape, (2, 2, 2), (18, 18, 18))
  cases = {}
  # Tumour case 1: tumour found exactly.
  gt = organ.astype(np.uint8)
  gt[5:8, 5:8, 5:8] = 2
  cases["t1"] = (gt, gt.copy())
  # Tumour case 2: tumour missed (prediction all organ).
  gt2 = organ.astype(np.uint8)
  gt2[10:12, 10:12, 10:12] = 2
  cases["t2"] = (gt2, organ.astype(np.uint8))
  # Control case 1: clean. Control case 2: one false-positive component.
  cases["c1"] = (organ.astype(np.uint8), organ.astype(np.uint8))
  fp = organ.astype(np.uint8)
  fp[3, 3, 3] = 2
  cases["c2"] = (organ.astype(np.uint8), fp)
  rows, tumors = [], []
  for name, (g, p) in cases.items():
    r, t = evaluation.evaluate_case(name, g, p, sp, labels)
    rows += r
    tumors += t
  by = {(r["case"], r["label"]): r for r in rows}
  assert by[("t1", "liver_tumor")]["dsc"] == 1.0
  assert by[("t2", "liver_tumor")]["dsc"] == 0.0 and by[("t2", "liver_tumor")]["nsd"] == 0.0
  assert by[("t2", "liver_tumor")]["hd95"] == pytest.approx(math.sqrt(20 ** 2 + 20 ** 2 + 40 ** 2))
  assert math.isnan(by[("c2", "liver_tumor")]["dsc"])          # control: no tumour DSC
  assert by[("c2", "liver_tumor")]["fp_components"] == 1
  s = evaluation.summarize(rows, labels, num_bootstrap=50)
  assert s["tumor_dsc"] == pytest.approx(0.5)
  assert s["tumor_sensitivity"] == pytest.approx(0.5)
  assert s["patient_sensitivity"] == pytest.approx(0.5)
  assert s["specificity"] == pytest.approx(0.5)
  assert s["fp_per_control_case"] == pytest.approx(0.5)
  assert s["fp_per_tumor_case"] == 0.0                        # t1 exact, t2 predicts nothing
  # Scores are predicted volumes: t1 27 voxels * 2 mm^3, t2 0, c1 0, c2 2 -> AUC = (1 + 0.5 + 1 + 0) / 4.
  assert s["auc"] == pytest.approx(0.625)
  assert s["organ_dsc"] < 1.0 and s["liver/dsc"] == s["organ_dsc"]
  assert s["labels"]["liver_tumor"]["num_tumor_cases"] == 2
  assert s["tumor_sensitivity_lt10"] == pytest.approx(0.5)
  # A third tumour case: its tumour found, plus one stray component touching no tumour -> counted per tumour
  # case (1 of 3), not per control.
  p3 = gt.copy()
  p3[14, 14, 14] = 2
  r3, _ = evaluation.evaluate_case("t3", gt, p3, sp, labels)
  s3 = evaluation.summarize(rows + r3, labels, num_bootstrap=50)
  assert s3["fp_per_tumor_case"] == pytest.approx(1 / 3) and s3["fp_per_control_case"] == pytest.approx(0.5)


def test_parse_labels():
  specs = evaluation.parse_labels("liver:1, liver_tumor:2,pancreas:3,pancreas_tumour:4")
  assert [(l.name, l.id, l.is_tumor) for l in specs] == [
      ("liver", 1, False), ("liver_tumor", 2, True), ("pancreas", 3, False), ("pancreas_tumour", 4, True)]
  for bad in ("liver", "liver:x", "liver:0", "a:1,a:2", ""):
    with pytest.raises(ValueError, match="--labels"):
      evaluation.parse_labels(bad)


def test_multi_organ_rows_and_summary_keys():
  labels = evaluation.labels_for_organs(("liver", "pancreas"))
  assert [(l.name, l.id, l.is_tumor) for l in labels] == [
      ("liver", 1, False), ("liver_tumor", 2, True), ("pancreas", 3, False), ("pancreas_tumor", 4, True)]
  gt = np.zeros((16, 16, 16), np.uint8)
  gt[1:7, 1:7, 1:7] = 1
  gt[9:15, 9:15, 9:15] = 3
  gt[11:13, 11:13, 11:13] = 4
  pred = gt.copy()
  pred[11:13, 11:13, 11:13] = 3          # pancreas tumour missed
  rows, tumors = evaluation.evaluate_case("x", gt, pred, (1, 1, 1), labels)
  assert [r["label"] for r in rows] == ["liver", "liver_tumor", "pancreas", "pancreas_tumor"]
  assert len(tumors) == 1 and tumors[0]["label"] == "pancreas_tumor" and not tumors[0]["detected"]
  s = evaluation.summarize(rows, labels, num_bootstrap=10)
  assert s["organ_dsc"] == 1.0 and math.isnan(s["tumor_dsc"])       # headline: the first organ (liver)
  assert s["pancreas_tumor/dsc"] == 0.0 and s["pancreas_tumor/tumor_sensitivity"] == 0.0
  assert s["pancreas/dsc"] < 1.0
