"""The residual-encoder U-Net: output shapes, exact parameter counts, and the two conv implementations.

The full-size counts against nnU-Net's (62,810,412 for ResEnc M) are pinned in tests/test_model_zoo.py.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg.models import build_model, downsampling_factor
from jaxseg.train import state as state_lib


def _cfg(features, blocks, ds=True, conv="native", dtype="float32"):
  return ml_collections.ConfigDict(dict(name="resenc_unet", features=features, blocks_per_stage=blocks,
                                        deep_supervision=ds, dtype=dtype, conv=conv))


def _init(model, cfg, seed):
  """init_params under jit, as the train state's init runs it (one compilation, not op by op)."""
  return jax.jit(lambda key: state_lib.init_params(model, downsampling_factor(cfg), key))(jax.random.key(seed))


def _expected_params(features, blocks, k, in_ch=1):
  """Independent count from nnU-Net's ResidualEncoderUNet (conv_bias=True, affine instance norm).

  Stem conv + norm; BasicBlockD blocks (two biased convs with norms; a 1x1 conv without bias + norm on the
  skip only where the channel count changes, the stride being an average pool); per decoder stage a biased
  2^3 transposed conv, one biased conv + norm, and a biased 1x1 head (every level has one).
  """
  n = 27 * in_ch * features[0] + features[0] + 2 * features[0]
  cin = features[0]
  for f, b in zip(features, blocks):
    for _ in range(b):
      n += 2 * (27 * cin * f + f + 2 * f) if cin == f else 27 * cin * f + 27 * f * f + 6 * f
      if cin != f:
        n += cin * f + 2 * f
      cin = f
  for s in range(len(features) - 2, -1, -1):
    n += 8 * features[s + 1] * features[s] + features[s]
    n += 27 * 2 * features[s] * features[s] + features[s] + 2 * features[s]
    n += features[s] * k + k
  return n


@pytest.mark.parametrize("features,blocks,k,pinned", [
    ((4, 8), (1, 1), 3, 4_847),
    ((8, 16, 32), (1, 2, 2), 5, 148_642),
])
def test_param_count_and_shapes(features, blocks, k, pinned):
  cfg = _cfg(features, blocks)
  model = build_model(cfg, k)
  params = _init(model, cfg, 0)
  n = state_lib.count_params(params)
  assert n == _expected_params(features, blocks, k)
  assert n == pinned
  side = 2 ** (len(features) - 1) * 2
  x = jax.ShapeDtypeStruct((2, side, side, side, 1), jnp.float32)  # shapes only: the forms' tests run values
  outs = jax.eval_shape(lambda x: model.apply({"params": params}, x, train=True), x)
  assert [o.shape for o in outs] == [(2, side // 2 ** i, side // 2 ** i, side // 2 ** i, k)
                                     for i in range(len(features) - 1)]
  y = jax.eval_shape(lambda x: model.apply({"params": params}, x, train=False), x)
  assert y.shape == (2, side, side, side, k) and y.dtype == jnp.float32


@pytest.mark.parametrize("conv", ["depth_folded", "im2col", "auto"])
def test_conv_forms_match_native_in_the_resenc_unet(conv):
  cfg = _cfg((4, 8, 16), (1, 1, 1))
  native = build_model(cfg, 3)
  folded = build_model(_cfg((4, 8, 16), (1, 1, 1), conv=conv), 3)
  params = _init(native, cfg, 1)
  x = jax.random.normal(jax.random.key(2), (1, 16, 12, 8, 1))
  a = jax.jit(native.apply)({"params": params}, x)
  b = jax.jit(folded.apply)({"params": params}, x)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)


def test_upsampling_keeps_the_conv_transpose_parameter_names():
  """The decoder's upsampling layers (UpConv3D since the CPU speed work) keep the names and shapes that
  flax.linen.ConvTranspose had, deepest first, so checkpoints written before the change still load."""
  features = (4, 8, 16)
  cfg = _cfg(features, (1, 1, 1))
  params = _init(build_model(cfg, 3), cfg, 0)
  ups = {k: v["kernel"].shape for k, v in params.items() if k.startswith("ConvTranspose")}
  assert ups == {"ConvTranspose_0": (2, 2, 2, 16, 8), "ConvTranspose_1": (2, 2, 2, 8, 4)}


def test_bfloat16_compute_keeps_float32_params():
  cfg = _cfg((4, 8), (1, 1), dtype="bfloat16")
  model = build_model(cfg, 3)
  params = _init(model, cfg, 0)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  y = jax.jit(model.apply)({"params": params}, jnp.ones((1, 8, 8, 8, 1)))
  assert y.dtype == jnp.float32 and np.isfinite(np.asarray(y)).all()


def test_unknown_model_is_named():
  with pytest.raises(ValueError, match="model.name"):
    build_model(ml_collections.ConfigDict(dict(_cfg((4,), (1,)).to_dict(), name="vnet")), 3)


@pytest.mark.parametrize("impl", ["native", "depth_folded"])
def test_a_conv_of_channel_parts_is_the_conv_of_their_concatenation(impl):
  """Conv3D((a, b)): the parameters, outputs and gradients of Conv3D(concatenate([a, b])); the depth-folded
  form convolves part by part (no concatenated copy), so it agrees to float rounding, not bit for bit."""
  from jaxseg.models.conv import Conv3D
  r = np.random.default_rng(0)
  a = jnp.asarray(r.normal(size=(2, 6, 34, 34, 3)), jnp.float32)  # planes large enough to scan
  b = jnp.asarray(r.normal(size=(2, 6, 34, 34, 5)), jnp.float32)
  layer = Conv3D(4, impl=impl)
  params = layer.init(jax.random.key(0), jnp.concatenate([a, b], -1))
  assert jax.tree.map(jnp.shape, layer.init(jax.random.key(0), (a, b))) == jax.tree.map(jnp.shape, params)
  whole = lambda p, a, b: jnp.sum(jnp.tanh(layer.apply(p, jnp.concatenate([a, b], -1))))
  parts = lambda p, a, b: jnp.sum(jnp.tanh(layer.apply(p, (a, b))))
  np.testing.assert_allclose(layer.apply(params, (a, b)), layer.apply(params, jnp.concatenate([a, b], -1)),
                             rtol=1e-5, atol=1e-5)
  for g_parts, g_whole in zip(jax.tree.leaves(jax.grad(parts, argnums=(0, 1, 2))(params, a, b)),
                              jax.tree.leaves(jax.grad(whole, argnums=(0, 1, 2))(params, a, b))):
    np.testing.assert_allclose(g_parts, g_whole, rtol=1e-4, atol=1e-4)
