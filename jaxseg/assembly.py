"""One place that assembles a run from a resolved config: model, optimizer, schedule, synthesizer, state, step.

Training, benchmarks, tests and inference all build their pieces here, so a new model, optimizer or
synthesizer (each declared in its registry) reaches every entry point at once. Inference needs only the
parameters: ``abstract_params`` describes them without building an optimizer, and the checkpoint module
restores into it (checkpoint.py does Orbax I/O over abstract trees and knows nothing of models).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from jaxseg import checkpoint, labels as labels_lib, parallel
from jaxseg.config_checks import resolve_config
from jaxseg.models import build_model, downsampling_factor
from jaxseg.synth.stage import Synthesizer, build_synthesizer
from jaxseg.train import state as state_lib
from jaxseg.train.optim import make_optimizer
from jaxseg.train.step import make_train_step


@dataclasses.dataclass(frozen=True)
class Run:
  """The pieces of a run; built once per process by ``assemble``."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  model: Any
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  synthesizer: Synthesizer
  num_classes: int

  @property
  def init_fn(self) -> Callable:
    return state_lib.make_init(self.model, downsampling_factor(self.config.model), self.optimizer,
                               self.synthesizer)

  def init_state(self) -> state_lib.State:
    """A fresh, replicated train state from ``config.seed``."""
    return state_lib.init_state(self.init_fn, int(self.config.seed), self.mesh)

  def abstract_state(self) -> state_lib.State:
    """The train state's shapes and shardings (the target of a resume)."""
    return state_lib.abstract_tree(self.init_fn, self.mesh, jax.random.key(0))

  def train_step(self) -> Callable:
    """The jitted, sharded ``step(state, batch) -> (state, metrics)``."""
    return make_train_step(self.config, self.model, self.optimizer, self.schedule, self.mesh,
                           self.synthesizer)


def model_of(config: ml_collections.ConfigDict):
  """The network of ``config`` (its output has one channel per class of ``config.data.organs``)."""
  return build_model(config.model, labels_lib.num_classes(tuple(config.data.organs)))


def assemble(config: ml_collections.ConfigDict, mesh: Mesh, num_steps: int | None = None) -> Run:
  """Builds the run's pieces; ``num_steps`` overrides ``config.train.num_steps`` for the schedule."""
  num_classes = labels_lib.num_classes(tuple(config.data.organs))
  optimizer, schedule = make_optimizer(config.optim, max(int(num_steps or config.train.num_steps), 1))
  return Run(config=config, mesh=mesh, model=model_of(config), optimizer=optimizer, schedule=schedule,
             synthesizer=build_synthesizer(config, mesh), num_classes=num_classes)


def abstract_params(config: ml_collections.ConfigDict, mesh: Mesh):
  """Shapes and (replicated) shardings of the model parameters alone: the target of an inference restore."""
  model, side = model_of(config), downsampling_factor(config.model)
  return state_lib.abstract_tree(lambda rng: state_lib.init_params(model, side, rng), mesh, jax.random.key(0))


def restore_for_inference(workdir: str, step: int | str | None = None, mesh: Mesh | None = None):
  """(config, params, step) of a run for evaluation or prediction, on any number of devices.

  ``step``: a checkpoint step, "best" for the best-by-validation state, or None for the latest. Only the
  parameters are read: no optimizer is built and no optimizer state is restored.
  """
  config = resolve_config(checkpoint.load_config(workdir))
  mesh = mesh or parallel.make_mesh(jax.local_devices())
  params, used = checkpoint.restore_params(workdir, abstract_params(config, mesh), step)
  return config, params, used
