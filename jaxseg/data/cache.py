"""The on-disk cache the loader memory-maps: one folder per case plus an index.

```
<cache>/cache.json                 {"version", "organs", "spacing"}: what every case was made with
<cache>/index.json                 {"cases": [summary, ...], "skipped": [...]}: written last, atomically
<cache>/cases/<case_id>/image.npy  int16 HU [X, Y, Z] (canonical RAS+, target spacing)
<cache>/cases/<case_id>/label.npy  uint8 [X, Y, Z] in the unified label space of the organs
<cache>/cases/<case_id>/locs.npy   uint16 [N, 3] voxel locations, grouped by class (meta["locs"] ranges)
<cache>/cases/<case_id>/meta.json  geometry (see geometry.to_canonical), counts, locs, organ status,
                                   annotated_labels (the label ids the case annotates; see annotated_mask)
```
A case is written into a temporary folder and renamed into place, so a folder under cases/ is always
complete: an interrupted run leaves only ``.tmp-*`` folders, which the next run deletes. Nothing here loads
a whole data set: the index holds small summaries and the arrays are memory-mapped.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid

import numpy as np

VERSION = 1
ABSENT = "absent"
TUMOR = "tumor"
CONTROL = "control"              # organ present, lesions annotated and absent: a synthesis site
ORGAN_ONLY = "organ_only"        # organ present, lesions not annotated: trains the organ, never a control


def case_dir(cache_dir: str, case_id: str) -> str:
  return os.path.join(cache_dir, "cases", case_id)


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON to ``path`` through a temporary file and a rename (never half-written)."""
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def check_cache_config(cache_dir: str, organs: tuple[str, ...], spacing) -> None:
  """Creates ``cache.json`` or checks that an existing cache was made with the same organs and spacing."""
  os.makedirs(os.path.join(cache_dir, "cases"), exist_ok=True)
  path = os.path.join(cache_dir, "cache.json")
  want = {"version": VERSION, "organs": list(organs), "spacing": [float(s) for s in spacing]}
  if os.path.exists(path):
    have = read_json(path)
    if have.get("version") != VERSION or have.get("organs") != want["organs"] or not np.allclose(
        have.get("spacing", []), want["spacing"]):
      raise ValueError(f"{path}: cache was made with {have}, not {want}; use another --dst")
  else:
    write_json_atomic(path, want)


def is_complete(cache_dir: str, case_id: str) -> bool:
  return os.path.exists(os.path.join(case_dir(cache_dir, case_id), "meta.json"))


def write_case(cache_dir: str, case_id: str, image: np.ndarray, label: np.ndarray, locs: np.ndarray,
               meta: dict) -> None:
  """Writes one case atomically (temporary folder, then rename; meta.json is written last).

  Args:
    cache_dir: the cache root.
    case_id: folder name of the case.
    image: int16 [X, Y, Z].
    label: uint8 [X, Y, Z].
    locs: uint16 [N, 3].
    meta: JSON-serialisable metadata.
  """
  final = case_dir(cache_dir, case_id)
  tmp = os.path.join(cache_dir, "cases", f".tmp-{case_id}-{uuid.uuid4().hex[:8]}")
  os.makedirs(tmp)
  try:
    np.save(os.path.join(tmp, "image.npy"), np.ascontiguousarray(image, dtype=np.int16))
    np.save(os.path.join(tmp, "label.npy"), np.ascontiguousarray(label, dtype=np.uint8))
    np.save(os.path.join(tmp, "locs.npy"), np.ascontiguousarray(locs, dtype=np.uint16))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f)
    if os.path.isdir(final) and not is_complete(cache_dir, case_id):
      shutil.rmtree(final)  # a folder without meta.json is not a case (made by hand or another tool)
    try:
      os.rename(tmp, final)
    except OSError:
      if not is_complete(cache_dir, case_id):  # Another process finished it first: keep theirs.
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def clean_partial(cache_dir: str) -> int:
  """Deletes temporary case folders left by an interrupted run; returns how many."""
  root = os.path.join(cache_dir, "cases")
  n = 0
  if os.path.isdir(root):
    for name in os.listdir(root):
      if name.startswith(".tmp-"):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        n += 1
  return n


def case_summary(meta: dict) -> dict:
  """The index entry of a case: case_id, shape, spacing, organs {organ: tumor|control|organ_only|absent},
  counts, and annotated_labels when the case records them."""
  out = {k: meta[k] for k in ("case_id", "shape", "spacing", "organs", "counts")}
  if "annotated_labels" in meta:
    out["annotated_labels"] = meta["annotated_labels"]
  return out


def annotated_mask(meta: dict, organs: tuple[str, ...]) -> np.ndarray:
  """uint8 [num_classes]: 1 for each label id the case annotates (background always), 0 otherwise.

  The loss drops a case's unannotated classes (jaxseg/train/losses.py) and evaluation skips them. Caches
  written before cases recorded ``annotated_labels`` count every class of a present organ as annotated
  (their old meaning) and an organ marked absent as unannotated.
  """
  k = 2 * len(organs) + 1
  out = np.zeros(k, np.uint8)
  if "annotated_labels" in meta:
    ids = [int(i) for i in meta["annotated_labels"]]
    if any(not 0 <= i < k for i in ids):
      raise ValueError(f"case {meta.get('case_id')!r}: annotated_labels {ids} outside the {k} classes of "
                       f"organs {organs}")
    out[ids] = 1
  else:
    status = meta.get("organs", {})
    for i, organ in enumerate(organs):
      if status.get(organ, ABSENT) != ABSENT:
        out[2 * i + 1] = out[2 * i + 2] = 1
  out[0] = 1
  return out


def write_index(cache_dir: str, case_ids: list[str], skipped: list[tuple[str, str]]) -> None:
  """Writes index.json from the meta.json of ``case_ids`` (the complete cases), atomically."""
  cases = [case_summary(read_json(os.path.join(case_dir(cache_dir, c), "meta.json"))) for c in case_ids]
  write_json_atomic(os.path.join(cache_dir, "index.json"),
                    {"cases": cases, "skipped": [{"case_id": c, "problem": p} for c, p in skipped]})


def list_cases(cache_dir: str) -> list[dict]:
  """Summaries of the cached cases, sorted by case_id.

  Returns:
    One dict per case: case_id, shape [X, Y, Z], spacing [3] mm, organs {organ: "tumor" | "control" |
    "absent"} for every organ of the cache, counts {label id (str): voxels}.
  """
  index = os.path.join(cache_dir, "index.json")
  if os.path.exists(index):
    cases = read_json(index)["cases"]
  else:
    root = os.path.join(cache_dir, "cases")
    if not os.path.isdir(root):
      raise ValueError(f"{cache_dir}: not a jaxseg cache (no cases/ folder)")
    cases = [case_summary(read_json(os.path.join(root, c, "meta.json"))) for c in sorted(os.listdir(root))
             if not c.startswith(".") and os.path.exists(os.path.join(root, c, "meta.json"))]
  return sorted(cases, key=lambda c: c["case_id"])


# numpy parses each .npy header with ast.literal_eval, and CPython 3.11's AST constructor keeps its recursion
# depth in state shared by threads: Grain's reader threads loading cases at once can fail with "SystemError:
# AST constructor recursion depth mismatch" (python/cpython#106905), which killed a 2,000-step study run at
# step 900. Opening a memory map is a header read, so holding a lock for it costs nothing measurable.
_NPY_LOCK = threading.Lock()


def _load_npy(path: str, mmap: bool) -> np.ndarray:
  with _NPY_LOCK:
    return np.load(path, mmap_mode="r" if mmap else None)


def load_meta(cache_dir: str, case_id: str) -> dict:
  path = os.path.join(case_dir(cache_dir, case_id), "meta.json")
  if not os.path.exists(path):
    raise ValueError(f"{path}: case {case_id!r} is not in the cache")
  return read_json(path)


def load_case(cache_dir: str, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
  """Loads one cached case.

  Args:
    cache_dir: the cache root.
    case_id: the case.
    mmap: memory-map the arrays (read only) instead of reading them.

  Returns:
    (image int16 [X, Y, Z] HU, label uint8 [X, Y, Z], meta dict).
  """
  meta = load_meta(cache_dir, case_id)
  d = case_dir(cache_dir, case_id)
  return _load_npy(os.path.join(d, "image.npy"), mmap), _load_npy(os.path.join(d, "label.npy"), mmap), meta


def load_locations(cache_dir: str, case_id: str, meta: dict | None = None,
                   mmap: bool = True) -> dict[int, np.ndarray]:
  """Per-class voxel locations of a case: {label id: uint16 [N, 3]} (a sample when the class is large)."""
  meta = meta if meta is not None else load_meta(cache_dir, case_id)
  locs = _load_npy(os.path.join(case_dir(cache_dir, case_id), "locs.npy"), mmap)
  return {int(k): locs[a:b] for k, (a, b) in meta["locs"].items()}
