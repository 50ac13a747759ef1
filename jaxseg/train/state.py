"""The train state: a plain dict of pytrees, built directly in its sharding.

``{"params", "opt_state", "synth_params", "step", "rng"}``. ``synth_params`` holds the synthesizer's frozen
parameters (empty for the rule-based one): they are checkpointed with the run and never updated.
Built with ``jit(init, out_shardings=...)`` rather than ``device_put`` of a device-0 array: device_put may
alias the source buffer, and donating the state in the first step would then delete it (docs/DESIGN.md).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxseg import parallel

State = dict[str, Any]


def init_params(model, input_side: int, rng: jax.Array):
  """Parameters of ``model`` (deep-supervision heads included) from the smallest valid input cube."""
  return model.init(rng, jnp.zeros((1, input_side, input_side, input_side, 1), jnp.float32),
                    train=True)["params"]


def make_init(model, input_side: int, optimizer: optax.GradientTransformation, synthesizer) -> Callable:
  """``init(rng) -> State``. The model and training keys are split as before synthesis became a stage, so
  a seed gives the same parameters and data keys; the synthesizer's key is derived apart."""
  def init(rng):
    rng_init, rng_train = jax.random.split(rng)
    params = init_params(model, input_side, rng_init)
    return {"params": params, "opt_state": optimizer.init(params),
            "synth_params": synthesizer.init(jax.random.fold_in(rng_train, 0x53594E)),
            "step": jnp.zeros((), jnp.int32), "rng": rng_train}
  return init


def init_state(init: Callable, seed: int, mesh: Mesh) -> State:
  """A fresh train state from ``seed``, replicated over ``mesh``."""
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.key(seed))


def abstract_tree(fn: Callable, mesh: Mesh, *args) -> Any:
  """Shapes, dtypes and (replicated) shardings of ``fn(*args)`` without allocating it: restore targets."""
  shapes = jax.eval_shape(fn, *args)
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
