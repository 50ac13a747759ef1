"""The same work in jaxseg and in the field's PyTorch tools, timed in one process run (`launch/bench_peers.py`).

Both sides run the same network: nnU-Net's residual-encoder U-Net of one configuration (``model.name=
resenc_unet``; ResEnc M by default: 32-64-128-256-320, blocks 1-3-4-6-6, one decoder conv per stage, conv
bias, instance norm, deep supervision) against dynamic_network_architectures' ResidualEncoderUNet (the
network nnU-Net trains), or ``model.name=segresnet_ds`` against MONAI's SegResNetDS (init_filters 32, blocks
1-2-2-4-4, affine instance norm, dsdepth 4 with deep supervision), or ``model.name=mednext_s|b|m|l`` against
MONAI's ``create_mednext`` (kernel 3), or ``model.name=swin_unetr`` against MONAI's SwinUNETR (v1,
feature_size 48, no deep supervision); each pair has the same parameter count. Each side runs a
train step (forward, Dice + cross-entropy over the deep-supervision levels, backward, SGD update; no
synthesis and no augmentation on either side), and a sliding window over one volume (Gaussian blending, no
mirroring; MONAI's sliding_window_inference on the PyTorch side). The PyTorch packages come from the
optional ``bench`` extra (``pip install -e ".[bench]"``). Each figure is
the median of ``repeats`` timed runs after a warm-up; ratios are PyTorch time / jaxseg time (above 1: jaxseg
faster). The machine is the same for both, so the ratio is what to compare across machines.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxseg import parallel
from jaxseg.config_checks import resolve_config
from jaxseg.models.conv import Conv3D, UpConv3D
from jaxseg.models.registry import CONVS, SEGRESNET_BLOCKS
from jaxseg.infer.bench import benchmark_sliding_window
from jaxseg.infer.predict import inference_conv
from jaxseg.train.benchmark import measure_train_step

# The synthetic-tumour generator's published per-call times (SyntheticTumors, prebuilt texture bank, a
# 96^3 liver patch at 1 mm, median of 5) measured on this project's 2-core machine class; it cannot be
# vendored, so its figures are quoted beside ours.
PUBLISHED_SYNTH_MS = {"tiny": 16.0, "small": 23.0, "medium": 29.0, "large": 130.0, "mix": 165.0}


def _median_time(fn: Callable[[], None], repeats: int) -> float:
  fn()  # Warm-up (allocations, oneDNN primitive caches, XLA compile).
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _torch_resenc(features: Sequence[int], blocks: Sequence[int], num_classes: int, deep_supervision: bool):
  import torch  # pylint: disable=import-outside-toplevel  # Optional: the bench extra.
  from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet  # pylint: disable=import-outside-toplevel
  n = len(features)
  return ResidualEncoderUNet(
      input_channels=1, n_stages=n, features_per_stage=list(features), conv_op=torch.nn.Conv3d,
      kernel_sizes=[[3, 3, 3]] * n, strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
      n_blocks_per_stage=list(blocks), num_classes=num_classes, n_conv_per_stage_decoder=[1] * (n - 1),
      conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
      nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)


# The models with a field network to compare against, and the name of that network in the table.
PEER_MODELS = {"resenc_unet": "dynamic_network_architectures ResidualEncoderUNet",
               "segresnet_ds": "MONAI SegResNetDS",
               **{f"mednext_{v}": f"MONAI MedNeXt-{v.upper()}" for v in "sbml"},
               "swin_unetr": "MONAI SwinUNETR"}


def _torch_segresnet_ds(num_classes: int, deep_supervision: bool):
  from monai.networks.nets import SegResNetDS  # pylint: disable=import-outside-toplevel
  return SegResNetDS(spatial_dims=3, init_filters=32, in_channels=1, out_channels=num_classes,
                     blocks_down=SEGRESNET_BLOCKS, norm=("INSTANCE", {"affine": True}),
                     dsdepth=len(SEGRESNET_BLOCKS) - 1 if deep_supervision else 1)


def torch_network(model: ml_collections.ConfigDict, num_classes: int, deep_supervision: bool):
  """The field's PyTorch network for jaxseg's ``model`` (``PEER_MODELS``), with or without deep supervision
  (SwinUNETR has none on either side). MONAI's networks are compared at the reference width only, where the
  parameter counts are equal."""
  name = model.name
  width = model.get("feature_size", 48) == 48 if name == "swin_unetr" else model.get("init_filters", 32) == 32
  if name not in PEER_MODELS:
    raise ValueError(f"model.name: bench_peers compares {', '.join(PEER_MODELS)}, not {name!r}")
  if not (width or name == "resenc_unet"):
    raise ValueError(f"model: bench_peers compares {name} at its reference width only (init_filters 32, "
                     "feature_size 48), where MONAI's network has the same parameters")
  if name == "resenc_unet":
    return _torch_resenc(tuple(model.features), tuple(model.blocks_per_stage), num_classes, deep_supervision)
  if name == "segresnet_ds":
    return _torch_segresnet_ds(num_classes, deep_supervision)
  if name == "swin_unetr":
    from monai.networks.nets import SwinUNETR  # pylint: disable=import-outside-toplevel
    return SwinUNETR(in_channels=1, out_channels=num_classes, feature_size=48, use_v2=False)
  from monai.networks.nets.mednext import create_mednext  # pylint: disable=import-outside-toplevel
  return create_mednext(name[-1].upper(), spatial_dims=3, in_channels=1, out_channels=num_classes,
                        kernel_size=3, deep_supervision=deep_supervision)


def torch_train_step_s(model: ml_collections.ConfigDict, num_classes: int, batch: int, patch: Sequence[int],
                       repeats: int) -> dict:
  """PyTorch: one nnU-Net-style step (DS-weighted Dice + CE, SGD Nesterov 0.99) on a random batch."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  net = torch_network(model, num_classes, deep_supervision=bool(model.deep_supervision))
  opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
  x = torch.randn(batch, 1, *patch)
  net.train()
  with torch.no_grad():
    outs = net(x)
  outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
  targets = [torch.randint(0, num_classes, (batch, *o.shape[2:])) for o in outs]  # one per output level
  weights = np.array([1 / 2 ** i for i in range(len(outs))])
  weights = weights / weights.sum()

  def loss_of(logits, target):
    onehot = torch.nn.functional.one_hot(target, num_classes).permute(0, 4, 1, 2, 3).float()
    probs = torch.softmax(logits, 1)
    dims = (2, 3, 4)
    dice = (2 * (probs * onehot).sum(dims) + 1e-5) / (probs.sum(dims) + onehot.sum(dims) + 1e-5)
    return torch.nn.functional.cross_entropy(logits, target) + (1 - dice[:, 1:].mean())

  def step():
    opt.zero_grad(set_to_none=True)
    outs = net(x)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    loss = sum(w * loss_of(o, t) for w, o, t in zip(weights, outs, targets))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
    opt.step()

  seconds = _median_time(step, repeats)
  return {"step_s": round(seconds, 3), "num_params": int(sum(p.numel() for p in net.parameters())),
          "torch": torch.__version__, "threads": torch.get_num_threads()}


def torch_sliding_window_s(model: ml_collections.ConfigDict, num_classes: int, volume: Sequence[int],
                           window: Sequence[int], overlap: float, window_batch: int, repeats: int) -> dict:
  """MONAI sliding_window_inference with the same network, Gaussian blending, no mirroring."""
  import torch  # pylint: disable=import-outside-toplevel
  from monai.inferers import sliding_window_inference  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  net = torch_network(model, num_classes, deep_supervision=False).eval()
  x = torch.rand(1, 1, *volume)

  def run():
    with torch.inference_mode():
      sliding_window_inference(x, tuple(window), window_batch, net, overlap=overlap, mode="gaussian",
                               sigma_scale=0.125)

  seconds = _median_time(run, repeats)
  return {"seconds": round(seconds, 3), "voxels_per_s": float(np.prod(volume) / seconds)}


def peer_config(config: ml_collections.ConfigDict, batch: int, patch: Sequence[int]) -> ml_collections.ConfigDict:
  """``config`` set to the compared work: no synthesis, no augmentation, SGD as nnU-Net."""
  c = resolve_config(copy.deepcopy(config))
  c.data.batch_size, c.data.patch_size = int(batch), tuple(int(s) for s in patch)
  c.synth.enabled = False
  c.augment.mirror = c.augment.rot90 = c.augment.spatial = False
  c.augment.intensity_scale, c.augment.intensity_shift = (1.0, 1.0), (0.0, 0.0)
  c.augment.noise_prob = c.augment.blur_prob = 0.0
  c.optim.name = "sgd"
  return c


WORKS = ("train", "sliding")


def compare(config: ml_collections.ConfigDict, batch: int, patch: Sequence[int], volume: Sequence[int],
            window_batch: int, repeats: int, synth_ms: dict | None = None,
            works: Sequence[str] = WORKS) -> list[dict]:
  """Rows of the comparison table: work, the field's figure, jaxseg's, and the ratio (field / jaxseg), for
  the train step and the sliding window (``works``) and the quoted synthesis figures (``synth_ms``)."""
  c = peer_config(config, batch, patch)
  k = 1 + 2 * len(c.data.organs)
  if c.model.name not in PEER_MODELS:  # before any timing, with the one-line error of torch_network
    torch_network(c.model, k, deep_supervision=False)
  rows = []
  if "train" in works:
    rows.append(_train_row(c, k, batch, patch, repeats))
  if "sliding" in works:
    rows.append(_sliding_row(c, k, volume, patch, window_batch, repeats))
  for size, ms in (synth_ms or {}).items():
    rows.append({"work": f"synthetic liver tumours, {size}, 96^3 at 1 mm, per patch",
                 "field": "published generator (quoted)", "field_s": PUBLISHED_SYNTH_MS[size] / 1e3,
                 "jaxseg_s": ms / 1e3, "ratio": round(PUBLISHED_SYNTH_MS[size] / ms, 2)})
  return rows


def _network_name(model: ml_collections.ConfigDict) -> str:
  if model.name == "resenc_unet":
    return f"ResEnc {'-'.join(map(str, model.features))}"
  return model.name


def _train_row(c, k, batch, patch, repeats) -> dict:
  theirs = torch_train_step_s(c.model, k, batch, patch, repeats)
  ours = measure_train_step(c, steps=repeats)
  return {"work": f"train step, {_network_name(c.model)}, batch {batch}, {'x'.join(map(str, patch))}, "
                  f"{k} classes", "field": f"PyTorch {theirs['torch']} ({PEER_MODELS[c.model.name]})",
          "field_s": theirs["step_s"], "jaxseg_s": ours["step_s"],
          "field_params": theirs["num_params"], "jaxseg_params": ours["num_params"],
          "ratio": round(theirs["step_s"] / ours["step_s"], 3), "conv": c.model.conv}


def _sliding_row(c, k, volume, patch, window_batch, repeats) -> dict:
  c.eval.window_batch, c.eval.tta_mirror, c.eval.overlap = int(window_batch), False, 0.5
  theirs = torch_sliding_window_s(c.model, k, volume, patch, 0.5, window_batch, repeats)
  ours = benchmark_sliding_window(c, volume, repeats=repeats, mesh=parallel.make_mesh(jax.local_devices()))
  return {"work": f"sliding window, {_network_name(c.model)}, {'x'.join(map(str, volume))}, windows "
                  f"{'x'.join(map(str, patch))}, "
                  f"overlap 0.5, batch {window_batch}", "field": "MONAI sliding_window_inference",
          "field_s": theirs["seconds"], "jaxseg_s": ours["seconds"],
          "ratio": round(theirs["seconds"] / ours["seconds"], 3), "conv": inference_conv(c),
          "constant_params": ours["constant_params"]}


# ResEnc M's convolution kinds at a 64^3 patch: (kind, input channels, output channels, input side). "same":
# a stride-1 3^3 convolution of each stage; "down": a stage's first, stride-2 one; "up": the decoder's
# kernel-2, stride-2 transposed convolution. Not ResEnc M's: "dilated", SegResNet's upsampling, a kernel-3,
# stride-2 transposed convolution, which jaxseg writes as an input-dilated convolution (both rewritten forms
# run it phase-split); "depthwise", MedNeXt's 3^3 depthwise convolution (both rewritten forms run it as a sum
# of shifted slices).
CONV_LAYERS = (("same", 32, 32, 64), ("same", 64, 64, 32), ("same", 128, 128, 16), ("same", 320, 320, 8),
               ("down", 32, 64, 64), ("down", 64, 128, 32), ("up", 64, 32, 32), ("up", 128, 64, 16),
               ("dilated", 64, 32, 32), ("dilated", 128, 64, 16), ("depthwise", 32, 32, 64),
               ("depthwise", 64, 64, 32))
CONV_IMPLS = tuple(c for c in CONVS if c != "auto")  # the forms auto chooses among


def _torch_layer(kind: str, cin: int, cout: int):
  import torch  # pylint: disable=import-outside-toplevel  # Optional: the bench extra.
  if kind == "up":
    return torch.nn.ConvTranspose3d(cin, cout, 2, stride=2)
  if kind == "dilated":
    return torch.nn.ConvTranspose3d(cin, cout, 3, stride=2, padding=1, output_padding=1)
  return torch.nn.Conv3d(cin, cout, 3, stride=2 if kind == "down" else 1, padding=1,
                         groups=cin if kind == "depthwise" else 1)


def _jax_layer(kind: str, cout: int, impl: str) -> nn.Module:
  if kind == "up":  # every form runs UpConv3D; "xla" is the transposed convolution it replaced
    return (nn.ConvTranspose(cout, (2, 2, 2), strides=(2, 2, 2)) if impl == "xla" else UpConv3D(cout))
  if kind == "dilated":  # ConvTranspose3d(3, stride 2, padding 1, output_padding 1), as SegResNet's decoder
    return Conv3D(cout, (3, 3, 3), input_dilation=2, padding=((1, 2),) * 3, impl=impl)
  return Conv3D(cout, (3, 3, 3), strides=(2, 2, 2) if kind == "down" else (1, 1, 1), impl=impl,
                groups=cout if kind == "depthwise" else 1)


def conv_layer_ratios(layers: Sequence[tuple[str, int, int, int]] = CONV_LAYERS, batch: int = 2,
                      repeats: int = 3) -> list[dict]:
  """One convolution of each kind in ResEnc M: PyTorch's (oneDNN) against jaxseg's, forward and backward
  (what a train step pays) and forward alone (what the sliding window pays).

  The isolated layer says whether a train-step gap is the convolution itself (and at which stage and kind),
  and is cheap enough to repeat under each XLA flag (XLA_FLAGS is read at start-up, so one process per
  setting). The passes are timed apart because the forms differ between them: XLA:CPU hands 2D
  convolutions (the depth-folded form's) to its YNNPACK library, 3D ones to its own emitter, and backward
  passes are convolutions of other layouts (a strided convolution's input gradient is an input-dilated one).
  Returns one row per layer: PyTorch seconds, jaxseg seconds per form and the ratios, for forward +
  backward (``torch_s``, ``<impl>_s``, ``ratio_<impl>``) and forward alone (``fwd_torch_s``,
  ``fwd_<impl>_s``, ``fwd_ratio_<impl>``). "up" rows time ``UpConv3D`` (every form's upsampling) once,
  under each form's name, and ``flax.linen.ConvTranspose`` as ``xla``.
  """
  import torch  # pylint: disable=import-outside-toplevel  # Optional: the bench extra.
  rows = []
  rng = np.random.default_rng(0)
  for kind, cin, cout, side in layers:
    x = rng.standard_normal((batch, side, side, side, cin), dtype=np.float32)
    tx = torch.tensor(x.transpose(0, 4, 1, 2, 3)).requires_grad_(True)
    conv = _torch_layer(kind, cin, cout)

    def torch_step():
      conv(tx).square().mean().backward()

    def torch_forward():
      with torch.no_grad():
        conv(tx)

    row = {"kind": kind, "channels": f"{cin}->{cout}", "side": side,
           "torch_s": round(_median_time(torch_step, repeats), 4),
           "fwd_torch_s": round(_median_time(torch_forward, repeats), 4)}
    xj = jax.numpy.asarray(x)
    for impl in (("xla", "native") if kind == "up" else CONV_IMPLS):
      layer = _jax_layer(kind, cout, impl)
      params = layer.init(jax.random.key(0), xj[:1])
      grad = jax.jit(jax.grad(lambda p, v, layer=layer: jax.numpy.mean(jax.numpy.square(layer.apply(p, v))),
                              argnums=(0, 1)))
      forward = jax.jit(layer.apply)
      for pre, fn, base in (("", grad, "torch_s"), ("fwd_", forward, "fwd_torch_s")):
        seconds = _median_time(lambda fn=fn, params=params: jax.block_until_ready(fn(params, xj)), repeats)
        for name in ((impl,) if impl == "xla" or kind != "up" else CONV_IMPLS):
          row[f"{pre}{name}_s"] = round(seconds, 4)
          row[f"{pre}ratio_{name}"] = round(row[base] / seconds, 3)
    rows.append(row)
  return rows
