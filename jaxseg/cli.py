"""What every launch/ script shares: multi-process flags, and one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

from absl import flags, logging

from jaxseg import parallel

_COORD = flags.DEFINE_string("coordinator_address", "",
                              "host:port of process 0 (multi-process runs), or auto: let JAX detect the "
                              "cluster (TPU VM pod slices, Open MPI; SLURM job steps are detected without it).")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process runs).")
_PID = flags.DEFINE_integer("process_id", -1, "This process's index (multi-process runs).")
_LOCAL_DEVICES = flags.DEFINE_integer("local_device_count", 0,
                                      "CPU only: host devices per process (testing on one machine).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100,
                                  "Multi-process: seconds after which a silent process counts as dead and "
                                  "the others stop with an error.")
_ALL_LOGS = flags.DEFINE_bool("log_all_processes", False, "Log from every process, not only the first.")

# Errors a user can cause with a flag, a config value or a data set: reported in one line.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError, KeyError)


class _QuietLibraries:
  """Drops the INFO chatter of Orbax and Grain (dozens of lines per save); their warnings still show."""

  def filter(self, record) -> bool:
    path = getattr(record, "pathname", "") or ""
    return record.levelno >= 30 or not any(p in path for p in ("/orbax/", "/grain/", "/etils/"))


def _compilation_cache() -> None:
  """XLA's persistent compilation cache: a rerun, a resume or the next run of a study skips compiling.

  $JAXSEG_COMPILATION_CACHE names the folder (default ~/.cache/jaxseg/xla); set it to "off" to disable.
  Off for multi-process CPU runs: a process that finds its program cached reaches the first gloo
  collective long before one that compiles, and gloo gives up after 30 s.
  """
  import jax  # pylint: disable=import-outside-toplevel
  path = os.environ.get("JAXSEG_COMPILATION_CACHE", os.path.expanduser("~/.cache/jaxseg/xla"))
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    return
  if path and path != "off":
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def init_processes() -> None:
  """Joins a multi-process run when asked (flags, SLURM, TPU VM); quiets the logs of other processes."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
  parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value, _LOCAL_DEVICES.value,
                                  heartbeat_timeout_s=_HEARTBEAT.value)
  _compilation_cache()
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() != 0 and not _ALL_LOGS.value:
    logging.set_verbosity(logging.WARNING)


def user_errors(fn: Callable) -> Callable:
  """Wraps an absl main so a user error exits with status 1 and one line naming the problem."""

  @functools.wraps(fn)
  def wrapped(argv):
    try:
      return fn(argv)
    except USER_ERRORS as e:
      msg = e.args[0] if isinstance(e, KeyError) and e.args else e
      print(f"error: {msg}", file=sys.stderr)
      sys.exit(1)

  return wrapped


def parse_checkpoint(value: str | None) -> int | str | None:
  """--checkpoint: a step number, "best", or None (the latest)."""
  return int(value) if value and value.isdigit() else value
