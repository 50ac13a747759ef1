"""Layout readers and NIfTI helpers on tiny files written in tmp_path."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from jaxseg.io import layouts
from jaxseg.io.nifti import DataError, read_volume, save_nifti

AFF = np.diag([2.0, 2.0, 3.0, 1.0])


def _vol(path, arr, affine=AFF, dtype=np.int16):
  save_nifti(np.asarray(arr), affine, str(path), dtype)
  return str(path)


def test_structure_names_map_to_organs_and_tumours():
  s = layouts.structure_name
  assert s("liver_lesion") == "liver_tumor"
  assert s("pancreatic_lesion") == "pancreas_tumor"
  assert s("kidney_lesion") == "kidney_tumor"
  assert s("colon_lesion") == "colon_tumor"
  assert s("esophagus_tumor") == "esophagus_tumor"
  assert s("endometrioma_tumor") == "uterus_tumor"
  assert s("kidney_left") == s("kidney_right") == "kidney"
  assert s("cancer", ("liver",)) == "liver_tumor"
  assert s("Tumour", ("pancreas",)) == "pancreas_tumor"
  assert s("cyst", ("kidney",)) == "kidney"
  assert s("cancer", ("liver", "kidney")) is None  # ambiguous: ignored, not guessed
  assert s("spleen") is None


def test_atlas_and_atlas2(tmp_path):
  z = np.zeros((4, 4, 4))
  for case, tumour in (("BDMAP_1", True), ("BDMAP_2", False)):
    _vol(tmp_path / "a1" / case / "ct.nii.gz", z)
    for name in ("liver", "kidney_left", "spleen") + (("liver_tumor",) if tumour else ()):
      _vol(tmp_path / "a1" / case / "segmentations" / f"{name}.nii.gz", z, dtype=np.uint8)
    _vol(tmp_path / "a2" / "ct" / case / "ct.nii.gz", z)
    for name in ("liver", "pancreas") + (("pancreatic_lesion",) if tumour else ()):
      _vol(tmp_path / "a2" / "label" / case / "segmentations" / f"{name}.nii.gz", z, dtype=np.uint8)
  recs = layouts.read_layout("atlas", str(tmp_path / "a1"))
  assert [r.case_id for r in recs] == ["BDMAP_1", "BDMAP_2"]
  # No lesion file: the organ is annotated, its lesions are not (never inferred to be absent).
  assert recs[0].organs == {"liver": "tumor", "kidney": "organ_only"}
  assert recs[1].organs == {"liver": "organ_only", "kidney": "organ_only"}
  assert set(recs[0].structures()) == {"liver", "liver_tumor", "kidney"}
  recs2 = layouts.read_layout("atlas2", str(tmp_path / "a2"))
  assert recs2[0].organs == {"liver": "organ_only", "pancreas": "tumor"}
  assert recs2[0].image.endswith(os.path.join("ct", "BDMAP_1", "ct.nii.gz"))


def test_msd_nnunet_manifest(tmp_path):
  z = np.zeros((4, 4, 4))
  msd = tmp_path / "Task03_Liver"
  _vol(msd / "imagesTr" / "liver_0.nii.gz", z)
  _vol(msd / "labelsTr" / "liver_0.nii.gz", z, dtype=np.uint8)
  (msd / "dataset.json").write_text(json.dumps({
      "labels": {"0": "background", "1": "liver", "2": "cancer"},
      "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}]}))
  (r,) = layouts.read_layout("msd", str(msd))
  assert r.case_id == "liver_0" and r.organs == {"liver": "unknown"}
  assert r.structures() == {"liver": (1,), "liver_tumor": (2,)}

  nn = tmp_path / "Dataset064_KiTS"
  _vol(nn / "imagesTr" / "case_7_0000.nii.gz", z)
  _vol(nn / "labelsTr" / "case_7.nii.gz", z, dtype=np.uint8)
  (nn / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                               "labels": {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}}))
  (r,) = layouts.read_layout("nnunet", str(nn))
  assert r.case_id == "case_7" and r.image.endswith("case_7_0000.nii.gz")
  assert r.structures() == {"kidney": (1, 3), "kidney_tumor": (2,)}  # KiTS cysts merged into the kidney

  (tmp_path / "m.csv").write_text(
      'case_id,image,label,class_map\nc1,Task03_Liver/imagesTr/liver_0.nii.gz,Task03_Liver/labelsTr/liver_0.nii.gz,'
      '"{""liver"": 1, ""liver_tumor"": 2}"\n')
  (r,) = layouts.read_layout("manifest", str(tmp_path / "m.csv"))
  assert r.case_id == "c1" and os.path.exists(r.image) and r.structures()["liver_tumor"] == (2,)
  (tmp_path / "m.json").write_text(json.dumps({"class_map": {"pancreas": 1}, "cases": [
      {"case_id": "j1", "image": "Task03_Liver/imagesTr/liver_0.nii.gz", "label": "Task03_Liver/labelsTr/liver_0.nii.gz"}]}))
  (r,) = layouts.read_layout("manifest", str(tmp_path / "m.json"))
  assert r.organs == {"pancreas": "organ_only"}  # no tumour class: lesions not annotated


def test_layout_errors_are_one_line(tmp_path):
  with pytest.raises(DataError, match="unknown layout"):
    layouts.read_layout("bogus", str(tmp_path))
  with pytest.raises(DataError, match="dataset.json: file not found"):
    layouts.read_layout("msd", str(tmp_path))


def test_nifti_errors_name_the_file(tmp_path):
  path = _vol(tmp_path / "ct.nii.gz", np.arange(16 * 16 * 16).reshape(16, 16, 16) % 300)
  img, arr = read_volume(path)
  assert arr.shape == (16, 16, 16) and arr.dtype == np.float32
  raw = gzip.decompress(open(path, "rb").read())
  (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
  with pytest.raises(DataError, match=r"cut\.nii\.gz: truncated or corrupt"):
    read_volume(str(tmp_path / "cut.nii.gz"))
  with pytest.raises(DataError, match="file not found"):
    read_volume(str(tmp_path / "missing.nii.gz"))
  (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti at all")
  with pytest.raises(DataError, match="junk.nii.gz"):
    read_volume(str(tmp_path / "junk.nii.gz"))
  _vol(tmp_path / "4d.nii.gz", np.zeros((4, 4, 4, 2)))
  with pytest.raises(DataError, match="expected a 3D image"):
    read_volume(str(tmp_path / "4d.nii.gz"))
