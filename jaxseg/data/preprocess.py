"""Preprocessing: NIfTI cases -> canonical, resampled int16/uint8 arrays in the cache.

Each case is read and checked (jaxseg.data.reading), reoriented to RAS+ and resampled to the target
spacing (linear for the image, nearest for the label), and written atomically with per-class voxel
locations and the metadata that maps predictions back (jaxseg.data.cache). Cases run in parallel
processes; finished cases are skipped on a rerun; bad cases are skipped and listed in the report.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import nibabel as nib
import numpy as np
import tqdm

from jaxseg import labels as label_space, workdir as workdir_lib
from jaxseg.data import cache
from jaxseg.data.geometry import to_canonical
from jaxseg.data.reading import find_duplicates, geometry_problems, read_case
from jaxseg.io.layouts import CaseRecord, read_layout
from jaxseg.io.nifti import DataError, load_nifti, read_array, spatial_shape

# At most this many stored locations per class: enough for uniform foreground sampling, small on disk.
MAX_LOCATIONS = 50_000
HU_MIN, HU_MAX = -1024, 3071


@dataclasses.dataclass
class PreprocessReport:
  """What a preprocessing run did."""
  cache_dir: str
  num_cases: int = 0            # cases in the data set
  processed: list[str] = dataclasses.field(default_factory=list)   # written by this run
  existing: list[str] = dataclasses.field(default_factory=list)    # already in the cache (resumed)
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (case_id, problem)
  warnings: list[str] = dataclasses.field(default_factory=list)
  seconds: float = 0.0

  def summary(self) -> str:
    lines = [f"{self.cache_dir}: {len(self.processed)} cases written, {len(self.existing)} already there, "
             f"{len(self.skipped)} skipped, {self.seconds:.1f} s"]
    lines += [f"warning: {w}" for w in self.warnings]
    lines += [f"skipped {c}: {p}" for c, p in self.skipped]
    return "\n".join(lines)


def to_hu_int16(image: np.ndarray) -> np.ndarray:
  """Rounds HU to int16, clipped to [-1024, 3071] (air and below are all air; metal saturates)."""
  return np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)


def preprocess_image(path: str, spacing) -> tuple[np.ndarray, dict]:
  """Loads a CT image for inference: canonical RAS+, resampled to ``spacing``, int16 HU.

  Args:
    path: a NIfTI CT image.
    spacing: target (sx, sy, sz) mm.

  Returns:
    (image int16 [X, Y, Z], meta for ``geometry.from_canonical``).

  Raises:
    DataError: unreadable, truncated, non-3D or non-finite image (message names the file).
  """
  img = load_nifti(path)
  shape = spatial_shape(img, path)
  problems = geometry_problems(img, path)
  if problems:
    raise DataError(problems[0])
  data = read_array(img, path, np.float32).reshape(shape)
  if not np.isfinite(data).all():
    raise DataError(f"{path}: {int((~np.isfinite(data)).sum())} NaN or infinite voxels")
  out, meta = to_canonical(img, tuple(spacing), order=1, data=data)
  return to_hu_int16(out), meta


def class_locations(label: np.ndarray, case_id: str) -> tuple[np.ndarray, dict[str, list[int]], dict[str, int]]:
  """Voxel locations per non-zero class, subsampled (seeded by the case id) to MAX_LOCATIONS.

  Returns:
    (locs uint16 [N, 3] grouped by class, {class: [start, end)} ranges, {class: voxel count}).
  """
  seed = int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "little")
  rng = np.random.default_rng(seed)
  counts = np.bincount(label.ravel(), minlength=256)
  parts, ranges, start = [], {}, 0
  for c in np.nonzero(counts)[0]:
    if c == 0:
      continue
    idx = np.argwhere(label == c)
    if len(idx) > MAX_LOCATIONS:
      idx = idx[np.sort(rng.choice(len(idx), MAX_LOCATIONS, replace=False))]
    parts.append(idx.astype(np.uint16))
    ranges[str(int(c))] = [start, start + len(idx)]
    start += len(idx)
  locs = np.concatenate(parts) if parts else np.zeros((0, 3), np.uint16)
  return locs, ranges, {str(int(c)): int(counts[c]) for c in np.nonzero(counts)[0]}


def organ_status(counts: dict[str, int], organs: tuple[str, ...], annotated) -> dict[str, str]:
  """{organ: "tumor" | "control" | "organ_only" | "absent"} from the voxel counts of the canonical label.

  ``annotated`` holds the structures the case annotates ("liver", "liver_tumor", ...; see
  CaseRecord.annotated_structures). A control needs its lesions annotated and absent (an empty tumour
  mask, a tumour class with no voxel, or a layout that annotates lesions exhaustively): an organ whose
  lesions nobody annotated may hold tumours, and synthesis there would teach the model to miss them.
  """
  out = {}
  for organ in organs:
    n_org = counts.get(str(label_space.organ_label(organs, organ)), 0)
    n_tum = counts.get(str(label_space.tumor_label(organs, organ)), 0)
    if n_tum > 0:
      out[organ] = cache.TUMOR
    elif organ in annotated and n_org > 0:
      out[organ] = cache.CONTROL if organ + "_tumor" in annotated else cache.ORGAN_ONLY
    else:
      out[organ] = cache.ABSENT
  return out


def annotated_labels(organs: tuple[str, ...], annotated) -> list[int]:
  """The label ids a case annotates: background, each organ and each tumour whose structure is annotated."""
  ids = [0]
  for organ in organs:
    if organ in annotated:
      ids.append(label_space.organ_label(organs, organ))
    if organ + "_tumor" in annotated:
      ids.append(label_space.tumor_label(organs, organ))
  return ids


def preprocess_case(record: CaseRecord, dst: str, spacing, organs: tuple[str, ...]) -> tuple[str, str | None, list[str]]:
  """Preprocesses one case into the cache. Returns (case_id, fatal problem or None, warnings).

  A bad case never stops the set: whatever goes wrong with this case's data (a DataError, or an error the
  checks did not foresee) comes back as its one-line problem. A full disk is different (every later case
  would fail too, and the message must say which case was being written): it raises DiskError.
  """
  try:
    return _preprocess_case(record, dst, spacing, organs)
  except DataError as e:
    return record.case_id, str(e), []
  except Exception as e:  # pylint: disable=broad-except
    workdir_lib.raise_if_disk_error(e, cache.case_dir(dst, record.case_id),
                                    f"writing case {record.case_id!r}",
                                    "; cases already written are kept and a rerun resumes")
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return record.case_id, f"{record.image}: cannot be preprocessed ({type(e).__name__}: {first})", []


def _preprocess_case(record: CaseRecord, dst: str, spacing, organs: tuple[str, ...]) -> tuple[str, str | None, list[str]]:
  try:
    case = read_case(record, organs)
  except DataError as e:
    return record.case_id, str(e), []
  image, meta = to_canonical(case.image_nifti, tuple(spacing), order=1, data=case.image)
  label, _ = to_canonical(nib.Nifti1Image(case.label, case.image_nifti.affine), tuple(spacing), order=0,
                          data=case.label)
  locs, ranges, counts = class_locations(label, record.case_id)
  annotated = record.annotated_structures()
  meta.update(case_id=record.case_id, source_image=record.image, shape=list(label.shape),
              organs=organ_status(counts, organs, annotated), counts=counts, locs=ranges,
              label_organs=list(organs), annotated_labels=annotated_labels(organs, annotated))
  workdir_lib.maybe_inject_enospc("case", record.case_id, cache.case_dir(dst, record.case_id))
  cache.write_case(dst, record.case_id, to_hu_int16(image), label, locs, meta)
  return record.case_id, None, case.warnings


def _main_is_importable() -> bool:
  """Spawned workers re-import __main__ from its file; an interactive or stdin main has none."""
  main = sys.modules.get("__main__")
  path = getattr(main, "__file__", None)
  return path is not None and os.path.exists(path)


def parallel_map(fn: Callable, items: Iterable, workers: int, desc: str) -> Iterator:
  """Maps ``fn`` over ``items`` in ``workers`` spawned processes (in-process when <= 1), with a progress bar.

  Spawned, not forked: the caller may have JAX (multithreaded) loaded. Results arrive in completion order.
  """
  items = list(items)
  bar = tqdm.tqdm(total=len(items), desc=desc, unit="case", disable=not items)
  try:
    if workers <= 1 or len(items) <= 1:
      for it in items:
        yield fn(*it)
        bar.update()
      return
    ctx = multiprocessing.get_context("spawn" if _main_is_importable() else "fork")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
      futures = [pool.submit(fn, *it) for it in items]
      for fut in cf.as_completed(futures):
        yield fut.result()
        bar.update()
  finally:
    bar.close()


def preprocess_dataset(layout: str, src: str, dst: str, spacing, organs, workers: int = 2) -> PreprocessReport:
  """Preprocesses a data set into the cache at ``dst`` (resumable, atomic per case).

  Args:
    layout: atlas | atlas2 | msd | nnunet | manifest.
    src: the data set folder (or manifest).
    dst: the cache folder.
    spacing: target (sx, sy, sz) mm.
    organs: the organs of the label space (jaxseg.labels).
    workers: parallel processes.

  Returns:
    The report; bad cases are in ``report.skipped`` with their problem, and index.json lists the good ones.
  """
  t0 = time.time()
  organs = label_space.check_organs(organs)
  spacing = tuple(float(s) for s in spacing)
  if len(spacing) != 3 or min(spacing) <= 0:
    raise ValueError(f"spacing must be three positive mm values, got {spacing}")
  records = read_layout(layout, src)
  report = PreprocessReport(cache_dir=dst, num_cases=len(records))
  cache.check_cache_config(dst, organs, spacing)
  cache.clean_partial(dst)
  dup_lines = find_duplicates(records)
  seen, todo = set(), []
  for r in records:
    if r.case_id in seen:
      report.skipped.append((r.case_id, next(l for l in dup_lines if repr(r.case_id) in l)))
      continue
    seen.add(r.case_id)
    if cache.is_complete(dst, r.case_id):
      report.existing.append(r.case_id)
    else:
      todo.append((r, dst, spacing, organs))
  for case_id, problem, warnings in parallel_map(preprocess_case, todo, workers, "preprocess"):
    report.warnings += warnings
    if problem is None:
      report.processed.append(case_id)
    else:
      report.skipped.append((case_id, problem))
  done = sorted(report.processed + report.existing)
  try:
    cache.write_index(dst, done, report.skipped)
  except OSError as e:
    workdir_lib.raise_if_disk_error(e, os.path.join(dst, "index.json"), "writing the index",
                                    "; the cases are written: a rerun writes only the index")
    raise
  report.seconds = time.time() - t0
  return report
