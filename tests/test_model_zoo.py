"""The model zoo: reference parameter counts, output shapes, a gradient step per model, and the registry.

The counts are the reference implementations' (nnU-Net's dynamic_network_architectures, MONAI), measured
there with 1 input channel, 3 classes and kernel 3; here they are measured on abstract shapes
(jax.eval_shape), so no convolution runs. Shapes at full width are abstract too; the gradient steps run at
tiny widths and depths, where XLA's CPU compile time, not compute, is the cost.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg import models
from jaxseg.models import downsampling_factor, registry
from jaxseg.models import conv as conv_module
from jaxseg.models.conv import Conv3D, UpConv3D, resolve_impl
from jaxseg.models.mednext import MedNeXt
from jaxseg.models.segresnet_ds import SegResNetDS
from jaxseg.models.swin_unetr import SwinUNETR
from jaxseg.train import state as state_lib
from jaxseg.train.losses import segmentation_loss


def _cfg(name, ds=False, **fields):
  c = dict(name=name, features=(32, 64, 128, 256, 320), blocks_per_stage=(1, 3, 4, 6, 6), deep_supervision=ds,
           dtype="float32", conv="native")
  c.update(fields)
  return ml_collections.ConfigDict(c)


def _abstract_params(cfg, k=3):
  model = models.build_model(cfg, k)
  side = downsampling_factor(cfg)
  return model, jax.eval_shape(lambda key: state_lib.init_params(model, side, key), jax.random.key(0))


@pytest.mark.parametrize("cfg,reference", [
    (_cfg("resenc_unet"), 62_810_412),
    (_cfg("resenc_unet", features=(32, 64, 128, 256, 320, 320), blocks_per_stage=(1, 3, 4, 6, 6, 6)), 102_350_575),
    (_cfg("mednext_s"), 5_550_947),
    (_cfg("mednext_b"), 10_510_883),
    (_cfg("mednext_m"), 17_533_539),
    (_cfg("mednext_l"), 61_726_787),
    (_cfg("segresnet_ds"), 87_163_331),
    (_cfg("swin_unetr"), 62_186_757),
], ids=lambda v: v.name if isinstance(v, ml_collections.ConfigDict) else str(v))
def test_reference_param_counts(cfg, reference):
  _, params = _abstract_params(cfg)
  assert state_lib.count_params(params) == reference
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_resenc_heads_exist_with_and_without_deep_supervision():
  # nnU-Net always builds every head, so a model trained with deep supervision loads without it.
  _, with_ds = _abstract_params(_cfg("resenc_unet", ds=True))
  assert state_lib.count_params(with_ds) == 62_810_412


@pytest.mark.parametrize("cfg,extra", [
    (_cfg("mednext_s", ds=True), (64 + 128 + 256 + 512) * 3 + 4 * 3),  # MONAI's four coarser heads
    (_cfg("segresnet_ds", ds=True), (64 + 128 + 256) * 3 + 3 * 3),     # dsdepth 4: three more heads
], ids=["mednext_s", "segresnet_ds"])
def test_deep_supervision_adds_the_reference_heads(cfg, extra):
  plain = ml_collections.ConfigDict(dict(cfg.to_dict(), deep_supervision=False))
  assert (state_lib.count_params(_abstract_params(cfg)[1])
          == state_lib.count_params(_abstract_params(plain)[1]) + extra)


@pytest.mark.parametrize("cfg,levels", [
    (_cfg("resenc_unet", ds=True, features=(4, 8, 16), blocks_per_stage=(1, 1, 1)), 2),
    (_cfg("mednext_b", ds=True, init_filters=4), 5),
    (_cfg("segresnet_ds", ds=True, init_filters=4), 4),
    (_cfg("swin_unetr", ds=True, feature_size=12), 1),
], ids=lambda v: v.name if isinstance(v, ml_collections.ConfigDict) else str(v))
def test_output_shapes(cfg, levels):
  """Shapes through the registry, abstractly: [B, X, Y, Z, K] float32, deep-supervision levels finest first."""
  model, params = _abstract_params(cfg, k=4)
  f = models.downsampling_factor(cfg)
  x = jax.ShapeDtypeStruct((2, 2 * f, f, 2 * f, 1), jnp.float32)
  y = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x)
  assert y.shape == (2, 2 * f, f, 2 * f, 4) and y.dtype == jnp.float32
  outs = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, train=True), params, x)
  outs = outs if isinstance(outs, list) else [outs]
  assert [o.shape for o in outs] == [(2, 2 * f // 2 ** i, f // 2 ** i, 2 * f // 2 ** i, 4) for i in range(levels)]


def test_downsampling_factors():
  assert models.downsampling_factor(_cfg("resenc_unet")) == 16
  assert models.downsampling_factor(_cfg("resenc_unet", features=(4, 8))) == 2
  for name in ("mednext_s", "mednext_l", "segresnet_ds"):
    assert models.downsampling_factor(_cfg(name)) == 16
  assert models.downsampling_factor(_cfg("swin_unetr")) == 32


@pytest.mark.parametrize("cfg,field", [
    (_cfg("vnet"), "model.name"),
    (_cfg("mednext_s", dtype="float16"), "model.dtype"),
    (_cfg("segresnet_ds", conv="winograd"), "model.conv"),
    (_cfg("resenc_unet", blocks_per_stage=(1, 1)), "model.blocks_per_stage"),
    (_cfg("mednext_m", init_filters=0), "model.init_filters"),
    (_cfg("swin_unetr", feature_size=16), "model.feature_size"),
])
def test_invalid_config_names_the_field(cfg, field):
  with pytest.raises(ValueError, match=field):
    models.check_model_config(cfg)
  with pytest.raises(ValueError, match=field):
    models.build_model(cfg, 3)


def test_models_lists_the_zoo():
  assert models.MODELS == ("resenc_unet", "mednext_s", "mednext_b", "mednext_m", "mednext_l", "segresnet_ds",
                           "swin_unetr")


def _gradient_step(model, side, ds_levels, without_gradient=()):
  """One loss-and-gradient evaluation: finite loss, every parameter reached by a finite, non-zero gradient.

  The coarsest deep-supervision head (``head_<levels - 1>``) is an exception: nnU-Net's weights give its
  level weight 0; so are parameters whose names contain a string of ``without_gradient``.
  """
  x = jax.random.normal(jax.random.key(1), (1, side, side, side, 1))
  labels = jax.random.randint(jax.random.key(2), (1, side, side, side), 0, 3)
  params = jax.jit(lambda key: model.init(key, x, train=True)["params"])(jax.random.key(0))

  def loss_fn(p):
    outputs = model.apply({"params": p}, x, train=True)
    return segmentation_loss(outputs, labels, 3), outputs

  (loss, outputs), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  outputs = outputs if isinstance(outputs, list) else [outputs]
  assert [o.shape for o in outputs] == [(1,) + (side // 2 ** i,) * 3 + (3,) for i in range(ds_levels)]
  assert np.isfinite(float(loss))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g, name = np.asarray(g), jax.tree_util.keystr(path)
    assert np.isfinite(g).all(), name
    if (ds_levels == 1 or f"head_{ds_levels - 1}" not in name) and not any(w in name for w in without_gradient):
      assert np.abs(g).max() > 0, f"{name} gets no gradient"


def test_mednext_gradient_step():
  # One level of every block kind (block, down, bottleneck, up, decoder block, heads) at 4 channels.
  model = MedNeXt(num_classes=3, init_filters=4, encoder_expansion=(2,), decoder_expansion=(2,),
                  bottleneck_expansion=2, blocks_down=(1,), blocks_bottleneck=1, blocks_up=(1,),
                  deep_supervision=True)
  _gradient_step(model, 8, ds_levels=2)


def test_segresnet_ds_gradient_step():
  _gradient_step(SegResNetDS(num_classes=3, init_filters=4, blocks_down=(1, 1, 1), deep_supervision=True), 8,
                 ds_levels=2)


def test_swin_unetr_gradient_step():
  # 32^3 is the smallest valid patch: 16^3 tokens in the first stage, so windows of 7 are padded and shifted.
  # Its bottleneck is one voxel, whose instance norm is identically 0, so encoder10's convs get no gradient
  # (PyTorch refuses instance norm over one voxel; train SwinUNETR on patches of 64 or more).
  _gradient_step(SwinUNETR(num_classes=3, feature_size=12, depths=(2, 1, 1, 1)), 32, ds_levels=1,
                 without_gradient=("encoder10",))


def _transposed_conv_reference(x, w, stride, padding, output_padding):
  """PyTorch's ConvTranspose3d for one sample, by its definition: scatter x[i] * w[k] to i * s + k - p."""
  n, cin = x.shape[0], x.shape[-1]
  k = w.shape[0]
  full = (n - 1) * stride + k
  y = np.zeros((full, full, full, w.shape[-1]))
  for i in np.ndindex(n, n, n):
    for o in np.ndindex(k, k, k):
      y[tuple(a * stride + b for a, b in zip(i, o))] += x[i] @ w[o]
  out = (n - 1) * stride - 2 * padding + k + output_padding
  return y[padding:padding + out, padding:padding + out, padding:padding + out][:out, :out, :out]


@pytest.mark.parametrize("pads,output_padding", [((1, 1), 0), ((1, 2), 1)], ids=["mednext_up", "segresnet_up"])
def test_dilated_conv_is_pytorch_transposed_conv(pads, output_padding):
  """Conv3D with input dilation 2 and a flipped kernel is ConvTranspose3d(3, stride 2, padding 1)."""
  x = np.random.default_rng(0).normal(size=(1, 3, 3, 3, 2)).astype(np.float32)
  conv = Conv3D(3, input_dilation=2, padding=(pads,) * 3, use_bias=False)
  params = conv.init(jax.random.key(0), x)
  y = np.asarray(conv.apply(params, x))[0]
  w = np.asarray(params["params"]["kernel"])[::-1, ::-1, ::-1]
  np.testing.assert_allclose(y, _transposed_conv_reference(x[0], w, 2, 1, output_padding), atol=1e-5)


@pytest.mark.parametrize("use_bias", [True, False])
def test_up_conv_is_flax_conv_transpose(use_bias):
  """UpConv3D (one matmul and a voxel shuffle) is flax.linen.ConvTranspose(kernel 2, stride 2): the same
  initial parameters from a key, the same outputs and gradients; with the kernel unflipped it is not."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5, 6))
  ref, up = nn.ConvTranspose(7, (2, 2, 2), strides=(2, 2, 2), use_bias=use_bias), UpConv3D(7, use_bias=use_bias)
  params = ref.init(jax.random.key(1), x)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(up.init(jax.random.key(1), x))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.asarray(up.apply(params, x)), np.asarray(ref.apply(params, x)), atol=1e-5)
  loss = lambda m: jax.grad(lambda p, x: jnp.sum(m.apply(p, x) ** 3), argnums=(0, 1))
  (gp_r, gx_r), (gp_u, gx_u) = loss(ref)(params, x), loss(up)(params, x)
  np.testing.assert_allclose(np.asarray(gx_u), np.asarray(gx_r), atol=1e-4, rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(gp_r), jax.tree_util.tree_leaves(gp_u)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
  unflipped = jax.tree_util.tree_map(lambda v: v[::-1, ::-1, ::-1] if v.ndim == 5 else v, params)
  assert not np.allclose(np.asarray(up.apply(unflipped, x)), np.asarray(ref.apply(params, x)), atol=1e-3)


def test_auto_conv_form_is_chosen_per_layer_kind_and_backend():
  """``auto`` on a CPU runs im2col for input-dilated layers, depth_folded for other ungrouped ones (strided
  included) and for depthwise ones, native for other grouped ones; accelerators run native everywhere; a
  named form is kept."""
  assert resolve_impl("auto", input_dilation=2, backend="cpu") == "im2col"
  assert resolve_impl("auto", (1, 1, 1), backend="cpu") == "depth_folded"
  assert resolve_impl("auto", (2, 2, 2), backend="cpu") == "depth_folded"
  assert resolve_impl("auto", (1, 1, 1), groups=4, backend="cpu") == "native"
  assert resolve_impl("auto", (1, 1, 1), groups=4, backend="cpu", depthwise=True) == "depth_folded"
  assert resolve_impl("auto", (1, 1, 1), 2, groups=4, backend="cpu", depthwise=True) == "depth_folded"
  assert resolve_impl("auto", (1, 1, 1), groups=4, backend="gpu", depthwise=True) == "native"
  assert resolve_impl("auto", (2, 2, 2), backend="gpu") == "native"
  assert resolve_impl("auto", (1, 1, 1), backend="tpu") == "native"
  assert resolve_impl("im2col", (1, 1, 1), backend="cpu") == "im2col"
  assert resolve_impl("native", (2, 2, 2), backend="cpu") == "native"


@pytest.mark.parametrize("impl", ["depth_folded", "im2col", "auto"])
@pytest.mark.parametrize("kwargs", [
    dict(groups=4, strides=(2, 2, 2), padding=((1, 1),) * 3),
    dict(groups=4, input_dilation=2, padding=((1, 1),) * 3),
    dict(input_dilation=2, padding=((1, 2),) * 3),
    dict(strides=(2, 1, 2)),
    dict(kernel_size=(3, 1, 5), strides=(1, 2, 1)),
    dict(kernel_size=(2, 2, 2), strides=(2, 2, 2)),
    dict(),
    dict(kernel_size=(3, 1, 5)),
], ids=["depthwise_down", "depthwise_up", "dense_up", "dense_down", "anisotropic", "patchify", "same",
        "same_anisotropic"])
def test_conv_forms_match_native_values_and_gradients(kwargs, impl):
  """Every implementation computes the native convolution: outputs and both gradients (the im2col form
  recomputes its columns in the backward pass; the depth-folded form's 'SAME' cases, "same" and
  "same_anisotropic", run its own backward pass)."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 4, 6, 4))
  native = Conv3D(4, **kwargs)
  params = native.init(jax.random.key(1), x)
  other = Conv3D(4, impl=impl, **kwargs)
  np.testing.assert_allclose(np.asarray(native.apply(params, x)), np.asarray(other.apply(params, x)),
                             atol=2e-5, rtol=1e-4)
  loss = lambda m: jax.grad(lambda p, x: jnp.sum(jnp.square(m.apply(p, x))), argnums=(0, 1))
  (gp_n, gx_n), (gp_o, gx_o) = loss(native)(params, x), loss(other)(params, x)
  np.testing.assert_allclose(np.asarray(gx_n), np.asarray(gx_o), atol=1e-4, rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(gp_n), jax.tree_util.tree_leaves(gp_o)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)


def _assert_same_loss_and_gradients(native, other, params, x):
  """Two Conv3D forms give the same jitted loss and gradients (input and kernel) from the same parameters."""
  run = lambda m: jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), argnums=(0, 1)))
  (loss_n, (gp_n, gx_n)), (loss_o, (gp_o, gx_o)) = run(native)(params, x), run(other)(params, x)
  np.testing.assert_allclose(float(loss_o), float(loss_n), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(gx_o), np.asarray(gx_n), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(gp_o["params"]["kernel"]), np.asarray(gp_n["params"]["kernel"]),
                             atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel_size,pads,dilation", [
    ((3, 3, 3), ((1, 2),) * 3, 2),
    ((3, 3, 3), ((1, 1),) * 3, 2),
    ((4, 4, 4), ((2, 2),) * 3, 2),
    ((3, 4, 3), ((1, 2), (2, 2), (1, 1)), 2),
    ((3, 3, 3), ((1, 3),) * 3, 3),
    ((1, 1, 1), ((0, 1),) * 3, 2),
], ids=["segresnet_up", "mednext_up", "kernel4", "anisotropic", "stride3", "kernel1"])
@pytest.mark.parametrize("depthwise", [False, True], ids=["dense", "depthwise"])
@pytest.mark.parametrize("impl", ["depth_folded", "im2col"])
def test_phase_split_transposed_conv_equals_native_values_and_gradients(kernel_size, pads, dilation, depthwise,
                                                                        impl):
  """A transposed convolution whose output is d times its input (or up to d - 1 voxels shorter) runs, in both
  rewritten forms, on the undilated input phase by phase (``_phase_split_conv``: one product, or for a
  depthwise kernel a sum of shifted slices) and equals the native input-dilated convolution: outputs,
  input and kernel gradients, for shift ranges of one, two and three voxels and a kernel smaller than d (a
  phase with no tap); a layer whose output is longer is not split."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5, 3))
  assert conv_module._phase_splits(x.shape[1:4], kernel_size, (1, 1, 1), pads, dilation)
  kwargs = dict(input_dilation=dilation, padding=pads, use_bias=False, groups=3 if depthwise else 1)
  native = Conv3D(3 if depthwise else 4, kernel_size, **kwargs)
  params = native.init(jax.random.key(1), x)
  split = Conv3D(native.features, kernel_size, impl=impl, **kwargs)
  _assert_same_loss_and_gradients(native, split, params, x)
  np.testing.assert_allclose(np.asarray(jax.jit(split.apply)(params, x)), np.asarray(native.apply(params, x)),
                             atol=2e-5, rtol=1e-4)
  assert "conv_general_dilated" not in str(jax.make_jaxpr(split.apply)(params, x))  # not a convolution
  assert not conv_module._phase_splits(x.shape[1:4], (3, 3, 3), (1, 1, 1), ((2, 2),) * 3, 2)


@pytest.mark.parametrize("strides,kernel_size", [((1, 1, 1), (3, 3, 3)), ((2, 2, 2), (3, 3, 3)),
                                                 ((1, 2, 1), (3, 1, 5))], ids=["same", "down", "anisotropic"])
def test_depthwise_conv_is_a_sum_of_shifted_slices_equal_to_native(strides, kernel_size):
  """A depthwise convolution (MedNeXt's) runs in the rewritten forms as a sum of shifted slices
  (``_depthwise_conv``), with no convolution op, and equals XLA's grouped convolution: outputs and both
  gradients; ``auto`` picks it on a CPU and keeps other grouped convolutions native."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 4, 6, 5))
  native = Conv3D(5, kernel_size, strides=strides, groups=5, use_bias=False)
  params = native.init(jax.random.key(1), x)
  fused = Conv3D(5, kernel_size, strides=strides, groups=5, use_bias=False, impl="auto")
  assert "conv_general_dilated" not in str(jax.make_jaxpr(fused.apply)(params, x))
  _assert_same_loss_and_gradients(native, fused, params, x)
  np.testing.assert_allclose(np.asarray(jax.jit(fused.apply)(params, x)), np.asarray(native.apply(params, x)),
                             atol=2e-5, rtol=1e-4)
  assert resolve_impl("auto", strides, groups=5, backend="cpu", depthwise=True) == "depth_folded"
  assert resolve_impl("auto", strides, groups=5, backend="cpu") == "native"  # grouped, not depthwise


@pytest.mark.parametrize("shape,strides,kernel_size,own", [
    ((2, 8, 8, 6, 3), (2, 2, 2), (3, 3, 3), True),
    ((2, 7, 9, 5, 3), (2, 2, 2), (3, 3, 3), True),
    ((1, 9, 6, 7, 3), (3, 3, 3), (3, 1, 5), True),
    ((2, 8, 8, 6, 3), (1, 2, 2), (3, 3, 3), True),
    ((2, 8, 8, 6, 3), (1, 1, 1), (3, 3, 3), False),
], ids=["even", "odd", "stride3_anisotropic_kernel", "anisotropic_strides", "stride1"])
def test_strided_depth_folded_conv_backward_equals_native(monkeypatch, shape, strides, kernel_size, own):
  """A strided depth-folded convolution with large planes (the threshold set to 0 here) runs its own kernel
  gradient (``_depth_folded_strided``: one product per tap), with any strides; outputs and both gradients
  equal native's. A stride-1 layer does not take that path."""
  from jaxseg.models import conv as conv_lib
  monkeypatch.setattr(conv_lib, "_PLANE_SCAN_MIN_VOXELS", 0)
  x = jax.random.normal(jax.random.key(0), shape)
  native = Conv3D(4, kernel_size, strides=strides)
  folded = Conv3D(4, kernel_size, strides=strides, impl="depth_folded")
  params = native.init(jax.random.key(1), x)
  assert conv_lib._strided_own_backward(x.shape, strides) == own
  jaxpr = str(jax.make_jaxpr(folded.apply)(params, x))
  assert ("_depth_folded_strided" in jaxpr) == own
  _assert_same_loss_and_gradients(native, folded, params, x)
  np.testing.assert_allclose(np.asarray(jax.jit(folded.apply)(params, x)), np.asarray(native.apply(params, x)),
                             atol=2e-5, rtol=1e-4)


class _Toy(nn.Module):
  """A per-voxel linear classifier: the smallest model the train loop can use."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.num_classes)(x).astype(jnp.float32)


def test_register_a_model_and_train_it(monkeypatch):
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the zoo as it was
  models.register("toy", models.ModelSpec(builder=lambda cfg, k: _Toy(k), downsampling_factor=lambda cfg: 1))

  cfg = _cfg("toy")
  model = models.build_model(cfg, 3)
  assert "toy" in registry.names() and models.downsampling_factor(cfg) == 1
  params = state_lib.init_params(model, downsampling_factor(cfg), jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 4, 1))
  labels = (x[..., 0] > 0).astype(jnp.int32) * 2

  @jax.jit
  def step(p):
    loss, g = jax.value_and_grad(lambda p: segmentation_loss(model.apply({"params": p}, x, train=True), labels, 3))(p)
    return jax.tree.map(lambda a, b: a - 0.5 * b, p, g), loss

  losses = []
  for _ in range(5):
    params, loss = step(params)
    losses.append(float(loss))
  assert losses[-1] < losses[0]


@pytest.mark.parametrize("by_plane", [False, True])
def test_kernel_gradient_by_plane_and_by_tap_equal_autodiff(by_plane):
  """The depth-folded backward pass's kernel gradient in both of its loops (over planes, used on large
  planes; over taps, on small ones) equals autodiff's gradient of the native convolution, anisotropic
  kernel included."""
  from jaxseg.models.conv import _kernel_gradient
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 4, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 1, 5, 3, 2))
  dy = jax.random.normal(jax.random.key(2), (2, 5, 6, 4, 2))
  native = lambda k: jax.lax.conv_general_dilated(x, k, (1, 1, 1), [(1, 1), (0, 0), (2, 2)],
                                                  dimension_numbers=("NXYZC", "XYZIO", "NXYZC"))
  expected = jax.vjp(native, kernel)[1](dy)[0]
  got = _kernel_gradient(x, dy, kernel.shape[:3], by_plane=by_plane)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel_size,nx", [((3, 3, 3), 5), ((3, 1, 5), 5), ((3, 3, 3), 10)])
def test_plane_by_plane_same_conv_equals_native_values_and_gradients(monkeypatch, kernel_size, nx):
  """The stride-1 'SAME' depth-folded convolution run plane by plane (as on large planes: the threshold set
  to 0 here) gives native's outputs and both gradients; with 10 X-planes each scan step computes 5 of them,
  two steps per sample."""
  from jaxseg.models import conv as conv_lib
  monkeypatch.setattr(conv_lib, "_PLANE_SCAN_MIN_VOXELS", 0)
  assert conv_lib._divisor_at_most(nx, conv_lib._PLANES_PER_STEP) == 5
  x = jax.random.normal(jax.random.key(0), (2, nx, 4, 6, 3))
  native, folded = Conv3D(4, kernel_size=kernel_size), Conv3D(4, kernel_size=kernel_size, impl="depth_folded")
  params = native.init(jax.random.key(1), x)
  np.testing.assert_allclose(np.asarray(native.apply(params, x)), np.asarray(folded.apply(params, x)),
                             atol=2e-5, rtol=1e-4)
  loss = lambda m: jax.grad(lambda p, x: jnp.sum(jnp.square(m.apply(p, x))), argnums=(0, 1))
  grads = [jax.tree_util.tree_leaves(loss(m)(params, x)) for m in (native, folded)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
