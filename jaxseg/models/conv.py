"""3D convolution in three interchangeable forms sharing one parameter layout, and 2x upsampling.

XLA's CPU backend runs 3D convolutions at a fraction of its matmul speed, and the backward pass of a strided
one about 50-60x slower than its forward, so two rewrites exist beside the native form: "depth_folded" (a sum
of 2D convolutions over the kernel's first axis, which XLA:CPU runs through YNNPACK; stride-1 'SAME'
convolutions get their own backward pass of the same kind, strided ones their own kernel gradient) and
"im2col" (the in-plane taps of each depth tap gathered into channels, kx matrix products; the gathered columns
are recomputed in the backward pass). The default "auto" picks per layer the form measured fastest for its
kind on the backend (``resolve_impl``: depth_folded on a CPU, where the ResEnc M train step is well over twice
as fast as the native one (README, "Speed and memory"); native on accelerators). All forms use the same
``kernel`` parameter of shape ``[kx, ky, kz, C_in, C_out]`` (the layout of ``flax.linen.Conv``), so a
checkpoint trained with one runs with the others.
``UpConv3D`` is the kernel-2, stride-2 transposed convolution of U-Net decoders as one matrix product, in
every form; other transposed convolutions whose output is d times the input (SegResNet's kernel-3, stride-2
upsampling, an input-dilated Conv3D) run on the undilated input, phase by phase, in both rewritten forms
(``_phase_split_conv``), and depthwise convolutions (MedNeXt's) as fused sums of shifted slices
(``_depthwise_conv``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_DIMS = ("NDHWC", "DHWIO", "NDHWC")
_DIMS_2D = ("NHWC", "HWIO", "NHWC")


class Conv3D(nn.Module):
  """A 3D convolution with 'SAME' padding for odd kernels and optional stride.

  Attributes:
    features: output channels.
    kernel_size: kernel extent per spatial axis.
    strides: stride per spatial axis.
    use_bias: add a bias (off before a normalisation layer, which would cancel it).
    impl: "native" (one lax 3D convolution), "depth_folded" (a sum of 2D convolutions over the first
      kernel axis), "im2col" (kx matrix products over gathered in-plane taps) or "auto" (the form measured
      fastest for the layer's kind on the backend: ``resolve_impl``). Both rewritten forms run a transposed
      convolution whose output is d times its input on the undilated input (``_phase_split_conv``) and a
      depthwise convolution as a sum of shifted slices (``_depthwise_conv``); other grouped convolutions
      run native in im2col.
    dtype: compute dtype; parameters stay float32.
    groups: feature groups (``C_in`` for a depthwise convolution, as MedNeXt uses); the kernel is
      ``[kx, ky, kz, C_in / groups, features]``.
    input_dilation: zeros inserted between input voxels (``d - 1`` per gap). With stride 1 this is a
      transposed convolution of stride ``d`` in correlation form (the kernel is not flipped; a learned
      kernel absorbs the flip), so upsampling layers share this module and its depth-folded form.
    padding: explicit ``(low, high)`` padding per spatial axis (of the dilated input), overriding 'SAME'.
  """

  features: int
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  strides: tuple[int, int, int] = (1, 1, 1)
  use_bias: bool = True
  # A bias followed by instance normalisation is cancelled by it: its true gradient is zero, and an adaptive
  # optimizer would turn the rounding noise of that zero into steps of learning-rate size that differ with
  # the device count. ``frozen_bias`` keeps the parameter (nnU-Net's networks have it, so counts match) and
  # stops its gradient.
  frozen_bias: bool = False
  impl: str = "native"
  dtype: Any = jnp.float32
  groups: int = 1
  input_dilation: int = 1
  padding: tuple[tuple[int, int], ...] | None = None

  @nn.compact
  def __call__(self, x: jax.Array | Sequence[jax.Array]) -> jax.Array:
    """x: [B, X, Y, Z, C_in] -> [B, X/sx, Y/sy, Z/sz, features].

    ``x`` may be a sequence of arrays whose channels together are the input (a U-Net decoder's upsampled
    features and skip connection): the parameters are those of their concatenation, and a depth-folded
    stride-1 layer convolves each part with its slice of the kernel and sums, without the concatenated copy
    (``_same_conv_of_parts``); every other form concatenates.
    """
    parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    in_features = sum(p.shape[-1] for p in parts)
    if in_features % self.groups or self.features % self.groups:
      raise ValueError(f"Conv3D: {in_features} input and {self.features} output channels do not divide "
                       f"into {self.groups} groups")
    kernel = self.param("kernel", nn.initializers.he_normal(),
                        (*self.kernel_size, in_features // self.groups, self.features), jnp.float32)
    parts = tuple(p.astype(self.dtype) for p in parts)
    kernel = kernel.astype(self.dtype)
    if self.padding is not None:
      pads = [tuple(p) for p in self.padding]
    else:
      pads = [((k - 1) // 2, k // 2) if s == 1 else _strided_pad(k, s) for k, s in
              zip(self.kernel_size, self.strides)]
    depthwise = self.groups > 1 and self.groups == in_features == self.features
    impl = resolve_impl(self.impl, self.strides, self.input_dilation, self.groups, depthwise=depthwise)
    if impl not in ("native", "depth_folded", "im2col"):
      raise ValueError(f"model.conv: unknown convolution implementation {self.impl!r}; "
                       "use 'auto', 'native', 'depth_folded' or 'im2col'")
    if len(parts) > 1 and impl == "depth_folded" and _plain_same(self.kernel_size, self.strides, pads,
                                                                 self.input_dilation, self.groups):
      y = _same_conv_of_parts(parts, kernel)
    else:
      x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
      y = self._conv(x, kernel, pads, impl, depthwise)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      if self.frozen_bias:
        bias = jax.lax.stop_gradient(bias)
      y = y + bias.astype(self.dtype)
    return y

  def _conv(self, x, kernel, pads, impl, depthwise):
    """The convolution of one input array in the form ``impl``."""
    pointwise = self.kernel_size == (1, 1, 1) and self.groups == 1 and all(p == (0, 0) for p in pads)
    native = lambda: jax.lax.conv_general_dilated(x, kernel, self.strides, pads,
                                                  lhs_dilation=(self.input_dilation,) * 3,
                                                  dimension_numbers=_DIMS, feature_group_count=self.groups)
    if pointwise:
      # A 1x1x1 convolution is a matmul over channels; as a dot it compiles and runs far faster on CPUs.
      y = _pointwise_conv(x, kernel, self.strides, self.input_dilation)
    elif impl == "native":
      y = native()
    elif (self.groups == 1 or depthwise) and _phase_splits(x.shape[1:4], self.kernel_size, self.strides, pads,
                                                          self.input_dilation):
      # A transposed convolution: both rewritten forms run it on the undilated input, phase by phase.
      y = _phase_split_conv(x, kernel, pads, self.input_dilation, depthwise)
    elif depthwise and self.input_dilation == 1:  # both rewritten forms: a fused sum of shifted slices
      y = _depthwise_conv(x, kernel, self.strides, pads)
    elif impl == "depth_folded" and _plain_same(self.kernel_size, self.strides, pads, self.input_dilation,
                                                     self.groups):
      y = _depth_folded_same(x, kernel)
    elif impl == "depth_folded" and self.groups == 1 and self.input_dilation == 1 and _strided_own_backward(
        x.shape, self.strides):
      y = _depth_folded_strided(x, kernel, tuple(self.strides), tuple(tuple(p) for p in pads))
    elif impl == "depth_folded":
      y = _depth_folded_conv(x, kernel, self.strides, pads, self.input_dilation, self.groups)
    elif self.groups == 1:
      y = _im2col_conv(x, kernel, self.strides, pads, self.input_dilation)
    else:  # im2col has no grouped form
      y = native()
    return y


def resolve_impl(impl: str, strides=(1, 1, 1), input_dilation: int = 1, groups: int = 1,
                 backend: str | None = None, depthwise: bool = False) -> str:
  """The form one layer runs: ``auto`` is the form measured fastest for the layer's kind on the backend.

  On a CPU backend (README, "Speed and memory": per-layer and whole-step figures): ungrouped convolutions run
  depth_folded, whose 2D convolutions XLA:CPU hands to YNNPACK and whose stride-1 backward pass is its own
  (``_depth_folded_same``): the ResEnc M train step was 2.2x native's at commit 8792485, before the
  plane-by-plane scans (``_same_conv``, ``_kernel_gradient``). Strided layers stay depth_folded: im2col's then
  faster strided backward did not show in the whole step (two A/Bs), and with its own kernel gradient
  (``_depth_folded_strided``) depth_folded is at least as fast per layer (``--conv_layers``, "down" rows).
  Input-dilated ones run im2col: a transposed convolution whose output is d times its input (SegResNet's
  upsampling) is the phase split in either rewritten form (``_phase_split_conv``), and for other input-dilated
  layers im2col was 3.5-5.5x native's forward + backward where depth_folded was no faster than native
  (`launch/bench_peers.py --conv_layers`, README). Depthwise ones (``depthwise``: groups = input = output
  channels; MedNeXt's) run depth_folded, which for them is a fused sum of shifted slices (``_depthwise_conv``)
  or, upsampling, the phase split: XLA:CPU's grouped convolution was 20-37x slower forward + backward
  (``--conv_layers``). Other grouped ones run native. Accelerators run every layer native (cuDNN, the TPU
  compiler).
  """
  if impl != "auto":
    return impl
  if (backend or jax.default_backend()) != "cpu" or (groups != 1 and not depthwise):
    return "native"
  return "im2col" if input_dilation != 1 and not depthwise else "depth_folded"


class UpConv3D(nn.Module):
  """A transposed 3D convolution of kernel 2 and stride 2, as one matrix product and a voxel shuffle.

  Why: the windows of a kernel-2, stride-2 transposed convolution do not overlap, so each input voxel's
  2x2x2 output block is its channels times a [C_in, 8 F] matrix. XLA:CPU runs the equivalent
  ``flax.linen.ConvTranspose`` as an input-dilated convolution 30-55x slower forward and backward (README,
  "Speed and memory"); a product is fast on every backend. Parameters are ``flax.linen.ConvTranspose``'s
  (``kernel`` [2, 2, 2, C_in, F], applied spatially flipped as that layer applies it, and ``bias``), and the
  output equals its output (tests/test_model_zoo.py), so checkpoints of either load in the other.
  """

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, X, Y, Z, C_in] -> [B, 2X, 2Y, 2Z, features]."""
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, 2, x.shape[-1], self.features),
                        jnp.float32)
    b, nx, ny, nz, _ = x.shape
    y = jnp.einsum("bxyzc,ijkcf->bxiyjzkf", x.astype(self.dtype), kernel[::-1, ::-1, ::-1].astype(self.dtype))
    y = y.reshape(b, 2 * nx, 2 * ny, 2 * nz, self.features)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


def _pointwise_conv(x, kernel, strides, dilation):
  """A 1x1x1 convolution (optionally strided or input-dilated) as a channel matmul."""
  x = x[:, ::strides[0], ::strides[1], ::strides[2]]
  y = jnp.einsum("bxyzc,cd->bxyzd", x, kernel[0, 0, 0])
  if dilation > 1:
    b, nx, ny, nz, c = y.shape
    y = jnp.zeros((b, *((n - 1) * dilation + 1 for n in (nx, ny, nz)), c), y.dtype).at[
        :, ::dilation, ::dilation, ::dilation].set(y)
  return y


def _strided_pad(k: int, s: int) -> tuple[int, int]:
  # Matches 'SAME' for even inputs: output = input / stride, window centred like PyTorch's padding=k//2.
  return (k // 2, k // 2 - (1 if k % 2 == 0 else 0)) if k > 1 else (0, 0)


def _dilate(x: jax.Array, d: int) -> jax.Array:
  """d - 1 zeros between the voxels of x [B, X, Y, Z, C] along each spatial axis."""
  if d == 1:
    return x
  b, *n, c = x.shape
  return jnp.zeros((b, *((m - 1) * d + 1 for m in n), c), x.dtype).at[:, ::d, ::d, ::d].set(x)


def _im2col_conv(x, kernel, strides, pads, dilation=1):
  """The 3D convolution as kx matrix products: for each tap along X, the ky x kz in-plane taps of the
  (strided) input are concatenated along channels and multiplied by that tap's [ky kz C_in, C_out] kernel.

  The gathered columns are ky kz times the input; jax.checkpoint recomputes them in the backward pass
  instead of storing them, so activation memory stays the native convolution's.
  """
  @jax.checkpoint
  def conv(x, kernel):
    kx, ky, kz, c, f = kernel.shape
    xp = jnp.pad(_dilate(x, dilation), ((0, 0), *pads, (0, 0)))
    b = xp.shape[0]
    out = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:4], kernel.shape[:3], strides)]
    total = None
    for i in range(kx):
      cols = [jax.lax.slice(xp, (0, i, j, l, 0),
                            (b, i + (out[0] - 1) * strides[0] + 1, j + (out[1] - 1) * strides[1] + 1,
                             l + (out[2] - 1) * strides[2] + 1, c), (1, *strides, 1))
              for j in range(ky) for l in range(kz)]
      cols = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
      y = jnp.dot(cols.reshape(-1, ky * kz * c), kernel[i].reshape(ky * kz * c, f))
      total = y if total is None else total + y
    return total.reshape(b, *out, f)
  return conv(x, kernel)


def _phase_splits(spatial, kernel_size, strides, pads, dilation) -> bool:
  """Whether an input-dilated convolution is a transposed one whose output is d times its input on every axis,
  or up to d - 1 voxels shorter (SegResNet's kernel-3, stride-2 upsampling is exactly 2n; MedNeXt's, without
  output padding, 2n - 1): the case ``_phase_split_conv`` runs."""
  return (dilation > 1 and tuple(strides) == (1, 1, 1)
          and all(0 <= dilation * n - _out_len(n, k, lo, hi, dilation=dilation) < dilation
                  for n, k, (lo, hi) in zip(spatial, kernel_size, pads)))


def _out_len(n: int, k: int, lo: int, hi: int, stride: int = 1, dilation: int = 1) -> int:
  """Output length of a convolution of kernel k on n voxels dilated by d and padded by (lo, hi)."""
  return ((n - 1) * dilation + 1 + lo + hi - k) // stride + 1


def _pad_spatial(v: jax.Array, pads) -> jax.Array:
  """v [B, X, Y, Z, C] padded with zeros per spatial axis by (low, high) or (low, high, interior); negative
  padding crops (``lax.pad``)."""
  return jax.lax.pad(v, jnp.zeros((), v.dtype), ((0, 0, 0), *((*p, 0)[:3] for p in pads), (0, 0, 0)))


def _phase_taps(k: int, pad_low: int, d: int) -> tuple[int, list[list[int]]]:
  """One axis of an input-dilated convolution split by output phase.

  Output voxel ``o = d m + r`` (phase r) sums, over taps t, the dilated input at ``o + t - pad_low``, which is
  a real voxel ``x[m + s]`` only when ``r + t - pad_low = d s``. Returns the smallest shift s and, per phase
  r, the tap applied to ``x[m + s]`` for each shift s from it, ``k`` (an index past the kernel: a zero tap)
  where none is.
  """
  taps = {(r, (r + t - pad_low) // d): t for r in range(d) for t in range(k) if (r + t - pad_low) % d == 0}
  shifts = [s for _, s in taps]
  lo, hi = min(shifts), max(shifts)
  return lo, [[taps.get((r, s), k) for s in range(lo, hi + 1)] for r in range(d)]


def _phase_split_conv(x: jax.Array, kernel: jax.Array, pads, d: int, depthwise: bool = False) -> jax.Array:
  """A transposed convolution (input-dilated, output d times the input per axis, or up to d - 1 voxels
  shorter) computed on the undilated input, one output phase at a time folded into one product.

  Why: of the dilated input's voxels, 7 in 8 are zeros (d = 2), and XLA:CPU multiplies them all: SegResNet's
  kernel-3, stride-2 upsampling ran 0.01-0.09x PyTorch's ConvTranspose3d as native, depth-folded or
  im2col convolution (README, "Speed and memory", dilated rows). Each output phase (its position modulo d
  along each axis) is a small stride-1 convolution of the undilated input (for kernel 3, d 2: one or two taps
  per axis). Dense: the S^3 shifted copies of the input (S = 2 there) concatenated along channels, times a
  [S^3 C_in, d^3 F] matrix holding each phase's taps (zeros where a phase does not use a shift), give every
  phase at once, a sub-pixel convolution; that multiplies 64 C_in F per input voxel where 27 are needed,
  but as one large product it ran faster than one product per phase or per shift (one-off timings). The
  gathered columns are recomputed in the backward pass (jax.checkpoint), as in ``_im2col_conv``. Depthwise
  (kernel [k, k, k, 1, C]): each phase is a sum of its shifted inputs times per-channel taps, elementwise
  (``_depthwise_conv``'s reason). A voxel shuffle interleaves the phases and a crop drops what a shorter
  output does not have. The kernel keeps Conv3D's layout, so checkpoints are unchanged.
  """
  b, *n, c = x.shape
  f = kernel.shape[-1]
  lengths = [_out_len(m, k, lo, hi, dilation=d) for m, k, (lo, hi) in zip(n, kernel.shape[:3], pads)]
  axes = [_phase_taps(k, lo, d) for k, (lo, _) in zip(kernel.shape[:3], pads)]
  shifts = [len(table[0]) for _, table in axes]
  # The smallest shift is never positive (phase pad_low mod d has tap 0 at shift <= 0), so shift lo + i
  # starts at i in the input padded by -lo below.
  pad = lambda v: _pad_spatial(v, [(-lo, max(0, lo + s - 1)) for (lo, _), s in zip(axes, shifts)])
  window = lambda v, i, j, l: jax.lax.slice(v, (0, i, j, l, 0), (b, i + n[0], j + n[1], l + n[2], v.shape[-1]))
  offsets = [(i, j, l) for i in range(shifts[0]) for j in range(shifts[1]) for l in range(shifts[2])]
  (_, tx), (_, ty), (_, tz) = axes
  if depthwise:
    xp = pad(x)
    phases = []
    for px, py, pz in ((px, py, pz) for px in range(d) for py in range(d) for pz in range(d)):
      terms = [window(xp, i, j, l) * kernel[tx[px][i], ty[py][j], tz[pz][l], 0]
               for i, j, l in offsets
               if tx[px][i] < kernel.shape[0] and ty[py][j] < kernel.shape[1] and tz[pz][l] < kernel.shape[2]]
      phases.append(sum(terms[1:], terms[0]) if terms else jnp.zeros((b, *n, c), x.dtype))  # kernel < d: none
    y = jnp.stack(phases, axis=-2)
  else:
    # [S_x, S_y, S_z, d, d, d, C_in, F]: the tap of each (shift, phase) pair, from the kernel with a zero tap
    # appended.
    ix, iy, iz = (np.array(table).T for table in (tx, ty, tz))
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 1), (0, 0), (0, 0)))
    matrix = padded[ix[:, None, None, :, None, None], iy[None, :, None, None, :, None],
                    iz[None, None, :, None, None, :]]
    matrix = matrix.transpose(0, 1, 2, 6, 3, 4, 5, 7).reshape(len(offsets) * c, d ** 3 * f)
    columns = jax.checkpoint(lambda v: jnp.concatenate([window(pad(v), *o) for o in offsets], axis=-1))
    y = jnp.dot(columns(x).reshape(-1, matrix.shape[0]), matrix)
  y = y.reshape(b, *n, d, d, d, f).transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, *(m * d for m in n), f)
  return y[:, :lengths[0], :lengths[1], :lengths[2]]


def _depthwise_conv(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
  """A depthwise convolution (kernel [kx, ky, kz, 1, C]) as a sum of shifted, strided slices times per-channel
  taps, with a backward pass of the same kind.

  Why: XLA:CPU's grouped 3D convolution ran a depthwise 3^3 layer of 32 channels on a 64^3 batch of 2 in
  3.86 s forward and 8.79 s forward + backward, where this elementwise sum, which XLA fuses into one loop,
  with its own backward pass takes 0.054 and 0.448 s (PyTorch 0.028 and 0.493 s; `launch/bench_peers.py
  --conv_layers`, depthwise rows, README). MedNeXt is made of such layers. Autodiff of the sum held one
  full-size array per tap (1.9 GB of temporaries for that layer against native's 0.2 GB), so the backward
  pass is written out (``_depthwise_bwd``).
  """
  return _depthwise(x, kernel, tuple(strides), tuple(tuple(p) for p in pads))


def _shifted_sum(xp: jax.Array, kernel: jax.Array, strides, out) -> jax.Array:
  """sum over taps t of xp[s o + t] kernel[t] for the ``out`` output voxels per axis: the depthwise
  correlation of an already padded input, fused by XLA into one loop."""
  total = None
  for i, j, l in np.ndindex(*kernel.shape[:3]):
    limit = (xp.shape[0], *(t + (m - 1) * s + 1 for t, m, s in zip((i, j, l), out, strides)), xp.shape[-1])
    term = jax.lax.slice(xp, (0, i, j, l, 0), limit, (1, *strides, 1)) * kernel[i, j, l, 0]
    total = term if total is None else total + term
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x, kernel, strides, pads):
  out = [_out_len(n, k, lo, hi, s) for n, k, s, (lo, hi) in zip(x.shape[1:4], kernel.shape[:3], strides, pads)]
  return _shifted_sum(_pad_spatial(x, pads), kernel, strides, out)


def _depthwise_fwd(x, kernel, strides, pads):
  return _depthwise(x, kernel, strides, pads), (x, kernel)


def _depthwise_bwd(strides, pads, residuals, dy):
  """dx: the output gradient dilated by the stride (interior padding), padded so that tap t of the flipped
  kernel meets it, correlated; dkernel: per tap, the shifted input times the output gradient, summed (one
  fused reduction each, one tap after another). Neither holds a per-tap array."""
  x, kernel = residuals
  n, k, m = x.shape[1:4], kernel.shape[:3], dy.shape[1:4]
  # dx[i] = sum_t dy_dilated[i + lo - t] kernel[t] = sum_u dyp[i + u] flipped[u] with dyp = dy_dilated padded
  # by k - 1 - lo below and cropped or padded above to n + k - 1 voxels.
  dyp = _pad_spatial(dy, [(kk - 1 - lo, nn + lo - (mm - 1) * s - 1, s - 1)
                           for nn, kk, mm, s, (lo, _) in zip(n, k, m, strides, pads)])
  dx = _shifted_sum(dyp, kernel[::-1, ::-1, ::-1], (1, 1, 1), n)
  xp = _pad_spatial(x, pads)
  extent = (xp.shape[0], *((mm - 1) * s + 1 for mm, s in zip(m, strides)), xp.shape[-1])

  def tap(offset):  # a lax.map, one tap at a time: unrolled, XLA materialised all 27 shifted inputs at once
    window = jax.lax.dynamic_slice(xp, (0, *offset, 0), extent)[:, ::strides[0], ::strides[1], ::strides[2]]
    return jnp.sum(window * dy, axis=(0, 1, 2, 3), dtype=jnp.float32)

  dkernel = jax.lax.map(tap, jnp.array(list(np.ndindex(*k)), jnp.int32))
  return dx.astype(x.dtype), dkernel.reshape(*k, 1, -1).astype(kernel.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _depth_folded_conv(x, kernel, strides, pads, dilation=1, groups=1, chunks=1):
  """The 3D convolution as kx 2D convolutions over (Y, Z), each on shifted X-slices, summed.

  ``chunks`` > 1 cuts the (sample, X) planes into that many pieces (a divisor of their number), each with its
  own kx 2D convolutions: XLA:CPU runs one 2D convolution on one thread but independent ones side by side
  (``_same_conv``), so ResEnc M's first stride-2 layer (32 -> 64 channels from 64^3) runs its forward in 0.08 s
  instead of 0.16 s, bitwise the same. Only strided layers on large planes do (``_depth_folded_strided``): on
  small planes the pieces gained nothing alone and cost SegResNetDS's 32^3 train step about a fifth.
  """
  kx = kernel.shape[0]
  sx = strides[0]
  if dilation > 1:  # the X axis is dilated by hand; the 2D convolutions dilate (Y, Z)
    b, n = x.shape[:2]
    x = jnp.zeros((b, (n - 1) * dilation + 1, *x.shape[2:]), x.dtype).at[:, ::dilation].set(x)
  x = jnp.pad(x, ((0, 0), pads[0], (0, 0), (0, 0), (0, 0)))
  b, xp, ny, nz, c = x.shape
  out_x = (xp - kx) // sx + 1
  slices = [jax.lax.slice_in_dim(x, d, d + (out_x - 1) * sx + 1, stride=sx, axis=1).reshape(b * out_x, ny, nz, c)
            for d in range(kx)]
  pieces, planes = [], b * out_x
  step = planes // _divisor_at_most(planes, chunks)
  for start in range(0, planes, step):
    total = None
    for d in range(kx):
      y = jax.lax.conv_general_dilated(slices[d][start:start + step], kernel[d], strides[1:], pads[1:],
                                       lhs_dilation=(dilation, dilation), dimension_numbers=_DIMS_2D,
                                       feature_group_count=groups)
      total = y if total is None else total + y
    pieces.append(total)
  total = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)
  return total.reshape(b, out_x, *total.shape[1:])


def _strided_own_backward(shape, strides) -> bool:
  """Whether a strided depth-folded convolution runs as ``_depth_folded_strided``: on large input planes
  (``_scans_planes``). On a 16^3 input (128 -> 256 channels) autodiff's backward took 0.018 s against 0.027 s
  for that function's first form (phase-split input gradient); its current form was not timed there."""
  return max(strides) > 1 and _scans_planes(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depth_folded_strided(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
  """A strided depth-folded convolution on large planes: its planes in pieces side by side
  (``_depth_folded_conv``'s ``chunks``), its kernel gradient one matrix product per tap.

  Why: autodiff's kernel gradient of the folded form is XLA's weight-gradient 2D convolution; one product per
  tap of the strided input and the output gradient (a lax.map, one strided copy alive at a time) took 0.12
  against 0.22 s for ResEnc M's first stride-2 layer (32 -> 64 channels from 64^3, batch 2) and the same time
  from 32^3. The input gradient stays autodiff's (the chunked 2D convolutions' transposes: 0.14 s there, where
  a phase-split transposed convolution of the output gradient took 0.16 s). One-off timings; the layer's
  forward + backward is the ``--conv_layers`` "down" row (README, "Speed and memory").
  """
  return _depth_folded_conv(x, kernel, strides, pads, chunks=_WHOLE_VOLUME_CHUNKS)


def _depth_folded_strided_fwd(x, kernel, strides, pads):
  return _depth_folded_conv(x, kernel, strides, pads, chunks=_WHOLE_VOLUME_CHUNKS), (x, kernel)


def _depth_folded_strided_bwd(strides, pads, residuals, dy):
  x, kernel = residuals
  dy = dy.astype(x.dtype)
  chunked = lambda v: _depth_folded_conv(v, kernel, strides, pads, chunks=_WHOLE_VOLUME_CHUNKS)
  dx = jax.vjp(chunked, x)[1](dy)[0]
  dkernel = _kernel_gradient_by_tap(_pad_spatial(x, pads), dy, kernel.shape[:3], strides).astype(kernel.dtype)
  return dx.astype(x.dtype), dkernel


_depth_folded_strided.defvjp(_depth_folded_strided_fwd, _depth_folded_strided_bwd)


# Smallest (Y, Z) plane, in voxels, that the stride-1 'SAME' depth-folded convolution and its kernel gradient
# process plane by plane (_same_conv, _kernel_gradient); smaller planes run whole-volume or tap by tap.
_PLANE_SCAN_MIN_VOXELS = 1024


# Pieces a strided depth-folded convolution on large planes cuts its planes into, each with its own 2D
# convolutions (4 and 8 measured alike, 2 slower, on ResEnc M's stride-2 layers at 64^3 and 32^3).
_WHOLE_VOLUME_CHUNKS = 4

# Output planes per scan step of _same_conv: enough independent 2D convolutions in one loop body for XLA:CPU
# to run them side by side (8 measured fastest of 2, 4, 8, 16, 32 at 32 channels on 64^3 and 64 on 32^3).
_PLANES_PER_STEP = 8


def _divisor_at_most(n: int, most: int) -> int:
  """The largest divisor of n that is at most ``most``."""
  return max(p for p in range(1, most + 1) if n % p == 0)


def _scans_planes(shape) -> bool:
  """Whether a [B, X, Y, Z, C] volume's (Y, Z) planes are large enough to process one at a time."""
  return shape[2] * shape[3] >= _PLANE_SCAN_MIN_VOXELS


def _plain_same(kernel_size, strides, pads, dilation, groups) -> bool:
  """A stride-1, undilated, ungrouped convolution of an odd kernel with 'SAME' padding: the case whose
  backward pass ``_depth_folded_same`` rewrites (a U-Net's residual blocks are nearly all of this kind)."""
  return (tuple(strides) == (1, 1, 1) and dilation == 1 and groups == 1 and all(k % 2 for k in kernel_size)
          and [tuple(p) for p in pads] == [(k // 2, k // 2) for k in kernel_size])


@jax.custom_vjp
def _depth_folded_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The depth-folded 'SAME' convolution with a backward pass of the same speed class as its forward.

  Why: XLA:CPU hands 2D convolutions to YNNPACK, so the depth-folded forward is 1.6-2.8x native's at a U-Net's
  high-resolution stages, but autodiff's backward of the folded form is a weight-gradient 2D convolution
  XLA runs slowly (README, "Speed and memory"). Here the input gradient is itself a depth-folded convolution
  (of the output gradient with the flipped, transposed kernel) and the kernel gradient one matrix product
  per tap (``_kernel_gradient``), both exact up to float rounding (tests/test_models.py,
  tests/test_model_zoo.py).
  """
  return _same_conv(x, kernel)


def _same_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-1 'SAME' convolution of an odd kernel, depth-folded: whole volume or plane by plane.

  Why two ways: the whole-volume form runs kx 2D convolutions over every X-plane at once, each writing a
  full-size output that is then summed; on large planes a lax.scan over the (sample, X) output planes sums
  the kx 2D convolutions of one plane while it is in cache instead: 1.7-2.0x faster at 32 channels on 64^3
  and 1.05-1.25x at 64 on 32^3, the same values bitwise, but 1.3-1.7x slower on 16^3 and 8^3 planes (README,
  "Speed and memory"). Planes of at least _PLANE_SCAN_MIN_VOXELS voxels scan, as in _kernel_gradient.

  Why several planes per step: XLA:CPU runs each YNNPACK 2D convolution on one thread (a 2D convolution takes
  the same time pinned to one core as on two), but runs independent operations of a loop body side by side
  when the body holds enough of them. So each scan step computes _PLANES_PER_STEP output planes, each from
  its own window and its own kx convolutions: 1.5x faster at 32 channels on 64^3 and 1.7x at 64 on 32^3
  than one plane per step, bitwise the same values (README, "Speed and memory").
  """
  pads = [(k // 2, k // 2) for k in kernel.shape[:3]]
  b, nx, ny, nz, c = x.shape
  if not _scans_planes(x.shape):
    return _depth_folded_conv(x, kernel, (1, 1, 1), pads)
  kx = kernel.shape[0]
  xp = jnp.pad(x, ((0, 0), pads[0], (0, 0), (0, 0), (0, 0)))
  per_step = _divisor_at_most(nx, _PLANES_PER_STEP)

  def step(carry, index):
    sample, row = index // (nx // per_step), index % (nx // per_step) * per_step
    window = jax.lax.dynamic_slice(xp, (sample, row, 0, 0, 0), (1, per_step + kx - 1, ny, nz, c))[0]
    planes = []
    for p in range(per_step):
      total = None
      for d in range(kx):
        y = jax.lax.conv_general_dilated(window[p + d:p + d + 1], kernel[d], (1, 1), pads[1:],
                                         dimension_numbers=_DIMS_2D)
        total = y if total is None else total + y
      planes.append(total)
    return carry, jnp.concatenate(planes)

  _, planes = jax.lax.scan(step, None, jnp.arange(b * nx // per_step))
  return planes.reshape(b, nx, *planes.shape[2:])


def _depth_folded_same_fwd(x, kernel):
  return _depth_folded_same(x, kernel), (x, kernel)


def _depth_folded_same_bwd(residuals, dy):
  x, kernel = residuals
  flipped = jnp.swapaxes(kernel[::-1, ::-1, ::-1], 3, 4)
  dx = _same_conv(dy.astype(x.dtype), flipped)  # the forward's dtype
  dkernel = _kernel_gradient(x, dy.astype(x.dtype), kernel.shape[:3]).astype(kernel.dtype)
  return dx.astype(x.dtype), dkernel


def _same_conv_of_parts(parts: Sequence[jax.Array], kernel: jax.Array) -> jax.Array:
  """The depth-folded 'SAME' convolution of the channel concatenation of ``parts``: the sum of each part's
  convolution with its slice of the kernel's input channels (equal up to float rounding).

  Why: a U-Net decoder's first convolution reads its upsampled features and skip connection concatenated;
  convolved part by part, neither the concatenated copy nor the split of its gradient is made. ResEnc M's
  train step at 64^3, batch 2: 6.99 and 6.79 s against 7.16 and 7.12 s concatenated (one-off, alternated in
  one process); its forward did not change measurably (README, "Speed and memory")."""
  total, start = None, 0
  for part in parts:
    c = part.shape[-1]
    y = _depth_folded_same(part, kernel[:, :, :, start:start + c])
    total = y if total is None else total + y
    start += c
  return total


def _kernel_gradient(x: jax.Array, dy: jax.Array, kernel_size, by_plane: bool | None = None) -> jax.Array:
  """dL/dkernel of a stride-1 'SAME' convolution: for each tap, the shifted input times the output gradient.

  Each tap is a [C_in, N] x [N, C_out] product with N every voxel of the batch. Tap by tap (a lax.map over
  the taps), the whole input and output gradient stream through memory once per tap, 27 times for 3^3; at a
  U-Net's high-resolution stages that traffic is the cost. There a lax.scan over the (sample, X) planes of
  the output gradient keeps the kx input planes and one output plane in cache while all kx ky kz taps use
  them (float32 accumulation): 1.5-1.6x faster than the tap map for 32 channels at 64^3 and 64 at 32^3, but
  slower on small planes (1.6x slower for 320 channels at 8^3), whose products are too small to run well;
  so planes of at least _PLANE_SCAN_MIN_VOXELS voxels scan, smaller ones map over taps (``by_plane``
  overrides; README, "Speed and memory", has the timings). Neither holds a shifted copy of the whole input
  per tap (an unrolled loop over taps held all 27: 2.2 GB against 0.5 GB for a 32-channel 64^3 batch of 2).
  XLA's cost analysis counts a loop body once, so benchmark.native_step_flops counts FLOPs on the native
  form's program.
  """
  kx, ky, kz = kernel_size
  b, nx, ny, nz, c = x.shape
  f = dy.shape[-1]
  xp = jnp.pad(x, ((0, 0), (kx // 2, kx // 2), (ky // 2, ky // 2), (kz // 2, kz // 2), (0, 0)))
  contract = lambda a, g: jax.lax.dot_general(a.reshape(-1, c), g, (((0,), (0,)), ((), ())),
                                              preferred_element_type=jnp.float32)
  if not (_scans_planes(x.shape) if by_plane is None else by_plane):
    return _kernel_gradient_by_tap(xp, dy, kernel_size)

  def plane(total, index):
    sample, row = index // nx, index % nx
    grad = jax.lax.dynamic_slice(dy, (sample, row, 0, 0, 0), (1, 1, ny, nz, f)).reshape(-1, f)
    window = jax.lax.dynamic_slice(xp, (sample, row, 0, 0, 0), (1, kx, ny + ky - 1, nz + kz - 1, c))[0]
    taps = [contract(window[i, j:j + ny, l:l + nz], grad) for i in range(kx) for j in range(ky) for l in range(kz)]
    return total + jnp.stack(taps), None

  total, _ = jax.lax.scan(plane, jnp.zeros((kx * ky * kz, c, f), jnp.float32), jnp.arange(b * nx))
  return total.reshape(kx, ky, kz, c, f)


_depth_folded_same.defvjp(_depth_folded_same_fwd, _depth_folded_same_bwd)


def _kernel_gradient_by_tap(xp: jax.Array, dy: jax.Array, kernel_size, strides=(1, 1, 1)) -> jax.Array:
  """dL/dkernel of a convolution from its padded input ``xp`` and output gradient ``dy``: for each tap, the
  input window at that offset (strided like the convolution) times the output gradient, one [C_in, N] x
  [N, C_out] product with float32 accumulation. A lax.map over the taps keeps one shifted copy of the input
  alive at a time (an unrolled loop held all of them)."""
  b, c, f = xp.shape[0], xp.shape[-1], dy.shape[-1]
  span = [(n - 1) * s + 1 for n, s in zip(dy.shape[1:4], strides)]
  rows = dy.reshape(-1, f)

  def tap(offset):
    window = jax.lax.dynamic_slice(xp, (0, *offset, 0), (b, *span, c))[:, ::strides[0], ::strides[1], ::strides[2]]
    return jax.lax.dot_general(window.reshape(-1, c), rows, (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)

  return jax.lax.map(tap, jnp.array(list(np.ndindex(*kernel_size)), jnp.int32)).reshape(*kernel_size, c, f)
