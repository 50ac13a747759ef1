"""Reading one case (image + labels) into the unified label space, with every defect checked.

The validator and preprocessing share this code, so ``validate_data`` and ``preprocess`` report a bad case
with the same one-line messages ("<file>: <what is wrong>"). Problems are fatal (the case cannot be used:
unreadable or truncated file, non-3D image, NaN/inf voxels, shape or affine mismatch, unknown label values)
or not (an empty organ mask: the validator lists it, preprocessing marks the organ absent and goes on).
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np

from jaxseg import labels as label_space
from jaxseg.io.layouts import CaseRecord
from jaxseg.io.nifti import DataError, load_nifti, read_array, spatial_shape

AFFINE_ATOL_MM = 1e-2


class CaseError(DataError):
  """A case with fatal problems; ``problems`` holds one line per problem."""

  def __init__(self, problems: list[str]):
    super().__init__("; ".join(problems))
    self.problems = list(problems)


@dataclasses.dataclass
class CaseArrays:
  """A case read on its original voxel grid."""
  image_nifti: nib.Nifti1Image
  image: np.ndarray            # float32 [X, Y, Z] HU, file order
  label: np.ndarray            # uint8 [X, Y, Z] unified label space, file order
  annotated: tuple[str, ...]   # organs of the run that the labels annotate
  warnings: list[str]          # non-fatal problems (empty organ masks)


def geometry_problems(img: nib.Nifti1Image, path: str) -> list[str]:
  """Problems of an image's geometry that preprocessing cannot work with, one line each ([] when fine).

  Preprocessing reorients by the affine and resamples by the spacing its columns give: a NaN or infinite
  affine, a zero (or NaN) spacing, or a singular direction matrix (two axes along one line) would give a
  division by zero or a garbage grid far into the run; the header's own voxel sizes are what evaluation
  scores distances with, so they must be positive and finite too.
  """
  a = np.asarray(img.affine, dtype=np.float64)
  if a.shape != (4, 4) or not np.isfinite(a).all():
    return [f"{path}: the affine has NaN or infinite values"]
  zooms = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
  if not (zooms > 1e-6).all():
    return [f"{path}: voxel spacing {tuple(round(float(z), 6) for z in zooms)} mm is not positive (a zero column "
            "in the affine)"]
  direction = a[:3, :3] / zooms
  if abs(float(np.linalg.det(direction))) < 1e-3:
    return [f"{path}: the direction matrix is singular (two voxel axes point the same way)"]
  header = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
  if len(header) == 3 and not (np.isfinite(header).all() and (header > 0).all()):
    return [f"{path}: header voxel sizes (pixdim) {tuple(float(z) for z in header)} are not positive and finite"]
  return []


def _check_geometry(img: nib.Nifti1Image, path: str, ref_shape, ref_affine, ref_path: str,
                    problems: list[str]) -> bool:
  try:
    shape = spatial_shape(img, path)
  except DataError as e:
    problems.append(str(e))
    return False
  if not np.isfinite(np.asarray(img.affine, dtype=np.float64)).all():
    problems.append(f"{path}: the affine has NaN or infinite values")
    return False
  if tuple(shape) != tuple(ref_shape):
    problems.append(f"{path}: shape {tuple(shape)} differs from image shape {tuple(ref_shape)} ({ref_path})")
    return False
  if not np.allclose(img.affine, ref_affine, atol=AFFINE_ATOL_MM):
    diff = float(np.abs(np.asarray(img.affine) - ref_affine).max())
    problems.append(f"{path}: affine differs from the image's ({ref_path}) by up to {diff:.3g}")
    return False
  return True


def _read_labels(path: str, img: nib.Nifti1Image, shape, problems: list[str]) -> np.ndarray | None:
  try:
    arr = read_array(img, path, dtype=None).reshape(shape)
  except DataError as e:
    problems.append(str(e))
    return None
  if arr.dtype.kind == "f":
    if not np.isfinite(arr).all():
      problems.append(f"{path}: NaN or infinite label values")
      return None
    rounded = np.rint(arr)
    if not np.allclose(arr, rounded, atol=1e-3):
      problems.append(f"{path}: non-integer label values (e.g. {arr[arr != rounded].flat[0]:g})")
      return None
    arr = rounded
  return arr.astype(np.int64, copy=False)


def read_case(record: CaseRecord, organs: tuple[str, ...], validate_all: bool = False) -> CaseArrays:
  """Reads and checks a case, building its label in the unified space of ``organs``.

  Args:
    record: the case.
    organs: the organs of the run (label space of jaxseg.labels).
    validate_all: check the structures of every organ of ``ORGANS`` (the validator), not only ``organs``.

  Returns:
    The arrays on the original grid.

  Raises:
    CaseError: with every fatal problem found.
  """
  problems: list[str] = []
  warnings: list[str] = []
  try:
    img = load_nifti(record.image)
    shape = spatial_shape(img, record.image)
    image = read_array(img, record.image, np.float32).reshape(shape)
  except DataError as e:
    raise CaseError([str(e)]) from e
  problems += geometry_problems(img, record.image)
  if not np.isfinite(image).all():
    bad = int((~np.isfinite(image)).sum())
    problems.append(f"{record.image}: {bad} NaN or infinite voxels")
  affine = np.asarray(img.affine)
  structures = record.structures()
  check_organs = label_space.ORGANS if validate_all else organs
  wanted = {s: v for s, v in structures.items() if s.removesuffix("_tumor") in check_organs}
  label = np.zeros(shape, dtype=np.uint8)

  def target(structure: str) -> int:
    organ = structure.removesuffix("_tumor")
    if organ not in organs:
      return 0
    if structure.endswith("_tumor"):
      return label_space.tumor_label(organs, organ)
    return label_space.organ_label(organs, organ)

  # Organs first, tumours over them: a tumour voxel inside an organ mask is tumour.
  order = sorted(wanted, key=lambda s: s.endswith("_tumor"))
  if record.label_map is not None:
    path = record.label_map
    try:
      limg = load_nifti(path)
      ok = _check_geometry(limg, path, shape, affine, record.image, problems)
      arr = _read_labels(path, limg, shape, problems) if ok else None
    except DataError as e:
      problems.append(str(e))
      arr = None
    if arr is not None:
      values = np.unique(arr)
      known = set(record.class_map.values()) | {0}
      unknown = [int(v) for v in values if int(v) not in known]
      if unknown:
        problems.append(f"{path}: unknown label values {unknown[:10]} (class map has {sorted(known)})")
      for s in order:
        ids = [i for i in wanted[s] if i in values]
        if not s.endswith("_tumor") and not ids:
          warnings.append(f"{path}: empty organ mask: no voxel of {s} (ids {list(wanted[s])})")
        if ids and target(s):
          label[np.isin(arr, ids)] = target(s)
  else:
    if not record.masks:
      problems.append(f"{record.image}: no label files found for case {record.case_id}")
    for s in order:
      for path in wanted[s]:
        try:
          mimg = load_nifti(path)
        except DataError as e:
          problems.append(str(e))
          continue
        if not _check_geometry(mimg, path, shape, affine, record.image, problems):
          continue
        arr = _read_labels(path, mimg, shape, problems)
        if arr is None:
          continue
        values = set(int(v) for v in np.unique(arr))
        unknown = sorted(values - {0, 1, 255})
        if unknown:
          problems.append(f"{path}: unknown label values {unknown[:10]} in a binary mask (expected 0/1 or 0/255)")
          continue
        mask = arr > 0
        if not s.endswith("_tumor") and not mask.any():
          warnings.append(f"{path}: empty organ mask")
        if target(s):
          label[mask] = target(s)
  if problems:
    raise CaseError(problems)
  annotated = tuple(o for o in organs if o in structures or o + "_tumor" in structures)
  return CaseArrays(img, image, label, annotated, warnings)


def find_duplicates(records: list[CaseRecord]) -> list[str]:
  """One problem line per duplicated case id, naming every image that uses it."""
  seen: dict[str, list[str]] = {}
  for r in records:
    seen.setdefault(r.case_id, []).append(r.image)
  return [f"{paths[0]}: duplicate case id {cid!r} (also {', '.join(paths[1:])})"
          for cid, paths in seen.items() if len(paths) > 1]
