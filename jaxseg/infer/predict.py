"""From a CT (array or NIfTI file) to a label map: window, sliding-window model, post-processing, and
the way back onto the original voxel grid.

``predict_volume`` works on canonical arrays (the cache's grid) and is what validation calls;
``predict_files`` adds reading, reorienting and resampling, and writes each prediction as NIfTI on the
input's own grid with the input's affine, so it overlays the CT in any viewer.

Tests and tools can pass their own ``predict_fn`` (window logits from normalised windows) in place of
the model: the rest of the path (windows, blending, post-processing, geometry) stays the production one.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np
import tqdm

from jaxseg import labels as labels_lib, workdir as workdir_lib
from jaxseg.data import geometry
from jaxseg.data.preprocess import preprocess_image
from jaxseg.infer import postprocess as post
from jaxseg.infer.sliding_window import ConstantParamsPredictor, sliding_window_inference
from jaxseg.io import nifti
from jaxseg.models import build_model
from jaxseg.train.state import count_params
from jaxseg.intensity import normalize_hu

_SUFFIXES = (".nii.gz", ".nii")


@functools.lru_cache(maxsize=8)
def _apply_fn(model_json: str, num_classes: int) -> Callable:
  """One apply function per model config, so every case and every validation reuses one compilation."""
  module = build_model(ml_collections.ConfigDict(json.loads(model_json)), num_classes)

  def apply(params, x):
    out = module.apply({"params": params}, x, train=False)
    return out[0] if isinstance(out, (list, tuple)) else out

  return apply


def inference_conv(config: ml_collections.ConfigDict) -> str:
  """The convolution form inference runs: ``config.eval.conv``, where "auto" is "depth_folded" on a CPU
  backend and ``config.model.conv`` elsewhere.

  Why the form may differ from training's: the forms share parameters and agree to float rounding
  (tests/test_models.py), but not in speed, and the fastest forward pass is not the fastest forward and
  backward. On XLA:CPU a 2D convolution goes to YNNPACK and a 3D one to XLA's own emitter, so the
  depth-folded forward is 1.6-2.8x native's at a U-Net's high-resolution stages (``python
  launch/bench_peers.py --config=configs/default.py --conv_layers``; README, "Speed and memory"), so on a
  CPU inference runs it whichever form trained (``model.conv=auto`` trains in it there too, input-dilated
  layers excepted).
  """
  conv = str(config.eval.get("conv", "auto"))
  if conv != "auto":
    return conv
  return "depth_folded" if jax.default_backend() == "cpu" else str(config.model.conv)


def model_predict_fn(config: ml_collections.ConfigDict, params, constant_params: bool = False) -> Callable:
  """The model of ``config`` with ``params`` as a window predictor f32 [N, wx, wy, wz, 1] -> [N, ..., K],
  in the convolution form of ``inference_conv``: a ``jax.tree_util.Partial`` (the parameters traced, one
  compilation for every parameter set: validation) or, with ``constant_params``, a
  ``ConstantParamsPredictor`` (the parameters compiled in: a checkpoint's evaluation or prediction)."""
  k = labels_lib.num_classes(tuple(config.data.organs))
  model = ml_collections.ConfigDict(config.model.to_dict())
  model.conv = inference_conv(config)
  apply = _apply_fn(model.to_json(), k)
  if constant_params:
    return ConstantParamsPredictor(functools.partial(apply, params))
  return jax.tree_util.Partial(apply, params)


# "auto" compiles the parameters in on a CPU backend from this many parameters: below it the kernel copies
# that constants save (ConstantParamsPredictor) cost less than the extra compilation of each checkpoint.
_CONSTANT_PARAMS_MIN = 1_000_000


def uses_constant_params(config: ml_collections.ConfigDict, params) -> bool:
  """Whether a checkpoint's evaluation or prediction compiles the parameters in (``eval.constant_params``:
  "auto" on a CPU backend for models of at least _CONSTANT_PARAMS_MIN parameters; "true"; "false").
  Validation during training never does: its parameters are new each time."""
  choice = str(config.eval.get("constant_params", "auto"))
  if choice != "auto":
    return choice == "true"
  return jax.default_backend() == "cpu" and count_params(params) >= _CONSTANT_PARAMS_MIN


def checkpoint_predict_fn(config: ml_collections.ConfigDict, params) -> Callable:
  """The window predictor of a checkpoint's evaluation or prediction (``uses_constant_params``)."""
  return model_predict_fn(config, params, constant_params=uses_constant_params(config, params))


def normalize_volume(image_hu: np.ndarray, hu_window: Sequence[float], slab: int = 32) -> np.ndarray:
  """``normalize_hu`` (the training transform, bit for bit) over a whole CT, a slab of x-planes at a
  time so that a large CT never sits on the device at once. f32 [X, Y, Z] on the host."""
  image_hu = np.asarray(image_hu)
  out = np.empty(image_hu.shape, np.float32)
  for a in range(0, image_hu.shape[0], slab):
    out[a:a + slab] = np.asarray(normalize_hu(image_hu[a:a + slab], hu_window))
  return out


def _argmax_and_tumor_probs(logits: np.ndarray, tumor_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Labels and tumour-class softmax probabilities, one x-slab at a time (no full-size temporaries)."""
  labels = np.empty(logits.shape[:3], np.uint8)
  probs = np.empty(logits.shape[:3] + (len(tumor_ids),), np.float16)
  for x in range(logits.shape[0]):
    s = logits[x]
    labels[x] = np.argmax(s, axis=-1)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    probs[x] = (e[..., list(tumor_ids)] / e.sum(axis=-1, keepdims=True)).astype(np.float16)
  return labels, probs


def _window_logits(config: ml_collections.ConfigDict, params, image_hu, mesh, predict_fn, progress: bool,
                   caller: str) -> np.ndarray:
  """Blended sliding-window logits float32 [X, Y, Z, K] of one canonical CT (shared by both predictors)."""
  k = labels_lib.num_classes(labels_lib.check_organs(config.data.organs))
  if predict_fn is None:
    predict_fn = model_predict_fn(config, params)
  image_hu = np.asarray(image_hu)
  if image_hu.ndim != 3:
    raise ValueError(f"{caller}: image must be [X, Y, Z], got shape {image_hu.shape}")
  volume = normalize_volume(image_hu, config.data.hu_window)[..., None]
  return sliding_window_inference(
      predict_fn, volume, tuple(config.data.patch_size), float(config.eval.overlap),
      int(config.eval.window_batch), k, mesh=mesh, tta_mirror=bool(config.eval.tta_mirror),
      progress=progress)


def predict_volume(config: ml_collections.ConfigDict, params, image_hu: np.ndarray,
                   spacing: Sequence[float], mesh=None, predict_fn: Callable | None = None,
                   progress: bool = False) -> tuple[np.ndarray, dict[int, float]]:
  """Segments one canonical CT: (labels, scores) of ``predict_volume_and_probs``, without the probabilities."""
  labels, scores, _ = predict_volume_and_probs(config, params, image_hu, spacing, mesh, predict_fn, progress)
  return labels, scores


def predict_volume_and_probs(config: ml_collections.ConfigDict, params, image_hu: np.ndarray,
                             spacing: Sequence[float], mesh=None, predict_fn: Callable | None = None,
                             progress: bool = False) -> tuple[np.ndarray, dict[int, float], np.ndarray]:
  """Segments one canonical CT.

  Args:
    config: the run's config (data.organs, data.patch_size, data.hu_window, eval.*).
    params: model parameters (unused when ``predict_fn`` is given).
    image_hu: HU [X, Y, Z] on the canonical grid at ``config.data.spacing``.
    spacing: its voxel spacing (sx, sy, sz) in mm (for post-processing).
    mesh: a Mesh with a "data" axis to shard windows over, or None.
    predict_fn: window predictor replacing the model (f32 [N, wx, wy, wz, 1] -> logits [N, ..., K]).
    progress: show a progress bar over window batches.

  Returns:
    (label map uint8 [X, Y, Z] after post-processing,
     scores {tumour label id: the largest predicted probability of that tumour inside the region where
     post-processing allows it (0 when none)}: the per-case tumour score of the AUC,
     float16 [X, Y, Z, organs] softmax probability of each organ's tumour class).
  """
  organs = labels_lib.check_organs(config.data.organs)
  logits = _window_logits(config, params, image_hu, mesh, predict_fn, progress, "predict_volume")
  tumor_ids = [labels_lib.tumor_label(organs, o) for o in organs]
  raw, probs = _argmax_and_tumor_probs(logits, tumor_ids)
  del logits
  labels = post.postprocess(raw, spacing, organs, config.eval, probs)
  scores = {}
  for i, organ in enumerate(organs):
    region = post.tumor_allowed_region(labels, spacing, organs, organ, config.eval)
    scores[tumor_ids[i]] = float(probs[..., i][region].max()) if region.any() else 0.0
  return labels, scores, probs


RESAMPLE_MODES = ("probabilities", "labels")


def check_resample_config(config: ml_collections.ConfigDict) -> str:
  """Returns ``eval.resample`` (a resolved config has it) or raises ValueError naming the field."""
  mode = config.eval.resample
  if mode not in RESAMPLE_MODES:
    raise ValueError(f"eval.resample: {mode!r} is not one of {', '.join(RESAMPLE_MODES)}")
  return mode


def predict_probabilities(config: ml_collections.ConfigDict, params, image_hu: np.ndarray, mesh=None,
                          predict_fn: Callable | None = None, progress: bool = False) -> np.ndarray:
  """Softmax class probabilities float32 [X, Y, Z, K] of one canonical CT (no post-processing)."""
  logits = _window_logits(config, params, image_hu, mesh, predict_fn, progress, "predict_probabilities")
  for x in range(logits.shape[0]):  # In place, one x-slab at a time: no second full-size array.
    s = logits[x] - logits[x].max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    logits[x] = s
  return logits


def labels_from_probabilities(probs: np.ndarray, spacing: Sequence[float], organs: tuple[str, ...],
                              eval_cfg) -> tuple[np.ndarray, dict[int, float]]:
  """Argmax, post-processing and tumour scores on whatever grid ``probs`` [X, Y, Z, K] lies on.

  ``spacing`` is that grid's voxel size per array axis (the rules measure mm and mm^3). Returns what
  ``predict_volume`` returns.
  """
  tumor_ids = [labels_lib.tumor_label(organs, o) for o in organs]
  raw = np.argmax(probs, axis=-1).astype(np.uint8)
  tprobs = probs[..., tumor_ids].astype(np.float16)
  labels = post.postprocess(raw, spacing, organs, eval_cfg, tprobs)
  scores = {}
  for i, organ in enumerate(organs):
    region = post.tumor_allowed_region(labels, spacing, organs, organ, eval_cfg)
    scores[tumor_ids[i]] = float(tprobs[..., i][region].max()) if region.any() else 0.0
  return labels, scores


def list_inputs(inputs: str | Sequence[str]) -> list[str]:
  """NIfTI files named by ``inputs``: a file, a folder (its .nii/.nii.gz files) or a list of files."""
  if isinstance(inputs, str):
    if os.path.isdir(inputs):
      files = sorted(os.path.join(inputs, f) for f in os.listdir(inputs) if f.endswith(_SUFFIXES))
      if not files:
        raise ValueError(f"{inputs}: no .nii.gz or .nii files in this folder")
      return files
    inputs = [inputs]
  for f in inputs:
    if not os.path.isfile(f):
      raise ValueError(f"{f}: no such file")
    if not f.endswith(_SUFFIXES):
      raise ValueError(f"{f}: not a NIfTI file (.nii.gz or .nii)")
  return list(inputs)


def case_name(path: str) -> str:
  """File name without the NIfTI suffix."""
  name = os.path.basename(path)
  for suf in _SUFFIXES:
    if name.endswith(suf):
      return name[:-len(suf)]
  return name


def predict_files(config: ml_collections.ConfigDict, params, inputs: str | Sequence[str], output_dir: str,
                  mesh=None, predict_fn: Callable | None = None, progress: bool = True,
                  save_probabilities: bool = False, failures: list[str] | None = None) -> list[str]:
  """Predicts NIfTI CTs and writes their label maps on the original grids.

  Each input is reoriented to RAS+ and resampled to ``config.data.spacing`` and segmented there. The way
  back onto the input's voxel grid follows ``config.eval.resample``:

    * "probabilities" (default, nnU-Net's): the class probabilities are resampled (linear) to the
      original grid, and the argmax, post-processing and tumour scores happen there, at its spacing. Thin
      structures and boundaries keep sub-voxel detail that a nearest-neighbour copy of labels loses.
    * "labels": argmax and post-processing on the training grid, labels copied back (nearest neighbour):
      cheaper in memory (no K-channel volume at the original size).

  Each label map is written as ``<output_dir>/<name>.nii.gz`` (uint8, the input's affine; <name> is the
  file name without suffix, or <parent folder>_<name> when inputs share file names). ``scores.json`` holds
  every case's tumour scores by tumour name. With ``save_probabilities``, ``<name>.npz`` holds
  "probabilities" float16 [X, Y, Z, K] on the original grid (file axis order, the NIfTI's) and
  "class_names" [K] (with resample "labels" too: the probabilities are resampled for the file only).

  Args:
    config: the run's config.
    params: model parameters (unused with ``predict_fn``).
    inputs: a NIfTI file, a folder of them, or a list of files.
    output_dir: where predictions go (created).
    mesh, predict_fn: see ``predict_volume``.
    progress: show a progress bar over cases.
    save_probabilities: also write the probabilities (see above).
    failures: when given, a file that cannot be read or predicted (a DataError, or any error of that case)
      does not stop the others: "<file>: <problem>" is appended here and the next file goes on, so one bad
      scan in a folder of hundreds costs that scan only. scores.json then holds the good ones.

  Returns:
    The written prediction paths, in input order.
  """
  mode = check_resample_config(config)
  files = list_inputs(inputs)
  if predict_fn is None:  # one predictor (and compilation) for every file
    predict_fn = checkpoint_predict_fn(config, params)
  organs = labels_lib.check_organs(config.data.organs)
  names = labels_lib.class_names(organs)
  os.makedirs(output_dir, exist_ok=True)
  written, all_scores = [], {}
  names_out = [case_name(f) for f in files]
  if len(set(names_out)) < len(names_out):  # e.g. AbdomenAtlas: every case is <case>/ct.nii.gz
    names_out = [f"{os.path.basename(os.path.dirname(os.path.abspath(f)))}_{n}"
                 for f, n in zip(files, names_out)]
  for path, name in tqdm.tqdm(list(zip(files, names_out)), desc="predict", unit="case", disable=not progress):
    try:
      image, meta = preprocess_image(path, tuple(config.data.spacing))
      probs_back = None
      if mode == "probabilities" or save_probabilities:
        probs = predict_probabilities(config, params, image, mesh=mesh, predict_fn=predict_fn)
        probs_back = geometry.from_canonical(probs, meta, order=1)
        del probs
      if mode == "probabilities":
        back, scores = labels_from_probabilities(probs_back, meta["original_spacing"], organs, config.eval)
      else:
        labels, scores = predict_volume(config, params, image, meta["spacing"], mesh=mesh, predict_fn=predict_fn)
        back = geometry.from_canonical(labels, meta, order=0)
      if save_probabilities:
        np.savez_compressed(os.path.join(output_dir, name + ".npz"), probabilities=probs_back.astype(np.float16),
                            class_names=np.asarray(names))
      del probs_back
      out = os.path.join(output_dir, name + ".nii.gz")
      nifti.save_nifti(back.astype(np.uint8), np.asarray(meta["original_affine"]), out, dtype=np.uint8)
    except Exception as e:  # pylint: disable=broad-except
      if failures is None or workdir_lib.disk_error(e) is not None:
        raise  # A full disk fails every later file too: stop (the caller's one line names it).
      msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      failures.append(msg if msg.startswith(path) else f"{path}: {type(e).__name__}: {msg}")
      continue
    written.append(out)
    all_scores[name] = {names[i]: s for i, s in scores.items()}
  workdir_lib.atomic_write_text(os.path.join(output_dir, "scores.json"), json.dumps(all_scores, indent=2))
  return written
