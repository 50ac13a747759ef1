"""Starting several processes of one JAX program on this machine, and reaping them all.

Multi-process code (jax.distributed, process-sharded data, multi-process checkpoints) has failure modes a
single process never shows, so it must be testable on one CPU machine: ``run_local`` starts N copies of a
launch/ script on loopback, each told its place by the flags jaxseg.cli reads (--coordinator_address,
--num_processes, --process_id, --local_device_count), and streams their output with a ``[pK]`` prefix.

A run never hangs and never leaves orphans: it has a deadline, and when one process fails the others are
given ``grace_s`` to stop on their own (JAX's coordination service stops them when it notices the dead
peer) and are then killed, process group and all (Grain workers included). No JAX import here: the
launcher itself must start fast and hold no devices.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO


def free_port() -> int:
  """A TCP port on loopback that is free now (the coordinator binds it a moment later)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def describe_exit(code: int | None) -> str:
  if code is None:
    return "still running"
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"killed by signal {-code}"
  return f"exit status {code}"


@dataclasses.dataclass
class LocalRun:
  """What happened: per-process exit codes, the first failure, and the launcher's verdict."""
  returncodes: list[int | None]
  failed: int | None  # The index of the first process that failed, if any.
  timed_out: bool
  message: str

  @property
  def ok(self) -> bool:
    return self.failed is None and not self.timed_out


def _pump(stream, prefix: str, out: TextIO, lock: threading.Lock) -> None:
  for line in iter(stream.readline, ""):
    with lock:
      out.write(prefix + line)
      out.flush()
  stream.close()


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(proc.pid, sig)
  except (ProcessLookupError, PermissionError):
    pass


def run_local(command: Sequence[str], num_processes: int, local_device_count: int = 0,
              timeout_s: float = 3600.0, grace_s: float = 10.0, env: dict | None = None,
              out: TextIO | None = None, poll_s: float = 0.1) -> LocalRun:
  """Runs ``num_processes`` copies of ``command`` joined by jax.distributed on 127.0.0.1.

  Args:
    command: the program and its arguments, e.g. ["launch/train.py", "--config=..."]; a .py program runs
      under this Python. Each copy gets --coordinator_address, --num_processes, --process_id and, when
      ``local_device_count`` > 0, --local_device_count (and JAX_PLATFORMS=cpu unless set).
    num_processes: how many processes (>= 1).
    local_device_count: CPU devices per process (0: leave the platform's devices alone).
    timeout_s: deadline for the whole run; then every process is killed.
    grace_s: after one process fails, how long the others may take to stop by themselves.
    env: environment for the processes (default: this one).
    out: where the prefixed output goes (default: sys.stdout).
    poll_s: how often exits are checked.
  Returns:
    A LocalRun; every process has exited when it returns.
  Raises:
    ValueError: bad counts, or a missing program.
  """
  if num_processes < 1:
    raise ValueError(f"num_processes: {num_processes}; need at least 1")
  if local_device_count < 0:
    raise ValueError(f"local_device_count: {local_device_count} is negative")
  if not command:
    raise ValueError("no program to run; pass it after --, e.g. -- launch/train.py --config=...")
  program = list(command)
  if program[0].endswith(".py"):
    if not os.path.isfile(program[0]):
      raise FileNotFoundError(f"{program[0]}: no such program")
    program = [sys.executable, *program]
  out = out or sys.stdout
  env = dict(os.environ if env is None else env)
  if local_device_count:
    env.setdefault("JAX_PLATFORMS", "cpu")
  env["PYTHONUNBUFFERED"] = "1"
  address = f"127.0.0.1:{free_port()}"
  lock = threading.Lock()
  procs: list[subprocess.Popen] = []
  pumps: list[threading.Thread] = []
  failed, timed_out = None, False
  try:
    for i in range(num_processes):
      args = [f"--coordinator_address={address}", f"--num_processes={num_processes}", f"--process_id={i}"]
      if local_device_count:
        args.append(f"--local_device_count={local_device_count}")
      # Own session: the process and its Grain workers form one group we can kill together.
      p = subprocess.Popen(program + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
      procs.append(p)
      t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", out, lock), daemon=True)
      t.start()
      pumps.append(t)
    deadline = time.monotonic() + timeout_s
    stop_at = None
    while True:
      codes = [p.poll() for p in procs]
      if failed is None:
        bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if bad:
          failed = bad[0]
          stop_at = time.monotonic() + grace_s
      if all(c is not None for c in codes):
        break
      now = time.monotonic()
      if now > deadline:
        timed_out = True
        break
      if stop_at is not None and now > stop_at:
        break
      time.sleep(poll_s)
  finally:
    _reap(procs)
    for t in pumps:
      t.join(timeout=5)
  codes = [p.returncode for p in procs]
  if failed is not None:
    others = ", ".join(f"process {i}: {describe_exit(c)}" for i, c in enumerate(codes) if i != failed)
    message = (f"process {failed} of {num_processes} failed ({describe_exit(codes[failed])}); "
               f"the others were stopped ({others or 'none'})")
  elif timed_out:
    message = f"the run passed its {timeout_s:g} s deadline; all {num_processes} processes were killed"
  else:
    message = f"all {num_processes} processes finished"
  return LocalRun(codes, failed, timed_out, message)


def _reap(procs: list[subprocess.Popen], term_wait_s: float = 5.0) -> None:
  """SIGTERM to every live process group, then SIGKILL after ``term_wait_s``; waits for all."""
  live = [p for p in procs if p.poll() is None]
  for p in live:
    _kill_group(p, signal.SIGTERM)
  end = time.monotonic() + term_wait_s
  for p in live:
    try:
      p.wait(timeout=max(0.0, end - time.monotonic()))
    except subprocess.TimeoutExpired:
      pass
  for p in procs:
    _kill_group(p, signal.SIGKILL)  # Also any worker left behind by a process that did exit.
    p.wait()
