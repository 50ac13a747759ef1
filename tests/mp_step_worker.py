"""Two production train steps on a synthetic global batch, each process feeding only its rows.

Used by test_train_step.py (1 and 4 forced host devices) and test_multiprocess.py (alone with
--local_device_count=4, or as 2 processes x 2 devices through
launch/launch_local.py; process 0 saves losses and parameters (.npz) to --out. Process p feeds rows
[p * B/P, (p + 1) * B/P) of the same global batch, as the data loader does, so both runs see one batch.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_config import tiny_config  # noqa: E402  pylint: disable=wrong-import-position

from jaxseg import cli  # noqa: E402  pylint: disable=wrong-import-position

_OUT = flags.DEFINE_string("out", None, "Where process 0 writes losses and parameters (.npz).", required=True)


def main(argv):
  del argv
  cli.init_processes()
  import jax  # pylint: disable=import-outside-toplevel
  from jaxseg import labels as labels_lib, parallel  # pylint: disable=import-outside-toplevel
  from jaxseg import assembly  # pylint: disable=import-outside-toplevel
  from jaxseg.train import benchmark  # pylint: disable=import-outside-toplevel
  from jaxseg.train.loop import host_params  # pylint: disable=import-outside-toplevel

  config = tiny_config()
  mesh = parallel.make_mesh()
  run = assembly.assemble(config, mesh)
  state = run.init_state()
  step = run.train_step()
  full = benchmark.synthetic_batch(config, config.data.batch_size)
  n = config.data.batch_size // jax.process_count()
  rows = slice(jax.process_index() * n, (jax.process_index() + 1) * n)
  batch = parallel.global_batch({k: v[rows] for k, v in full.items()}, mesh)
  losses = []
  for _ in range(2):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  if jax.process_index() == 0:
    flat = {"/".join(str(k.key) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(host_params(state["params"]))}
    np.savez(_OUT.value, losses=np.asarray(losses), devices=jax.device_count(),
             processes=jax.process_count(), **flat)


if __name__ == "__main__":
  app.run(main)
