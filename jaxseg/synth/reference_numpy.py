"""The same synthesis steps in plain numpy/scipy: the test oracle and the speed baseline.

Written the way a CPU data worker would do it (scipy.ndimage filters and morphology at full resolution,
one bounding box per tumour sized from the actual spacing), with none of the static-shape tricks of the JAX
version. ``render_numpy`` takes the JAX draws (``synthesizer.draw``) so the two can be compared on the same
random numbers; ``synthesize_numpy`` draws its own with a numpy Generator (the baseline the benchmark times).

It shares the JAX code's spec tables and centre sampler, so agreement with it shows consistency, not
fidelity to the published generator: that is measured against the published code's own figures by
fidelity.py (launch/synth_fidelity.py). It implements the patch mode's smooth 3D deformation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from jaxseg.synth import spec as spec_lib
from jaxseg.synth.spec import ProfileSpec

_CELL = 4


def _mean(v: np.ndarray, m: np.ndarray, default: float) -> float:
  return float(v[m].mean()) if m.any() else default


def candidates(organ: np.ndarray, spacing: np.ndarray, spec: ProfileSpec) -> np.ndarray:
  """Centre candidates: first non-empty of the axial-range levels, else the whole organ."""
  rx, ry = (int(np.round(spec.erosion_mm / s)) for s in spacing[:2])
  eroded = ndimage.binary_erosion(organ, np.ones((2 * rx + 1, 2 * ry + 1, 1), bool), border_value=1)
  base = {"eroded": eroded, "wall": organ & ~eroded, "organ": organ}[spec.center_rule]
  zs = np.nonzero(organ.any(axis=(0, 1)))[0]
  if zs.size == 0:
    return organ
  zmin, zmax = zs.min(), zs.max()
  z = np.arange(organ.shape[2])
  for lo, hi in spec.axial_ranges:
    keep = (z >= zmin + lo * (zmax - zmin) - 1e-3) & (z <= zmin + hi * (zmax - zmin) + 1e-3)
    level = base & keep[None, None, :]
    if level.any():
      return level
  return organ


def pick_voxel(mask: np.ndarray, u: float) -> np.ndarray:
  """The voxel uniform ``u`` selects among True voxels, in 4^3-cell order (as the JAX sampler)."""
  pad = [(0, (-n) % _CELL) for n in mask.shape]
  m = np.pad(mask, pad)
  a, b, c = (n // _CELL for n in m.shape)
  order = m.reshape(a, _CELL, b, _CELL, c, _CELL).transpose(0, 2, 4, 1, 3, 5).reshape(-1)
  flat = np.flatnonzero(order)
  if flat.size == 0:
    return np.zeros(3, int)
  k = flat[min(int(np.floor(u * flat.size)), flat.size - 1)]
  cell, within = divmod(k, _CELL ** 3)
  ci, cj, ck = np.unravel_index(cell, (a, b, c))
  wi, wj, wk = np.unravel_index(within, (_CELL,) * 3)
  return np.array([ci * _CELL + wi, cj * _CELL + wj, ck * _CELL + wk])


def _lagrange3(t: np.ndarray) -> np.ndarray:
  return np.stack([0.5 * t * (t - 1.0), 1.0 - t * t, 0.5 * t * (t + 1.0)], axis=-1)


def tumour_box(center: np.ndarray, axes_mm: np.ndarray, disp_mm: np.ndarray, radius_mm: float,
               half_mm: float, spacing: np.ndarray, shape: tuple[int, ...]):
  """One deformed ellipsoid in its own box: (slices, bool mask of the box)."""
  sl, rel = [], []
  for a in range(3):
    h = int(np.ceil(half_mm / spacing[a])) + 1
    lo, hi = max(center[a] - h, 0), min(center[a] + h + 1, shape[a])
    sl.append(slice(lo, hi))
    rel.append((np.arange(lo, hi) - center[a]) * spacing[a])
  w = [_lagrange3(np.clip(r / (2.0 * radius_mm), -1.0, 1.0)) for r in rel]
  disp = np.einsum("mijk,xi,yj,zk->mxyz", disp_mm, w[0], w[1], w[2])
  f = (((rel[0][:, None, None] + disp[0]) / axes_mm[0]) ** 2 + ((rel[1][None, :, None] + disp[1]) / axes_mm[1]) ** 2
       + ((rel[2][None, None, :] + disp[2]) / axes_mm[2]) ** 2)
  return tuple(sl), f <= 1.0


def texture(noise_a: np.ndarray, bern_u: np.ndarray, d: dict, spacing: np.ndarray, spec: ProfileSpec) -> np.ndarray:
  """Step 4 at full resolution with scipy: blur, rescale, Bernoulli, blur, beta, clip."""
  a = ndimage.gaussian_filter(noise_a, d["sigma_a_mm"] / spacing)
  a = (a - a.min()) / max(a.max() - a.min(), 1e-6)
  p = d["scale"] * a + d["base"]
  b = ndimage.gaussian_filter((bern_u < p).astype(np.float32), d["sigma_b_mm"] / spacing)
  above = b > spec.texture_threshold
  beta = d["u0"] / max(b[above].mean() if above.any() else 0.0, 1e-6)
  return np.clip(b * beta, 0.0, 1.0)


def render_numpy(image: np.ndarray, organ: np.ndarray, spacing: np.ndarray, d: dict[str, Any], spec: ProfileSpec,
                 noise_a: np.ndarray, bern_u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Draws -> (image float32 [X, Y, Z], tumour mask bool [X, Y, Z]).

  ``d`` holds the scalar/slot draws of ``synthesizer.draw`` as numpy; ``noise_a`` and ``bern_u`` are full-
  resolution uniform fields (texture noise, and the uniforms the Bernoulli draw compares against).
  """
  shape = image.shape
  spacing = np.asarray(spacing, np.float64)
  img = image.astype(np.float32)
  cand = candidates(organ, spacing, spec)
  union = np.zeros(shape, bool)
  free_union = np.zeros(shape, bool)
  if organ.any():
    idx = np.nonzero(organ)
    box_center = np.round([(i.min() + i.max()) / 2 for i in idx]).astype(int)
    for g, gd in zip(spec.groups, d["groups"]):
      for s in range(g.slots):
        if not gd["active"][s]:
          continue
        c = box_center if (spec.large_at_box_center and g.name == "large") else pick_voxel(cand, gd["center_u"][s])
        disp = gd["ctrl"][s] * gd["sigma_mm"][s]
        sl, m = tumour_box(c, gd["axes_mm"][s], disp, g.radius_mm, g.half_extent_mm(), spacing, shape)
        target = free_union if (g.exophytic and gd["free"][s]) else union
        target[sl] |= m
  if spec.clip_margin_mm > 0:
    r = [int(np.round(spec.clip_margin_mm / s)) for s in spacing]
    allowed = ndimage.binary_dilation(organ, np.ones([2 * x + 1 for x in r], bool))
  else:
    allowed = organ
  tumor = (union & allowed) | free_union
  tex = texture(noise_a, bern_u, d, spacing, spec)
  sig_e = d["edge_sigma_mm"] / spacing
  edge = ndimage.gaussian_filter(tumor.astype(np.float32), sig_e)
  organ_mean = _mean(img, organ, 0.0)
  if spec.intensity == "replace":
    tissue = d["mass_hu"] + spec.mass_texture_hu * (tex - 0.5)
    out = np.where(allowed, img + edge * (tissue - img), img)
  else:
    img_in = img
    if spec.fat_fill:
      fill = _mean(img, organ & (img > spec.fat_hu_max), spec.fat_hu_max)
      img_in = np.where(organ & (img <= spec.fat_hu_max), img + edge * (fill - img), img)
    drop = tex * edge * d["delta"]
    out = np.where(organ, img_in - drop, img)
    if free_union.any():
      edge_free = ndimage.gaussian_filter(free_union.astype(np.float32), sig_e)
      tissue = organ_mean - tex * d["delta"]
      out = np.where(organ, out, img + edge_free * (tissue - img))
  return out.astype(np.float32), tumor


def draw_numpy(rng: np.random.Generator, spec: ProfileSpec) -> dict[str, Any]:
  """The scalar and slot draws of one synthesis with a numpy Generator (same distributions as JAX)."""
  u = lambda lohi, size=None: rng.uniform(lohi[0], lohi[1], size)
  ci = int(rng.integers(len(spec.classes)))
  groups = []
  for g in spec.groups:
    n = int(rng.integers(g.count_lo[ci], g.count_hi[ci] + 1))
    groups.append(dict(
        active=np.arange(g.slots) < n, axes_mm=g.radius_mm * u(g.axis_factor, (g.slots, 3)),
        sigma_mm=u(g.sigma_mm, g.slots),
        ctrl=np.clip(rng.standard_normal((g.slots, 3, 3, 3, 3)), -spec_lib.MAX_DISPLACEMENT_SIGMAS,
                     spec_lib.MAX_DISPLACEMENT_SIGMAS),
        center_u=rng.random(g.slots), free=rng.random(g.slots) < (spec.exophytic_prob if g.exophytic else 0.0)))
  return dict(class_index=ci, groups=groups, sigma_a_mm=float(rng.choice(spec.texture_sigma_a_mm)),
              sigma_b_mm=float(rng.choice(spec.texture_sigma_b_mm)), scale=u(spec.texture_scale),
              base=u(spec.texture_base), u0=u(spec.texture_u0), edge_sigma_mm=u(spec.edge_sigma_mm),
              delta=u(spec.delta), mass_hu=u(spec.mass_hu))


def synthesize_numpy(image: np.ndarray, organ: np.ndarray, spacing, rng: np.random.Generator,
                     spec: ProfileSpec) -> tuple[np.ndarray, np.ndarray]:
  """The whole synthesis on the CPU with numpy randomness: the speed baseline."""
  d = draw_numpy(rng, spec)
  noise_a = rng.random(image.shape, dtype=np.float32)
  bern_u = rng.random(image.shape, dtype=np.float32)
  return render_numpy(image, organ.astype(bool), np.asarray(spacing, np.float64), d, spec, noise_a, bern_u)


def draws_to_numpy(d: dict[str, Any], shape: tuple[int, ...]) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
  """JAX draws -> (numpy draws, full-resolution texture noise, Bernoulli uniforms) for ``render_numpy``."""
  nd = {k: (np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v)) for k, v in d.items()
        if k not in ("groups", "noise_a", "bits_b")}
  nd["groups"] = [{k: np.asarray(v) for k, v in g.items()} for g in d["groups"]]
  noise = np.asarray(d["noise_a"])
  f = shape[0] // noise.shape[0]
  for a in range(3):
    noise = np.repeat(noise, f, axis=a)
  bits = np.asarray(d["bits_b"]).astype(np.float32)                     # [Xc, Yc, Zc, f^3]
  bits = bits.reshape(bits.shape[:3] + (f, f, f)).transpose(0, 3, 1, 4, 2, 5).reshape(shape)
  return nd, noise, (bits + 0.5) / 256.0
