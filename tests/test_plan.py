"""Planning: the fingerprint of a data set and nnU-Net's rules, written as a config launch/train.py takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxseg import plan as plan_lib
from jaxseg.config_checks import check_config
from jaxseg.data.fingerprint import compute_fingerprint
from jaxseg.default_config import config_from_file
from jaxseg.io.nifti import save_nifti

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _msd(root, spacings=((1.0, 1.0, 2.0), (0.8, 0.8, 2.5), (1.2, 1.2, 2.0))):
  """A tiny MSD liver set: per case a 'liver' box at 100 HU (a cancer ball at 40 HU in the first two)."""
  training = []
  for i, sp in enumerate(spacings):
    shape = (24, 20, 12)
    img = np.full(shape, -900.0, np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[4:18, 4:16, 2:10] = 1
    img[lab == 1] = 100.0 + np.linspace(-20, 20, int((lab == 1).sum()))
    if i < 2:
      lab[8:12, 8:12, 4:7] = 2
      img[lab == 2] = 40.0
    aff = np.diag([*sp, 1.0])
    save_nifti(img, aff, os.path.join(root, "imagesTr", f"liver_{i}.nii.gz"), np.int16)
    save_nifti(lab, aff, os.path.join(root, "labelsTr", f"liver_{i}.nii.gz"), np.uint8)
    training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
  with open(os.path.join(root, "dataset.json"), "w") as f:
    json.dump({"labels": {"0": "background", "1": "liver", "2": "cancer"}, "training": training}, f)
  return root


def _fp(spacings, shapes):
  return {"spacings": [list(s) for s in spacings], "shapes": [list(s) for s in shapes]}


def test_target_spacing_is_the_median_unless_anisotropic():
  fp = _fp([(1, 1, 2), (0.8, 0.8, 2.5), (1.2, 1.2, 2)], [(100, 100, 50)] * 3)
  assert plan_lib.target_spacing(fp) == [1.0, 1.0, 2.0]
  # Thick slices (5 mm vs 0.8 mm) and few of them: the 10th percentile of the slice spacing is taken.
  spacings = [(0.8, 0.8, 5.0)] * 8 + [(0.8, 0.8, 1.5), (0.8, 0.8, 1.0)]
  fp = _fp(spacings, [(512, 512, 60)] * 10)
  t = plan_lib.target_spacing(fp)
  assert t[:2] == [0.8, 0.8]
  assert t[2] == pytest.approx(np.percentile([s[2] for s in spacings], 10), abs=1e-4)
  # Anisotropic spacing but many slices (the volume is not flat in voxels): the median stays.
  fp = _fp(spacings, [(100, 100, 400)] * 10)
  assert plan_lib.target_spacing(fp)[2] == 5.0


def test_patch_fits_the_memory_and_shrinks_with_it():
  median = (200, 200, 150)
  big, f_big, b_big = plan_lib.plan_patch(median, (1.0, 1.0, 1.0), 24.0)
  small, f_small, _ = plan_lib.plan_patch(median, (1.0, 1.0, 1.0), 4.0)
  assert np.prod(small) < np.prod(big)
  for p, f in ((big, f_big), (small, f_small)):
    assert all(s % 2 ** (len(f) - 1) == 0 for s in p)  # divisible by the network's downsampling
    assert min(p) // 2 ** (len(f) - 1) >= plan_lib.MIN_FEATURE_MAP
  assert plan_lib.estimate_memory_gib(big, 2, f_big, b_big) <= 24.0
  # The nnU-Net reference point: ResEnc M at 128^3, batch 2 is 10 GiB.
  assert plan_lib.estimate_memory_gib((128,) * 3, 2, (32, 64, 128, 256, 320), (1, 3, 4, 6, 6)) == pytest.approx(10.0)
  # Clipped to the median shape of a small data set; anisotropic spacing gives an anisotropic patch.
  p, _, _ = plan_lib.plan_patch((40, 40, 24), (1.0, 1.0, 2.5), 24.0)
  assert p[2] <= 24 and p[0] <= 40
  with pytest.raises(ValueError, match="gpu_memory_gb"):
    plan_lib.plan_patch(median, (1.0, 1.0, 1.0), 1e-6)


def test_fingerprint_of_an_msd_set(tmp_path):
  src = _msd(str(tmp_path / "Task03_Liver"))
  fp = compute_fingerprint("msd", src, ("liver",), workers=1)
  assert fp["num_cases"] == 3 and fp["median_spacing"] == [1.0, 1.0, 2.0]
  liver = fp["intensity"]["liver"]
  assert 39 <= liver["p0_5"] <= 41 and 119 <= liver["p99_5"] <= 121  # organ and tumour voxels
  t = fp["tumors"]["liver"]
  assert t["n"] == 2 and t["cases_with_tumor"] == 2
  assert sorted([4 * 4 * 3 * 1.0 * 1.0 * 2.0, 4 * 4 * 3 * 0.8 * 0.8 * 2.5]) == pytest.approx(
      sorted([t["min"], t["max"]]))
  assert fp["annotated_cases"] == {"liver": 3, "liver_tumor": 3}


def test_plan_cli_writes_a_config_that_checks_and_trains(tmp_path):
  src = _msd(str(tmp_path / "Task03_Liver"))
  out = str(tmp_path / "plan_config.py")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "plan.py"), "--layout=msd", f"--src={src}",
                         "--organs=liver", "--gpu_memory_gb=0.01", "--base_features=4", "--workers=1",
                         f"--out={out}"], capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "wrote" in proc.stdout
  c = config_from_file(out)
  check_config(c, 1)
  assert c.data.layout == "msd" and c.data.root == os.path.abspath(src)
  assert tuple(c.data.spacing) == (1.0, 1.0, 2.0)
  assert 39 <= c.data.hu_window[0] <= 40 and 115 <= c.data.hu_window[1] <= 120  # 0.5-99.5 percentiles
  assert c.model.features[0] == 4 and c.data.batch_size >= 2
  with open(str(tmp_path / "plan_config_fingerprint.json")) as f:
    assert json.load(f)["plan"]["patch_size"] == list(c.data.patch_size)

  from jaxseg.train.loop import train_and_evaluate  # pylint: disable=import-outside-toplevel
  c.data.cache_dir = str(tmp_path / "cache")
  c.data.preprocess_workers = 1
  c.data.batch_size = 2
  c.train.num_steps = 2
  c.train.checkpoint_every = 2
  c.track.image_every = 0
  summary = train_and_evaluate(c, str(tmp_path / "run"))
  assert np.isfinite(summary["loss"]) and summary["step"] == 2


def test_bad_inputs_exit_with_one_line(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "plan.py"), "--layout=msd",
                         f"--src={tmp_path / 'missing'}", f"--out={tmp_path / 'p.py'}"], capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "missing" in proc.stderr


def test_fingerprint_of_phantoms(tmp_path):
  from jaxseg.data.phantom import make_phantoms  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "ph")
  make_phantoms(out, num_cases=2, seed=0, tumor_fraction=1.0)
  fp = compute_fingerprint("phantom", out, ("liver", "kidney"), workers=1)
  assert fp["num_cases"] == 2
  assert 85 < fp["intensity"]["liver"]["median"] < 145  # portal-venous liver (test_phantom.py)
  assert fp["tumors"]["liver"]["n"] >= 2 and fp["tumors"]["liver"]["median_diameter_mm"] > 3
  assert all(0.5 <= s <= 5.0 for s in fp["median_spacing"])
  p = plan_lib.make_plan(fp, gpu_memory_gb=8.0)
  assert p["hu_window"][0] < fp["intensity"]["liver"]["median"] < p["hu_window"][1]
