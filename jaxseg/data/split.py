"""Deterministic train/validation split and the nested "first N real tumour cases" subsets.

Both are pure functions of the case ids and a seed, so every process and every rerun agrees. The tumour
case order is a hash of (seed, case id): the first N of the train split for N=100 contain those for N=50
(the scaling study needs nested subsets), and restricting an already restricted list changes nothing.
"""

from __future__ import annotations

import hashlib


def _key(seed: int, case_id: str) -> bytes:
  return hashlib.sha256(f"{seed}:{case_id}".encode()).digest()


def is_tumor_case(case: dict, organs) -> bool:
  return any(case["organs"].get(o) == "tumor" for o in organs)


def is_control_case(case: dict, organs) -> bool:
  return any(case["organs"].get(o) == "control" for o in organs) and not is_tumor_case(case, organs)


def split_cases(cases: list[dict], num_val: int, split_seed: int, organs) -> tuple[list[str], list[str]]:
  """Splits cases into train and validation ids.

  The validation set is stratified: tumour cases in proportion, at least one tumour case when there are
  any, and at least one control (no tumour in any organ of the run) when there are any and num_val >= 2.

  Args:
    cases: summaries from ``cache.list_cases``.
    num_val: number of validation cases (0: no validation set).
    split_seed: the seed of the split.
    organs: the organs of the run.

  Returns:
    (train_ids, val_ids), each sorted by case id.
  """
  if num_val < 0 or (num_val > 0 and num_val >= len(cases)):
    raise ValueError(f"data.num_val={num_val} must be in [0, {len(cases) - 1}] for {len(cases)} cases")
  ids = sorted(c["case_id"] for c in cases)
  by_id = {c["case_id"]: c for c in cases}
  tumor = sorted((i for i in ids if is_tumor_case(by_id[i], organs)), key=lambda i: _key(split_seed, i))
  other = sorted((i for i in ids if not is_tumor_case(by_id[i], organs)), key=lambda i: _key(split_seed, i))
  if num_val == 0:
    return ids, []
  n_tumor = int(round(num_val * len(tumor) / max(len(ids), 1)))
  n_tumor = min(len(tumor), max(n_tumor, 1 if tumor else 0))
  if other and num_val >= 2:
    n_tumor = min(n_tumor, num_val - 1)
  n_other = min(len(other), num_val - n_tumor)
  n_tumor = min(len(tumor), num_val - n_other)
  val = set(tumor[:n_tumor] + other[:n_other])
  return [i for i in ids if i not in val], sorted(val)


def first_tumor_cases(cases: list[dict], train_ids: list[str], num_real_tumor_cases: int, seed: int,
                      organs) -> list[str]:
  """Keeps the first ``num_real_tumor_cases`` tumour cases of ``train_ids`` (hash order) and every other case.

  Args:
    cases: summaries from ``cache.list_cases``.
    train_ids: the train split.
    num_real_tumor_cases: N (-1: all).
    seed: order seed (data.split_seed).
    organs: the organs of the run.

  Returns:
    The kept train ids, sorted.
  """
  if num_real_tumor_cases < 0:
    return sorted(train_ids)
  by_id = {c["case_id"]: c for c in cases}
  tumor = sorted((i for i in train_ids if is_tumor_case(by_id[i], organs)), key=lambda i: _key(seed, i))
  keep = set(tumor[:num_real_tumor_cases])
  return sorted(i for i in train_ids if i in keep or not is_tumor_case(by_id[i], organs))
