"""Post-processing of predicted label maps: each rule switchable in ``config.eval``.

A network's false positives in CT are mostly scattered organ-like blobs (the spleen taken for liver) and
tumour-like blobs outside the organ; the field's three rules and a confidence rule remove those:
  * ``largest_organ_component``: keep the largest 26-connected component of each organ (its tumour
    voxels count as organ for connectivity: a tumour may split the organ label in two);
  * ``tumor_in_organ_margin_mm`` (>= 0): keep a predicted tumour component only when it touches (26-
    connectivity) the organ label dilated by this margin in mm; < 0 disables the rule;
  * ``min_tumor_volume_mm3`` (> 0): drop tumour components smaller than this volume;
  * ``min_tumor_confidence`` (> 0): drop tumour components whose mean tumour probability is below this.
    A network trained on tumour-rich patches (oversampled foreground, synthetic lesions) is over-eager at
    test time: its false-positive blobs sit just above the argmax boundary while true lesions are
    confident, so the mean over a component separates them where a per-voxel threshold only shrinks both.
A dropped tumour component becomes organ when it touches the organ (it was inside it), else background.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from jaxseg import labels as labels_lib
from jaxseg.metrics.detection import CONNECTIVITY


def largest_component(mask: np.ndarray) -> np.ndarray:
  """The largest 26-connected component of ``mask`` [X, Y, Z] (empty stays empty)."""
  lab, n = ndimage.label(mask, structure=CONNECTIVITY)
  if n <= 1:
    return mask.astype(bool)
  sizes = np.bincount(lab.ravel())
  sizes[0] = 0
  return lab == int(np.argmax(sizes))


def organ_region(organ_mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
  """Voxels within ``margin_mm`` (Euclidean, with the voxel spacing) of ``organ_mask`` [X, Y, Z]."""
  if not organ_mask.any():
    return np.zeros_like(organ_mask, bool)
  if margin_mm <= 0:
    return organ_mask.astype(bool)
  # Work in the bounding box grown by the margin: the distance transform of a whole CT is slow.
  grow = [int(np.ceil(margin_mm / float(s))) + 1 for s in spacing]
  box = ndimage.find_objects(organ_mask.astype(np.uint8))[0]
  box = tuple(slice(max(0, b.start - g), min(n, b.stop + g))
              for b, g, n in zip(box, grow, organ_mask.shape))
  dist = ndimage.distance_transform_edt(~organ_mask[box], sampling=[float(s) for s in spacing])
  out = np.zeros_like(organ_mask, bool)
  out[box] = dist <= margin_mm
  return out


def postprocess(label_map: np.ndarray, spacing: Sequence[float], organs: Sequence[str], eval_cfg,
                tumor_probs: np.ndarray | None = None) -> np.ndarray:
  """Applies the post-processing rules of ``eval_cfg`` to a label map.

  Args:
    label_map: integer [X, Y, Z] in the label space of ``organs`` (jaxseg/labels.py).
    spacing: voxel spacing (sx, sy, sz) in mm.
    organs: config.data.organs.
    eval_cfg: config.eval (largest_organ_component, tumor_in_organ_margin_mm, min_tumor_volume_mm3,
      min_tumor_confidence; a config without the last, saved before it existed, has it off).
    tumor_probs: [X, Y, Z, len(organs)] softmax probability of each organ's tumour class; required when
      min_tumor_confidence > 0.

  Returns:
    uint8 [X, Y, Z], a new array.
  """
  organs = labels_lib.check_organs(organs)
  out = np.array(label_map, dtype=np.uint8, copy=True)
  voxel = float(np.prod(spacing))
  margin = float(eval_cfg.tumor_in_organ_margin_mm)
  min_vol = float(eval_cfg.min_tumor_volume_mm3)
  min_conf = float(eval_cfg.min_tumor_confidence)
  if min_conf > 0:
    if tumor_probs is None:
      raise ValueError("postprocess: eval.min_tumor_confidence > 0 needs the tumour probabilities")
    if tumor_probs.shape != out.shape + (len(organs),):
      raise ValueError(f"postprocess: tumor_probs has shape {tumor_probs.shape}, expected "
                       f"{out.shape + (len(organs),)}")
  for i, organ in enumerate(organs):
    o, t = labels_lib.organ_label(organs, organ), labels_lib.tumor_label(organs, organ)
    if eval_cfg.largest_organ_component:
      keep = largest_component((out == o) | (out == t))
      out[(out == o) & ~keep] = 0
    if margin < 0 and min_vol <= 0 and min_conf <= 0:
      continue
    tumor = out == t
    if not tumor.any():
      continue
    organ_mask = out == o
    touching = ndimage.binary_dilation(organ_mask, structure=CONNECTIVITY)
    if margin < 0:
      allowed = np.ones_like(tumor)
    else:  # touching the dilated organ: a tumour inside the organ has no organ voxel of its own
      allowed = ndimage.binary_dilation(organ_region(organ_mask, spacing, margin), structure=CONNECTIVITY)
    lab, n = ndimage.label(tumor, structure=CONNECTIVITY)
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * voxel
    inside = np.bincount(lab[allowed].ravel(), minlength=n + 1) > 0
    near = np.bincount(lab[touching].ravel(), minlength=n + 1) > 0
    drop = np.zeros(n + 1, bool)
    drop[1:] = (sizes[1:] < min_vol) | ~inside[1:]
    if min_conf > 0:
      ids = lab[tumor]  # component ids of the tumour voxels only: no whole-volume float64 temporaries
      counts = np.bincount(ids, minlength=n + 1)
      sums = np.bincount(ids, weights=tumor_probs[..., i][tumor].astype(np.float64), minlength=n + 1)
      drop[1:] |= sums[1:] / np.maximum(counts[1:], 1) < min_conf
    if drop.any():
      dropped = drop[lab]
      out[dropped] = 0
      out[dropped & near[lab]] = o
  return out


def tumor_allowed_region(label_map: np.ndarray, spacing: Sequence[float], organs: Sequence[str],
                         organ: str, eval_cfg) -> np.ndarray:
  """Where a tumour of ``organ`` may be after post-processing: the organ (with its tumour) dilated by
  the margin, or everywhere when the rule is off. bool [X, Y, Z]."""
  organs = tuple(organs)
  margin = float(eval_cfg.tumor_in_organ_margin_mm)
  if margin < 0:
    return np.ones(label_map.shape, bool)
  m = ((label_map == labels_lib.organ_label(organs, organ))
       | (label_map == labels_lib.tumor_label(organs, organ)))
  return organ_region(m, spacing, margin)
