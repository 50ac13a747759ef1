"""Sliding-window throughput on the current devices: voxels per second for a model and a volume size.

The number that decides how long evaluation of a data set takes (and how many validation cases fit
into training); it includes the host side (window gathering, accumulation), not only the model.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg import labels as labels_lib
from jaxseg.infer.predict import checkpoint_predict_fn, uses_constant_params
from jaxseg.models import build_model
from jaxseg.infer.sliding_window import sliding_window_inference, window_starts


def benchmark_sliding_window(config: ml_collections.ConfigDict, volume_shape: Sequence[int],
                             model: str = "config", repeats: int = 2, mesh=None, seed: int = 0) -> dict:
  """Times ``sliding_window_inference`` on a random volume.

  Args:
    config: window (data.patch_size), eval.overlap, eval.window_batch, eval.tta_mirror, the model.
    volume_shape: (X, Y, Z) of the volume.
    model: "config" (the config's model, randomly initialised, its parameters compiled in or not as a
      checkpoint's evaluation does: eval.constant_params) or "identity" (the inference machinery alone:
      windows, transfers, blending).
    repeats: timed runs after a first (compiling) run.
    mesh: shard windows over this mesh's "data" axis.
    seed: for the parameters and the volume.

  Returns:
    JSON-ready dict: device, devices, volume, window, overlap, window_batch, tta_mirror, windows,
    constant_params, first_run_s (with compilation), seconds (best timed run), voxels_per_s, windows_per_s.
  """
  organs = labels_lib.check_organs(config.data.organs)
  k = labels_lib.num_classes(organs)
  window = tuple(int(w) for w in config.data.patch_size)
  if model == "identity":
    fn, constant = jax.tree_util.Partial(lambda x: jnp.repeat(x, k, axis=-1)), False
  elif model == "config":
    module = build_model(config.model, k)
    params = jax.jit(lambda key: module.init(key, jnp.zeros((1,) + window + (1,)), train=False)["params"])(
        jax.random.key(seed))
    fn = checkpoint_predict_fn(config, params)  # what a checkpoint's evaluation runs
    constant = uses_constant_params(config, params)
  else:
    raise ValueError(f"--model: {model!r} is not 'config' or 'identity'")
  rng = np.random.default_rng(seed)
  volume = rng.uniform(0.0, 1.0, size=tuple(volume_shape) + (1,)).astype(np.float32)
  run = lambda: sliding_window_inference(fn, volume, window, float(config.eval.overlap),
                                         int(config.eval.window_batch), k, mesh=mesh,
                                         tta_mirror=bool(config.eval.tta_mirror))
  t0 = time.perf_counter()
  run()
  first = time.perf_counter() - t0
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  best = min(times)
  padded = [max(s, w) for s, w in zip(volume_shape, window)]
  n_windows = int(np.prod([len(window_starts(s, w, float(config.eval.overlap)))
                           for s, w in zip(padded, window)]))
  dev = jax.devices()[0]
  return {"device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
          "devices": 1 if mesh is None else int(mesh.shape["data"]), "model": model,
          "model_features": list(config.model.features), "constant_params": constant,
          "volume": list(volume_shape), "window": list(window),
          "overlap": float(config.eval.overlap), "window_batch": int(config.eval.window_batch),
          "tta_mirror": bool(config.eval.tta_mirror), "windows": n_windows, "first_run_s": round(first, 3),
          "seconds": round(best, 3), "voxels_per_s": float(np.prod(volume_shape) / best),
          "windows_per_s": n_windows / best}
