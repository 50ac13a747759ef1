"""Prints train-step throughput for a config on the current devices, as one JSON line.

  python launch/bench_train.py --config=configs/phantom.py
  python launch/bench_train.py --config=configs/default.py --config.data.batch_size=2   # on a GPU
  python launch/bench_train.py --config=configs/phantom.py --compare_synth   # synthesis on vs off

Fields: compile_s, step_s (median), patches_per_s, peak_memory_bytes, num_params. With --compare_synth
instead: the step with synthesis on and off, both compiled and then run in alternation for --steps rounds
(jaxseg/train/benchmark.compare_synthesis): each side's median step time and the per-round ratio on / off
(median, 10th and 90th percentiles), so the load of a shared machine cancels in the ratio.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from jaxseg import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally with :variant.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (the median is reported); rounds with --compare_synth.")
_COMPARE = flags.DEFINE_bool("compare_synth", False, "Instead: the step with synthesis on against off, interleaved "
                              "(--steps rounds).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "The devices' peak TFLOP/s in the compute dtype (all devices "
                           "together), to print the achieved share of it; 0: no share.")
flags.mark_flags_as_required(["config"])


@cli.user_errors
def main(argv):
  del argv
  cli.init_processes()
  from jaxseg.train.benchmark import compare_synthesis, measure_train_step  # pylint: disable=import-outside-toplevel
  config = _CONFIG.value
  if _COMPARE.value:
    result = compare_synthesis(config, rounds=_STEPS.value)
  else:
    result = measure_train_step(config, steps=_STEPS.value, peak_tflops=_PEAK.value)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
