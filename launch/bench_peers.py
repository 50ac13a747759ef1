"""jaxseg against the field's PyTorch tools, the same work timed in one process run; prints a table and JSON.

  pip install -e ".[bench]"     # CPU PyTorch, MONAI, dynamic-network-architectures
  python launch/bench_peers.py --config=configs/default.py [--work=train|sliding]
      [--config.model.name=resenc_unet|segresnet_ds|mednext_s|mednext_b|mednext_m|mednext_l|swin_unetr]
      [--config.model.conv=auto|native|depth_folded|im2col] [--config.eval.conv=auto|native|depth_folded|im2col]

Rows: nnU-Net's ResEnc train step (dynamic_network_architectures, the network nnU-Net trains; or, with
model.name=segresnet_ds, mednext_* or swin_unetr, MONAI's network) and MONAI's sliding window with the same
network, against jaxseg's train step (model.conv: auto is depth_folded on a CPU) and sliding window
(eval.conv: auto is depth_folded on a CPU); and jaxseg's synthesizer per 96^3 liver patch against the
published generator's per-call times on this machine class (quoted: it cannot be vendored). Ratio = the
field's time / jaxseg's time (above 1: jaxseg is faster).
Repeat the command and report the spread: a shared machine is noisy, a ratio from one run is not.
``--conv_layers`` times one convolution of each kind instead (run it under each XLA_FLAGS to compare flags).
"""

import json

from absl import flags
from ml_collections import config_flags

from jaxseg import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file: the model (resenc_unet, "
                                          "segresnet_ds, mednext_* or swin_unetr) and conv.")
_BATCH = flags.DEFINE_integer("batch", 2, "Train-step batch.")
_PATCH = flags.DEFINE_list("patch", ["64", "64", "64"], "Train patch and sliding-window size.")
_VOLUME = flags.DEFINE_list("volume", ["128", "128", "96"], "Sliding-window volume.")
_WINDOW_BATCH = flags.DEFINE_integer("window_batch", 2, "Windows per batch in the sliding window.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per figure (median).")
_SYNTH = flags.DEFINE_list("synth_sizes", ["tiny", "small", "medium", "large", "mix"],
                           "Size classes for the synthesis rows (empty: skip them).")
_WORK = flags.DEFINE_multi_enum("work", ["train", "sliding"], ["train", "sliding"],
                                "Which comparisons to run (repeat the flag for both; default both).")
_CONV_LAYERS = flags.DEFINE_bool("conv_layers", False, "Only time one convolution of each kind in ResEnc "
                                  "M (stride 1 per stage, strided, upsampling), SegResNet's upsampling and "
                                  "MedNeXt's depthwise convolution (forward + backward, and forward alone) "
                                  "against PyTorch's, and print the ratios.")
flags.mark_flags_as_required(["config"])


@cli.user_errors
def main(argv):
  del argv
  cli.init_processes()
  from jaxseg import peer_bench  # pylint: disable=import-outside-toplevel  # After the process set-up.
  from jaxseg.synth import bench as synth_bench  # pylint: disable=import-outside-toplevel
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import monai  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import dynamic_network_architectures  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise ValueError(f"bench_peers: {e.name} is not installed; run pip install -e \".[bench]\"") from None
  if _CONV_LAYERS.value:
    rows = peer_bench.conv_layer_ratios(repeats=_REPEATS.value)
    impls = peer_bench.CONV_IMPLS
    print("| pass | layer, input side | PyTorch s | " + " | ".join(f"{i} s" for i in impls) + " | ratio "
          + " / ".join(impls) + " | flax ConvTranspose s |")
    print("| --- " * (5 + len(impls)) + "|")
    for pre, name in (("", "forward + backward"), ("fwd_", "forward")):
      for r in rows:
        xla = r.get(pre + "xla_s")
        print(f"| {name} | {r['kind']} {r['channels']}, {r['side']}^3 | {r[pre + 'torch_s']:.3g} | "
              + " | ".join(f"{r[pre + i + '_s']:.3g}" for i in impls)
              + " | " + " / ".join(f"{r[pre + 'ratio_' + i]:.2f}" for i in impls)
              + f" | {'' if xla is None else f'{xla:.3g}'} |")
    print(json.dumps(rows))
    return
  synth_ms = {s: synth_bench.benchmark("liver", s, 96, 1, 1.0, repeats=5, numpy_repeats=0)["jax_per_patch_ms"]
              for s in _SYNTH.value if s}
  rows = peer_bench.compare(_CONFIG.value, _BATCH.value, [int(s) for s in _PATCH.value],
                            [int(s) for s in _VOLUME.value], _WINDOW_BATCH.value, _REPEATS.value, synth_ms,
                            works=_WORK.value)
  print("| work | the field | field s | jaxseg s | ratio (field / jaxseg) |")
  print("| --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['work']} | {r['field']} | {r['field_s']:.4g} | {r['jaxseg_s']:.4g} | {r['ratio']:.2f}x |")
  print(json.dumps(rows))


if __name__ == "__main__":
  cli.run(main)
