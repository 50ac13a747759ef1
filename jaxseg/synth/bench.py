"""Speed of the jitted synthesizer against the numpy/scipy baseline, measured in the same run.

The patch is a phantom organ (an ellipsoid filling most of the patch, organ HU with noise) so every size
class fits; both implementations get the same patches and the same profile restricted to one size class.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.synth import device_bank, ops, placement, spec as spec_lib, synthesizer as sy
from jaxseg.synth.batch import apply_synthesis, map_samples, synthesize
from jaxseg.synth.profiles import default_profiles_config
from jaxseg.synth.reference_numpy import synthesize_numpy


def phantom_patch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """HU patch [n, n, n] and organ mask: an ellipsoid organ of about 110 HU in -100 HU fat, with noise."""
  g = (np.arange(n) - (n - 1) / 2) / (n / 2)
  x, y, z = np.meshgrid(g, g, g, indexing="ij")
  organ = (x / 0.9) ** 2 + (y / 0.8) ** 2 + (z / 0.85) ** 2 < 1.0
  rng = np.random.default_rng(seed)
  image = np.where(organ, 110.0, -100.0) + rng.normal(0.0, 15.0, organ.shape)
  return image.astype(np.float32), organ


# The published generator on this kind of machine (2 cores, 96^3 liver-ellipsoid patch at 1 mm, per call,
# median of 5, textures prebuilt; its bank costs about 86 s and 3.2 GB more per data worker), in ms.
PUBLISHED_MS_96 = {"tiny": 16.0, "small": 23.0, "medium": 29.0, "large": 130.0, "mix": 165.0}


def benchmark(organ: str, size: str | None, patch: int, batch: int, spacing_mm: float = 1.0,
              repeats: int = 10, numpy_repeats: int = 5, seed: int = 0, mode: str = "patch",
              texture: str = "field") -> dict:
  """Times compile, the median jitted batch call, and the median numpy call per patch.

  The batch is mapped one patch at a time (batch.map_samples), as the train step does. With ``texture =
  "bank"`` the device texture bank is built first (its time is ``bank_build_s``, paid once per run, as the
  published generator pays for its bank once per data worker) and passed to every call.

  Returns:
    A dict: organ, size, mode, patch, batch, device, compile_s, jax_batch_ms, jax_per_patch_ms,
    numpy_per_patch_ms (this repo's numpy oracle, patch-mode recipe), speedup (numpy per patch / jax per
    patch), published_ms_96 (the published generator's per-call time for the class, for the README).
  """
  profiles = default_profiles_config()
  if organ not in profiles:
    raise ValueError(f"--organ: unknown organ {organ!r}; known: {', '.join(profiles.keys())}")
  size = None if size in (None, "", "any") else size
  sp_static = spec_lib.make_spec(profiles[organ], name=organ, size_class=size)
  sp_mode = spec_lib.make_spec(profiles[organ], name=organ, size_class=size, mode=mode,
                               min_spacing_mm=min(spacing_mm, spec_lib.MIN_SPACING_MM), texture=texture)
  image, mask = phantom_patch(patch, seed)
  spacing = np.full((3,), spacing_mm, np.float32)
  images = jnp.asarray(np.broadcast_to(image, (batch,) + image.shape))
  masks = jnp.asarray(np.broadcast_to(mask, (batch,) + mask.shape))
  spacings = jnp.asarray(np.broadcast_to(spacing, (batch, 3)))
  if mode == "reference":   # sites from the host, as the loader hands them over (the patch is the case)
    sites = [placement.draw_sites(mask.astype(np.uint8), np.argwhere(mask), 1, spacing, sp_mode,
                                  np.random.default_rng(seed + b)) for b in range(batch)]
    extra = (jnp.asarray(np.stack([c for c, _ in sites])), jnp.asarray(np.stack([o for _, o in sites])))
    fn = jax.jit(lambda bank, *a: map_samples(lambda i, m, s, k, c, o: synthesize(
        i, m, s, k, sp_mode, centers=c, center_ok=o, texture_bank=bank), a))
  else:
    extra = ()
    fn = jax.jit(lambda bank, *a: map_samples(functools.partial(synthesize, profile=sp_mode, texture_bank=bank), a))
  bank, bank_s = _bank_for(sp_mode, (patch,) * 3, spacing, seed)
  keys = [jax.random.split(jax.random.key(seed + i), batch) for i in range(repeats + 1)]
  t0 = time.perf_counter()
  compiled = functools.partial(fn.lower(bank, images, masks, spacings, keys[0], *extra).compile(), bank)
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(images, masks, spacings, keys[0], *extra))
  times = []
  for k in keys[1:]:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(images, masks, spacings, k, *extra))
    times.append(time.perf_counter() - t0)
  rng = np.random.default_rng(seed)
  np_times = []
  for _ in range(numpy_repeats):
    t0 = time.perf_counter()
    synthesize_numpy(image, mask, spacing, rng, sp_static)
    np_times.append(time.perf_counter() - t0)
  jax_ms = 1e3 * float(np.median(times))
  np_ms = 1e3 * float(np.median(np_times)) if np_times else float("nan")   # --numpy_repeats=0: not timed
  return {"organ": organ, "size": size or "any", "mode": mode, "patch": patch, "batch": batch,
          "spacing_mm": spacing_mm, "published_ms_96": PUBLISHED_MS_96.get(size or "", None),
          "device": jax.devices()[0].platform, "compile_s": round(compile_s, 2), "jax_batch_ms": round(jax_ms, 2),
          "jax_per_patch_ms": round(jax_ms / batch, 2), "numpy_per_patch_ms": round(np_ms, 2),
          "speedup": round(np_ms / (jax_ms / batch), 2), "texture": texture, "bank_build_s": bank_s}


def _bank_for(spec: spec_lib.ProfileSpec, shape: tuple[int, ...], spacing, seed: int, bank_mod=device_bank):
  """(the device texture bank for ``spec`` on ``shape`` patches, seconds to build it), or (None, None).

  ``bank_mod``: the device_bank module that builds it (another checkout's, in ``compare_checkouts``)."""
  if spec.texture_source != "bank":
    return None, None
  t0 = time.perf_counter()
  bank = jax.block_until_ready(bank_mod.build(jax.random.key(seed), spec, shape, spacing))
  return bank, round(time.perf_counter() - t0, 2)


def benchmark_organ_count(organ_sets: list[tuple[str, ...]], patch: int, batch: int, fire: int, repeats: int = 5,
                          seed: int = 0) -> list[dict]:
  """Times ``apply_synthesis`` on one batch for each tuple of organs, the work held fixed.

  Every sample's organ mask is the first organ of each tuple and the first ``fire`` samples are control
  samples (prob 1); the others do not fire. So each call renders the same tumours, and the time should not
  depend on how many organs the tuple lists (with several organs the samples are mapped, one switch branch
  each, nothing for samples that do not fire). Patch mode, 1 mm.
  """
  image, mask = phantom_patch(patch, seed)
  profiles = default_profiles_config()
  rows = []
  for organs in organ_sets:
    cfg = ml_collections.ConfigDict(dict(enabled=True, prob=1.0, contrast="absolute", mode="patch",
                                         min_spacing_mm=1.0, profiles=profiles))
    images = jnp.asarray(np.broadcast_to(image, (batch,) + image.shape))
    labels = jnp.asarray(np.broadcast_to(np.where(mask, 1, 0).astype(np.int32), (batch,) + mask.shape))
    b = {"synth_organ": jnp.asarray([0 if i < fire else -1 for i in range(batch)], jnp.int32),
         "spacing": jnp.ones((batch, 3), jnp.float32)}
    fn = jax.jit(lambda i, l, bb, k, organs=organs, cfg=cfg: apply_synthesis(i, l, bb, k, organs, cfg))
    keys = [jax.random.split(jax.random.key(seed + r), batch) for r in range(repeats + 1)]
    jax.block_until_ready(fn(images, labels, b, keys[0]))
    times = []
    for k in keys[1:]:
      t0 = time.perf_counter()
      jax.block_until_ready(fn(images, labels, b, k))
      times.append(time.perf_counter() - t0)
    rows.append({"organs": list(organs), "batch": batch, "firing": fire, "patch": patch,
                 "batch_ms": round(1e3 * float(np.median(times)), 2)})
  return rows


def _median_ms(fn, *args, repeats: int) -> float:
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return round(1e3 * float(np.median(times)), 2)


def profile_steps(organ: str, size: str, patch: int, mode: str = "patch", repeats: int = 7, seed: int = 0) -> dict:
  """Median ms of the synthesis's whole-patch sub-steps, each jitted alone, on one phantom patch at 1 mm.

  What a per-patch time cannot go below while these stay whole-patch passes: the draw (texture noise and
  Bernoulli bytes over the coarse grid), the centre candidates' erosion (patch mode), the texture, and the
  whole-patch edge blur the box-local blur replaces (box_blur.py); ``render`` and ``draw_render`` are the
  whole synthesis of one patch.
  """
  shape = (patch,) * 3
  spec = spec_lib.make_spec(default_profiles_config()[organ], name=organ, size_class=size, mode=mode)
  image, mask = (jnp.asarray(a) for a in phantom_patch(patch, seed))
  spacing = jnp.ones((3,), jnp.float32)
  key = jax.random.key(seed)
  d = jax.jit(lambda k: sy.draw(k, spec, shape))(key)
  kw = {}
  if mode == "reference":
    m = np.asarray(mask).astype(np.uint8)
    c, o = placement.draw_sites(m, np.argwhere(m), 1, np.ones(3, np.float32), spec, np.random.default_rng(seed))
    kw = dict(centers=jnp.asarray(c), center_ok=jnp.asarray(o))
  row = {"organ": organ, "size": size, "mode": mode, "patch": patch,
         "draw": _median_ms(lambda k: sy.draw(k, spec, shape), key, repeats=repeats)}
  if mode == "patch":
    row["candidates"] = _median_ms(lambda o: sy._pick_candidates(o, spacing, spec), mask, repeats=repeats)  # pylint: disable=protected-access
  row["texture"] = _median_ms(lambda d: sy.make_texture(d, spacing, shape, spec), d, repeats=repeats)
  row["whole_patch_edge_blur"] = _median_ms(
      lambda m: ops.gaussian_blur(m.astype(jnp.float32), d["edge_sigma_mm"] / spacing), mask, repeats=repeats)
  row["render"] = _median_ms(lambda i, o, d: sy.render(i, o, spacing, d, spec, **kw)[0], image, mask, d,
                             repeats=repeats)
  row["draw_render"] = _median_ms(lambda i, o, k: sy.render(i, o, spacing, sy.draw(k, spec, shape), spec, **kw)[0],
                                  image, mask, key, repeats=repeats)
  return row


def morphology_forms(rmaxes: tuple[tuple[int, int, int], ...] = ((2, 2, 0), (4, 4, 0), (6, 6, 6)),
                     patch: int = 96, rounds: int = 30, seed: int = 0) -> list[dict]:
  """The two forms of ops.box_morphology's erosion (shifted reads, a scan's window sums), alternated.

  On the phantom organ mask of a ``patch``^3 patch, each axis with rmax > 0 eroded at radius min(2, rmax)
  (the liver candidates' 2 mm at 1 mm; rmax 4 is that erosion's maximum at 0.5 mm). Reported: medians, the
  median per-round ratio shifts / scan with its 10th-90th percentiles, and whether the masks agree.
  """
  mask = jnp.asarray(phantom_patch(patch, seed)[1])
  rows = []
  for rmax in rmaxes:
    radius = jnp.asarray([min(2, r) for r in rmax], jnp.int32)

    def form(one_axis, rmax=rmax):
      def run(m, radius):
        for axis, rm in enumerate(rmax):
          if rm > 0:
            m = one_axis(m, jnp.clip(radius[axis], 0, rm), rm, axis, True)
        return m
      return jax.jit(run).lower(mask, radius).compile()

    fns = [form(ops._morphology_by_scan), form(ops._morphology_by_shifts)]  # pylint: disable=protected-access
    outs = [np.asarray(f(mask, radius)) for f in fns]
    times = _alternate(fns, (mask, radius), rounds)
    rows.append(dict({"form": "erosion", "rmax": list(rmax), "patch": patch, "rounds": rounds,
                      "same_masks": bool((outs[0] == outs[1]).all())},
                     **_ratio_row(times, ("scan_ms", "shifts_ms"), "ratio_shifts_over_scan")))
  return rows


def _alternate(fns, args, rounds: int) -> list[list[float]]:
  """Per-call seconds of each compiled ``fns[i](*args)``, one call of each per round, in alternating order."""
  for f in fns:
    jax.block_until_ready(f(*args))
  times = [[] for _ in fns]
  for r in range(rounds):
    for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
      t0 = time.perf_counter()
      jax.block_until_ready(fns[i](*args))
      times[i].append(time.perf_counter() - t0)
  return times


def _ratio_row(times, names: tuple[str, str], ratio_name: str) -> dict:
  ratio = np.asarray(times[1]) / np.asarray(times[0])
  return {names[0]: round(1e3 * float(np.median(times[0])), 3), names[1]: round(1e3 * float(np.median(times[1])), 3),
          ratio_name: round(float(np.median(ratio)), 3),
          "ratio_p10_p90": [round(float(x), 3) for x in np.percentile(ratio, [10, 90])]}


def separable_forms(pairs: tuple[tuple[int, int], ...] = ((19, 35), (35, 51), (48, 96), (96, 96)),
                    rounds: int = 30, seed: int = 0) -> list[dict]:
  """ops.apply_separable (einsums) against ops.blur_separable (transpose-free products), alternated.

  For each (n_in, n_out): a random [n_in]^3 field and three [n_out, n_in] matrices (a box's edge blur is
  19^3 -> 35^3 for tiny tumours and 35^3 -> 51^3 for small ones at 1 mm, the texture's coarse-to-fine blur
  48^3 -> 96^3, the whole-patch blur 96^3 -> 96^3). Each round times one call of each; reported: medians,
  the median per-round ratio blur / apply with its 10th-90th percentiles, and the largest difference
  relative to the largest value.
  """
  rng = np.random.default_rng(seed)
  rows = []
  for n_in, n_out in pairs:
    v = jnp.asarray(rng.random((n_in,) * 3, np.float32))
    mats = [jnp.asarray(rng.random((n_out, n_in), np.float32)) for _ in range(3)]
    fns = [jax.jit(f).lower(v, *mats).compile() for f in (ops.apply_separable, ops.blur_separable)]
    outs = [f(v, *mats) for f in fns]
    times = _alternate(fns, (v, *mats), rounds)
    rows.append(dict({"form": "separable", "n_in": n_in, "n_out": n_out, "rounds": rounds,
                      "max_rel_diff": float(jnp.max(jnp.abs(outs[0] - outs[1])) / jnp.max(jnp.abs(outs[0])))},
                     **_ratio_row(times, ("apply_separable_ms", "blur_separable_ms"), "ratio_blur_over_apply")))
  return rows


def ablation(organ: str, size: str, patch: int, texture: str = "bank", rounds: int = 30, seed: int = 0) -> list[dict]:
  """Where draw + render's time goes: the whole synthesis against copies with one part taken out, alternated.

  Parts taken out (each a copy of the synthesis compiled with that part replaced): ``candidates`` (the
  centre candidates are the organ itself: no erosion, no axial ranges), ``soft_edge`` (the edge is the mask
  itself: no blur), ``texture`` (a constant texture: no bank read or texture field), ``composition`` (the
  image is returned as it is, so the edge and texture are not computed either). Each round times one call
  of every variant with the same key; reported per variant: median ms and the median per-round time saved
  against the whole synthesis. Patch mode, 1 mm; the parts' savings overlap (XLA fuses across them), so they
  need not add up to the whole.
  """
  shape = (patch,) * 3
  spec = spec_lib.make_spec(default_profiles_config()[organ], name=organ, size_class=size, texture=texture)
  image, mask = (jnp.asarray(a) for a in phantom_patch(patch, seed))
  spacing = jnp.ones((3,), jnp.float32)
  bank = _bank_for(spec, shape, np.ones(3, np.float32), seed)[0]
  patches = {
      "whole": {},
      "candidates": {"_pick_candidates": lambda organ, spacing, spec: organ},
      "soft_edge": {"_edges": lambda tumor, free, boxes, sig_e, spec: tuple(
          f.astype(jnp.float32) for f in ((tumor,) if free is None else (tumor, free)))},
      "texture": ({"make_texture": lambda d, spacing, shape, spec: jnp.full(shape, 0.5, jnp.float32)}
                  if texture == "field" else {}),
      "composition": {"_compose": lambda img, *a: img},
  }
  fns = {}
  for name, swaps in patches.items():
    saved = {k: getattr(sy, k) for k in swaps}
    saved_read = device_bank.read
    try:
      for k, v in swaps.items():
        setattr(sy, k, v)
      if name == "texture" and texture == "bank":
        device_bank.read = lambda bank, index, offset, shp: jnp.full(shp, 0.5, jnp.float32)
      fn = jax.jit(lambda i, m, s, k, b: sy.render(i, m, s, sy.draw(k, spec, shape), spec, bank=b)[:2])
      fns[name] = fn.lower(image, mask, spacing, jax.random.key(seed), bank).compile()
    finally:
      for k, v in saved.items():
        setattr(sy, k, v)
      device_bank.read = saved_read
  names = list(fns)
  times = {n: [] for n in names}
  for r in range(rounds + 1):
    key = jax.random.key(seed + 1 + r)
    for n in (names if r % 2 == 0 else names[::-1]):
      t0 = time.perf_counter()
      jax.block_until_ready(fns[n](image, mask, spacing, key, bank))
      if r:                                   # round 0 warms every variant up
        times[n].append(time.perf_counter() - t0)
  whole = np.asarray(times["whole"])
  return [{"organ": organ, "size": size, "texture": texture, "patch": patch, "rounds": rounds, "without": n,
           "ms": round(1e3 * float(np.median(times[n])), 3),
           "saved_ms": round(1e3 * float(np.median(whole - np.asarray(times[n]))), 3)} for n in names]


def load_checkout(root: str):
  """The synthesizer, spec and profiles modules of another jaxseg checkout (``git worktree add /tmp/base main``),
  importable beside this one: its package is copied under a fresh name with its own imports renamed, so
  both versions run in one process and a speed change is a ratio within one run, not two runs on a noisy
  machine."""
  import atexit  # pylint: disable=import-outside-toplevel
  import importlib  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  src = os.path.join(root, "jaxseg")
  if not os.path.isfile(os.path.join(src, "synth", "synthesizer.py")):
    raise ValueError(f"--against: {root} is not a jaxseg checkout (no jaxseg/synth/synthesizer.py)")
  tmp = tempfile.mkdtemp(prefix="jaxseg_ab_")
  atexit.register(shutil.rmtree, tmp, ignore_errors=True)
  alias = os.path.basename(tmp)            # unique: a second checkout in the same process gets its own name
  dst = os.path.join(tmp, alias)
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
  for folder, _, files in os.walk(dst):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        with open(path) as f:
          text = f.read()
        with open(path, "w") as f:
          f.write(re.sub(r"\bjaxseg(?=[. ])", alias, text))
  sys.path.insert(0, tmp)
  mods = tuple(importlib.import_module(f"{alias}.synth.{m}") for m in ("synthesizer", "spec", "profiles"))
  # The device texture bank (from commit 5429e47 on), so a bank on both sides is each side's own.
  has_bank = os.path.isfile(os.path.join(dst, "synth", "device_bank.py"))
  return mods + (importlib.import_module(f"{alias}.synth.device_bank") if has_bank else None,)


def compare_checkouts(root: str, sizes: list[str], patch: int = 96, rounds: int = 30, organ: str = "liver",
                      mode: str = "patch", seed: int = 0, texture: str = "field", other_texture: str = "field"
                      ) -> list[dict]:
  """Draw and render of one patch per call, this checkout against the one at ``root``, alternated.

  ``texture``, ``other_texture``: config.synth.texture on this side and on the other; with "bank" each side
  builds its bank with its own code before the rounds and passes it to each call, and the masks must still
  agree.

  Each round times one call of each (fresh keys, the same for both), so load drift on a shared machine hits
  both; reported: each side's median ms and the median of the per-round ratios (this / other) with its
  10th-90th percentiles, and whether both gave the same tumour mask in every round.
  """
  if mode not in ("patch", "reference"):
    raise ValueError(f"--mode: {mode!r} with --against; draw + render are compared in patch and reference mode")
  other_sy, other_spec, other_profiles, other_bank = load_checkout(root)
  if other_texture == "bank" and other_bank is None:
    raise ValueError(f"--against_texture=bank: {root} has no device texture bank (jaxseg/synth/device_bank.py)")
  image, mask = (jnp.asarray(a) for a in phantom_patch(patch, seed))
  spacing = jnp.ones((3,), jnp.float32)
  shape = (patch,) * 3
  rows = []
  for size in sizes:
    fns = []
    # Each side with its own profiles and spec: a change to a profile's defaults is part of what is compared.
    for mod, spec_mod, prof_mod, bank_mod, tex in ((sy, spec_lib, None, device_bank, texture),
                                                   (other_sy, other_spec, other_profiles, other_bank, other_texture)):
      profiles = (prof_mod.default_profiles_config if prof_mod else default_profiles_config)()
      spec = spec_mod.make_spec(profiles[organ], name=organ, size_class=size, mode=mode,
                                **({"texture": tex} if tex != "field" else {}))
      kw = {}
      if mode == "reference":
        m = np.asarray(mask).astype(np.uint8)
        c, o = placement.draw_sites(m, np.argwhere(m), 1, np.ones(3, np.float32), spec,
                                    np.random.default_rng(seed))
        kw = dict(centers=jnp.asarray(c), center_ok=jnp.asarray(o))
      bank = _bank_for(spec, shape, np.ones(3, np.float32), seed, bank_mod)[0] if tex == "bank" else None
      if bank is not None:
        kw["bank"] = bank
      # The patch and the bank are arguments, not constants the compiler could fold (the candidates of a
      # constant mask) or embed.
      fn = jax.jit(lambda i, m, s, k, kw, mod=mod, spec=spec: mod.render(i, m, s, mod.draw(k, spec, shape),
                                                                      spec, **kw)[:2])
      fn = functools.partial(fn, image, mask, spacing, kw=kw)
      jax.block_until_ready(fn(jax.random.key(seed)))
      fns.append(fn)
    times, same = [[], []], True
    for r in range(rounds):
      key = jax.random.key(seed + 1 + r)
      outs = []
      for i in (r % 2, 1 - r % 2):              # alternate which side goes first
        t0 = time.perf_counter()
        outs.append(jax.block_until_ready(fns[i](key)))
        times[i].append(time.perf_counter() - t0)
      same &= bool(jnp.all(outs[0][1] == outs[1][1]))
    ratio = np.asarray(times[0]) / np.asarray(times[1])
    rows.append({"size": size, "mode": mode, "texture": texture, "other_texture": other_texture, "patch": patch,
                 "rounds": rounds,
                 "this_ms": round(1e3 * float(np.median(times[0])), 2),
                 "other_ms": round(1e3 * float(np.median(times[1])), 2),
                 "ratio_this_over_other": round(float(np.median(ratio)), 3),
                 "ratio_p10_p90": [round(float(x), 3) for x in np.percentile(ratio, [10, 90])],
                 "same_masks": same, "published_ms_96": PUBLISHED_MS_96.get(size)})
  return rows
