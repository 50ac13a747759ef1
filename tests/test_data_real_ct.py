"""Real CT (TotalSegmentator fixture): load, reorient, preprocess, sample patches, liver HU in the patch.

Needs JAXSEG_REAL_CT_DIR (CI points it at ../shared/data/real-ct); skipped with a reason when unset.
"""

from __future__ import annotations

import json
import os

import ml_collections
import nibabel as nib
import numpy as np
import pytest
from absl import flags

from jaxseg.data import cache
from jaxseg.data.geometry import from_canonical
from jaxseg.data.pipeline import make_train_loader
from jaxseg.data.preprocess import preprocess_dataset, preprocess_image
from jaxseg.io.nifti import save_nifti

flags.FLAGS.mark_as_parsed()
REAL = os.environ.get("JAXSEG_REAL_CT_DIR", "")
pytestmark = pytest.mark.skipif(not REAL or not os.path.isdir(REAL),
                                reason="JAXSEG_REAL_CT_DIR is not set to the real-ct fixture folder")
# TotalSegmentator v2 ids of the fixture (README there).
CLASS_MAP = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "pancreas": 7, "colon": 20}
ORGANS = ("liver", "kidney", "pancreas", "colon")


def _manifest(tmp_path, lps: bool, lesions_absent: bool = False):
  """A one-case manifest of the small fixture; optionally rewritten as LPS to exercise reorientation.

  ``lesions_absent``: the class map also names each organ's lesion class with an id no voxel carries, which
  annotates the lesions as absent (the organs become synthesis controls).
  """
  image, seg = os.path.join(REAL, "example_ct_sm.nii.gz"), os.path.join(REAL, "example_ct_sm_seg.nii.gz")
  if lps:
    out = []
    for p in (image, seg):
      img = nib.load(p)
      flip = np.diag([-1.0, -1.0, 1.0, 1.0])
      aff = img.affine.copy()
      aff[:3, 3] += aff[:3, 0] * (img.shape[0] - 1) + aff[:3, 1] * (img.shape[1] - 1)
      aff = aff @ flip
      q = str(tmp_path / ("lps_" + os.path.basename(p)))
      save_nifti(np.asarray(img.dataobj)[::-1, ::-1], aff, q, img.get_data_dtype())
      out.append(q)
    image, seg = out
  # The fixture labels many more structures: map every other id present to background-free names.
  all_ids = {int(v) for v in np.unique(np.asarray(nib.load(seg).dataobj))} - {0}
  cmap = dict(CLASS_MAP, **{f"other_{i}": i for i in all_ids - set(CLASS_MAP.values())})
  if lesions_absent:
    unused = iter(i for i in range(200, 256) if i not in all_ids)
    cmap.update({f"{o}_tumor": next(unused) for o in ORGANS})
  path = tmp_path / ("manifest_absent.json" if lesions_absent else "manifest.json")
  path.write_text(json.dumps([{"case_id": "real", "image": image, "label": seg, "class_map": cmap}]))
  return str(path)


def test_real_ct_preprocess_and_liver_patches(tmp_path):
  dst = str(tmp_path / "cache")
  rep = preprocess_dataset("manifest", _manifest(tmp_path, lps=True), dst, (3.0, 3.0, 3.0), ORGANS, workers=1)
  assert rep.processed == ["real"], rep.summary()
  (case,) = cache.list_cases(dst)
  # The fixture has organ classes and no lesion class: organs annotated, lesions not (no controls).
  assert case["organs"] == {"liver": "organ_only", "kidney": "organ_only", "pancreas": "organ_only",
                            "colon": "organ_only"}
  image, label, meta = cache.load_case(dst, "real")
  assert meta["original_orientation"] == ["L", "P", "S"]
  # Canonical RAS at 3 mm equals the original RAS fixture voxel for voxel.
  ref = np.asarray(nib.load(os.path.join(REAL, "example_ct_sm.nii.gz")).dataobj)
  np.testing.assert_array_equal(np.asarray(image), np.clip(ref, -1024, 3071))
  liver_hu = np.median(np.asarray(image)[np.asarray(label) == 1])
  assert 40 < liver_hu < 200, liver_hu
  # The same case with its lesions annotated as absent: every organ is a synthesis control.
  dst = str(tmp_path / "cache_absent")
  rep = preprocess_dataset("manifest", _manifest(tmp_path, lps=True, lesions_absent=True), dst, (3.0, 3.0, 3.0),
                           ORGANS, workers=1)
  assert rep.processed == ["real"], rep.summary()
  (case,) = cache.list_cases(dst)
  assert case["organs"] == {o: "control" for o in ORGANS}
  cfg = ml_collections.ConfigDict(dict(organs=ORGANS, patch_size=(32, 32, 16), batch_size=4, fg_oversample=1.0,
                                       synth_fraction=1.0, num_real_tumor_cases=-1, split_seed=0, num_workers=0,
                                       organ_centred=0.0,
                                       prefetch=2))
  it = make_train_loader(cfg, dst, ["real"], seed=0)
  n_liver = 0
  for _ in range(4):
    b = next(it)
    for img, lab, s in zip(b["image"], b["label"], b["synth_organ"]):
      assert lab[16, 16, 8] == 2 * s + 1  # centred on the control organ
      if s == 0:
        n_liver += 1
        hu = np.median(img[lab == 1])
        # Liver parenchyma (unenhanced: whole-liver median 46 HU, p5 21), not fat, air or bone.
        assert 20 < hu < 200 and (lab == 1).sum() > 100
  assert n_liver > 0


def test_real_ct_inference_geometry_roundtrip(tmp_path):
  path = os.path.join(REAL, "example_ct.nii.gz")
  image, meta = preprocess_image(path, (4.0, 4.0, 5.0))
  assert image.dtype == np.int16 and tuple(meta["canonical_shape"]) == image.shape
  back = from_canonical(image, meta, order=1)
  orig = np.asarray(nib.load(path).dataobj)
  assert back.shape == orig.shape
  body = orig > -500
  assert np.median(np.abs(back[body].astype(np.float32) - orig[body])) < 60
