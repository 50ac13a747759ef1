"""Experiment planning: from a data set's fingerprint to a training config, with nnU-Net's rules.

The rules (docs/PLANNING.md has the reasoning and where they differ from nnU-Net):

  * target spacing: the median spacing per axis; when the coarsest axis is anisotropic (its median
    spacing > 3 x the finest other axis's, and its median extent in voxels x 3 < the smallest other
    axis's), that axis takes the 10th percentile of its spacings instead (never finer than the other axes);
  * HU window: the 0.5 and 99.5 percentiles of the foreground (organ and tumour) voxels of all cases;
  * patch: isotropic in mm with the volume of 256^3 voxels, clipped to the median shape at the target
    spacing, then shrunk (one divisor step on the axis with the largest patch / median-shape ratio) until
    the estimated training memory at batch 2 fits ``gpu_memory_gb``;
  * network: stages until the coarsest feature map is 4 voxels on the patch's smallest side (at most 6;
    this U-Net pools every axis at every stage, so the smallest side decides), features doubling from
    ``base_features`` up to 320, residual blocks (1, 3, 4, 6, 6, 6) as nnU-Net's ResEnc M;
  * batch: as many as the memory allows, at least 2, at most what covers 5% of the data set's voxels.

Memory is an estimate: activations per stage (voxels x features x convolutions) scaled so that nnU-Net's
ResEnc M at 128^3, batch 2 (float32) costs 10 GiB, the budget nnU-Net publishes for that preset.
"""

from __future__ import annotations

import datetime
import json
import math
import os

import numpy as np

from jaxseg import labels as label_space
from jaxseg.data.fingerprint import compute_fingerprint

ANISOTROPY = 3.0
MIN_FEATURE_MAP = 4
MAX_STAGES = 6
MAX_FEATURES = 320
BLOCKS = (1, 3, 4, 6, 6, 6)
PATCH_VOXELS = 256 ** 3
MAX_DATASET_COVERED = 0.05
REFERENCE = {"features": (32, 64, 128, 256, 320), "blocks": (1, 3, 4, 6, 6), "patch": (128, 128, 128),
             "batch": 2, "gib": 10.0}


def target_spacing(fp: dict) -> list[float]:
  """Median spacing, with nnU-Net's rule for an anisotropic axis (10th percentile of that axis)."""
  spacings = np.asarray(fp["spacings"], np.float64)
  target = np.median(spacings, 0)
  shapes = np.asarray(fp["shapes"], np.float64)
  size = np.median(shapes * spacings / target, 0)  # median shape at the target spacing
  worst = int(np.argmax(target))
  others = [a for a in range(3) if a != worst]
  aniso_spacing = target[worst] > ANISOTROPY * max(target[others])
  aniso_voxels = size[worst] * ANISOTROPY < min(size[others])
  if aniso_spacing and aniso_voxels:
    lowres = float(np.percentile(spacings[:, worst], 10))
    target[worst] = max(max(target[others]), lowres) + 1e-5 if lowres < max(target[others]) else lowres
  return [float(round(s, 5)) for s in target]


def network_for_patch(patch, base_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(features, blocks_per_stage): stages until the smallest patch side is 4 at the coarsest stage."""
  n = int(math.floor(math.log2(max(min(patch), 1) / MIN_FEATURE_MAP))) + 1
  n = max(2, min(MAX_STAGES, n))
  features = tuple(min(base_features * 2 ** i, MAX_FEATURES) for i in range(n))
  return features, BLOCKS[:n]


def _units(patch, features, blocks) -> float:
  """Activation count of one sample (encoder convs of each residual block, decoder up/concat/conv)."""
  vox = float(np.prod(patch))
  total = 0.0
  for s, (f, b) in enumerate(zip(features, blocks)):
    v = vox / 8 ** s
    total += v * f * (2 * b + 1)
    if s < len(features) - 1:
      total += v * f * 4
  return total


def estimate_memory_gib(patch, batch: int, features, blocks, dtype: str = "float32") -> float:
  """Training memory (GiB) relative to nnU-Net's ResEnc M reference (see the module docstring)."""
  ref = REFERENCE["batch"] * _units(REFERENCE["patch"], REFERENCE["features"], REFERENCE["blocks"])
  gib = REFERENCE["gib"] * batch * _units(patch, features, blocks) / ref
  return gib * (0.6 if dtype == "bfloat16" else 1.0)


def plan_patch(median_shape, spacing, gpu_memory_gb: float, base_features: int = 32,
               dtype: str = "float32") -> tuple[tuple[int, int, int], tuple, tuple]:
  """(patch, features, blocks) that fit ``gpu_memory_gb`` at batch 2 (see the module docstring)."""
  median_shape = np.maximum(np.asarray(median_shape, np.float64), 1.0)
  inv = 1.0 / np.asarray(spacing, np.float64)
  patch = np.minimum(inv * (PATCH_VOXELS / np.prod(inv)) ** (1 / 3), median_shape)
  while True:
    features, blocks = network_for_patch(patch, base_features)
    div = 2 ** (len(features) - 1)
    rounded = tuple(int(max(div, div * math.floor(p / div))) for p in patch)
    if estimate_memory_gib(rounded, 2, features, blocks, dtype) <= gpu_memory_gb:
      return rounded, features, blocks
    if max(rounded) <= 8:
      raise ValueError(f"gpu_memory_gb={gpu_memory_gb}: too small for even an 8^3 patch at batch 2 "
                       f"(needs {estimate_memory_gib(rounded, 2, features, blocks, dtype):.3f} GiB)")
    axis = int(np.argmax(np.asarray(rounded) / median_shape))
    patch = np.asarray(rounded, np.float64)
    patch[axis] = max(rounded[axis] - div, min(8, rounded[axis] - 1))


def plan_batch(patch, features, blocks, gpu_memory_gb: float, fp: dict, spacing, dtype: str = "float32") -> int:
  """The largest batch that fits, at least 2, at most the batch covering 5% of the data set's voxels."""
  per_sample = estimate_memory_gib(patch, 1, features, blocks, dtype)
  fit = int(gpu_memory_gb // per_sample)
  shapes = np.asarray(fp["shapes"], np.float64) * np.asarray(fp["spacings"]) / np.asarray(spacing)
  covered = int(MAX_DATASET_COVERED * float(np.prod(shapes, 1).sum()) // float(np.prod(patch)))
  return int(max(2, min(fit, covered)))


def make_plan(fp: dict, gpu_memory_gb: float = 24.0, base_features: int = 32, dtype: str = "float32") -> dict:
  """The plan of a fingerprint (jaxseg.data.fingerprint.compute_fingerprint): config values and the why."""
  if gpu_memory_gb <= 0:
    raise ValueError(f"gpu_memory_gb={gpu_memory_gb}: must be > 0")
  if base_features < 1:
    raise ValueError(f"base_features={base_features}: must be >= 1")
  spacing = target_spacing(fp)
  shapes = np.asarray(fp["shapes"], np.float64) * np.asarray(fp["spacings"]) / np.asarray(spacing)
  median_shape = np.median(shapes, 0)
  patch, features, blocks = plan_patch(median_shape, spacing, gpu_memory_gb, base_features, dtype)
  batch = plan_batch(patch, features, blocks, gpu_memory_gb, fp, spacing, dtype)
  fg = fp["intensity"]["foreground"]
  if not fg.get("n"):
    raise ValueError("fingerprint: no foreground voxel of the organs in any case; is data.organs right?")
  window = (float(np.floor(fg["p0_5"])), float(np.ceil(fg["p99_5"])))
  if window[1] <= window[0]:
    window = (window[0], window[0] + 1.0)
  return {
      "spacing": spacing,
      "median_shape_at_spacing": [float(s) for s in median_shape],
      "hu_window": window,
      "patch_size": patch,
      "batch_size": batch,
      "features": features,
      "blocks_per_stage": blocks,
      "dtype": dtype,
      "estimated_memory_gib": round(estimate_memory_gib(patch, batch, features, blocks, dtype), 2),
      "gpu_memory_gb": float(gpu_memory_gb),
  }


def render_config(plan: dict, fp: dict, layout: str, src: str, fingerprint_path: str) -> str:
  """The text of a config file (``get_config``) that starts from jaxseg.default_config and sets the plan."""
  organs = tuple(fp["organs"])
  lines = [f"  {organ}: HU p0.5 {s['p0_5']:.0f}, median {s['median']:.0f}, p99.5 {s['p99_5']:.0f} "
           f"({s['n']} voxels sampled)" for organ, s in fp["intensity"].items() if s.get("n")]
  tum = [f"  {organ} tumours: {t['n']} in {t.get('cases_with_tumor', 0)} cases, median diameter "
         f"{t.get('median_diameter_mm', float('nan')):.1f} mm (10th-90th pct {t.get('p10_diameter_mm', float('nan')):.1f}"
         f"-{t.get('p90_diameter_mm', float('nan')):.1f})" for organ, t in fp["tumors"].items() if t.get("n")]
  doc = "\n".join([
      f'"""Planned by launch/plan.py on {datetime.date.today().isoformat()} from {src} ({layout} layout).',
      "",
      f"Fingerprint ({fp['num_cases']} cases; full numbers in {os.path.basename(fingerprint_path)}):",
      f"  median spacing {_fmt(fp['median_spacing'])} mm, 10th percentile {_fmt(fp['p10_spacing'])} mm (x, y, z)",
      f"  median shape {_fmt(fp['median_shape'], 0)} voxels, median extent {_fmt(fp['median_extent_mm'], 0)} mm",
      *lines, *tum,
      "",
      f"Plan (rules: docs/PLANNING.md) for {plan['gpu_memory_gb']:g} GB of accelerator memory: estimated "
      f"{plan['estimated_memory_gib']:.1f} GiB at this batch.",
      "",
      f"  python launch/train.py --config={{this file}} --workdir=runs/<name>",
      '"""',
  ])
  # A phantom folder is read as AbdomenAtlas (the reader sees phantoms.json); data.layout "phantom" would
  # make a new set from the config's phantom.* fields instead of using this one.
  layout = "atlas" if layout == "phantom" else layout
  body = f'''
import ml_collections

from jaxseg.default_config import get_config as base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base_config(arg)
  c.data.layout = {layout!r}
  c.data.root = {os.path.abspath(src)!r}
  c.data.organs = {organs!r}
  c.data.spacing = {tuple(plan['spacing'])!r}
  c.data.hu_window = {tuple(plan['hu_window'])!r}
  c.data.patch_size = {tuple(plan['patch_size'])!r}
  c.data.batch_size = {int(plan['batch_size'])!r}
  c.model.features = {tuple(plan['features'])!r}
  c.model.blocks_per_stage = {tuple(plan['blocks_per_stage'])!r}
  c.model.dtype = {plan['dtype']!r}
  return c
'''
  return doc + "\n" + body


def _fmt(v, digits: int = 2) -> str:
  return " x ".join(f"{float(x):.{digits}f}" for x in v)


def write_plan(fp: dict, plan: dict, layout: str, src: str, out: str) -> tuple[str, str]:
  """Writes the config file ``out`` and the fingerprint (+ plan) JSON beside it; returns both paths."""
  fp_path = os.path.splitext(out)[0] + "_fingerprint.json"
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(fp_path, "w") as f:
    json.dump({"fingerprint": fp, "plan": plan}, f, indent=1)
  with open(out, "w") as f:
    f.write(render_config(plan, fp, layout, src, fp_path))
  return out, fp_path


def plan_dataset(layout: str, src: str, organs, out: str, gpu_memory_gb: float = 24.0, base_features: int = 32,
                 dtype: str = "float32", workers: int = 2, max_cases: int = 0) -> dict:
  """Fingerprint + plan + files: what launch/plan.py runs. Returns the plan."""
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype={dtype!r}: use float32 or bfloat16")
  organs = label_space.check_organs(organs)
  fp = compute_fingerprint(layout, src, organs, workers=workers, max_cases=max_cases)
  plan = make_plan(fp, gpu_memory_gb, base_features, dtype)
  write_plan(fp, plan, layout, src, out)
  return plan
