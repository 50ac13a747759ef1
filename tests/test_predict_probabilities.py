"""Prediction back on the original grid: probabilities resampled (linear) before the argmax, as nnU-Net does,
labels resampled (nearest) as the option, and --save_probabilities files."""

from __future__ import annotations

import os
import sys

import nibabel as nib
import numpy as np
import pytest

from jaxseg.infer import predict

sys.path.insert(0, os.path.dirname(__file__))
from test_infer_predict import _config, _lps_case, _oracle  # noqa: E402


def _dice(a, b):
  return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_probabilities_are_resampled_before_the_argmax(tmp_path):
  path, mask, affine, _ = _lps_case(tmp_path)
  cfg = _config((2.0, 2.0, 2.0))  # coarser than the input on two axes: resampling matters
  preds = {}
  for mode in predict.RESAMPLE_MODES:
    cfg.eval.resample = mode
    out_dir = tmp_path / mode
    (out,) = predict.predict_files(cfg, None, path, str(out_dir), predict_fn=_oracle, progress=False,
                                   save_probabilities=True)
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    preds[mode] = np.asarray(img.dataobj)
    with np.load(out_dir / "ct_lps.npz") as z:
      probs, names = z["probabilities"], list(z["class_names"])
    assert names == ["background", "liver", "liver_tumor"]
    assert probs.shape == mask.shape + (3,) and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1.0, atol=2e-3)
    if mode == "probabilities":  # the written labels are the argmax of the written probabilities
      np.testing.assert_array_equal(preds[mode], np.argmax(probs.astype(np.float32), -1))
  d_prob = _dice(preds["probabilities"] == 1, mask)
  d_lab = _dice(preds["labels"] == 1, mask)
  assert d_prob > 0.9 and d_lab > 0.9
  assert d_prob >= d_lab  # sub-voxel boundaries survive the way back
  assert (preds["probabilities"] != preds["labels"]).any()  # the two modes are different code paths


def test_without_resampling_both_modes_are_exact(tmp_path):
  path, mask, _, _ = _lps_case(tmp_path)
  cfg = _config((0.8, 1.1, 2.5))
  for mode in predict.RESAMPLE_MODES:
    cfg.eval.resample = mode
    (out,) = predict.predict_files(cfg, None, path, str(tmp_path / mode), predict_fn=_oracle, progress=False)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj) == 1, mask)
    assert not os.path.exists(tmp_path / mode / "ct_lps.npz")


def test_bad_resample_mode_names_the_field(tmp_path):
  path, _, _, _ = _lps_case(tmp_path)
  cfg = _config((1.0, 1.0, 1.0))
  cfg.eval.resample = "cubic"
  with pytest.raises(ValueError, match="eval.resample"):
    predict.predict_files(cfg, None, path, str(tmp_path / "o"), predict_fn=_oracle, progress=False)
