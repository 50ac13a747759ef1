"""A checkpoint on a data set, end to end: predict every cached case, score it, write the report.

Validation during training calls ``evaluate_cases`` on the held-out cases with the live parameters;
``launch/evaluate.py`` calls ``evaluate_checkpoint`` for a saved checkpoint on any data set. Both score on
the cache's canonical grid (the training spacing), which keeps validation cheap; for numbers on the
original grids, predict with launch/predict.py and score with launch/evaluate_folder.py.
"""

from __future__ import annotations

import copy
import os
from typing import Callable, Sequence

import ml_collections
import numpy as np
import tqdm

import jax

from jaxseg import assembly, labels as labels_lib, parallel, workdir as workdir_lib
from jaxseg.data import cache
from jaxseg.data.prepare import prepare_data
from jaxseg.infer.predict import checkpoint_predict_fn, predict_volume
from jaxseg.metrics import evaluation, report
from jaxseg.train import tb_log

_NUM_PREVIEWS = 4


def _case_labels(all_labels: Sequence[evaluation.LabelSpec], organs: tuple[str, ...], meta: dict
                 ) -> list[evaluation.LabelSpec]:
  """Labels to score in one case: an organ marked "absent" in the cache (not annotated, or annotated with
  no voxel) is skipped, and so is every label the case does not annotate (partial labels)."""
  status = meta.get("organs", {})
  skip = {o for o in organs if status.get(o) == cache.ABSENT}
  kept = [l for l in all_labels if l.name.removesuffix("_tumor") not in skip]
  return evaluation.annotated_label_specs(kept, cache.annotated_mask(meta, organs))


def evaluate_cases(config: ml_collections.ConfigDict, params, cache_dir: str, case_ids: Sequence[str],
                   out_dir: str, mesh=None, checkpoint_step: int | None = None,
                   predict_fn: Callable | None = None, progress: bool = True, plots: bool = True) -> dict:
  """Predicts and scores cached cases; writes cases.csv, tumors.csv, summary.json and plots to ``out_dir``.

  Args:
    config: the run's config (data.organs, data.patch_size, data.hu_window, eval.*).
    params: model parameters (host or replicated).
    cache_dir: the preprocessed cache (jaxseg.data.cache).
    case_ids: the cases to evaluate (the first config.eval.max_cases when that is > 0).
    out_dir: report folder (created).
    mesh: a Mesh with a "data" axis for the windows, or None.
    checkpoint_step: recorded in the summary.
    predict_fn: window predictor replacing the model (tests, oracles).
    progress: progress bar over cases.
    plots: write the PNG plots.

  Returns:
    The summary: floats "tumor_dsc", "tumor_nsd", "tumor_hd95", "tumor_sensitivity" (tumour-wise),
    "patient_sensitivity", "specificity", "auc", "fp_per_control_case", "fp_per_tumor_case", "organ_dsc",
    "organ_nsd", "organ_hd95" for the first organ and its tumour (NaN when undefined), "<label>/<metric>"
    for every label, and "labels" with means, medians and bootstrap intervals.
  """
  organs = labels_lib.check_organs(config.data.organs)
  all_labels = evaluation.labels_for_organs(organs)
  ids = list(case_ids)
  if int(config.eval.max_cases) > 0:
    ids = ids[:int(config.eval.max_cases)]
  if not ids:
    raise ValueError(f"{cache_dir}: no cases to evaluate")
  rows, tumors = [], []
  previews = {}  # a slice of the first few cases, for the TensorBoard overlays (jaxseg/train/tb_log.py)
  for case_id in tqdm.tqdm(ids, desc="evaluate", unit="case", disable=not progress):
    image, label, meta = cache.load_case(cache_dir, case_id)
    spacing = meta["spacing"]
    pred, scores = predict_volume(config, params, np.asarray(image), spacing, mesh=mesh,
                                  predict_fn=predict_fn)
    r, t = evaluation.evaluate_case(case_id, np.asarray(label), pred, spacing,
                                    _case_labels(all_labels, organs, meta),
                                    float(config.eval.nsd_tolerance_mm),
                                    float(config.eval.min_tumor_volume_mm3), scores)
    rows += r
    tumors += t
    if len(previews) < _NUM_PREVIEWS:
      lo, hi = (float(v) for v in config.data.hu_window)
      image01 = (np.clip(np.asarray(image, np.float32), lo, hi) - lo) / (hi - lo)
      previews[case_id] = tb_log.preview_slices(image01, np.asarray(label), pred, organs)
  meta = {"checkpoint_step": checkpoint_step, "data": os.path.abspath(cache_dir), "case_ids": ids,
          "grid": "canonical cache grid", "spacing": list(config.data.spacing), "config": config.to_dict()}
  summary = evaluation.summarize(rows, all_labels, int(config.eval.bootstrap), int(config.seed), meta)
  report.write_report(out_dir, rows, tumors, summary, all_labels, plots)
  tb_log.write_previews(os.path.join(out_dir, "previews.npz"), previews)
  return summary


def parse_data_spec(spec: str) -> tuple[str, str]:
  """"layout:dir" -> (layout, dir)."""
  layout, sep, root = spec.partition(":")
  if not sep or not layout or not root:
    raise ValueError(f"--data: {spec!r} is not layout:dir (e.g. msd:/data/Task03_Liver)")
  return layout, root


def evaluate_checkpoint(workdir: str, data_spec: str, step: int | str | None = None,
                        eval_config: ml_collections.ConfigDict | None = None, out_dir: str | None = None,
                        mesh=None, cache_dir: str | None = None) -> dict:
  """Evaluates a run's checkpoint on every case of a data set.

  The run's own config fixes the model, organs, spacing and HU window; ``eval_config`` (a config's
  ``eval`` block) may change the inference and metric settings.

  Args:
    workdir: the run's work directory.
    data_spec: "layout:dir" of the data set (cached next to it on first use).
    step: checkpoint step, "best", or None for the latest.
    eval_config: replaces the run's config.eval when given.
    out_dir: report folder; default <workdir>/eval/<data set name>_step_<step>.
    mesh: device mesh for the windows; default all local devices.
    cache_dir: where the data set's preprocessed cache is (made there on first use); default
      "<dir>_cache_<spacing>" beside the data set, which needs the data set's parent to be writable.

  Returns:
    The summary dict (see ``evaluate_cases``).
  """
  layout, root = parse_data_spec(data_spec)
  if eval_config is not None:  # Before the restore: a bad --config.eval value costs seconds, not a data set.
    workdir_lib.check_eval_config(eval_config)
  mesh = mesh or parallel.make_mesh(jax.local_devices())
  config, params, used = assembly.restore_for_inference(workdir, step, mesh=mesh)
  config = copy.deepcopy(config)
  if eval_config is not None:
    config.eval = eval_config
  data_cfg = copy.deepcopy(config.data)
  data_cfg.layout, data_cfg.root, data_cfg.cache_dir = layout, root, cache_dir or ""
  cache_dir = prepare_data(data_cfg)
  ids = [c["case_id"] for c in cache.list_cases(cache_dir)]
  name = os.path.basename(os.path.normpath(root))
  out_dir = out_dir or os.path.join(workdir, "eval", f"{name}_step_{used}")
  summary = evaluate_cases(config, params, cache_dir, ids, out_dir, mesh=mesh, checkpoint_step=used,
                           predict_fn=checkpoint_predict_fn(config, params))
  return dict(summary, eval_dir=out_dir)
