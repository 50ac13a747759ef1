"""Multi-process training on one machine: 2 processes x 2 CPU devices against 1 process x 4 devices.

Pins what a cluster run relies on, on loopback: the same losses and parameters as one process on the same
global batch; a dead process stops the run within a bounded time with a message naming it, and the same
launch resumes; a checkpoint of 2 processes continues on 1 (same data position) and is evaluated by 1.
Every subprocess has a deadline and is killed, with its process group, in a finally.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxseg import assembly, checkpoint, distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch", "launch_local.py")
TRAIN = os.path.join(ROOT, "launch", "train.py")
CONFIG = "--config=" + os.path.join(ROOT, "configs", "phantom.py") + ":smoke"
DEADLINE_S = 300
# Synthesis and augmentation stay on (the smoke config's defaults): the loader's block sharding makes the
# local batches, joined in process order, equal the single-process global batch, so each per-sample key
# meets the same sample for any process count.
STEPS = ["--config.train.num_steps=4", "--config.train.checkpoint_every=2", "--config.data.num_val=0",
         "--config.data.batch_size=4"]


def _run(cmd: list[str], env: dict | None = None, timeout: float = DEADLINE_S + 60) -> tuple[int, str, float]:
  """(exit code, stdout + stderr, seconds); the process group is killed if it outlives ``timeout``."""
  start = time.monotonic()
  proc = subprocess.Popen(cmd, env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})), cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.communicate()
  return proc.returncode, out, time.monotonic() - start


def _launch(script_args: list[str], env: dict | None = None, **flags) -> tuple[int, str, float]:
  opts = {"num_processes": 2, "local_device_count": 2, "timeout_s": DEADLINE_S, **flags}
  return _run([sys.executable, LAUNCH, *[f"--{k}={v}" for k, v in opts.items()], "--", *script_args], env)


def _train_args(workdir: str, data_root: str, *extra: str) -> list[str]:
  return [TRAIN, CONFIG, f"--workdir={workdir}", f"--config.data.root={data_root}", *STEPS, *extra]


def _records(workdir: str) -> dict[int, dict]:
  """The metrics record of each step, the last one winning (a resumed run rewrites steps)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if "loss" in r:
        out[r["step"]] = r
  return out


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


# A stand-in process for the launcher tests: process 1 exits with status 3 (when asked to), every other
# one starts a grandchild (like a Grain worker), writes its pid and sleeps.
_STANDIN = """
import subprocess, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
if args["process_id"] == "1" and sys.argv[1] == "fail":
  sys.exit(3)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[2] + "." + args["process_id"], "w").write(str(child.pid))
time.sleep(600)
"""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split()[2] != "Z"  # A zombie has exited.


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_launcher_reaps_every_process_on_failure_and_deadline(tmp_path, mode):
  pids = str(tmp_path / "pid")
  start = time.monotonic()
  run = distributed.run_local([sys.executable, "-c", _STANDIN, mode, pids], num_processes=3, timeout_s=8,
                              grace_s=0.5, out=open(os.devnull, "w"))
  assert time.monotonic() - start < 30
  if mode == "fail":
    assert (run.failed, run.returncodes[1], run.timed_out) == (1, 3, False)
    assert run.message.startswith("process 1 of 3 failed (exit status 3)"), run.message
  else:
    assert run.failed is None and run.timed_out and "deadline" in run.message
  assert all(c is not None and c < 0 for i, c in enumerate(run.returncodes) if i != run.failed)
  grandchildren = [int(open(f"{pids}.{i}").read()) for i in (0, 2) if os.path.exists(f"{pids}.{i}")]
  assert mode == "fail" or len(grandchildren) == 2
  for pid in grandchildren:
    for _ in range(50):  # Killed grandchildren are reaped by init, perhaps a moment later.
      if not _alive(pid):
        break
      time.sleep(0.1)
    assert not _alive(pid), f"grandchild {pid} survived"


@pytest.mark.parametrize("args,needle", [
    ([LAUNCH, "--num_processes=0", "--", TRAIN], "num_processes"),
    ([LAUNCH, "--num_processes=2", "--", "launch/no_such.py"], "no_such.py"),
    ([TRAIN, CONFIG, "--workdir=/tmp/unused", "--num_processes=2"], "coordinator_address"),
    ([TRAIN, CONFIG, "--workdir=/tmp/unused", "--coordinator_address=127.0.0.1:1", "--num_processes=2",
      "--process_id=2"], "process_id"),
])
def test_bad_process_flags_exit_with_one_line(args, needle):
  code, out, _ = _run([sys.executable, *args], timeout=120)
  last = out.strip().splitlines()[-1]
  assert code == 1 and "Traceback" not in out, out[-2000:]
  assert last.startswith("error: ") and needle in last, last


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("phantoms") / "smoke")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, data_root):
  """A 2-process run whose process 1 is SIGKILLed at step 3, then the same launch again (resumes)."""
  workdir = str(tmp_path_factory.mktemp("mp") / "run")
  args = _train_args(workdir, data_root, "--heartbeat_timeout_s=10")
  killed = _launch(args, env={"JAXSEG_KILL_AT_STEP": "3", "JAXSEG_KILL_PROCESS": "1"}, grace_s=90)
  ckpts_after_kill = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  resumed = _launch(args)
  return {"workdir": workdir, "killed": killed, "ckpts_after_kill": ckpts_after_kill, "resumed": resumed}


def test_synthetic_step_is_the_same_on_2_processes_and_1(tmp_path):
  """The production step with synthesis and augmentation, each process feeding its rows of one batch."""
  worker = os.path.join(ROOT, "tests", "mp_step_worker.py")
  one, two = str(tmp_path / "one.npz"), str(tmp_path / "two.npz")
  code, out, _ = _run([sys.executable, worker, "--local_device_count=4", f"--out={one}"])
  assert code == 0, out[-3000:]
  code, out, _ = _launch([worker, f"--out={two}"])
  assert code == 0, out[-3000:]
  a, b = dict(np.load(one)), dict(np.load(two))
  assert (int(a["processes"]), int(a["devices"]), int(b["processes"]), int(b["devices"])) == (1, 4, 2, 4)
  assert a["losses"][0] != a["losses"][1]  # The first update changed the model.
  np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
  keys = [k for k in a if k not in ("losses", "devices", "processes")]
  assert keys
  for k in keys:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_dead_process_stops_the_run_and_the_same_launch_resumes(two_process_run):
  code, out, seconds = two_process_run["killed"]
  last = out.strip().splitlines()[-1]
  assert code == 1, out[-3000:]
  assert last.startswith("error: process 1 of 2 failed (killed by SIGKILL)"), last
  # Process 0 stopped by itself (the coordination service noticed the dead peer) well within the grace
  # period, with an error naming the failed task, instead of waiting in a collective.
  assert "process 0: killed by SIGTERM" not in last and "process 0: still running" not in last, last
  assert "process 0:" in last and "exit status 0" not in last, last
  assert seconds < DEADLINE_S
  assert two_process_run["ckpts_after_kill"] == ["2"]
  code, out, _ = two_process_run["resumed"]
  assert code == 0, out[-3000:]
  assert "resumed from" in out and " at step 2" in out, out[-3000:]
  assert sorted(_records(two_process_run["workdir"])) == [1, 2, 3, 4]


def test_two_processes_match_one_process_with_four_devices(tmp_path, data_root, two_process_run):
  single = str(tmp_path / "single")
  code, out, _ = _run([sys.executable, *_train_args(single, data_root), "--local_device_count=4"])
  assert code == 0, out[-3000:]
  a, b = _records(single), _records(two_process_run["workdir"])
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  np.testing.assert_allclose([a[s]["loss"] for s in a], [b[s]["loss"] for s in a], rtol=1e-5)
  assert a[1]["loss"] != a[4]["loss"]
  _, pa, sa = assembly.restore_for_inference(single)
  _, pb, sb = assembly.restore_for_inference(two_process_run["workdir"])  # Onto this 1-device process.
  assert sa == sb == 4
  _assert_same_params(pa, pb)


def test_a_two_process_checkpoint_continues_on_one_process(tmp_path, two_process_run):
  """Same model state and the same global data position: step 5 sees the 5th batch of a 1-process run."""
  import shutil  # pylint: disable=import-outside-toplevel
  from jaxseg.data.pipeline import make_train_loader  # pylint: disable=import-outside-toplevel
  from jaxseg.train import loop  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "continued")
  shutil.copytree(two_process_run["workdir"], workdir)
  config = checkpoint.load_config(workdir)
  code, out, _ = _run([sys.executable, *_train_args(workdir, config.data.root),
                       "--config.train.num_steps=6"])
  assert code == 0, out[-3000:]
  assert "written by 2 processes and this run has 1" in out, out[-3000:]
  cache_dir, train_ids, _ = loop.prepare(config)
  it = make_train_loader(config.data, cache_dir, train_ids, seed=config.seed)
  crcs = [loop._batch_crc(next(it)) for _ in range(5)]  # pylint: disable=protected-access
  records = _records(workdir)
  assert sorted(records) == [1, 2, 3, 4, 5, 6]
  assert records[5]["data_crc"] == crcs[4] != crcs[0]


def test_a_two_process_checkpoint_is_evaluated_by_one_process(tmp_path, two_process_run):
  config = checkpoint.load_config(two_process_run["workdir"])
  one_case = tmp_path / "one_case"
  one_case.mkdir()
  first = sorted(d for d in os.listdir(config.data.root) if d.startswith("BDMAP"))[0]
  os.symlink(os.path.join(config.data.root, first), one_case / first)
  code, out, _ = _run([sys.executable, os.path.join(ROOT, "launch", "evaluate.py"),
                       f"--workdir={two_process_run['workdir']}", f"--data=atlas:{one_case}", "--checkpoint=4"])
  assert code == 0, out[-3000:]
  summary = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
  assert 0.0 <= summary["organ_dsc"] <= 1.0
