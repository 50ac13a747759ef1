"""Sliding-window inference over volumes far larger than one training patch.

A CT at 1 mm can be 512 x 512 x 1000 voxels; its float32 logits (K classes) would need 4 K GB, more than
one accelerator should hold next to a model. So only the windows live on the devices: each batch of
windows is predicted (optionally with mirroring test-time augmentation) and weighted by the Gaussian
importance map inside one jitted function, sharded over the mesh's "data" axis, and the host adds the
result into its accumulator while the devices already work on the next batch.

Memory, for a volume of V voxels, K classes, window w^3 and window batch B:
  devices: the model's activations for B windows plus B * w^3 * K * 4 bytes (independent of V);
  host:    V * K * 4 bytes for the logit accumulator (plus the input, V * C * 4 bytes).
The summed weights are never stored: windows lie on a regular grid and the Gaussian map is separable,
so the weight sum is the outer product of three 1D sums.

Returned values are the blended *logits* (the Gaussian-weighted mean of the window logits), as in
nnU-Net: softmax or argmax is the caller's choice.
"""

from __future__ import annotations

import collections
import functools
import itertools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Array = jax.Array


def window_starts(length: int, window: int, overlap: float) -> list[int]:
  """Start indices of the windows along one axis (nnU-Net's rule: equally spaced, both ends covered).

  Args:
    length: the axis length (at least ``window``).
    window: the window length.
    overlap: fraction of a window shared with its neighbour, in [0, 1).

  Returns:
    Sorted start indices; the first is 0 and the last ``length - window``.
  """
  if not 0.0 <= overlap < 1.0:
    raise ValueError(f"sliding window: overlap must be in [0, 1), got {overlap}")
  if length < window:
    raise ValueError(f"sliding window: axis of length {length} is shorter than the window {window}")
  step = max(1, int(window * (1.0 - overlap)))
  n = int(np.ceil((length - window) / step)) + 1
  if n == 1:
    return [0]
  actual = (length - window) / (n - 1)
  return [int(np.round(actual * i)) for i in range(n)]


def gaussian_1d(window: int, sigma_scale: float = 0.125) -> np.ndarray:
  """Gaussian importance along one axis: peak 1 at the window centre, sigma = sigma_scale * window.

  Returns:
    float64 [window].
  """
  sigma = max(sigma_scale * window, 1e-6)
  x = np.arange(window, dtype=np.float64) - (window - 1) / 2.0
  return np.exp(-0.5 * (x / sigma) ** 2)


def importance_map(window: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
  """Separable Gaussian importance map [wx, wy, wz] (float32, peak 1, sigma = window / 8 per axis)."""
  gx, gy, gz = (gaussian_1d(w, sigma_scale) for w in window)
  return (gx[:, None, None] * gy[None, :, None] * gz[None, None, :]).astype(np.float32)


def weight_sums(shape: Sequence[int], window: Sequence[int], starts: Sequence[Sequence[int]],
                sigma_scale: float = 0.125) -> list[np.ndarray]:
  """Per-axis sums of the shifted 1D Gaussians; their outer product is the total weight per voxel.

  Returns:
    Three float64 arrays [X], [Y], [Z].
  """
  sums = []
  for length, w, axis_starts in zip(shape, window, starts):
    g = gaussian_1d(w, sigma_scale)
    s = np.zeros(length, np.float64)
    for a in axis_starts:
      s[a:a + w] += g
    sums.append(s)
  return sums


def mirror_axes(tta_mirror: bool | Sequence[int]) -> tuple[tuple[int, ...], ...]:
  """The flips of test-time augmentation: every subset of the spatial axes given (True: all three).

  Returns:
    Tuple of axis tuples (spatial axes 0..2 of a window), the identity ``()`` first.
  """
  if tta_mirror is True:
    axes = (0, 1, 2)
  elif not tta_mirror:
    axes = ()
  else:
    axes = tuple(sorted(set(int(a) for a in tta_mirror)))
    if any(a not in (0, 1, 2) for a in axes):
      raise ValueError(f"sliding window: tta_mirror axes must be in 0..2, got {tta_mirror}")
  return tuple(c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r))


def _weighted(predict_fn: Callable[[Array], Array], windows: Array, weight: Array,
              flips: tuple[tuple[int, ...], ...], out_dtype) -> Array:
  """Mirror-averaged logits of a batch of windows times the importance map.

  Args:
    predict_fn: the window predictor.
    windows: f32 [N, wx, wy, wz, C].
    weight: f32 [wx, wy, wz].
    flips: spatial-axis subsets to mirror (window axes 0..2, i.e. array axes 1..3).

  Returns:
    [N, wx, wy, wz, K] in ``out_dtype``.
  """
  total = None
  for axes in flips:
    ax = tuple(a + 1 for a in axes)
    x = jnp.flip(windows, ax) if ax else windows
    y = predict_fn(x).astype(jnp.float32)
    y = jnp.flip(y, ax) if ax else y
    total = y if total is None else total + y
  return (total * (weight[None, ..., None] / len(flips))).astype(out_dtype)


# predict_fn is a ``jax.tree_util.Partial``: its bound arguments (parameters) are traced, its function static,
# so the same model reuses one compilation across cases and validations.
_weighted_window_logits = jax.jit(_weighted, static_argnames=("flips", "out_dtype"))


class ConstantParamsPredictor:
  """A window predictor whose parameters are constants of its compiled program, compiled once per object.

  Why: with the parameters as arguments, XLA:CPU copies every depth-folded layer's kernel taps out of the
  kernel in every call (``kernel[d]``, 0.1 s of a 1.6 s ResEnc M forward at 64^3, batch 2, in a
  ``jax.profiler`` trace); compiled in as constants, the copies are folded away at compile time and the
  sliding window of the README's comparison runs about 5% faster (0.88-0.89x MONAI's with the parameters as
  arguments, 0.91-0.95x compiled in: ``launch/bench_peers.py --work=sliding`` with
  ``--config.eval.constant_params=false|true``; README, "Speed and memory"). The price is
  one compilation per parameter set and a second copy of the parameters inside the program, which pays for a
  checkpoint's evaluation or prediction, not for validation during training (new parameters each time).

  The compiled programs belong to this object and go with it, so evaluating many checkpoints in one process
  keeps none of the earlier ones.
  """

  def __init__(self, predict_fn: Callable[[Array], Array]):
    self._predict_fn = predict_fn
    self._programs = {}

  def _program(self, key, fn: Callable) -> Callable:
    if key not in self._programs:
      self._programs[key] = jax.jit(fn)
    return self._programs[key]

  def __call__(self, x: Array) -> Array:
    return self._program("plain", self._predict_fn)(x)

  def weighted_window_logits(self, windows: Array, weight: Array, flips: tuple[tuple[int, ...], ...],
                             out_dtype) -> Array:
    """``_weighted`` with this predictor, compiled on first use."""
    fn = functools.partial(_weighted, self._predict_fn, flips=flips, out_dtype=out_dtype)
    return self._program((flips, jnp.dtype(out_dtype).name), fn)(windows, weight)


def _as_partial(predict_fn: Callable) -> jax.tree_util.Partial:
  if isinstance(predict_fn, jax.tree_util.Partial):
    return predict_fn
  return jax.tree_util.Partial(predict_fn)


def sliding_window_inference(predict_fn: Callable[[Array], Array], volume: np.ndarray,
                             window: Sequence[int], overlap: float, window_batch: int,
                             num_classes: int, mesh: Mesh | None = None,
                             tta_mirror: bool | Sequence[int] = False, pad_value: float = 0.0,
                             sigma_scale: float = 0.125, progress: bool = False) -> np.ndarray:
  """Gaussian-blended sliding-window logits of a whole volume.

  Args:
    predict_fn: maps f32 [N, wx, wy, wz, C] to logits [N, wx, wy, wz, K]. Pass a
      ``jax.tree_util.Partial(apply, params)`` so that parameters are traced arguments and repeated
      calls (validation, many cases) reuse one compilation; a ``ConstantParamsPredictor`` to compile the
      parameters in (once per predictor); a plain function is compiled once per function object.
    volume: f32 [X, Y, Z, C] on the host, already normalised.
    window: (wx, wy, wz), the training patch size.
    overlap: fraction of overlap between neighbouring windows, in [0, 1).
    window_batch: windows per device call; rounded up to a multiple of the mesh's "data" size.
    num_classes: K, checked against the model's output.
    mesh: a Mesh with a "data" axis to shard windows over its devices; None runs on the default device.
    tta_mirror: False, True (mirror over every subset of the three axes, 8 passes) or a list of axes.
    pad_value: value for padding volumes smaller than the window (0 is the bottom of the HU window).
    sigma_scale: Gaussian sigma as a fraction of the window (1/8 by default, as nnU-Net).
    progress: show a tqdm bar over window batches.

  Returns:
    f32 [X, Y, Z, K]: the weighted mean of the window logits at each voxel.
  """
  volume = np.asarray(volume, dtype=np.float32)
  if volume.ndim != 4:
    raise ValueError(f"sliding window: volume must be [X, Y, Z, C], got shape {volume.shape}")
  window = tuple(int(w) for w in window)
  if len(window) != 3 or min(window) < 1:
    raise ValueError(f"sliding window: window must be three positive sizes, got {window}")
  orig_shape = volume.shape[:3]
  pads = [(max(0, w - s) // 2, max(0, w - s) - max(0, w - s) // 2) for s, w in zip(orig_shape, window)]
  if any(p for pair in pads for p in pair):
    volume = np.pad(volume, pads + [(0, 0)], constant_values=pad_value)
  shape = volume.shape[:3]

  starts = [window_starts(s, w, overlap) for s, w in zip(shape, window)]
  positions = list(itertools.product(*starts))
  num_dev = 1 if mesh is None else int(mesh.shape["data"])
  batch = max(1, int(window_batch))
  batch = -(-batch // num_dev) * num_dev
  sharding = None if mesh is None else NamedSharding(mesh, P("data"))

  flips = mirror_axes(tta_mirror)
  if isinstance(predict_fn, ConstantParamsPredictor):
    window_logits = functools.partial(predict_fn.weighted_window_logits, flips=flips, out_dtype=jnp.float32)
  else:
    window_logits = functools.partial(_weighted_window_logits, _as_partial(predict_fn), flips=flips,
                                      out_dtype=jnp.float32)
  weight = jnp.asarray(importance_map(window, sigma_scale))
  if sharding is not None:
    weight = jax.device_put(weight, NamedSharding(mesh, P()))

  acc = np.zeros(shape + (num_classes,), np.float32)
  wx, wy, wz = window

  def dispatch(chunk):
    x = np.full((batch,) + window + (volume.shape[-1],), pad_value, np.float32)
    for i, (a, b, c) in enumerate(chunk):
      x[i] = volume[a:a + wx, b:b + wy, c:c + wz]
    x = jax.device_put(x, sharding) if sharding is not None else jnp.asarray(x)
    return chunk, window_logits(x, weight)

  def collect(item):
    chunk, y = item
    y = np.asarray(y)
    if y.shape[-1] != num_classes or y.shape[1:4] != window:
      raise ValueError(f"sliding window: predict_fn returned windows of shape {y.shape[1:]}, "
                       f"expected {window + (num_classes,)}")
    for i, (a, b, c) in enumerate(chunk):
      acc[a:a + wx, b:b + wy, c:c + wz] += y[i]

  chunks = [positions[i:i + batch] for i in range(0, len(positions), batch)]
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    chunks = tqdm.tqdm(chunks, desc="windows", leave=False)
  # Two batches in flight: the devices compute batch i + 1 while the host adds batch i.
  in_flight = collections.deque()
  for chunk in chunks:
    in_flight.append(dispatch(chunk))
    if len(in_flight) > 1:
      collect(in_flight.popleft())
  while in_flight:
    collect(in_flight.popleft())

  sx, sy, sz = weight_sums(shape, window, starts, sigma_scale)
  inv_yz = (1.0 / (sy[:, None] * sz[None, :])).astype(np.float32)
  for x in range(shape[0]):  # in place, one slab at a time: no full-size temporary
    acc[x] *= (inv_yz / np.float32(sx[x]))[..., None]
  crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, orig_shape))
  if any(p for pair in pads for p in pair):
    acc = np.ascontiguousarray(acc[crop])
  return acc
