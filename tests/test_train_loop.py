"""The train CLI end to end at smoke size: exact resume after a real kill, one-line errors, NaN stop."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxseg import assembly

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")


def _train(workdir, data_root, *overrides, env=None, check=True):
  cmd = [sys.executable, TRAIN, "--config=" + os.path.join(ROOT, "configs", "phantom.py") + ":smoke",
         f"--workdir={workdir}", f"--config.data.root={data_root}", *overrides]
  proc = subprocess.run(cmd, env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})), capture_output=True,
                        text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("phantoms") / "smoke")


def _steps(workdir):
  """data_crc and loss per step, the last record of each step winning (a resumed run rewrites steps)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if "loss" in r:
        out[r["step"]] = (r["data_crc"], r["loss"])
  return out


def test_resume_after_kill_is_exact(tmp_path, data_root):
  steps = ["--config.train.num_steps=6", "--config.train.checkpoint_every=2", "--config.data.num_val=0"]
  straight = str(tmp_path / "straight")
  _train(straight, data_root, *steps)
  killed = str(tmp_path / "killed")
  proc = _train(killed, data_root, *steps, env={"JAXSEG_KILL_AT_STEP": "5"}, check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert not os.path.exists(os.path.join(killed, "checkpoints", "6"))
  _train(killed, data_root, *steps)  # The same command again: resumes.

  a, b = _steps(straight), _steps(killed)
  assert sorted(a) == list(range(1, 7)) and a == b  # Same data order and losses at every step.
  _, pa, sa = assembly.restore_for_inference(straight)
  _, pb, sb = assembly.restore_for_inference(killed)
  assert sa == sb == 6
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


def test_bad_values_exit_with_one_line(tmp_path, data_root):
  proc = _train(str(tmp_path / "w"), data_root, "--config.data.patch_size=(15,16,16)", check=False)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: data.patch_size")
  proc = subprocess.run([sys.executable, TRAIN, "--config=" + os.path.join(ROOT, "configs", "phantom.py:smoke")],
                        capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1 and "--workdir" in proc.stderr.strip().splitlines()[-1]


def test_nonfinite_loss_stops_with_a_clear_error(tmp_path, data_root):
  proc = _train(str(tmp_path / "nan"), data_root, "--config.optim.name=sgd", "--config.optim.learning_rate=1e30",
                "--config.optim.clip_norm=0", "--config.train.num_steps=4", check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "non-finite" in last and "step" in last
