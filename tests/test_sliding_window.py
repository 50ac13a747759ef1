"""Sliding-window inference: exact reconstruction, weights, batch and device independence, TTA."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.infer import sliding_window as sw


def _identity(x):
  return x


def _rand_volume(shape, channels=2, seed=0):
  return np.random.default_rng(seed).normal(size=tuple(shape) + (channels,)).astype(np.float32)


@pytest.mark.parametrize("shape,window,overlap", [
    ((20, 17, 13), (8, 8, 8), 0.5),
    ((16, 16, 16), (16, 16, 16), 0.5),   # one window
    ((5, 9, 30), (8, 8, 6), 0.25),       # smaller than the window on two axes: padded
    ((23, 11, 10), (6, 5, 4), 0.75),
])
def test_identity_model_reproduces_input(shape, window, overlap):
  vol = _rand_volume(shape)
  out = sw.sliding_window_inference(_identity, vol, window, overlap, window_batch=3, num_classes=2)
  assert out.shape == vol.shape and out.dtype == np.float32
  np.testing.assert_allclose(out, vol, rtol=1e-5, atol=1e-6)


def test_window_starts_cover_and_overlap():
  assert sw.window_starts(8, 8, 0.5) == [0]
  assert sw.window_starts(16, 8, 0.5) == [0, 4, 8]
  starts = sw.window_starts(101, 16, 0.5)
  assert starts[0] == 0 and starts[-1] == 101 - 16
  assert max(np.diff(starts)) <= 8
  with pytest.raises(ValueError, match="overlap"):
    sw.window_starts(16, 8, 1.0)


def test_weight_sums_match_explicit_accumulation():
  shape, window = (19, 14, 11), (8, 6, 5)
  starts = [sw.window_starts(s, w, 0.5) for s, w in zip(shape, window)]
  g = sw.importance_map(window)
  explicit = np.zeros(shape)
  for a in starts[0]:
    for b in starts[1]:
      for c in starts[2]:
        explicit[a:a + 8, b:b + 6, c:c + 5] += g
  sx, sy, sz = sw.weight_sums(shape, window, starts)
  np.testing.assert_allclose(sx[:, None, None] * sy[None, :, None] * sz[None, None, :], explicit, rtol=1e-6)
  assert explicit.min() > 0


def test_importance_map_is_gaussian_with_sigma_one_eighth():
  g = sw.gaussian_1d(16)
  assert g.max() == pytest.approx(np.exp(-0.5 * (0.5 / 2.0) ** 2))  # centre between voxels 7 and 8
  np.testing.assert_allclose(g, g[::-1])
  # sigma = 16 / 8 = 2 voxels: one sigma from the centre (7.5 -> 9.5) the value is exp(-1/2).
  x = np.arange(16) - 7.5
  np.testing.assert_allclose(g, np.exp(-x ** 2 / 8.0))


def test_blending_is_weighted_mean():
  # A model that outputs a constant per window (its window mean) blends into a weighted mean of constants:
  # at every voxel the result must lie between the smallest and largest window value covering it.
  vol = _rand_volume((24, 8, 8), channels=1, seed=3)
  fn = lambda x: jnp.broadcast_to(x.mean(axis=(1, 2, 3), keepdims=True), x.shape)
  out = sw.sliding_window_inference(fn, vol, (8, 8, 8), 0.5, 2, 1)[..., 0]
  starts = sw.window_starts(24, 8, 0.5)
  means = [vol[a:a + 8].mean() for a in starts]
  g = sw.gaussian_1d(8)
  expected = np.zeros(24)
  weights = np.zeros(24)
  for a, m in zip(starts, means):
    expected[a:a + 8] += g * m
    weights[a:a + 8] += g
  np.testing.assert_allclose(out[:, 3, 3], expected / weights, rtol=1e-5, atol=1e-6)


def test_independent_of_window_batch():
  vol = _rand_volume((21, 13, 12), channels=1, seed=1)
  w = jnp.asarray(np.random.default_rng(2).normal(size=(1, 3)).astype(np.float32))
  fn = jax.tree_util.Partial(lambda w, x: jnp.tanh(x @ w) + jnp.roll(x, 1, axis=1) @ w, w)
  outs = [sw.sliding_window_inference(fn, vol, (8, 8, 8), 0.5, b, 3) for b in (1, 2, 5, 64)]
  for o in outs[1:]:
    np.testing.assert_array_equal(o, outs[0])


def test_tta_mirror_equivariant_model_is_unchanged_and_flips_applied():
  vol = _rand_volume((12, 10, 9), channels=1, seed=4)
  out = sw.sliding_window_inference(_identity, vol, (8, 8, 8), 0.5, 4, 1, tta_mirror=True)
  np.testing.assert_allclose(out, vol, rtol=1e-5, atol=1e-6)
  assert len(sw.mirror_axes(True)) == 8 and sw.mirror_axes(False) == ((),)
  assert sw.mirror_axes((2,)) == ((), (2,))
  # A position-dependent model: TTA averages f(x) with flip(f(flip(x))).
  ramp = jnp.arange(8, dtype=jnp.float32)[None, :, None, None, None]
  fn = lambda x: x + ramp
  out = sw.sliding_window_inference(fn, vol, (8, 8, 8), 0.0, 4, 1, tta_mirror=(0,))
  np.testing.assert_allclose(out, vol + 3.5, rtol=1e-5, atol=1e-5)


def test_wrong_output_channels_is_a_clear_error():
  with pytest.raises(ValueError, match="expected"):
    sw.sliding_window_inference(_identity, _rand_volume((8, 8, 8)), (8, 8, 8), 0.5, 1, num_classes=3)


_MULTI_DEVICE = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import AxisType
    from jaxseg.infer import sliding_window as sw
    assert jax.device_count() == 4, jax.devices()
    vol = np.random.default_rng(1).normal(size=(21, 13, 12, 1)).astype(np.float32)
    w = jnp.asarray(np.random.default_rng(2).normal(size=(1, 3)).astype(np.float32))
    fn = jax.tree_util.Partial(lambda w, x: jnp.tanh(x @ w), w)
    ref = sw.sliding_window_inference(fn, vol, (8, 8, 8), 0.5, 3, 3)
    const = sw.ConstantParamsPredictor(lambda x: jnp.tanh(x @ w))  # w compiled in
    for n in (2, 4):
      mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n], axis_types=(AxisType.Auto,))
      out = sw.sliding_window_inference(fn, vol, (8, 8, 8), 0.5, 3, 3, mesh=mesh)
      np.testing.assert_array_equal(out, ref)
      out = sw.sliding_window_inference(const, vol, (8, 8, 8), 0.5, 3, 3, mesh=mesh)
      np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    ident = sw.sliding_window_inference(lambda x: x, vol, (8, 8, 8), 0.5, 5, 1, mesh=mesh)
    np.testing.assert_allclose(ident, vol, rtol=1e-5, atol=1e-6)
    print("OK")
""")


def test_independent_of_device_count():
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], env=env, capture_output=True, text=True,
                       timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
