"""What every launch/ script shares: multi-process flags, and one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import sys
from typing import Callable

from absl import flags, logging

from jaxseg import parallel

_COORD = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process runs).")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process runs).")
_PID = flags.DEFINE_integer("process_id", -1, "This process's index (multi-process runs).")
_LOCAL_DEVICES = flags.DEFINE_integer("local_device_count", 0,
                                      "CPU only: host devices per process (testing on one machine).")
_ALL_LOGS = flags.DEFINE_bool("log_all_processes", False, "Log from every process, not only the first.")

# Errors a user can cause with a flag, a config value or a data set: reported in one line.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError, KeyError)


def init_processes() -> None:
  """Joins a multi-process run when asked (flags, SLURM, TPU VM); quiets the logs of other processes."""
  parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value, _LOCAL_DEVICES.value)
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
