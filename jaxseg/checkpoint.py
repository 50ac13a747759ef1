"""Orbax checkpoints of a run: save, resume, and restore for inference.

A work directory holds ``checkpoints/<step>`` (the last ``keep`` saves: train state with its RNG and step,
the Grain iterator state of every process, the config) and ``best/<step>`` (the state with the best
validation metric, kept apart so the rolling window never deletes it). Saves are asynchronous: training goes
on while Orbax writes, and Orbax only commits a step directory once it is complete, so a killed run resumes
from the last complete save.

This module is Orbax I/O over abstract trees and knows nothing of models or optimizers: callers pass the
shapes and shardings to restore into (jaxseg/assembly.py builds them), and inference restores the
parameters alone (``restore_params``), without building an optimizer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from jaxseg import parallel, workdir as workdir_lib


KILL_IN_SAVE_ENV = "JAXSEG_KILL_IN_SAVE"


class RunCheckpointer:
  """The checkpoints of one work directory."""

  def __init__(self, workdir: str, keep: int = 3, best_metric: str = "tumor_dsc", async_save: bool = True):
    self.workdir = workdir
    self.best_metric = best_metric
    self._last = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))
    self._best = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "best")),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
                                             best_mode="max", enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._last.latest_step()

  def save(self, step: int, state: dict, data_iter: Any, config: ml_collections.ConfigDict) -> None:
    """Saves the state, the data iterator and the config at ``step`` (asynchronously)."""
    workdir_lib.maybe_inject_enospc("save", step, os.path.join(self._last.directory, str(step)))
    args = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config.to_dict())}
    if data_iter is not None:
      args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    self._last.save(step, args=ocp.args.Composite(**args), force=True)
    if os.environ.get(KILL_IN_SAVE_ENV) == str(step):
      # Fault injection for tests: SIGKILL while Orbax is still writing this step in the background.
      logging.warning("%s=%d: killing process %d during the save", KILL_IN_SAVE_ENV, step, jax.process_index())
      os.kill(os.getpid(), signal.SIGKILL)

  def save_best(self, step: int, state: dict, metrics: dict, config: ml_collections.ConfigDict) -> bool:
    """Keeps ``state`` in best/ when ``metrics[best_metric]`` beats the kept one. Returns True if saved."""
    value = metrics.get(self.best_metric)
    if value is None or value != value:  # Missing or NaN: nothing to rank by.
      return False
    if step in self._best.all_steps():
      # The same step validated again: a run resumed from an older checkpoint (after a fallback past a damaged
      # one) retrains it. The new state replaces the old one rather than failing the save.
      self._best.delete(step)
    # Orbax ranks by best_fn and keeps only the top one, deleting the loser (old or new).
    self._best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  config=ocp.args.JsonSave(config.to_dict())),
                    metrics={self.best_metric: float(value)}, force=True)
    return self._best.best_step() == step

  def restore(self, step: int, abstract: dict, data_iter: Any, num_workers: int | None = None
              ) -> tuple[dict, bool]:
    """Restores the state at ``step`` into the shardings of ``abstract``, and the iterator in place.

    Returns:
      (state, data_restored). An iterator saved by another number of processes continues at the same
      global position (see _reshard_iterator_state) when the loader has no worker processes; otherwise,
      and whenever the saved state does not fit the pipeline (another worker count), the data order
      restarts from the seed and a warning says so. ``num_workers`` (this run's data.num_workers) tells a
      genuine worker-count change from a damaged iterator file.
    Raises:
      DamagedCheckpointError: a part of the checkpoint cannot be read (restore_latest_intact falls back).
    """
    try:
      restored = self._last.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(step, "state", f"{type(e).__name__}: {_first_line(e)}") from e
    data_restored = False
    directory = os.path.join(self._last.directory, str(step), "data_iter")
    saved_by = _iterator_process_count(directory)
    if data_iter is not None and saved_by not in (None, jax.process_count()):
      # Grain keeps one state per process (process_<i>-of-<n>.json): a position in that process's shard.
      # The decision below depends only on the checkpoint and the process count, so every process takes it.
      data_restored = _reshard_iterator_state(directory, saved_by, data_iter)
      if data_restored:
        logging.warning("checkpoint %d was written by %d processes and this run has %d: the data iterator "
                        "continues after the %d samples already seen.", step, saved_by, jax.process_count(),
                        data_iter.get_state()["next_index"] * jax.process_count())
      else:
        logging.warning("checkpoint %d was written by %d processes and this run has %d: the model, "
                        "optimizer and RNG state continue, the data order restarts from the seed (the "
                        "iterator state does not map onto another process count with worker processes).",
                        step, saved_by, jax.process_count())
    elif data_iter is not None:
      try:
        self._last.restore(step, args=ocp.args.Composite(
            data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
        data_restored = True
      except Exception as e:  # pylint: disable=broad-except
        saved_workers = _saved_num_workers(os.path.join(self._last.directory, str(step)))
        if saved_workers is None or num_workers is None or saved_workers == num_workers:
          # Same process and worker count: the state should fit, so this is a damaged file, not a change.
          # Restarting the data order here would silently repeat samples: the caller falls back instead.
          raise DamagedCheckpointError(step, "data_iter", f"{type(e).__name__}: {_first_line(e)}") from e
        logging.warning("checkpoint %d was written with data.num_workers=%d and this run has %d: the model, "
                        "optimizer and RNG state continue, the data order restarts from the seed (a Grain "
                        "iterator state does not map onto another worker count).", step, saved_workers,
                        num_workers)
    return restored["state"], data_restored

  def best_step(self) -> int | None:
    """The step kept in best/, or None when best/ is empty."""
    return self._best.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._last.all_steps())

  def check_step(self, step: int) -> tuple[str, str] | None:
    """Reads every small part of checkpoint ``step``; returns (part, problem) for the first bad one, or None.

    Cheap and the same on every process (it reads the files of all processes), so every process of a run
    takes the same decision. The state's tensors are checked by restoring them (restore_latest_intact).
    """
    return check_step_files(os.path.join(self._last.directory, str(step)))

  def restore_latest_intact(self, abstract: dict, data_iter: Any, num_workers: int | None = None
                            ) -> tuple[dict | None, int | None, bool]:
    """Restores the newest checkpoint whose every part (state, iterators of all processes, config) is intact.

    A damaged checkpoint is reported in one WARNING line naming its step and part, moved to
    ``<workdir>/checkpoints_damaged/`` (kept for inspection, and out of Orbax's way: it would otherwise stay
    the "latest" step, and the rolling window could delete the intact ones), and the next older one is tried.

    Returns:
      (state, step, data_restored), or (None, None, False) when the work directory holds no checkpoint.
    Raises:
      DamagedCheckpointError: checkpoints exist but none is intact (one line naming each step's damage).
    """
    damaged = []
    for step in reversed(self.all_steps()):
      problem = self.check_step(step)
      if problem is None:
        try:
          state, data_restored = self.restore(step, abstract, data_iter, num_workers)
        except DamagedCheckpointError as e:
          problem = (e.part, e.problem)
        else:
          self._set_aside(damaged)
          return state, step, data_restored
      damaged.append(step)
      older = [s for s in self.all_steps() if s < step]
      logging.warning("%s/%d/%s is damaged (%s); %s", self._last.directory, step, problem[0], problem[1],
                      f"falling back to step {older[-1]}" if older else "no older checkpoint")
      last_problem = problem
    if damaged:
      raise DamagedCheckpointError(damaged[-1], last_problem[0], last_problem[1],
                                   f"{self._last.directory}: no intact checkpoint (steps {damaged} are damaged; "
                                   f"the oldest: {last_problem[0]}: {last_problem[1]}); move the folder away "
                                   "to train from scratch")
    return None, None, False

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged step folders to <workdir>/checkpoints_damaged/ (process 0; the others only reload)."""
    if steps and jax.process_index() == 0:
      aside = os.path.join(self.workdir, "checkpoints_damaged")
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        src = os.path.join(self._last.directory, str(step))
        dst = os.path.join(aside, f"{step}.{int(time.time())}")
        if os.path.exists(src):
          os.replace(src, dst)
          logging.warning("%s: set aside as %s for inspection (a new step %d will be written)", src, dst, step)
    if steps:
      parallel.barrier("jaxseg_checkpoints_set_aside", 600.0)
      self._last.reload()

  def wait(self) -> None:
    self._last.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._last.close()
    self._best.close()


def _iterator_process_count(directory) -> int | None:
  """How many processes wrote the Grain iterator states in ``directory`` (None: none there)."""
  counts = {int(m.group(1)) for name in (os.listdir(directory) if os.path.isdir(directory) else ())
            if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", name))}
  return counts.pop() if len(counts) == 1 else None


class DamagedCheckpointError(ValueError):
  """A checkpoint part that cannot be read; the message names the step and the part."""

  def __init__(self, step: int, part: str, problem: str, message: str | None = None):
    super().__init__(message or f"checkpoint {step}: {part}: {problem}")
    self.step, self.part, self.problem = step, part, problem


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return (text[0] if text else type(e).__name__)[:300]


def _read_json_file(path: str):
  with open(path, "rb") as f:
    return json.loads(f.read())


def check_step_files(step_dir: str) -> tuple[str, str] | None:
  """(part, problem) for the first missing or unreadable small file of a checkpoint step folder, or None.

  Checks Orbax's step metadata, the saved config, every process's Grain iterator state (all of
  process_0..n-1-of-n present, each a JSON object) and the state's metadata and manifest. The tensors
  themselves are checked by restoring them.
  """
  try:
    _read_json_file(os.path.join(step_dir, "_CHECKPOINT_METADATA"))
  except (OSError, ValueError) as e:
    return "_CHECKPOINT_METADATA", _first_line(e)
  for part in ("state", "config"):
    if not os.path.isdir(os.path.join(step_dir, part)):
      return part, "missing"
  try:
    if not isinstance(_read_json_file(os.path.join(step_dir, "config", "metadata")), dict):
      return "config", "not a JSON object"
  except (OSError, ValueError) as e:
    return "config", _first_line(e)
  for name in ("_METADATA", "manifest.ocdbt"):
    path = os.path.join(step_dir, "state", name)
    if os.path.exists(os.path.join(step_dir, "state", "_METADATA")) and name == "manifest.ocdbt" and \
        not os.path.exists(path):
      continue  # Not an OCDBT checkpoint: the tensor files are checked by the restore.
    try:
      if name == "_METADATA":
        _read_json_file(path)
      elif os.path.getsize(path) == 0:
        return f"state/{name}", "empty file"
    except (OSError, ValueError) as e:
      return f"state/{name}", _first_line(e)
  directory = os.path.join(step_dir, "data_iter")
  if os.path.isdir(directory):
    names = [n for n in os.listdir(directory) if n.startswith("process_")]
    count = _iterator_process_count(directory)
    if count is None:
      return "data_iter", f"iterator files of several process counts or none: {sorted(names)[:4]}"
    for i in range(count):
      path = os.path.join(directory, f"process_{i}-of-{count}.json")
      try:
        state = _read_json_file(path)
      except (OSError, ValueError) as e:
        return f"data_iter/process_{i}-of-{count}.json", _first_line(e)
      if not isinstance(state, dict):
        return f"data_iter/process_{i}-of-{count}.json", "not a JSON object"
  return None


def _saved_num_workers(step_dir: str) -> int | None:
  """data.num_workers of the config saved with a checkpoint (None when unknown)."""
  try:
    return int(_read_json_file(os.path.join(step_dir, "config", "metadata"))["data"]["num_workers"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _reshard_iterator_state(directory: str, saved_by: int, data_iter: Any) -> bool:
  """Moves an iterator saved by ``saved_by`` processes to the same global position for this process count.

  Holds for the loader's shard ``[process_index::process_count]`` without worker processes, where the state
  is {"next_index": k} on every process: the run has consumed k * saved_by samples of the global sequence,
  and this process continues at index k * saved_by / process_count of its own shard. Returns False (the
  caller restarts the data order) for any other state.
  """
  states = []
  for i in range(saved_by):
    with open(os.path.join(directory, f"process_{i}-of-{saved_by}.json")) as f:
      states.append(json.load(f))
  current = data_iter.get_state()
  if not isinstance(current, dict) or set(current) != {"next_index"}:
    return False
  if any(not isinstance(s, dict) or set(s) != {"next_index"} for s in states):
    return False
  if len({s["next_index"] for s in states}) != 1:
    return False
  consumed = int(states[0]["next_index"]) * saved_by
  if consumed % jax.process_count():
    return False
  data_iter.set_state({"next_index": consumed // jax.process_count()})
  return True


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was started with (``<workdir>/config.json``)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no config.json; is {workdir!r} a jaxseg work directory?")
  with open(path) as f:
    return _config_from_json(json.load(f))


def _config_from_json(d: dict) -> ml_collections.ConfigDict:
  def fix(x):
    if isinstance(x, dict):
      return {k: fix(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(fix(v) for v in x)
    return x
  return ml_collections.ConfigDict(fix(d))


def restore_params(workdir: str, abstract_params, step: int | str | None = None):
  """The model parameters of a checkpoint, alone (the optimizer state is not read).

  Args:
    workdir: the run's work directory.
    abstract_params: shapes, dtypes and shardings to restore into (assembly.abstract_params).
    step: a checkpoint step, "best" for the best-by-validation state, or None for the latest.
  Returns:
    (params, step).
  Raises:
    FileNotFoundError: no such checkpoint directory or step.
  """
  sub = "best" if step == "best" else "checkpoints"
  directory = os.path.abspath(os.path.join(workdir, sub))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no checkpoints in this work directory")
  with ocp.CheckpointManager(directory) as mgr:
    steps = mgr.all_steps()
    if not steps:
      raise FileNotFoundError(f"{directory}: no complete checkpoint")
    if step is None or step == "best":
      candidates = sorted(steps, reverse=True)
    else:
      candidates = [int(step)]
      if candidates[0] not in steps:
        raise FileNotFoundError(f"{directory}: no checkpoint at step {candidates[0]}; have {sorted(steps)}")
    target = {"params": abstract_params}
    # The latest checkpoint, or the newest intact one when it is damaged (named in a WARNING line); an
    # explicitly asked-for step that is damaged is an error naming its part.
    for i, use in enumerate(candidates):
      try:
        problem = check_step_files(os.path.join(directory, str(use)))
        if problem is not None:
          raise DamagedCheckpointError(use, *problem)
        try:
          restored = mgr.restore(use, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
              item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True)))
        except Exception as e:  # pylint: disable=broad-except
          raise DamagedCheckpointError(use, "state", f"{type(e).__name__}: {_first_line(e)}") from e
      except DamagedCheckpointError as e:
        if i + 1 == len(candidates):
          raise DamagedCheckpointError(use, e.part, e.problem, f"{directory}/{use}/{e.part}: damaged "
                                       f"({e.problem})" + ("; no older intact checkpoint" if i else "")) from e
        logging.warning("%s/%d/%s is damaged (%s); using step %d", directory, use, e.part, e.problem,
                        candidates[i + 1])
        continue
      return restored["state"]["params"], use
