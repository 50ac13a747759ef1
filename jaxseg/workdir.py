"""The work directory of a run: one owner at a time, and a record of the config it was trained with.

A work directory outlives any one process: a run is killed, rerun, resumed with more steps. What keeps that
safe lives here:

* ``WorkdirLock``: an exclusive ``flock`` on ``<workdir>/.lock``, held by process 0 of a run for the run's
  life. Two runs writing one directory would interleave checkpoints and logs; the second one stops at once
  with one line naming the holder (pid and host are written into the lock file for that message). The kernel
  drops an flock when its process dies however it dies (kill -9 included), so a lock left by a dead run is
  simply taken over: there is no stale-lock heuristic to get wrong.
* ``check_resume_config`` / ``record_config``: a rerun may change only the fields that do not change what is
  trained (RESUMABLE_FIELDS); anything else is refused in one line naming the fields. config.json is written
  only after the checkpoint was restored (so a refused or failed resume leaves the old record intact), always
  atomically; each accepted change is appended to ``config_history.jsonl``.
* ``atomic_write_text`` and ``append_line``: the two ways files here are written (whole-file replace, and a
  single ``os.write`` of a whole line on an O_APPEND descriptor), so no reader sees half a file or half a line.
* ``check_run_config``: checks of config values that are otherwise found only when they are first used (for
  eval.*, after the whole training).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import math
import os
import platform
import re
import socket

import ml_collections
from absl import logging

from jaxseg import labels as labels_lib
from jaxseg.metrics import detection
from jaxseg.models.registry import CONVS

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
HISTORY_NAME = "config_history.jsonl"
VERSIONS_NAME = "versions.json"

# Fields a resumed run may change: they decide how long to train, how often to log, save and validate, and how
# to evaluate, not what the saved state means. optim.learning_rate is here because lowering it is the cure the
# non-finite-loss error recommends; it (like train.num_steps) changes the schedule from the resumed step on.
# Worker and prefetch counts change only throughput (a worker-count change restarts the data order, loudly).
RESUMABLE_FIELDS = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                    "train.keep_checkpoints", "eval.", "optim.learning_rate", "data.num_workers",
                    "data.prefetch", "data.preprocess_workers", "data.cache_dir")

# Metric names train.best_metric may rank by: the scalar keys of evaluate_cases' summary.
KNOWN_METRICS = ("tumor_dsc", "tumor_nsd", "tumor_hd95", "tumor_sensitivity", "patient_sensitivity",
                 "specificity", "auc", "fp_per_control_case", "fp_per_tumor_case", "organ_dsc", "organ_nsd",
                 "organ_hd95")
# best/ keeps the highest value (higher is better): these would keep the worst checkpoint.
LOWER_IS_BETTER = ("tumor_hd95", "organ_hd95", "fp_per_control_case", "fp_per_tumor_case")


class WorkdirError(ValueError):
  """A work directory that cannot be used as asked; the message starts with its path."""


# ---------------------------------------------------------------------------------------------------------
# Writing files so that a kill or a full disk never leaves half of one.


def atomic_write_text(path: str, text: str) -> None:
  """Replaces ``path`` with ``text``: temporary file, fsync, rename, fsync of the folder.

  A reader (or a rerun after a kill or a full disk) sees the old file or the new one, never a mix; the
  temporary file is removed when the write fails.
  """
  folder = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
  try:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
      _write_all(fd, text.encode())
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise
  _fsync_dir(folder)


def append_line(path: str, line: str) -> None:
  """Appends one line with a single ``os.write`` on an O_APPEND descriptor.

  O_APPEND makes the seek and the write one step, so concurrent appenders never interleave; one write call
  means a kill lands before or after the line, and a short write (a full disk) is undone by truncating back,
  so the file never ends in a torn line that this process wrote.
  """
  data = (line.rstrip("\n") + "\n").encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    start = os.fstat(fd).st_size
    try:
      n = os.write(fd, data)
      if n != len(data):
        raise OSError(errno.ENOSPC, f"short write ({n} of {len(data)} bytes)", path)
    except OSError:
      try:
        os.ftruncate(fd, start)
      except OSError:
        pass
      raise
  finally:
    os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
  view = memoryview(data)
  while view:
    n = os.write(fd, view)
    view = view[n:]


def _fsync_dir(folder: str) -> None:
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # Some file systems do not fsync folders; the rename is still atomic.
  finally:
    os.close(fd)


def json_safe(value):
  """``value`` with NaN and infinities as None (JSON has no NaN) and numpy scalars as Python numbers."""
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


# ---------------------------------------------------------------------------------------------------------
# One owner per work directory.


def check_workdir_path(workdir: str, flag: str = "--workdir") -> None:
  """Raises WorkdirError when ``workdir`` is empty or names something that is not a folder."""
  if not workdir:
    raise WorkdirError(f"{flag}: a work directory is required (checkpoints, logs and reports go there)")
  check_folder_path(workdir, flag, WorkdirError)


def check_folder_path(path: str, flag: str, error: type[Exception] = ValueError) -> None:
  """Raises ``error`` when ``path`` (a folder to create or use) names a file or lies under one."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise error(f"{flag}: {path} exists and is not a directory")
  parent = os.path.dirname(os.path.abspath(path))
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise error(f"{flag}: {parent} (a parent of {path}) is a file, not a directory")


class WorkdirLock:
  """An exclusive lock on a work directory, for ``with``; a second holder gets WorkdirError.

  The lock is ``fcntl.flock`` on ``<workdir>/.lock``: the kernel releases it when the process exits for any
  reason, so a lock file left by a killed run is taken over silently (its pid and host are only information
  for the message). It is advisory and local to one host's kernel on most network file systems (NFS v4
  forwards flock as a POSIX lock; Lustre needs the flock mount option); on a file system without locking
  the lock is skipped with a warning rather than refusing to train.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirError(f"{os.path.dirname(self.path)}: in use by another run ({holder}); wait for it to "
                         "finish or stop it, or use another --workdir") from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        os.close(fd)
        raise
      logging.warning("%s: this file system does not support locks (%s); two runs on this work directory "
                      "would not be stopped", self.path, e.strerror)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # The holder's pid is stale from here on; the file stays (others may open it).
    except OSError:
      pass
    os.close(self._fd)  # Closing drops the flock.
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    info = {}
  if not info.get("pid"):
    return "pid and host unknown"
  return f"pid {info['pid']} on host {info.get('host', '?')}, since {info.get('since', '?')}"


class NullLock:
  """The lock of processes other than 0: they share process 0's work directory and hold nothing."""

  def __enter__(self) -> "NullLock":
    return self

  def __exit__(self, *exc) -> None:
    pass


def lock_workdir(workdir: str, is_main: bool):
  """The lock a process of a run holds: the real one on process 0, none on the others (they share it)."""
  return WorkdirLock(workdir) if is_main else NullLock()


# ---------------------------------------------------------------------------------------------------------
# The config a work directory was trained with.


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON data (tuples as lists), as config.json holds it."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def is_resumable(field: str) -> bool:
  return any(field == f or (f.endswith(".") and field.startswith(f)) for f in RESUMABLE_FIELDS)


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
  """{field: (old value, new value)} for every leaf that differs; a missing side is reported as "<absent>"."""
  a, b = _flatten(old), _flatten(new)
  absent = "<absent>"
  return {k: (a.get(k, absent), b.get(k, absent)) for k in sorted(set(a) | set(b)) if a.get(k, absent) != b.get(k, absent)}


def read_recorded_config(workdir: str) -> dict | None:
  """config.json of ``workdir`` as JSON data, or None when there is none; WorkdirError when unreadable."""
  path = os.path.join(workdir, CONFIG_NAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path}: unreadable ({e}); restore it from config_history.jsonl or the checkpoint's "
                       "config, or use another --workdir") from None


def check_resume_config(workdir: str, config: ml_collections.ConfigDict, has_checkpoint: bool) -> dict:
  """Checks that ``config`` may continue the run recorded in ``workdir``; returns the accepted changes.

  Args:
    workdir: the work directory.
    config: this run's config.
    has_checkpoint: whether the directory holds a checkpoint to resume. Without one nothing was trained, so
      any change is accepted (and recorded).

  Returns:
    {field: (old, new)} of the changed fields (empty for a fresh directory or an identical config).

  Raises:
    WorkdirError: a field outside RESUMABLE_FIELDS changed while a checkpoint exists; the message names
      every such field with both values.
  """
  old = read_recorded_config(workdir)
  if old is None:
    return {}
  changes = config_changes(old, config_to_json(config))
  # A field present on one side only is a code change (a field added or removed by a jaxseg update), not a
  # user's: it is recorded, not refused, or no run could resume across an update.
  refused = {k: v for k, v in changes.items()
             if not is_resumable(k) and "<absent>" not in (v[0], v[1]) if has_checkpoint}
  if refused:
    fields = ", ".join(f"{k} ({_short(a)} -> {_short(b)})" for k, (a, b) in list(refused.items())[:6])
    more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
    raise WorkdirError(f"{os.path.join(workdir, CONFIG_NAME)}: this run was trained with other values of "
                       f"{fields}{more}; a resumed run may change only {', '.join(RESUMABLE_FIELDS)}*; use "
                       "the recorded values or another --workdir")
  return changes


def _short(v) -> str:
  s = json.dumps(v)
  return s if len(s) <= 40 else s[:37] + "..."


def record_config(workdir: str, config: ml_collections.ConfigDict, changes: dict, step: int) -> None:
  """Writes config.json (atomically) and appends the accepted ``changes`` to config_history.jsonl.

  Call it after the checkpoint was restored: a resume that fails leaves the record of the run untouched.
  """
  data = config_to_json(config)
  path = os.path.join(workdir, CONFIG_NAME)
  history = os.path.join(workdir, HISTORY_NAME)
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  if not os.path.exists(history):
    append_line(history, json.dumps({"time": now, "step": step, "event": "start" if step == 0 else "resume",
                                     "changes": {}}))
  if changes:
    append_line(history, json.dumps({"time": now, "step": step, "event": "resume",
                                     "changes": {k: list(v) for k, v in changes.items()}}))
    logging.warning("%s: resumed at step %d with changed %s (recorded in %s)", path, step,
                    ", ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in changes.items()), HISTORY_NAME)
  atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def record_versions(workdir: str) -> None:
  """Writes versions.json (Python, platform, devices, package versions), atomically."""
  import importlib.metadata as md  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  versions = {"python": platform.python_version(), "platform": platform.platform(),
              "jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
  for pkg in ("jaxseg", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "scipy",
              "nibabel", "ml-collections", "absl-py"):
    try:
      versions[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      versions[pkg] = None
  atomic_write_text(os.path.join(workdir, VERSIONS_NAME), json.dumps(versions, indent=2))


# ---------------------------------------------------------------------------------------------------------
# Config values checked before any work.


def known_metrics(organs: tuple[str, ...]) -> set[str]:
  """The scalar keys of evaluate_cases' summary for ``organs``: what train.best_metric may name."""
  out = set(KNOWN_METRICS) | {f"tumor_sensitivity_{b}" for b in detection.SIZE_BINS}
  per_label = ("dsc", "nsd", "hd95", "tumor_sensitivity", "patient_sensitivity", "specificity", "auc",
               "fp_per_control_case", "fp_per_tumor_case", *[f"tumor_sensitivity_{b}" for b in detection.SIZE_BINS])
  for name in labels_lib.class_names(tuple(organs))[1:]:
    out |= {f"{name}/{m}" for m in per_label}
  return out


# eval.constant_params: whether a checkpoint's evaluation and prediction compile the parameters in
# (jaxseg/infer/predict.py, uses_constant_params).
CONSTANT_PARAMS = ("auto", "true", "false")


def check_eval_config(e: ml_collections.ConfigDict) -> None:
  """Raises ValueError("eval.<field>: ...") for a bad inference or metric setting (also evaluate.py's --config)."""
  if not 0.0 <= float(e.overlap) < 1.0:
    raise ValueError(f"eval.overlap: {e.overlap} must be in [0, 1) (the windows' overlap fraction)")
  if int(e.window_batch) <= 0:
    raise ValueError(f"eval.window_batch: {e.window_batch} must be positive")
  if not float(e.nsd_tolerance_mm) > 0:
    raise ValueError(f"eval.nsd_tolerance_mm: {e.nsd_tolerance_mm} must be positive")
  if not float(e.min_tumor_volume_mm3) >= 0:
    raise ValueError(f"eval.min_tumor_volume_mm3: {e.min_tumor_volume_mm3} must be >= 0")
  if not math.isfinite(float(e.tumor_in_organ_margin_mm)):
    raise ValueError(f"eval.tumor_in_organ_margin_mm: {e.tumor_in_organ_margin_mm} must be finite (< 0: off)")
  if not 0.0 <= float(e.min_tumor_confidence) < 1.0:
    raise ValueError(f"eval.min_tumor_confidence: {e.min_tumor_confidence} must be in [0, 1) (0: off)")
  if int(e.bootstrap) < 0:
    raise ValueError(f"eval.bootstrap: {e.bootstrap} must be >= 0")
  if e.get("conv", "auto") not in CONVS:
    raise ValueError(f"eval.conv: {e.conv!r} is not one of {', '.join(CONVS)}")
  if str(e.get("constant_params", "auto")) not in CONSTANT_PARAMS:
    raise ValueError(f"eval.constant_params: {e.constant_params!r} is not one of {', '.join(CONSTANT_PARAMS)}")
  if int(e.max_cases) == 0 or int(e.max_cases) < -1:
    raise ValueError(f"eval.max_cases: {e.max_cases} must be positive, or -1 for all cases")


def check_run_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError("<field>: <what is wrong>") for the first bad value that training would meet late.

  These are the values first read by validation, best-checkpoint selection or inference, after the whole
  training: a typo must cost seconds, not a training run. (config_checks.check_config covers the values
  training reads first.)
  """
  check_eval_config(config.eval)
  t = config.train
  known = known_metrics(tuple(config.data.organs))
  if t.best_metric not in known:
    raise ValueError(f"train.best_metric: unknown metric {t.best_metric!r}; known: {', '.join(KNOWN_METRICS)}, "
                     "tumor_sensitivity_<lt10|10to20|gt20>, <label>/<dsc|nsd|...>")
  if t.best_metric.split("/")[-1] in LOWER_IS_BETTER or t.best_metric.endswith("hd95"):
    raise ValueError(f"train.best_metric: {t.best_metric} is lower-is-better and best/ keeps the highest "
                     f"value; use one of {', '.join(m for m in KNOWN_METRICS if m not in LOWER_IS_BETTER)}")
  if int(config.data.num_val) < 0:
    raise ValueError(f"data.num_val: {config.data.num_val} must be >= 0")
  if int(config.data.num_workers) < 0:
    raise ValueError(f"data.num_workers: {config.data.num_workers} must be >= 0")
  if int(config.data.prefetch) < 0:
    raise ValueError(f"data.prefetch: {config.data.prefetch} must be >= 0")
  if int(config.data.preprocess_workers) < 1:
    raise ValueError(f"data.preprocess_workers: {config.data.preprocess_workers} must be >= 1")
  spacing = [float(s) for s in config.data.spacing]
  if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
    raise ValueError(f"data.spacing: {tuple(config.data.spacing)} must be three positive finite mm values")


# ---------------------------------------------------------------------------------------------------------
# Full disks and other write failures: one line naming what was being written.

_DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.EFBIG: "file too large", errno.EIO: "I/O error"}
# Orbax reports tensorstore's write failures as ValueError text ("... No space left on device
# [os_error_code='28']"), not as OSError: the text is all there is to go by.
_DISK_TEXT = {"no space left on device": "no space left on device", "disk quota exceeded": "disk quota exceeded",
              "read-only file system": "read-only file system", "file too large": "file too large",
              "os_error_code='28'": "no space left on device"}


def disk_error(e: BaseException) -> str | None:
  """"no space left on device" (or quota, read-only, permission...) when ``e`` or its causes is a failed
  write of that kind; None for anything else."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
      return _DISK_ERRNOS[e.errno]
    text = str(e).lower()
    for needle, what in _DISK_TEXT.items():
      if needle in text:
        return what
    e = e.__cause__ or e.__context__
  return None


class DiskError(WorkdirError):
  """A write that failed for lack of space (or permission): the message names the path and what was written."""


def failed_path(e: BaseException, default: str) -> str:
  """The file a failed write names (an OSError's filename, or the path in Orbax's message), else ``default``."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.filename:
      return _step_folder(str(e.filename))
    m = re.search(r'(?:Failed writing:|local file) "([^"]+)"', str(e))
    if m:
      return _step_folder(m.group(1))
    e = e.__cause__ or e.__context__
  return default


def _step_folder(path: str) -> str:
  """A file inside an Orbax save in progress names the step it belongs to: <dir>/<step>."""
  return re.sub(r"\.orbax-checkpoint-tmp.*$", "", path)


def checkpoint_steps(workdir: str) -> list[int]:
  """The committed checkpoint steps of ``workdir`` (folder names only: cheap, before Orbax is opened)."""
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def raise_if_disk_error(e: BaseException, path: str, doing: str, hint: str = "") -> None:
  """Raises DiskError("<path>: <no space left on device> while <doing><hint>") when ``e`` is a disk error."""
  what = disk_error(e)
  if what is not None:
    raise DiskError(f"{path}: {what} while {doing}{hint}") from e


# Fault injection for tests (a real full disk needs a small file system, which tests cannot count on):
# JAXSEG_FAULT_ENOSPC=<where>:<key> makes the matching write raise OSError(ENOSPC) before it starts, e.g.
# "save:4" (the checkpoint save of step 4), "case:<case_id>" (preprocessing's write of that case).
FAULT_ENV = "JAXSEG_FAULT_ENOSPC"


def maybe_inject_enospc(where: str, key, path: str) -> None:
  spec = os.environ.get(FAULT_ENV, "")
  if spec and spec == f"{where}:{key}":
    raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAULT_ENV}={spec})", path)
