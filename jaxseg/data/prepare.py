"""The one data call the trainer makes: phantoms if asked for, then the cache, made only when missing.

Run it on one process (or let every process run it: writes are atomic, so concurrent runs are safe, only
wasteful) before building loaders.
"""

from __future__ import annotations

import errno
import os

from absl import logging

from jaxseg import labels as label_space
from jaxseg.data import cache
from jaxseg.data.phantom import ensure_phantoms
from jaxseg.data.preprocess import preprocess_dataset
from jaxseg.io.layouts import read_layout


def default_cache_dir(root: str, spacing) -> str:
  """"<root>_cache_<sx>x<sy>x<sz>" next to the data set."""
  return f"{os.path.normpath(root)}_cache_{'x'.join(f'{float(s):g}' for s in spacing)}"


def cache_is_complete(cache_dir: str, case_ids: list[str]) -> bool:
  """True when index.json accounts for every case id (cached or skipped as bad)."""
  index = os.path.join(cache_dir, "index.json")
  if not os.path.exists(index):
    return False
  data = cache.read_json(index)
  done = {c["case_id"] for c in data["cases"]} | {s["case_id"] for s in data.get("skipped", [])}
  return set(case_ids) <= done and all(cache.is_complete(cache_dir, c["case_id"]) for c in data["cases"])


def prepare_data(data_cfg) -> str:
  """Makes sure the preprocessed cache for ``data_cfg`` exists and returns its folder.

  Args:
    data_cfg: config.data (layout, root, cache_dir, organs, spacing, preprocess_workers, phantom.*).

  Returns:
    The cache folder (data_cfg.cache_dir, or "<root>_cache_<spacing>" when empty).
  """
  organs = label_space.check_organs(data_cfg.organs)
  layout, root = data_cfg.layout, data_cfg.root
  if layout == "phantom":
    root, layout = ensure_phantoms(data_cfg), "atlas"  # "" root -> phantom.default_phantom_root
  if not root:
    raise ValueError("data.root is empty: point it at the data set (or use data.layout=phantom)")
  cache_dir = data_cfg.cache_dir or default_cache_dir(root, data_cfg.spacing)
  if os.path.exists(os.path.join(cache_dir, "cache.json")):
    cache.check_cache_config(cache_dir, organs, data_cfg.spacing)
  ids = [r.case_id for r in read_layout(layout, root)]
  if cache_is_complete(cache_dir, ids):
    return cache_dir
  try:
    report = preprocess_dataset(layout, root, cache_dir, data_cfg.spacing, organs,
                                workers=int(data_cfg.preprocess_workers))
  except OSError as e:
    if data_cfg.cache_dir or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
      raise
    # The default cache lives beside the data set, whose folder is often read-only (a shared data disk).
    raise ValueError(f"{cache_dir}: cannot write the cache beside the data set ({e.strerror}); pass "
                     "--cache_dir (evaluate.py) or --config.data.cache_dir (train.py) to put it elsewhere") from None
  for line in report.summary().splitlines():
    logging.info("%s", line)
  if not (report.processed or report.existing):
    raise ValueError(f"{root}: no usable case ({len(report.skipped)} skipped); run launch/validate_data.py")
  return cache_dir
