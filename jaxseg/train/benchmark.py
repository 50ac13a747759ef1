"""Train-step throughput on the current devices, for any config, without a data set.

The batch is made up on the host (an organ-shaped sphere in soft-tissue HU, half the samples marked as
control patches so the synthesizer runs as in training), so the same command measures a CPU, one GPU or a
pod. Compile time is reported apart from the step time (median of repeated steps).
"""

from __future__ import annotations

import resource
import time

import jax
import ml_collections
import numpy as np

from jaxseg import assembly, labels as labels_lib, parallel
from jaxseg.config_checks import resolve_config
from jaxseg.synth.placement import sites_for_patches
from jaxseg.train import state as state_lib


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int = 0) -> dict:
  """A host batch shaped like the loader's: HU noise with an organ sphere, half of it control patches.

  Returns:
    image int16 [B, X, Y, Z], label uint8 [B, X, Y, Z], synth_organ int32 [B], spacing float32 [B, 3].
  """
  rng = np.random.default_rng(seed)
  shape = tuple(config.data.patch_size)
  organs = tuple(config.data.organs)
  grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
  organ = (np.sum(grid ** 2, 0) < 0.5)
  image = rng.normal(-80.0, 20.0, (batch_size, *shape))
  image[:, organ] += 140.0
  label = np.zeros((batch_size, *shape), np.uint8)
  label[:, organ] = labels_lib.organ_label(organs, organs[0])
  tumour = np.sum((grid - 0.2) ** 2, 0) < 0.05
  label[1::2, tumour] = labels_lib.tumor_label(organs, organs[0])  # Odd samples: real tumour cases.
  image[1::2, tumour] -= 60.0
  synth_organ = np.where(np.arange(batch_size) % 2 == 0, 0, -1).astype(np.int32)
  batch = {"image": image.astype(np.int16), "label": label, "synth_organ": synth_organ,
           "spacing": np.tile(np.asarray(config.data.spacing, np.float32), (batch_size, 1))}
  return {**batch, **sites_for_patches(label, synth_organ, batch["spacing"], organs, config.synth, seed)}


def _peak_memory_bytes() -> int:
  peaks = []
  for d in jax.local_devices():
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  if peaks:
    return int(max(peaks))
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # CPU: the process's peak RSS.


def _flops(cost) -> float | None:
  """The FLOP figure of an XLA cost analysis (None where the backend gives none). XLA counts a
  multiply-add as 2 FLOPs, as chip peak figures do."""
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def native_step_flops(config: ml_collections.ConfigDict, mesh, state, batch: dict) -> float | None:
  """FLOPs of one train step, from XLA's cost analysis of the step's program with every convolution native.

  Why not the compiled step's own count: the CPU convolution forms loop (the depth-folded form scans over
  planes or maps over kernel taps), and XLA counts a loop body once, so their count would be a fraction of
  the arithmetic done. The forms compute the same convolutions, so the native program's count is the work of
  every form; it is taken before optimisation (``Lowered.cost_analysis``: no second compilation).
  """
  native = ml_collections.ConfigDict(config.to_dict())
  native.model.conv = "native"
  try:
    return _flops(assembly.assemble(native, mesh).train_step().lower(state, batch).cost_analysis())
  except Exception:  # pylint: disable=broad-except  # Backends without a cost model raise various errors.
    return None


def _compiled_step(config, mesh, batch: dict, warmup: int):
  """The production train step for ``config``, compiled for ``batch`` and run ``warmup`` times.

  Returns:
    (compiled step, train state after the warm-up, compile seconds).
  """
  run = assembly.assemble(config, mesh)
  state = run.init_state()
  t0 = time.perf_counter()
  compiled = run.train_step().lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
  return compiled, state, compile_s


def measure_train_step(config: ml_collections.ConfigDict, steps: int = 5, warmup: int = 1,
                       peak_tflops: float = 0.0) -> dict:
  """Times the production train step for ``config`` on all devices.

  Args:
    peak_tflops: the chips' peak (all devices together, in the compute dtype), to report the achieved
      share; 0 leaves the share out (the peak depends on chip, dtype and TF32 use: the caller states it).

  Returns:
    dict: device, num_devices, batch, patch, compile_s, step_s (median), patches_per_s, peak_memory_bytes
    (device peak where the backend reports it, else the host process's peak RSS), num_params, flops_per_step
    and achieved_tflops (XLA's cost analysis of the step with native convolutions, synthesis included:
    ``native_step_flops``), peak_share.
  """
  config = resolve_config(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.data.batch_size, mesh)
  batch = parallel.global_batch(synthetic_batch(config, config.data.batch_size), mesh)
  compiled, state, compile_s = _compiled_step(config, mesh, batch, warmup)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  flops = native_step_flops(config, mesh, state, batch)
  achieved = flops / step_s / 1e12 if flops else None
  return {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
          "num_devices": jax.device_count(), "batch": int(config.data.batch_size),
          "patch": list(config.data.patch_size), "synth": bool(config.synth.enabled),
          "compile_s": round(compile_s, 3), "step_s": round(step_s, 4),
          "patches_per_s": round(config.data.batch_size / step_s, 3),
          "peak_memory_bytes": _peak_memory_bytes(), "num_params": state_lib.count_params(state["params"]),
          "loss": float(m["loss"]), "dtype": str(config.model.dtype),
          "flops_per_step": flops, "achieved_tflops": None if achieved is None else round(achieved, 4),
          "peak_share": round(achieved / peak_tflops, 4) if achieved and peak_tflops > 0 else None}


def compare_synthesis(config: ml_collections.ConfigDict, rounds: int = 30, warmup: int = 2) -> dict:
  """Step time with synthesis on against off, interleaved in one process: what synthesis adds to a step.

  Timing the two steps one after the other lets the load of a shared machine drift between them; here both
  production steps are compiled first and then run in alternation (on-off, then off-on, round by round), and
  the ratio is taken within each round, so drift cancels. Reported: the median of the per-round ratios and
  their 10th-90th percentile spread, with each side's median step time.

  Returns:
    dict: synth_on_step_s and synth_off_step_s (medians), ratio_median, ratio_p10, ratio_p90 (per-round
    on / off), rounds, batch, patch, synth_mode.
  """
  config = resolve_config(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.data.batch_size, mesh)
  batch = parallel.global_batch(synthetic_batch(config, config.data.batch_size), mesh)
  sides = {}
  for name, enabled in (("on", True), ("off", False)):
    c = ml_collections.ConfigDict(config.to_dict())
    c.synth.enabled = enabled
    sides[name] = list(_compiled_step(c, mesh, batch, warmup)[:2])

  def timed(name):
    compiled, state = sides[name]
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    sides[name][1] = state
    return time.perf_counter() - t0

  on, off = [], []
  for r in range(rounds):
    order = ("on", "off") if r % 2 == 0 else ("off", "on")
    t = {n: timed(n) for n in order}
    on.append(t["on"])
    off.append(t["off"])
  ratios = np.asarray(on) / np.asarray(off)
  return {"synth_on_step_s": round(float(np.median(on)), 4), "synth_off_step_s": round(float(np.median(off)), 4),
          "ratio_median": round(float(np.median(ratios)), 3), "ratio_p10": round(float(np.percentile(ratios, 10)), 3),
          "ratio_p90": round(float(np.percentile(ratios, 90)), 3), "rounds": int(rounds),
          "batch": int(config.data.batch_size), "patch": list(config.data.patch_size),
          "synth_mode": str(config.synth.mode)}
