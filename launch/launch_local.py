"""Runs any launch/ script as N processes on this machine, joined by jax.distributed on loopback.

  python launch/launch_local.py --num_processes=2 --local_device_count=2 -- \
      launch/train.py --config=configs/phantom.py:smoke --workdir=/tmp/mp

For testing multi-process code on one machine (CPU devices forced per process). Output lines carry a
[pK] prefix. If any process fails, the others get --grace_s to stop by themselves and are then killed;
the launcher exits 1 with a line naming the failed process. Rerunning the same command resumes the run.
"""

from __future__ import annotations

import signal
import sys

from absl import app, flags

from jaxseg import distributed

_NPROC = flags.DEFINE_integer("num_processes", 2, "Number of processes.")
_DEVICES = flags.DEFINE_integer("local_device_count", 0, "CPU devices per process (0: the platform's own).")
_TIMEOUT = flags.DEFINE_float("timeout_s", 3600.0, "Deadline for the whole run, in seconds.")
_GRACE = flags.DEFINE_float("grace_s", 10.0, "After a failure, seconds the others get to stop by themselves.")


def _terminate(signum, frame):  # pylint: disable=unused-argument
  raise SystemExit(128 + signum)  # Unwinds through run_local's finally, which reaps every process.


def main(argv):
  signal.signal(signal.SIGTERM, _terminate)
  try:
    run = distributed.run_local(argv[1:], _NPROC.value, _DEVICES.value, _TIMEOUT.value, _GRACE.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if not run.ok:
    print(f"error: {run.message}", file=sys.stderr)
    sys.exit(1)
  print(run.message, file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
