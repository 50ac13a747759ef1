"""Loader throughput vs the train step's consumption (target: ratio > 2, the loader never the bottleneck).

  python launch/bench_loader.py --config=configs/phantom.py --num_batches=100 [--config.data.num_workers=2]
      [--train_steps=3]  (0 skips timing the train step)
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from jaxseg import cli
from jaxseg.data.bench import measure_loader
from jaxseg.data.prepare import prepare_data

_CONFIG = config_flags.DEFINE_config_file("config", "configs/phantom.py", "Config file.")
_BATCHES = flags.DEFINE_integer("num_batches", 100, "Batches to time.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 3, "Train steps to time for the ratio (0: skip).")


def main(argv):
  del argv
  config = _CONFIG.value
  try:
    cache_dir = prepare_data(config.data)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  loader = measure_loader(config.data, cache_dir, num_batches=_BATCHES.value, seed=config.seed)
  print(f"loader: {loader['patches_per_s']:.1f} patches/s (batch {loader['batch']}, patch {loader['patch']}, "
        f"{loader['num_workers']} workers, {loader['batches']} batches in {loader['seconds']} s); "
        f"RSS MiB over the run: {loader['rss_mb']}")
  if _TRAIN_STEPS.value > 0:
    from jaxseg.train.benchmark import measure_train_step  # pylint: disable=g-import-not-at-top
    step = measure_train_step(config, steps=_TRAIN_STEPS.value)
    print(f"train step: {step['patches_per_s']:.2f} patches/s ({step['step_s']} s/step, batch {step['batch']})")
    print(f"ratio loader/train: {loader['patches_per_s'] / step['patches_per_s']:.1f}")


if __name__ == "__main__":
  cli.run(main)
