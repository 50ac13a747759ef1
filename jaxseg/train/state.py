"""The train state: a plain dict of pytrees, built directly in its sharding.

``{"params", "opt_state", "step", "rng"}``. Built with ``jit(init, out_shardings=...)`` rather than
``device_put`` of a device-0 array: device_put may alias the source buffer, and donating the state in the
first step would then delete it (DESIGN.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from jaxseg import parallel
from jaxseg.models import downsampling_factor

State = dict[str, Any]


def init_params(model, model_cfg: ml_collections.ConfigDict, rng: jax.Array):
  """Parameters of ``model`` (deep-supervision heads included): the smallest valid input sets every shape."""
  side = downsampling_factor(model_cfg)
  return model.init(rng, jnp.zeros((1, side, side, side, 1), jnp.float32), train=True)["params"]


def _make_init(config: ml_collections.ConfigDict, model, optimizer: optax.GradientTransformation):
  def init(rng):
    rng_init, rng_train = jax.random.split(rng)
    params = init_params(model, config.model, rng_init)
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": rng_train}
  return init


def init_state(config: ml_collections.ConfigDict, model, optimizer: optax.GradientTransformation,
               mesh: Mesh) -> State:
  """A fresh train state from ``config.seed``, replicated over ``mesh``."""
  init = _make_init(config, model, optimizer)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.key(config.seed))


def abstract_state(config: ml_collections.ConfigDict, model, optimizer, mesh: Mesh) -> State:
  """Shapes, dtypes and shardings of the state without allocating it (restore targets)."""
  shapes = jax.eval_shape(_make_init(config, model, optimizer), jax.random.key(0))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
