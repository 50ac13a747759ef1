"""The training loop: one library call from the command line to a trained, evaluated run.

Resume order (big_vision's): a checkpoint in the work directory, else a fresh state from the seed. Rerunning
the same command after a crash or a kill continues from the last complete checkpoint with the same
parameters, RNG and data order.
"""

from __future__ import annotations

import json
import os
import signal
import zlib

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from jaxseg import assembly, checkpoint as ckpt_lib, parallel, workdir as workdir_lib
from jaxseg.config_checks import check_config, resolve_config
from jaxseg.data import cache, prepare as prepare_lib, split
from jaxseg.data.pipeline import make_train_loader
from jaxseg.infer.evaluate import evaluate_cases
from jaxseg.train import state as state_lib
from jaxseg.train.progress import MetricsLog, Progress
from jaxseg.train.tb_log import RunLogger

# Fault injection for tests of resume and multi-process failure: the process SIGKILLs itself at the start
# of this step (a real kill: no Python cleanup runs). JAXSEG_KILL_PROCESS limits it to one process index.
_KILL_ENV = "JAXSEG_KILL_AT_STEP"
_KILL_PROCESS_ENV = "JAXSEG_KILL_PROCESS"


def _maybe_kill(step: int, ckpt: ckpt_lib.RunCheckpointer) -> None:
  at = os.environ.get(_KILL_ENV)
  if at and int(at) == step:
    who = os.environ.get(_KILL_PROCESS_ENV)
    if who is None or int(who) == jax.process_index():
      ckpt.wait()  # Tests expect the saves before this step on disk (async saves would race the kill).
      logging.warning("%s=%s: killing process %d at step %d", _KILL_ENV, at, jax.process_index(), step)
      os.kill(os.getpid(), signal.SIGKILL)


def host_params(params):
  """This process's copy of replicated parameters, as numpy (works when other processes hold shards too)."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_shards[0].data), params)


def _batch_crc(batch: dict) -> int:
  return zlib.crc32(np.ascontiguousarray(batch["image"]).tobytes()) ^ zlib.crc32(
      np.ascontiguousarray(batch["label"]).tobytes())


def _sync(name: str, timeout_s: float = 24 * 3600.0) -> None:
  parallel.barrier(name, timeout_s)  # Long: process 0 may be preprocessing a whole data set meanwhile.


def prepare(config: ml_collections.ConfigDict):
  """Data preparation on the first process (others wait), then the split: (cache_dir, train_ids, val_ids)."""
  if jax.process_index() == 0:
    cache_dir = prepare_lib.prepare_data(config.data)
  _sync("jaxseg_prepare_data")
  if jax.process_index() != 0:
    cache_dir = prepare_lib.prepare_data(config.data)  # Finds the finished cache; does no work.
  cases = cache.list_cases(cache_dir)
  train_ids, val_ids = split.split_cases(cases, config.data.num_val, config.data.split_seed,
                                         tuple(config.data.organs))
  return cache_dir, train_ids, val_ids


def validate(config, state, cache_dir: str, val_ids: list[str], workdir: str, step: int) -> dict:
  """Evaluates ``state`` on the held-out cases (first process; the rest wait) and returns the summary."""
  summary = {}
  if jax.process_index() == 0 and val_ids:
    out_dir = os.path.join(workdir, "eval", f"step_{step}")
    summary = evaluate_cases(config, host_params(state["params"]), cache_dir, val_ids, out_dir,
                             mesh=parallel.make_mesh(jax.local_devices()), checkpoint_step=step)
    summary = dict(summary, eval_dir=out_dir)
  if jax.process_count() > 1 and val_ids:  # val_ids are the same on every process.
    _sync(f"jaxseg_validate_{step}")  # Wait here, not in the broadcast (gloo gives up after 30 s).
    value = np.float32(summary.get(config.train.best_metric, np.nan))
    value = float(multihost_utils.broadcast_one_to_all(value))
    summary.setdefault(config.train.best_metric, value)
  return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from ``workdir`` when it holds a checkpoint), validates, and returns the summary.

  Holds the work directory's lock (process 0) for the whole run, and turns a full disk anywhere in the run
  into one line naming the file and the last complete checkpoint (jaxseg/workdir.py).

  Returns:
    dict with the final training metrics and, when the config holds out validation cases, the summary of
    evaluate_cases on them (keys like tumor_dsc) and the path of its report.
  Raises:
    ConfigError: a bad config value (the message names the field).
    FloatingPointError: the loss became non-finite (the message names the step and the last checkpoint).
    WorkdirError: the work directory is in use by another run, is a file, was trained with an incompatible
      config, or its disk is full (DiskError).
  """
  workdir_lib.check_workdir_path(workdir)
  config = resolve_config(config)
  workdir_lib.check_run_config(config)
  mesh = parallel.make_mesh()
  check_config(config, mesh.devices.size)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.lock_workdir(workdir, jax.process_index() == 0):
    try:
      return _train_and_evaluate(config, workdir, mesh)
    except Exception as e:  # pylint: disable=broad-except
      steps = workdir_lib.checkpoint_steps(workdir)
      workdir_lib.raise_if_disk_error(
          e, workdir_lib.failed_path(e, workdir), "writing the run's files",
          f"; checkpoints up to step {steps[-1]} are complete; free space and rerun the same command to resume"
          if steps else "; free space and rerun")
      raise


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mesh) -> dict:
  """train_and_evaluate under the work directory's lock."""
  is_main = jax.process_index() == 0
  # Refused before any work; config.json itself is rewritten only once the checkpoint has been restored.
  changes = workdir_lib.check_resume_config(workdir, config, bool(workdir_lib.checkpoint_steps(workdir)))
  cache_dir, train_ids, val_ids = prepare(config)

  # Control cases are drawn the same way whether synthesis is on or off: with it off they are negatives,
  # so the real-only and real+synth arms of a study see the same cases in the same order.
  loader = make_train_loader(config.data, cache_dir, train_ids, seed=config.seed,
                             process_index=jax.process_index(), process_count=jax.process_count(),
                             synth_cfg=config.synth)
  data_iter = iter(loader)

  run = assembly.assemble(config, mesh)
  ckpt = ckpt_lib.RunCheckpointer(workdir, config.train.keep_checkpoints, config.train.best_metric)
  # The newest checkpoint whose every part is intact (a damaged one is named and set aside).
  state, start, _ = ckpt.restore_latest_intact(run.abstract_state(), data_iter, int(config.data.num_workers))
  if start is None:
    state, start = run.init_state(), 0
    logging.info("fresh start: %d parameters", state_lib.count_params(state["params"]))
  else:
    logging.info("resumed from %s at step %d", os.path.join(workdir, "checkpoints"), start)
  if is_main:
    workdir_lib.record_config(workdir, config, changes, start)
    workdir_lib.record_versions(workdir)

  train_step = run.train_step()
  log = MetricsLog(workdir, enabled=is_main)
  log.truncate_after(start)  # Steps after the checkpoint are trained (and logged) again.
  progress = Progress(start, config.train.num_steps, enabled=is_main)
  tb = RunLogger(workdir, config, start, enabled=is_main)
  t = config.train
  pending = None  # (step, metrics) of the last dispatched step: checked one step late to keep the device busy.
  last = {}
  summary = {}

  def check(step_metrics):
    step, metrics, crc = step_metrics
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(metrics["loss"]):
      raise FloatingPointError(
          f"step {step}: the loss is {metrics['loss']} (non-finite); stopping. The last checkpoint is step "
          f"{ckpt.latest_step()} in {workdir}; lower optim.learning_rate or check the data and rerun.")
    if step % t.log_every == 0 or step == t.num_steps:
      log.write({"step": step, **metrics, "steps_per_s": progress.steps_per_s, "data_crc": crc})
      tb.scalars(step, {**metrics, "steps_per_s": progress.steps_per_s})
      progress.update(step, metrics["loss"], force_log=True)
    else:
      progress.update(step, metrics["loss"])
    return metrics

  try:
    for step in range(start + 1, t.num_steps + 1):
      _maybe_kill(step, ckpt)
      local = next(data_iter)
      batch = parallel.global_batch(local, mesh)
      tb.train_images(step, state, local)  # Before the step, which donates the state.
      state, metrics = train_step(state, batch)
      if pending is not None:
        last = check(pending)
      pending = (step, metrics, _batch_crc(local))
      if step % t.checkpoint_every == 0 or step == t.num_steps:
        last = check(pending)  # Never save a state whose loss went non-finite.
        pending = None
        ckpt.save(step, state, data_iter, config)
      if (t.eval_every and step % t.eval_every == 0) or step == t.num_steps:
        summary = validate(config, state, cache_dir, val_ids, workdir, step)
        if summary:
          ckpt.save_best(step, state, summary, config)
          log.write({"step": step, **{f"val/{k}": v for k, v in summary.items() if isinstance(v, float)}})
          tb.validation(step, summary)
    if pending is not None:
      last = check(pending)
    if start >= t.num_steps:  # Already trained: report the saved validation (or validate, if it never ran).
      summary = _finished_summary(workdir, t.num_steps) or validate(config, state, cache_dir, val_ids, workdir,
                                                                     t.num_steps)
    if val_ids:
      _ensure_best(ckpt, t.num_steps, state, summary, config, workdir)
  finally:
    tb.close()
    ckpt.wait()
    ckpt.close()
    close = getattr(data_iter, "close", None) or getattr(loader, "close", None)
    if close is not None:
      close()
  return {**last, **summary, "step": t.num_steps, "workdir": workdir}


def _ensure_best(ckpt, step: int, state, summary: dict, config, workdir: str) -> None:
  """Makes sure a run with validation ends with best/ filled, or says why it is empty.

  best/ is filled by save_best after a validation; a run killed between its final validation and that save,
  or one whose validation metric is NaN, would otherwise end with best/ empty and no word about it (and
  --checkpoint=best failing later).
  """
  if ckpt.best_step() is not None:
    return
  value = summary.get(config.train.best_metric)
  if isinstance(value, (int, float)) and value == value and ckpt.save_best(step, state, summary, config):
    logging.info("%s: kept step %d (its validation had no best/ checkpoint yet)", os.path.join(workdir, "best"),
                 step)
    return
  logging.warning("%s is empty: the validation of step %d gave %s = %s (NaN or missing: e.g. no held-out "
                  "case with a tumour); use --checkpoint=<step> for inference", os.path.join(workdir, "best"),
                  step, config.train.best_metric, value)


def _finished_summary(workdir: str, step: int) -> dict:
  """The saved validation summary of a run that had already finished (rerunning it reports again)."""
  path = os.path.join(workdir, "eval", f"step_{step}", "summary.json")
  logging.info("%s: already trained to step %d; nothing to do", workdir, step)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    saved = json.load(f)
  out = {k: (float("nan") if v is None else v) for k, v in saved.items() if isinstance(v, (int, float)) or v is None}
  return dict(out, eval_dir=os.path.dirname(path))


def format_summary(summary: dict) -> str:
  """The few lines a person reads at the end of a run."""
  def f(key):
    v = summary.get(key)
    return "n/a" if v is None or v != v else f"{v:.3f}"
  lines = [f"run: {summary.get('workdir')}  (step {summary.get('step')}, final loss {f('loss')})"]
  if "tumor_dsc" in summary:
    lines.append(f"held-out cases: {summary.get('num_cases', '?')}  tumour DSC {f('tumor_dsc')}  tumour NSD "
                 f"{f('tumor_nsd')}  tumour-wise sensitivity {f('tumor_sensitivity')}  specificity "
                 f"{f('specificity')}  organ DSC {f('organ_dsc')}")
    lines.append(f"report: {summary.get('eval_dir')}/summary.json, cases.csv and plots (*.png)")
  return "\n".join(lines)
