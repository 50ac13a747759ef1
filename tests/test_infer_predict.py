"""predict_files / predict_volume: predictions overlay the input in world coordinates; the model path runs."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from jaxseg.default_config import get_config
from jaxseg.infer import predict
from jaxseg.io import nifti
from jaxseg.intensity import normalize_hu

THRESH = 0.5  # normalised: background -175 HU -> 0, organ 250 HU -> 1, so 0.5 is the HU midpoint


def _oracle(x):
  """Window logits [N, w, w, w, 3]: organ where the intensity is high, never tumour."""
  v = x[..., 0]
  return jnp.stack([THRESH - v, v - THRESH, jnp.full_like(v, -1.0)], axis=-1)


def _config(spacing):
  c = get_config()
  c.data.organs = ("liver",)
  c.data.spacing = tuple(spacing)
  c.data.patch_size = (16, 16, 16)
  c.eval.window_batch = 4
  return c


def _lps_case(tmp_path):
  """An LPS, anisotropic CT stored slice axis first, with an off-centre ellipsoid 'organ'."""
  shape = (14, 30, 26)             # file axes: (S, L, P) -> world z, -x, -y
  spacing = (2.5, 0.8, 1.1)
  affine = np.zeros((4, 4))
  affine[2, 0] = 2.5               # file axis 0 -> +z (S)
  affine[0, 1] = -0.8              # file axis 1 -> -x (L)
  affine[1, 2] = -1.1              # file axis 2 -> -y (P)
  affine[:3, 3] = (40.0, 30.0, -20.0)
  affine[3, 3] = 1.0
  i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
  mask = ((i - 6) / 4.5) ** 2 + ((j - 12) / 9.0) ** 2 + ((k - 15) / 7.0) ** 2 <= 1.0
  image = np.where(mask, 250.0, -175.0).astype(np.float32)
  path = str(tmp_path / "ct_lps.nii.gz")
  nifti.save_nifti(image, affine, path, dtype=np.int16)
  assert nib.aff2axcodes(affine) == ("S", "L", "P")
  return path, mask, affine, spacing


def test_prediction_overlays_lps_anisotropic_input_exactly(tmp_path):
  path, mask, affine, spacing = _lps_case(tmp_path)
  # Canonical axes x, y, z have the file's spacings 0.8, 1.1, 2.5: reorientation only, no resampling.
  cfg = _config((0.8, 1.1, 2.5))
  out = predict.predict_files(cfg, None, path, str(tmp_path / "pred"), predict_fn=_oracle, progress=False)
  assert out == [str(tmp_path / "pred" / "ct_lps.nii.gz")]
  img = nib.load(out[0])
  np.testing.assert_allclose(img.affine, affine, atol=1e-5)
  assert img.get_data_dtype() == np.uint8
  pred = np.asarray(img.dataobj)
  assert pred.shape == mask.shape
  np.testing.assert_array_equal(pred == 1, mask)
  scores = json.load(open(tmp_path / "pred" / "scores.json"))
  assert set(scores["ct_lps"]) == {"liver_tumor"} and scores["ct_lps"]["liver_tumor"] < 0.5


def test_prediction_overlays_input_after_resampling(tmp_path):
  path, mask, _, _ = _lps_case(tmp_path)
  cfg = _config((1.5, 1.5, 1.5))
  out = predict.predict_files(cfg, None, [path], str(tmp_path / "pred"), predict_fn=_oracle, progress=False)
  pred = np.asarray(nib.load(out[0]).dataobj) == 1
  dice = 2 * (pred & mask).sum() / (pred.sum() + mask.sum())
  assert dice > 0.9
  # Disagreement only at the boundary: every wrong voxel has a neighbour of the other class.
  from scipy import ndimage
  boundary = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
  assert not (pred ^ mask)[~ndimage.binary_dilation(boundary, iterations=1)].any()


def test_real_ct_geometry_round_trip(tmp_path):
  real = os.environ.get("JAXSEG_REAL_CT_DIR")
  if not real:
    pytest.skip("JAXSEG_REAL_CT_DIR is not set (folder with example_ct_sm.nii.gz)")
  seg = nib.load(os.path.join(real, "example_ct_sm_seg.nii.gz"))
  liver = np.asarray(seg.dataobj) == 5
  # The real geometry, flipped to LPS: the organ is drawn into the image so an intensity oracle finds it.
  flip = np.diag([-1.0, -1.0, 1.0, 1.0])
  flip[:2, 3] = [liver.shape[0] - 1, liver.shape[1] - 1]
  affine = seg.affine @ flip
  data = liver[::-1, ::-1, :]
  path = str(tmp_path / "real_lps.nii.gz")
  nifti.save_nifti(np.where(data, 250, -175).astype(np.int16), affine, path)
  cfg = _config((3.0, 3.0, 3.0))
  cfg.data.patch_size = (32, 32, 32)
  out = predict.predict_files(cfg, None, path, str(tmp_path / "pred"), predict_fn=_oracle, progress=False)
  pred = np.asarray(nib.load(out[0]).dataobj) == 1
  np.testing.assert_array_equal(pred, data)


def test_normalize_volume_matches_training_normalisation():
  hu = np.array([-2000, -175, 0, 37, 250, 3000], np.int16)
  np.testing.assert_array_equal(predict.normalize_volume(hu, (-175.0, 250.0)),
                                np.asarray(normalize_hu(hu, (-175.0, 250.0))))


def test_predict_volume_with_the_model_reuses_one_compilation():
  from jaxseg.models import build_model
  cfg = _config((4.0, 4.0, 4.0))
  cfg.model.features = (4, 8)
  cfg.model.blocks_per_stage = (1, 1)
  model = build_model(cfg.model, 3)
  params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 16, 16, 16, 1)), train=False)["params"])(jax.random.key(0))
  image = np.random.default_rng(0).integers(-300, 300, size=(20, 18, 17)).astype(np.int16)
  labels, scores = predict.predict_volume(cfg, params, image, (4.0, 4.0, 4.0))
  assert labels.shape == image.shape and labels.dtype == np.uint8 and set(scores) == {2}
  from jaxseg.infer import sliding_window
  compiled = sliding_window._weighted_window_logits._cache_size()
  params2 = jax.tree.map(lambda p: p * 0.5, params)   # new parameters (validation at a later step)
  labels2, _ = predict.predict_volume(cfg, params2, image[:18], (4.0, 4.0, 4.0))  # and another case
  assert labels2.shape == image[:18].shape
  assert sliding_window._weighted_window_logits._cache_size() == compiled


def test_a_checkpoints_predictor_compiles_its_parameters_in_and_predicts_the_same(tmp_path):
  """eval.constant_params: a checkpoint's evaluation and prediction compile the parameters into the program
  (auto: on a CPU for models of >= 1M parameters); the logits are those of the shared compilation with the
  parameters as arguments, the program takes only the windows and the weight, and it goes with its
  predictor."""
  import gc
  import weakref
  from jaxseg.infer import sliding_window
  from jaxseg.models import build_model
  from jaxseg.workdir import check_eval_config
  cfg = _config((4.0, 4.0, 4.0))
  cfg.model.features = (4, 8)
  cfg.model.blocks_per_stage = (1, 1)
  model = build_model(cfg.model, 3)
  params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 16, 16, 16, 1)), train=False)["params"])(jax.random.key(0))
  volume = np.random.default_rng(0).uniform(size=(20, 18, 24, 1)).astype(np.float32)
  run = lambda fn: sliding_window.sliding_window_inference(fn, volume, (16, 16, 16), 0.5, 2, 3, tta_mirror=(0,))
  shared = run(predict.model_predict_fn(cfg, params))
  constant = predict.model_predict_fn(cfg, params, constant_params=True)
  assert isinstance(constant, sliding_window.ConstantParamsPredictor)
  np.testing.assert_allclose(run(constant), shared, rtol=1e-5, atol=1e-6)
  windows, weight = jnp.zeros((2, 16, 16, 16, 1)), jnp.ones((16, 16, 16))
  (program,) = constant._programs.values()  # the one the sliding window compiled (its mirroring, float32)
  main = [line for line in program.lower(windows, weight).as_text().splitlines() if "func.func public @main" in line]
  assert main[0].count("%arg") == 2  # windows and weight: no parameter is an argument of the program
  np.testing.assert_allclose(np.asarray(constant(windows)), np.asarray(predict.model_predict_fn(cfg, params)(windows)),
                             rtol=1e-5, atol=1e-6)
  # One predictor per checkpoint: its programs, and with them the parameters, go when it does.
  leaf = weakref.ref(params["Conv3D_0"]["kernel"])
  del constant, program, params
  gc.collect()
  assert leaf() is None
  # The choice: auto on a CPU from 1M parameters; true / false; anything else a one-line error.
  small = {"w": jnp.zeros((999_999,))}
  big = {"w": jnp.zeros((1_000_000,))}
  assert not predict.uses_constant_params(cfg, small) and predict.uses_constant_params(cfg, big)
  cfg.eval.constant_params = "false"
  assert not predict.uses_constant_params(cfg, big)
  assert isinstance(predict.checkpoint_predict_fn(cfg, big), jax.tree_util.Partial)
  cfg.eval.constant_params = "true"
  assert predict.uses_constant_params(cfg, small)
  cfg.eval.constant_params = "yes"
  with pytest.raises(ValueError, match="eval.constant_params: 'yes' is not one of auto, true, false"):
    check_eval_config(cfg.eval)


def test_bad_inputs_are_clear_errors(tmp_path):
  cfg = _config((1.0, 1.0, 1.0))
  with pytest.raises(ValueError, match="no such file"):
    predict.predict_files(cfg, None, str(tmp_path / "missing.nii.gz"), str(tmp_path), predict_fn=_oracle)
  with pytest.raises(ValueError, match="no .nii.gz"):
    predict.predict_files(cfg, None, str(tmp_path), str(tmp_path / "o"), predict_fn=_oracle)
  bad = tmp_path / "bad.nii.gz"
  bad.write_bytes(b"not a nifti")
  with pytest.raises(ValueError, match="bad.nii.gz"):
    predict.predict_files(cfg, None, str(bad), str(tmp_path / "o"), predict_fn=_oracle)


def _two_lesion_oracle(x):
  """Organ at high intensity; a confident tumour (p ~ 0.9) at mid intensity, a hesitant one (p ~ 0.5) below."""
  v = x[..., 0][..., None]
  organ, confident, hesitant = (jnp.array(l, jnp.float32) for l in ([0, 3, 0], [0, 0, 3], [0, 0.5, 1]))
  background = jnp.array([3, 0, 0], jnp.float32)
  return jnp.where(v > 0.9, organ, jnp.where(v > 0.6, confident, jnp.where(v > 0.3, hesitant, background)))


def test_predict_volume_applies_the_confidence_rule():
  image = np.full((24, 24, 24), -175.0, np.float32)
  image[4:20, 4:20, 4:20] = 250.0                  # organ
  image[6:10, 6:10, 6:10] = 120.0                  # normalised 0.69: confident tumour
  image[13:17, 13:17, 13:17] = -10.0               # normalised 0.39: hesitant tumour
  cfg = _config((1.0, 1.0, 1.0))
  cfg.eval.min_tumor_volume_mm3 = 0.0
  labels, scores = predict.predict_volume(cfg, None, image, (1.0, 1.0, 1.0), predict_fn=_two_lesion_oracle)
  assert (labels[6:10, 6:10, 6:10] == 2).all() and (labels[13:17, 13:17, 13:17] == 2).all()
  cfg.eval.min_tumor_confidence = 0.7
  labels, scores = predict.predict_volume(cfg, None, image, (1.0, 1.0, 1.0), predict_fn=_two_lesion_oracle)
  assert (labels[6:10, 6:10, 6:10] == 2).all()
  assert (labels[13:17, 13:17, 13:17] == 1).all()  # dropped inside the organ: organ
  assert scores[2] > 0.85


def test_inference_runs_the_conv_form_of_eval_conv_with_the_training_parameters():
  """eval.conv chooses the inference network's convolution form (auto: depth-folded on a CPU backend);
  every form reads the same parameters and predicts the same logits to float rounding."""
  from jaxseg.workdir import check_eval_config
  from jaxseg.models import build_model
  cfg = _config((4.0, 4.0, 4.0))
  cfg.model.features = (4, 8)
  cfg.model.blocks_per_stage = (1, 1)
  cfg.model.conv = "native"
  model = build_model(cfg.model, 3)
  params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 16, 16, 16, 1)), train=False)["params"])(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 16, 1))
  assert jax.default_backend() == "cpu" and predict.inference_conv(cfg) == "depth_folded"
  logits = {}
  for conv in ("native", "depth_folded", "im2col", "auto"):
    cfg.eval.conv = conv
    logits[conv] = np.asarray(predict.model_predict_fn(cfg, params)(x))
  np.testing.assert_array_equal(logits["auto"], logits["depth_folded"])
  for conv in ("depth_folded", "im2col"):
    np.testing.assert_allclose(logits[conv], logits["native"], atol=2e-5)
    assert not np.array_equal(logits[conv], logits["native"])  # a different computation, not a no-op
  cfg.eval.conv = "winograd"
  with pytest.raises(ValueError, match="eval.conv: 'winograd' is not one of auto, native"):
    check_eval_config(cfg.eval)
