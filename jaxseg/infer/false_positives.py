"""Where a model's false-positive tumours lie: each predicted tumour component of a held-out case, named by
the annotated structure it overlaps most, with its confidence and whether it hits an annotated tumour.

Specificity alone says that a control case kept a predicted tumour; it does not say whether the model
fired on the organ's own parenchyma, on a neighbour that looks alike (stomach, bowel, vessels), or on a
real lesion of another organ (an AbdomenAtlas liver control may carry a pancreatic tumour). Those call for
different fixes (more negatives, a larger context, labels for the other lesions), so this module measures
which it is. It needs the per-structure masks of the AbdomenAtlas layout (``<case>/segmentations/*.nii.gz``,
also the phantom set's), put on the cache's canonical grid with the same resampling as the training labels.
"""

from __future__ import annotations

import glob
import os
from typing import Sequence

import nibabel as nib
import numpy as np

from jaxseg import labels as labels_lib
from jaxseg.data import cache
from jaxseg.data.geometry import to_canonical
from jaxseg.infer.predict import predict_volume_and_probs
from jaxseg.metrics import detection

LESION_SUFFIXES = ("_tumor", "_lesion")
NONE = "none"  # a component that overlaps no annotated structure


def structures_on_grid(case_folder: str, spacing: Sequence[float], shape: Sequence[int]) -> dict[str, np.ndarray]:
  """Every ``segmentations/<name>.nii.gz`` of an AbdomenAtlas case folder as bool masks on the canonical grid.

  Raises:
    ValueError: no segmentations folder, or a mask whose canonical grid differs from ``shape`` (names the file).
  """
  paths = sorted(glob.glob(os.path.join(case_folder, "segmentations", "*.nii.gz")))
  if not paths:
    raise ValueError(f"{case_folder}: no segmentations/*.nii.gz (the false-positive anatomy needs the "
                     "AbdomenAtlas layout's per-structure masks)")
  out = {}
  for path in paths:
    img = nib.load(path)
    mask, _ = to_canonical(img, tuple(float(s) for s in spacing), order=0,
                           data=np.asarray(img.dataobj) > 0)
    if tuple(mask.shape) != tuple(shape):
      raise ValueError(f"{path}: on the canonical grid {mask.shape}, the case's image is {tuple(shape)}")
    out[os.path.basename(path)[:-len(".nii.gz")]] = np.asarray(mask, bool)
  return out


def component_anatomy(pred_tumor: np.ndarray, structures: dict[str, np.ndarray], organ: str,
                      spacing: Sequence[float], min_volume_mm3: float = 0.0,
                      tumor_prob: np.ndarray | None = None, gt_tumor: np.ndarray | None = None) -> list[dict]:
  """One row per predicted tumour component (26-connected, at least ``min_volume_mm3``, as detection counts).

  Returns:
    dicts: volume_mm3, share_in_organ (of the component's voxels inside ``organ``'s mask), structure (the
    annotated structure, ``organ`` included, holding most of its voxels, or NONE when more of them lie in
    no annotated structure than in any one), structure_share (that largest share), on_lesion (it touches
    a structure named *_tumor or *_lesion other than the organ's own tumour: a real lesion of another
    organ); with ``tumor_prob`` (the tumour class's probability [X, Y, Z])
    also mean_prob and max_prob over the component (what a confidence rule would see); with ``gt_tumor``
    (the annotated tumour mask) also true_positive (the component overlaps it).
  """
  lab, n = detection.components(pred_tumor, spacing, min_volume_mm3)
  if n == 0:
    return []
  voxel = float(np.prod(spacing))
  sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
  overlap = {name: np.bincount(lab[m].ravel(), minlength=n + 1)[1:] for name, m in structures.items()}
  organ_keys = [k for k in overlap if k in (organ, organ + "_left", organ + "_right")]  # kidney_left, ...
  in_organ = sum((overlap[k] for k in organ_keys), np.zeros(n, np.int64))
  lesions = [k for k in overlap if k.endswith(LESION_SUFFIXES) and not k.startswith(organ + "_")]
  annotated = np.zeros(lab.shape, bool)
  for m in structures.values():
    annotated |= m
  overlap[NONE] = sizes - np.bincount(lab[annotated].ravel(), minlength=n + 1)[1:]
  if tumor_prob is not None:
    p = np.asarray(tumor_prob, np.float64)[lab > 0]
    ids = lab[lab > 0]
    mean_prob = np.bincount(ids, weights=p, minlength=n + 1)[1:] / sizes
    max_prob = np.zeros(n + 1)
    np.maximum.at(max_prob, ids, p)
  if gt_tumor is not None:
    hit = np.bincount(lab[np.asarray(gt_tumor, bool)].ravel(), minlength=n + 1)[1:] > 0
  rows = []
  for i in range(n):
    best = max(overlap, key=lambda k: (overlap[k][i], k != NONE))  # a tie goes to the structure
    rows.append({"volume_mm3": float(sizes[i] * voxel),
                 "share_in_organ": float(in_organ[i] / sizes[i]),
                 "structure": best, "structure_share": float(overlap[best][i] / sizes[i]),
                 "on_lesion": bool(any(overlap[k][i] > 0 for k in lesions))})
    if tumor_prob is not None:
      rows[-1].update(mean_prob=float(mean_prob[i]), max_prob=float(max_prob[i + 1]))
    if gt_tumor is not None:
      rows[-1]["true_positive"] = bool(hit[i])
  return rows


def case_components(config, params, cache_dir: str, case_id: str, mesh=None) -> list[dict]:
  """Predicts one cached case and describes each predicted tumour component of its first organ.

  Rows as ``component_anatomy`` (with the probabilities) plus case, component, case_score (the AUC's
  score, jaxseg.infer.predict) and true_positive (it overlaps the case's annotated tumour; every component
  of a control case is a false positive). The first organ of ``config.data.organs`` is measured.
  """
  image, label, meta = cache.load_case(cache_dir, case_id)
  spacing = meta["spacing"]
  pred, scores, probs = predict_volume_and_probs(config, params, np.asarray(image), spacing, mesh=mesh)
  organs = labels_lib.check_organs(config.data.organs)
  organ = organs[0]
  tumor_id = labels_lib.tumor_label(organs, organ)
  structures = structures_on_grid(os.path.dirname(meta["source_image"]), spacing, pred.shape)
  rows = component_anatomy(pred == tumor_id, structures, organ, spacing, float(config.eval.min_tumor_volume_mm3),
                           tumor_prob=probs[..., 0], gt_tumor=np.asarray(label) == tumor_id)
  return [dict(case=case_id, component=i + 1, case_score=scores[tumor_id], **r) for i, r in enumerate(rows)]


def summarize(rows: list[dict]) -> list[dict]:
  """Components and volume per structure, largest count first: [{structure, components, share, volume_mm3}].

  Give it the false positives (e.g. the components of control cases).
  """
  total = max(len(rows), 1)
  out = {}
  for r in rows:
    key = r["structure"] + (" (a lesion)" if r["structure"].endswith(LESION_SUFFIXES) else "")
    s = out.setdefault(key, {"structure": key, "components": 0, "volume_mm3": 0.0})
    s["components"] += 1
    s["volume_mm3"] += r["volume_mm3"]
  table = sorted(out.values(), key=lambda s: (-s["components"], s["structure"]))
  for s in table:
    s["share"] = s["components"] / total
  return table
