"""Loader throughput and memory: patches/s from the cache, and resident memory over the run.

Memory is sampled from /proc (the main process plus its worker children), so growth over a long run
shows up as a rising ``rss_mb`` series.
"""

from __future__ import annotations

import os
import time

import numpy as np

from jaxseg.data import cache
from jaxseg.data.pipeline import make_train_loader
from jaxseg.data.split import split_cases


def _rss_mb(pid: int) -> float:
  try:
    with open(f"/proc/{pid}/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, IndexError, ValueError):
    return 0.0


def _children(pid: int) -> list[int]:
  out = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/stat") as f:
          if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(name))
      except (OSError, IndexError, ValueError):
        pass
  return out


def tree_rss_mb() -> float:
  """Resident memory (MiB) of this process and its direct children (Grain workers)."""
  me = os.getpid()
  return _rss_mb(me) + sum(_rss_mb(c) for c in _children(me))


def measure_loader(data_cfg, cache_dir: str, num_batches: int = 50, warmup: int = 5, seed: int = 0,
                   samples: int = 5) -> dict:
  """Times the production loader on the train split of ``cache_dir``.

  Returns:
    dict: batch, patch, num_workers, batches, seconds, patches_per_s, rss_mb (``samples`` readings spread
    over the run, MiB).
  """
  cases = cache.list_cases(cache_dir)
  train_ids, _ = split_cases(cases, int(data_cfg.num_val), int(data_cfg.split_seed), tuple(data_cfg.organs))
  it = make_train_loader(data_cfg, cache_dir, train_ids, seed)
  try:
    for _ in range(warmup):
      next(it)
    rss, every = [], max(1, num_batches // max(samples - 1, 1))
    t0 = time.perf_counter()
    for i in range(num_batches):
      batch = next(it)
      if i % every == 0 or i == num_batches - 1:
        rss.append(round(tree_rss_mb(), 1))
    dt = time.perf_counter() - t0
  finally:
    if hasattr(it, "close"):
      it.close()
  n = num_batches * int(np.asarray(batch["image"]).shape[0])
  return {"batch": int(data_cfg.batch_size), "patch": list(data_cfg.patch_size),
          "num_workers": int(data_cfg.num_workers), "batches": num_batches, "seconds": round(dt, 3),
          "patches_per_s": round(n / dt, 2), "rss_mb": rss}
