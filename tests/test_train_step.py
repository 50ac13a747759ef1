"""The jitted, sharded train step: the same on 1 and 4 devices, and bad configs named in one line."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxseg.config_checks import ConfigError, check_config
from jaxseg.train.benchmark import compare_synthesis, measure_train_step

sys.path.insert(0, os.path.dirname(__file__))
from tiny_config import tiny_config  # noqa: E402

HERE = os.path.dirname(__file__)


def _run_worker(tmp_path, devices: int) -> dict:
  """Two production steps on one synthetic batch in a fresh process with ``devices`` host devices."""
  out = str(tmp_path / f"step_{devices}.npz")
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, os.path.join(HERE, "mp_step_worker.py"), f"--out={out}"], env=env,
                 check=True, timeout=600)
  return dict(np.load(out))


def test_step_is_the_same_on_1_and_4_devices(tmp_path):
  one, four = _run_worker(tmp_path, 1), _run_worker(tmp_path, 4)
  assert int(one["devices"]) == 1 and int(four["devices"]) == 4
  assert np.isfinite(one["losses"]).all()
  assert one["losses"][1] != one["losses"][0]  # The update changed the model.
  np.testing.assert_allclose(one["losses"], four["losses"], rtol=1e-5)
  keys = [k for k in one if k not in ("losses", "devices", "processes")]
  assert keys
  for k in keys:
    np.testing.assert_allclose(one[k], four[k], atol=1e-6, rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("field,value,devices,match", [
    ("model.name", "vnet", 1, "model.name"),
    ("data.patch_size", (15, 16, 16), 1, "data.patch_size"),
    ("data.batch_size", 3, 2, "data.batch_size"),
    ("data.organs", ("lung",), 1, "data.organs"),
    ("optim.name", "lamb", 1, "optim.name"),
    ("eval.min_tumor_confidence", 1.0, 1, "eval.min_tumor_confidence"),
])
def test_bad_config_names_the_field(field, value, devices, match):
  c = tiny_config()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(ConfigError, match=match):
    check_config(c, devices)


def test_train_benchmark_reports_xla_flops_and_the_peak_share():
  """bench_train's figures come from the production step: XLA's FLOP count of the compiled step grows with
  the patch (8x the voxels: between 4x and 12x the FLOPs), and the achieved share follows the stated peak."""
  c = tiny_config()
  c.synth.enabled = False
  small = measure_train_step(c, steps=1, warmup=0, peak_tflops=1.0)
  c.data.patch_size = (32, 32, 32)
  big = measure_train_step(c, steps=1, warmup=0)
  assert small["flops_per_step"] > 0 and 4.0 < big["flops_per_step"] / small["flops_per_step"] < 12.0
  assert small["peak_share"] == pytest.approx(small["achieved_tflops"], rel=1e-3, abs=1e-4)
  assert big["peak_share"] is None


def test_synthesis_comparison_interleaves_both_production_steps():
  """bench_train --compare_synth: both steps compiled, run in alternation, the ratio taken per round."""
  c = tiny_config()
  c.synth.enabled = True
  r = compare_synthesis(c, rounds=3, warmup=0)
  assert r["rounds"] == 3 and r["synth_on_step_s"] > 0 and r["synth_off_step_s"] > 0
  assert 0 < r["ratio_p10"] <= r["ratio_median"] <= r["ratio_p90"]
  assert c.synth.enabled  # the caller's config is left as it was
