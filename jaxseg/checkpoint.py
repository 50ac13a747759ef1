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
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging



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
    args = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config.to_dict())}
    if data_iter is not None:
      args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    self._last.save(step, args=ocp.args.Composite(**args), force=True)

  def save_best(self, step: int, state: dict, metrics: dict, config: ml_collections.ConfigDict) -> bool:
    """Keeps ``state`` in best/ when ``metrics[best_metric]`` beats the kept one. Returns True if saved."""
    value = metrics.get(self.best_metric)
    if value is None or value != value:  # Missing or NaN: nothing to rank by.
      return False
    # Orbax ranks by best_fn and keeps only the top one, deleting the loser (old or new).
    self._best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  config=ocp.args.JsonSave(config.to_dict())),
                    metrics={self.best_metric: float(value)}, force=True)
    return self._best.best_step() == step

  def restore(self, step: int, abstract: dict, data_iter: Any) -> tuple[dict, bool]:
    """Restores the state at ``step`` into the shardings of ``abstract``, and the iterator in place.

    Returns:
      (state, data_restored). An iterator saved by another number of processes continues at the same
      global position (see _reshard_iterator_state) when the loader has no worker processes; otherwise,
      and whenever the saved state does not fit the pipeline (another worker count), the data order
      restarts from the seed and a warning says so.
    """
    restored = self._last.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
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
        logging.warning("checkpoint %d: the data iterator state could not be restored (%s: %s); the data "
                        "order restarts from the seed (expected when the process or worker count changed).",
                        step, type(e).__name__, str(e).splitlines()[0][:200])
    return restored["state"], data_restored

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
      use = max(steps)
    else:
      use = int(step)
      if use not in steps:
        raise FileNotFoundError(f"{directory}: no checkpoint at step {use}; have {sorted(steps)}")
    target = {"params": abstract_params}
    restored = mgr.restore(use, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)))
  return restored["state"]["params"], use
