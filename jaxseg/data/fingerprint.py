"""A data set's fingerprint: what planning (jaxseg/plan.py) needs to know about it, read once.

Per case, on its original grid (no resampling): voxel spacing and shape in canonical RAS axes (x, y, z),
the HU of a sample of each organ's foreground voxels (organ and its tumour), the volumes of its tumours
(connected components, mm^3) and which structures it annotates. Summed over the set: median and 10th
percentile spacing, median shape, intensity percentiles (0.5, 50, 99.5, mean, std) per organ and for all
foreground, tumour size percentiles. Cases are read through the same readers as preprocessing
(jaxseg.io.layouts, jaxseg.data.reading), so a case preprocessing would skip is skipped here, with its
problem listed.
"""

from __future__ import annotations

import hashlib

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from jaxseg import labels as label_space
from jaxseg.data.preprocess import parallel_map
from jaxseg.data.reading import read_case
from jaxseg.io.layouts import read_layout
from jaxseg.io.nifti import DataError

SAMPLES_PER_ORGAN = 10_000  # foreground voxels kept per organ and case (nnU-Net keeps 10,000 too)
PERCENTILES = (0.5, 50.0, 99.5)


def canonical_spacing_shape(affine: np.ndarray, shape) -> tuple[list[float], list[int]]:
  """Voxel spacing (mm) and shape along the canonical RAS+ axes x, y, z (the training grid's axes)."""
  affine = np.asarray(affine, np.float64)
  ornt = nio.io_orientation(affine)
  zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
  spacing, out_shape = [0.0] * 3, [0] * 3
  for file_axis, (canon_axis, _) in enumerate(ornt):
    spacing[int(canon_axis)] = float(zooms[file_axis])
    out_shape[int(canon_axis)] = int(shape[file_axis])
  return spacing, out_shape


def case_fingerprint(record, organs: tuple[str, ...]) -> dict:
  """The fingerprint of one case (see the module docstring); {"case_id", "problem"} when unreadable."""
  try:
    case = read_case(record, organs)
  except DataError as e:
    return {"case_id": record.case_id, "problem": str(e)}
  spacing, shape = canonical_spacing_shape(case.image_nifti.affine, case.image.shape)
  seed = int.from_bytes(hashlib.sha256(record.case_id.encode()).digest()[:8], "little")
  rng = np.random.default_rng(seed)
  voxel_mm3 = float(np.prod(spacing))
  intensities, tumors = {}, {}
  for organ in organs:
    o, t = label_space.organ_label(organs, organ), label_space.tumor_label(organs, organ)
    fg = case.image[(case.label == o) | (case.label == t)]
    if fg.size:
      if fg.size > SAMPLES_PER_ORGAN:
        fg = rng.choice(fg, SAMPLES_PER_ORGAN, replace=False)
      intensities[organ] = fg.astype(np.float32).tolist()
    comps, n = ndimage.label(case.label == t)
    if n:
      tumors[organ] = (np.bincount(comps.ravel())[1:] * voxel_mm3).tolist()
  return {"case_id": record.case_id, "spacing": spacing, "shape": shape, "intensities": intensities,
          "tumor_volumes_mm3": tumors, "annotated": sorted(record.annotated_structures())}


def _stats(values) -> dict:
  v = np.asarray(values, np.float64)
  if not v.size:
    return {"n": 0}
  p = np.percentile(v, PERCENTILES)
  return {"n": int(v.size), "p0_5": float(p[0]), "median": float(p[1]), "p99_5": float(p[2]),
          "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def summarize(cases: list[dict], organs: tuple[str, ...]) -> dict:
  """The data-set fingerprint from per-case ones (problems kept under "skipped")."""
  good = [c for c in cases if "problem" not in c]
  if not good:
    raise ValueError("fingerprint: no readable case (" + "; ".join(c["problem"] for c in cases[:3]) + ")")
  spacings = np.asarray([c["spacing"] for c in good], np.float64)
  shapes = np.asarray([c["shape"] for c in good], np.float64)
  shapes_mm = shapes * spacings
  out = {
      "num_cases": len(good),
      "organs": list(organs),
      "spacings": spacings.tolist(),
      "shapes": shapes.astype(int).tolist(),
      "median_spacing": np.median(spacings, 0).tolist(),
      "p10_spacing": np.percentile(spacings, 10, axis=0).tolist(),
      "median_shape": np.median(shapes, 0).tolist(),
      "median_extent_mm": np.median(shapes_mm, 0).tolist(),
      "intensity": {},
      "tumors": {},
      "annotated_cases": {},
      "skipped": [{"case_id": c["case_id"], "problem": c["problem"]} for c in cases if "problem" in c],
  }
  all_fg = []
  for organ in organs:
    vals = [v for c in good for v in c["intensities"].get(organ, [])]
    all_fg += vals
    out["intensity"][organ] = _stats(vals)
    vols = [v for c in good for v in c["tumor_volumes_mm3"].get(organ, [])]
    t = _stats(vols)
    if vols:
      diam = (6.0 * np.asarray(vols) / np.pi) ** (1.0 / 3.0)  # equivalent-sphere diameter
      t.update(cases_with_tumor=sum(1 for c in good if organ in c["tumor_volumes_mm3"]),
               median_diameter_mm=float(np.median(diam)), p10_diameter_mm=float(np.percentile(diam, 10)),
               p90_diameter_mm=float(np.percentile(diam, 90)))
    out["tumors"][organ] = t
    out["annotated_cases"][organ] = sum(1 for c in good if organ in c["annotated"])
    out["annotated_cases"][organ + "_tumor"] = sum(1 for c in good if organ + "_tumor" in c["annotated"])
  out["intensity"]["foreground"] = _stats(all_fg)
  return out


def compute_fingerprint(layout: str, src: str, organs, workers: int = 2, max_cases: int = 0) -> dict:
  """Reads the data set at ``src`` (``layout``) and returns its fingerprint (``summarize``'s dict).

  Args:
    layout: atlas | atlas2 | msd | nnunet | manifest | phantom.
    src: the data set folder (or manifest).
    organs: the organs of the label space.
    workers: parallel processes.
    max_cases: read only the first N cases (0: all); the plan of a big set barely moves after a few hundred.
  """
  organs = label_space.check_organs(organs)
  records = read_layout(layout, src)
  if max_cases > 0:
    records = records[:max_cases]
  if not records:
    raise ValueError(f"{src}: no cases found in layout {layout!r}")
  cases = list(parallel_map(case_fingerprint, [(r, organs) for r in records], workers, "fingerprint"))
  cases.sort(key=lambda c: c["case_id"])
  return summarize(cases, organs)
