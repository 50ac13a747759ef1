"""Runs the production train step once on a synthetic batch and saves loss and parameters (.npz).

Used by test_train_step.py in subprocesses, because the number of host devices is fixed when JAX starts:
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/step_worker.py out.npz
"""

import sys

import jax
import numpy as np

from jaxseg import labels as labels_lib, parallel
from jaxseg.models import build_model
from jaxseg.train import benchmark, state as state_lib
from jaxseg.train.optim import make_optimizer
from jaxseg.train.step import make_train_step

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from tiny_config import tiny_config  # noqa: E402


def main(out: str) -> None:
  config = tiny_config()
  mesh = parallel.make_mesh()
  model = build_model(config.model, labels_lib.num_classes(tuple(config.data.organs)))
  optimizer, schedule = make_optimizer(config.optim, config.train.num_steps)
  state = state_lib.init_state(config, model, optimizer, mesh)
  step = make_train_step(config, model, optimizer, schedule, mesh)
  batch = parallel.global_batch(benchmark.synthetic_batch(config, config.data.batch_size), mesh)
  losses = []
  for _ in range(2):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  flat = {"/".join(str(k.key) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(state["params"])}
  np.savez(out, losses=np.asarray(losses), devices=jax.device_count(), **flat)


if __name__ == "__main__":
  main(sys.argv[1])
