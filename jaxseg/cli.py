"""What every launch/ script shares: multi-process flags, and one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

from absl import app, flags, logging

from jaxseg import parallel, workdir as workdir_lib
from jaxseg.default_config import config_from_file
from jaxseg.registry import closest
from jaxseg.workdir import disk_error

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
  """Drops the INFO chatter of Orbax and Grain (dozens of lines per save); their warnings still show.

  Also drops their ERROR tracebacks of a full disk: Orbax logs one from each of its background threads
  (some 350 lines per failed save) before the error reaches the run, which reports it in one line.
  """

  def filter(self, record) -> bool:
    path = getattr(record, "pathname", "") or ""
    if not any(p in path for p in ("/orbax/", "/grain/", "/etils/")):
      return True
    if record.levelno >= 40:
      exc = record.exc_info[1] if record.exc_info else None
      return disk_error(exc) is None and disk_error(Exception(str(record.msg))) is None
    return record.levelno >= 30


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


def _one_line(msg) -> str:
  """The first line of a message (library messages can carry a traceback's worth of detail)."""
  lines = [l.strip() for l in str(msg).strip().splitlines() if l.strip()]
  return lines[0] if lines else type(msg).__name__


def user_errors(fn: Callable) -> Callable:
  """Wraps an absl main so a user error exits with status 1 and one line naming the problem.

  User errors are bad flags, config values and data (USER_ERRORS), and failed writes the user can fix: a full
  disk, a quota, a read-only or foreign folder (an OSError with a file name). Other exceptions keep their
  traceback: they are bugs. Set JAXSEG_TRACEBACK=1 to see the traceback of a user error too.
  """

  @functools.wraps(fn)
  def wrapped(argv):
    try:
      return fn(argv)
    except USER_ERRORS + (OSError,) as e:
      if os.environ.get("JAXSEG_TRACEBACK") or (isinstance(e, OSError) and not _is_user_os_error(e)):
        raise
      msg = e.args[0] if isinstance(e, KeyError) and e.args else e
      if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, NotADirectoryError)):
        msg = f"{e.filename}: {e.strerror or e}" if e.filename else str(e)
      print(f"error: {_one_line(msg)}", file=sys.stderr)
      sys.exit(1)

  return wrapped


def _is_user_os_error(e: OSError) -> bool:
  return bool(e.filename) or disk_error(e) is not None


def parse_checkpoint(value: str | None) -> int | str | None:
  """--checkpoint: a step number, "best", or None/"" (the latest).

  Raises:
    ValueError: anything else (one line naming the flag).
  """
  if value is None or value == "" or value == "best":
    return value or None
  if value.isdigit():
    return int(value)
  raise ValueError(f"--checkpoint: {value!r} is not a step number, 'best', or empty (the latest)")


def parse_floats(flag: str, values, count: int | None = None, positive: bool = False) -> tuple[float, ...]:
  """A list flag of numbers (e.g. --spacing=1,1,1.5), or ValueError naming the flag and the bad value."""
  out = []
  for v in values:
    try:
      x = float(v)
    except (TypeError, ValueError):
      raise ValueError(f"{flag}: {v!r} is not a number (expected e.g. {flag}=1,1,1)") from None
    if positive and not (x > 0 and x != float("inf")):
      raise ValueError(f"{flag}: {v!r} must be a positive finite number")
    out.append(x)
  if count is not None and len(out) != count:
    raise ValueError(f"{flag}: {len(out)} value(s) given, {count} expected")
  return tuple(out)


def check_output_dir(path: str | None, flag: str) -> None:
  """Raises ValueError when an output folder flag names an existing file (or lies under one)."""
  if not path:
    raise ValueError(f"{flag}: an output folder is required")
  workdir_lib.check_folder_path(path, flag)


def _first_line(e: BaseException) -> str:
  text = " ".join(str(e).replace("\\n", "\n").split("\n")[:1]).strip().strip("'\"")
  return text or type(e).__name__


def _config_flag_error(argv: list[str], e: BaseException) -> str:
  """One line for a bad ``--config`` or ``--config.<field>`` flag: the file, or the field and its closest names.

  The config file is loaded again here (cheap) so the message names the first override whose path does not
  exist in it, with the closest valid names at that level.
  """
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if spec is None:
    return _first_line(e)
  path, _, variant = spec.partition(":")
  try:
    config = config_from_file(path, variant or None)
  except FileNotFoundError:
    return f"--config: {path}: no such config file"
  except Exception as load_error:  # pylint: disable=broad-except
    return f"--config: {spec}: {_first_line(load_error)}"
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    field, _, value = arg[len("--config."):].partition("=")
    node, walked = config, []
    for key in field.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if key not in keys:
        where = ".".join(walked) or "the config"
        return f"--config.{field}: {where} has no field {key!r}{closest(key, keys)}"
      node, walked = node[key], walked + [key]
    if value and not isinstance(node, str):
      return f"--config.{field}={value}: not a valid value for this field (it holds {node!r})"
  return _first_line(e)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure (a bad flag, config file or override) as one line, exit 1."""
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].present:
      value = flags.FLAGS["config"].value  # config_flags reports a bad file only when the value is read.
      if value is not None:
        value.keys()
    return rest
  except flags.Error as e:
    message = _config_flag_error(argv, e) if any(a.startswith("--config") for a in argv[1:]) else str(e)
  except Exception as e:  # pylint: disable=broad-except  # ml_collections raises plain errors on overrides.
    message = _config_flag_error(argv, e)
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def run(main: Callable) -> None:
  """``app.run`` for every launch script: one-line errors for bad flags and for user errors in ``main``."""
  app.run(user_errors(main), flags_parser=_parse_flags)
