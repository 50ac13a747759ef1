"""Prints sliding-window inference throughput (voxels/s) on the current devices as JSON.

  python launch/bench_inference.py --config=configs/default.py --volume=512,512,400
  python launch/bench_inference.py --config=configs/phantom.py --volume=96,96,96 --model=identity \
      --config.eval.window_batch=8 --config.eval.tta_mirror=True
"""

import json

from absl import app, flags
from ml_collections import config_flags

from jaxseg import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (model, patch size, eval block).")
_VOLUME = flags.DEFINE_list("volume", ["192", "192", "192"], "Volume size X,Y,Z in voxels.")
_MODEL = flags.DEFINE_enum("model", "config", ["config", "identity"], "The config's model or identity.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs after the compiling one.")
_ALL_DEVICES = flags.DEFINE_bool("all_devices", True, "Shard windows over all local devices.")
flags.mark_flags_as_required(["config"])


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  from jaxseg import parallel  # pylint: disable=g-import-not-at-top
  from jaxseg.infer.bench import benchmark_sliding_window  # pylint: disable=g-import-not-at-top
  volume = [int(v) for v in _VOLUME.value]
  if len(volume) != 3 or min(volume) < 1:
    raise ValueError(f"--volume: {_VOLUME.value} is not three positive sizes")
  mesh = parallel.make_mesh(jax.local_devices()) if _ALL_DEVICES.value else None
  print(json.dumps(benchmark_sliding_window(_CONFIG.value, volume, _MODEL.value, _REPEATS.value, mesh)))


if __name__ == "__main__":
  cli.run(main)
