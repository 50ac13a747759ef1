"""Every data defect the issue lists is caught, with the file path, by the validator and by preprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from jaxseg.data.preprocess import preprocess_dataset
from jaxseg.data.validate import validate_dataset
from jaxseg.io.nifti import save_nifti

AFF = np.diag([2.0, 2.0, 3.0, 1.0])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _case(root, case_id, image=None, masks=None, affine=AFF):
  d = os.path.join(root, case_id)
  if image is None:
    image = np.full((8, 8, 6), 40.0)
  save_nifti(image, affine, os.path.join(d, "ct.nii.gz"), np.float32 if np.isnan(image).any() else np.int16)
  if masks is None:
    liver = np.zeros((8, 8, 6), np.uint8)
    liver[2:6, 2:6, 1:5] = 1
    masks = {"liver": (liver, AFF)}
  for name, (m, aff) in masks.items():
    save_nifti(m, aff, os.path.join(d, "segmentations", f"{name}.nii.gz"), np.uint8)
  return d


def _defective_set(root):
  good = np.zeros((8, 8, 6), np.uint8)
  good[2:6, 2:6, 1:5] = 1
  _case(root, "ok")
  d = _case(root, "truncated", image=np.random.default_rng(0).normal(0, 300, (32, 32, 32)))
  raw = open(os.path.join(d, "ct.nii.gz"), "rb").read()
  open(os.path.join(d, "ct.nii.gz"), "wb").write(raw[: len(raw) // 2])
  _case(root, "shape", masks={"liver": (np.zeros((8, 8, 5), np.uint8), AFF)})
  _case(root, "affine", masks={"liver": (good, np.diag([2.0, 2.0, 2.0, 1.0]))})
  d = _case(root, "fourd")
  save_nifti(np.zeros((8, 8, 6, 2)), AFF, os.path.join(d, "ct.nii.gz"), np.int16)
  nan = np.full((8, 8, 6), 40.0)
  nan[0, 0, 0] = np.nan
  _case(root, "nan", image=nan)
  _case(root, "empty", masks={"liver": (np.zeros((8, 8, 6), np.uint8), AFF)})
  _case(root, "values", masks={"liver": (good * 7, AFF)})
  # A duplicate id: the manifest layout can list the same case twice.
  return root


def test_validator_lists_every_defect_with_its_file(tmp_path):
  root = _defective_set(str(tmp_path / "atlas"))
  problems = validate_dataset("atlas", root)
  text = "\n".join(problems)
  expect = {
      "truncated/ct.nii.gz: truncated or corrupt": 1,
      "shape/segmentations/liver.nii.gz: shape (8, 8, 5) differs": 1,
      "affine/segmentations/liver.nii.gz: affine differs": 1,
      "fourd/ct.nii.gz: expected a 3D image": 1,
      "nan/ct.nii.gz: 1 NaN or infinite voxels": 1,
      "empty/segmentations/liver.nii.gz: empty organ mask": 1,
      "values/segmentations/liver.nii.gz: unknown label values [7]": 1,
  }
  for needle in expect:
    assert sum(needle in p for p in problems) == 1, (needle, text)
  assert not any("/ok/" in p for p in problems)
  assert len(problems) == len(expect)


def test_duplicate_ids_and_unknown_label_map_values(tmp_path):
  img = np.full((8, 8, 6), 40.0)
  lab = np.zeros((8, 8, 6), np.uint8)
  lab[1:4, 1:4, 1:4] = 1
  lab[0, 0, 0] = 9
  save_nifti(img, AFF, str(tmp_path / "a.nii.gz"), np.int16)
  save_nifti(lab, AFF, str(tmp_path / "a_seg.nii.gz"), np.uint8)
  (tmp_path / "m.csv").write_text('case_id,image,label,class_map\n'
                                  'x,a.nii.gz,a_seg.nii.gz,"{""liver"": 1}"\nx,a.nii.gz,a_seg.nii.gz,"{""liver"": 1}"\n')
  problems = validate_dataset("manifest", str(tmp_path / "m.csv"))
  assert any("duplicate case id 'x'" in p for p in problems)
  assert sum("a_seg.nii.gz: unknown label values [9]" in p for p in problems) == 2


def test_preprocess_skips_bad_cases_with_the_same_message(tmp_path):
  root = _defective_set(str(tmp_path / "atlas"))
  report = preprocess_dataset("atlas", root, str(tmp_path / "cache"), (2.0, 2.0, 3.0), ("liver",), workers=1)
  skipped = dict(report.skipped)
  assert set(skipped) == {"truncated", "shape", "affine", "fourd", "nan", "values"}
  assert set(report.processed) == {"ok", "empty"}  # an empty organ mask is a warning: organ marked absent
  assert "nan/ct.nii.gz: 1 NaN or infinite voxels" in skipped["nan"]
  assert any("empty organ mask" in w for w in report.warnings)
  assert "skipped values" in report.summary()


def test_validate_script_exit_status(tmp_path):
  root = _defective_set(str(tmp_path / "atlas"))
  env = dict(os.environ, PYTHONPATH=REPO)
  bad = subprocess.run([sys.executable, "launch/validate_data.py", "--layout=atlas", f"--src={root}"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 1 and "truncated or corrupt" in bad.stdout and "Traceback" not in bad.stderr
  clean = str(tmp_path / "clean")
  _case(clean, "ok")
  good = subprocess.run([sys.executable, "launch/validate_data.py", "--layout=atlas", f"--src={clean}"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)
  assert good.returncode == 0, good.stdout + good.stderr
  missing = subprocess.run([sys.executable, "launch/validate_data.py", "--layout=msd", f"--src={clean}"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=120)
  assert missing.returncode == 1 and "dataset.json: file not found" in missing.stdout
