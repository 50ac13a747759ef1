"""Data set validation: every problem of every case, one line each, before anything is trained.

Uses the same reading code as preprocessing (jaxseg.data.reading), so the messages are the ones
preprocessing prints when it skips a case.
"""

from __future__ import annotations

from jaxseg import labels as label_space
from jaxseg.data.preprocess import parallel_map
from jaxseg.data.reading import CaseError, find_duplicates, read_case
from jaxseg.io.layouts import CaseRecord, read_layout
from jaxseg.io.nifti import DataError


def check_case(record: CaseRecord, organs: tuple[str, ...] = label_space.ORGANS) -> list[str]:
  """All problems of one case (fatal ones and empty organ masks), one line each; [] when it is clean."""
  try:
    case = read_case(record, tuple(organs), validate_all=True)
  except CaseError as e:
    return e.problems
  except DataError as e:
    return [str(e)]
  return case.warnings


def validate_dataset(layout: str, src: str, organs=label_space.ORGANS, workers: int = 1) -> list[str]:
  """Checks a data set and returns every problem found, one line per problem with the file's path.

  Args:
    layout: atlas | atlas2 | msd | nnunet | manifest.
    src: the data set folder (or manifest).
    organs: organs whose structures are checked (all of jaxseg.labels.ORGANS by default).
    workers: parallel processes.

  Returns:
    Problem lines (unreadable/truncated files, non-3D images, NaN/inf voxels, shape or affine mismatch,
    unknown label values, empty organ masks, duplicate case ids); empty when the data set is clean.
  """
  organs = label_space.check_organs(organs)
  try:
    records = read_layout(layout, src)
  except DataError as e:
    return [str(e)]
  if not records:
    return [f"{src}: no cases found for layout {layout!r}"]
  problems = find_duplicates(records)
  results = dict(parallel_map(_check_worker, [(r, organs) for r in records], workers, "validate"))
  for r in records:
    problems += results.get(_id_key(r), [])
  return problems


def _id_key(record: CaseRecord) -> str:
  return f"{record.case_id}|{record.image}"


def _check_worker(record: CaseRecord, organs: tuple[str, ...]) -> tuple[str, list[str]]:
  """Picklable worker for ``parallel_map``: (key, problems)."""
  return _id_key(record), check_case(record, organs)
