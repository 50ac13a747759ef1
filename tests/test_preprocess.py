"""Geometry (canonical orientation, spacing, world mapping, inverse) and the resumable, atomic cache."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from jaxseg.data import cache
from jaxseg.data.geometry import from_canonical, to_canonical, voxel_to_world
from jaxseg.data.preprocess import preprocess_dataset, preprocess_image
from jaxseg.io.nifti import save_nifti

# Slice axis first (5 mm, superior), then posterior (0.8 mm), then left (0.7 mm): an LPS-like, anisotropic,
# slice-first affine.
LPS_SLICE_FIRST = np.array([[0.0, 0.0, -0.7, 10.0], [0.0, -0.8, 0.0, 20.0], [5.0, 0.0, 0.0, -30.0], [0, 0, 0, 1]])


def test_canonical_orientation_spacing_and_world_mapping():
  rng = np.random.default_rng(0)
  data = rng.normal(0, 100, (10, 30, 40)).astype(np.float32)
  img = nib.Nifti1Image(data, LPS_SLICE_FIRST)
  out, meta = to_canonical(img, (1.0, 1.0, 2.5), order=1)
  canon = np.asarray(meta["canonical_affine"])
  assert nib.aff2axcodes(canon) == ("R", "A", "S")
  assert meta["original_orientation"] == ["S", "P", "L"]
  np.testing.assert_allclose(np.sqrt((canon[:3, :3] ** 2).sum(0)), [1.0, 1.0, 2.5])
  assert out.shape == tuple(meta["canonical_shape"]) == (28, 24, 20)  # 40*0.7, 30*0.8, 10*5/2.5
  # At the target = native spacing, every canonical voxel maps to the same world point as its source voxel.
  same, meta2 = to_canonical(img, (0.7, 0.8, 5.0), order=0)
  canon2 = np.asarray(meta2["canonical_affine"])
  for ijk in ([0, 0, 0], [3, 17, 9], [39, 29, 0]):
    world = voxel_to_world(canon2, [ijk])[0]
    src = np.linalg.solve(LPS_SLICE_FIRST, np.r_[world, 1.0])[:3]
    np.testing.assert_allclose(src, np.round(src), atol=1e-6)
    assert same[tuple(ijk)] == data[tuple(np.round(src).astype(int))]
  # The stored meta maps back: from_canonical is the exact inverse at native spacing.
  np.testing.assert_array_equal(from_canonical(same, meta2), data)
  # Resampled: world point of a canonical voxel lies inside the original grid where the values agree.
  smooth = np.tile(np.linspace(0, 100, 40, dtype=np.float32), (10, 30, 1))  # varies along original axis 2
  out3, meta3 = to_canonical(nib.Nifti1Image(smooth, LPS_SLICE_FIRST), (1.0, 1.0, 2.5), order=1)
  w = voxel_to_world(meta3["canonical_affine"], [[5, 7, 4]])[0]
  src = np.linalg.solve(LPS_SLICE_FIRST, np.r_[w, 1.0])[:3]
  assert abs(out3[5, 7, 4] - np.interp(src[2], np.arange(40), smooth[0, 0])) < 1e-3


def test_from_canonical_overlays_the_original_labels():
  label = np.zeros((12, 30, 40), np.uint8)
  label[3:9, 5:25, 10:30] = 2
  img = nib.Nifti1Image(label, LPS_SLICE_FIRST)
  out, meta = to_canonical(img, (1.5, 1.5, 3.0), order=0)
  back = from_canonical(out, meta, order=0)
  assert back.shape == label.shape and back.dtype == np.uint8
  dice = 2 * ((back == 2) & (label == 2)).sum() / ((back == 2).sum() + (label == 2).sum())
  assert dice > 0.9
  probs = from_canonical(np.stack([out == 0, out == 2], -1).astype(np.float32), meta, order=1)
  assert probs.shape == label.shape + (2,)


def _atlas(root, n=3):
  rng = np.random.default_rng(1)
  for i in range(n):
    image = rng.normal(50, 10, (20, 24, 8))
    liver = np.zeros((20, 24, 8), np.uint8)
    liver[4:16, 4:20, 2:6] = 1
    d = os.path.join(root, f"case{i}")
    save_nifti(image, LPS_SLICE_FIRST @ np.diag([1, 1, 1, 1.0]), os.path.join(d, "ct.nii.gz"), np.int16)
    save_nifti(liver, LPS_SLICE_FIRST, os.path.join(d, "segmentations", "liver.nii.gz"), np.uint8)
    if i <= 1:  # case0: a lesion; case1: lesions annotated and absent (empty file); case2: not annotated
      tumour = np.zeros_like(liver)
      if i == 0:
        tumour[8:12, 8:12, 3:5] = 1
      save_nifti(tumour, LPS_SLICE_FIRST, os.path.join(d, "segmentations", "liver_lesion.nii.gz"), np.uint8)
  return root


def test_preprocess_cache_contents_resume_and_atomicity(tmp_path):
  src, dst = _atlas(str(tmp_path / "src")), str(tmp_path / "cache")
  spacing = (1.0, 1.0, 2.0)
  rep = preprocess_dataset("atlas", src, dst, spacing, ("liver", "kidney"), workers=1)
  assert sorted(rep.processed) == ["case0", "case1", "case2"] and not rep.skipped
  cases = cache.list_cases(dst)
  assert [c["organs"] for c in cases] == [{"liver": "tumor", "kidney": "absent"},
                                          {"liver": "control", "kidney": "absent"},
                                          {"liver": "organ_only", "kidney": "absent"}]
  assert [c["annotated_labels"] for c in cases] == [[0, 1, 2], [0, 1, 2], [0, 1]]
  image, label, meta = cache.load_case(dst, "case0")
  assert isinstance(image, np.memmap) and image.dtype == np.int16 and label.dtype == np.uint8
  assert image.shape == label.shape == tuple(cases[0]["shape"]) and meta["spacing"] == list(spacing)
  assert set(np.unique(label)) == {0, 1, 2}  # liver 1, liver tumour 2 (tumour over organ)
  locs = cache.load_locations(dst, "case0")
  assert all((label[tuple(l.T)] == c).all() for c, l in locs.items())
  assert abs(float(image[label == 1].mean()) - 50) < 3  # HU kept
  # Rerun: nothing redone. A crashed write (temporary folder) never counts as a case and is cleaned.
  os.makedirs(os.path.join(dst, "cases", ".tmp-case9-dead"))
  rep2 = preprocess_dataset("atlas", src, dst, spacing, ("liver", "kidney"), workers=1)
  assert rep2.processed == [] and sorted(rep2.existing) == ["case0", "case1", "case2"]
  assert not os.path.exists(os.path.join(dst, "cases", ".tmp-case9-dead"))
  # A case folder without meta.json is not a case: it is redone.
  os.remove(os.path.join(dst, "cases", "case1", "meta.json"))
  rep3 = preprocess_dataset("atlas", src, dst, spacing, ("liver", "kidney"), workers=1)
  assert rep3.processed == ["case1"] and cache.is_complete(dst, "case1")
  with pytest.raises(ValueError, match="cache was made with"):
    preprocess_dataset("atlas", src, dst, (2.0, 2.0, 2.0), ("liver", "kidney"), workers=1)


def test_preprocess_parallel_matches_serial(tmp_path):
  src = _atlas(str(tmp_path / "src"), n=2)
  a = preprocess_dataset("atlas", src, str(tmp_path / "a"), (1.5, 1.5, 2.0), ("liver",), workers=1)
  b = preprocess_dataset("atlas", src, str(tmp_path / "b"), (1.5, 1.5, 2.0), ("liver",), workers=2)
  assert sorted(a.processed) == sorted(b.processed) == ["case0", "case1"]
  for c in ("case0", "case1"):
    ia, la, _ = cache.load_case(str(tmp_path / "a"), c)
    ib, lb, _ = cache.load_case(str(tmp_path / "b"), c)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(la, lb)


def test_preprocess_image_for_inference(tmp_path):
  path = str(tmp_path / "ct.nii.gz")
  save_nifti(np.full((10, 30, 40), 123.4), LPS_SLICE_FIRST, path, np.float32)
  image, meta = preprocess_image(path, (1.0, 1.0, 2.5))
  assert image.dtype == np.int16 and image.shape == tuple(meta["canonical_shape"]) and (image == 123).all()
