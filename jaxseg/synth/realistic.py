"""Realistic mode: synthetic tumours calibrated on real lesions (docs/SYNTHESIS.md, "Realistic mode").

The published rule's tumours differ from real liver metastases in ways a reader and the lesion figures
(jaxseg/metrics/lesion_figures.py) see: smooth ellipsoids, a flat plateau of darkening ~3 mm inside, a
transition centred on the label, vessels crossing the tumour, no rim, no mass effect, and (with the former
relative contrast) a texture standardised over all tumours of a draw that made some tumours brighter than
the organ. This renderer replaces the appearance, keeping the patch-mode placement (sites drawn in the
patch, on the profile's centre candidates):

- shape: a rotated ovoid plus a few overlapping spherical lobes, smoothly deformed, scaled so the union has
  the drawn equivalent diameter (its volume measured on a small static grid), with fine bumps of the
  outline (smoothed noise added to the depth) at a millimetre scale;
- depth: an approximate signed distance (mm, > 0 inside) per tumour; the label is depth >= 0;
- intensity: drop = contrast x local organ HU x g(depth) / mean of g over the tumour, with g a transition of
  edge_width_mm whose outer (10%) edge is the label boundary, times a darkening that keeps growing over
  core_depth_mm; local organ HU is a Gaussian mean of the organ around this tumour's own centre;
- heterogeneity: smoothed unit noise scaled per tumour so the tumour's HU std reaches std_ratio x the organ
  interior's std (the organ's own noise, the profile's spread and the added noise add up);
- vessels: organ voxels inside a tumour further than vessel_k std from the local HU (vessels; partial-volume
  fat at the organ's edge) are pulled to the local HU;
- rim: an optional ring a few HU bright just outside the label of large enough tumours;
- mass effect: an optional smooth outward displacement of the tissue and labels around each tumour.

Everything is one pure function of (patch, organ, spacing, key, spec) with static shapes: slots with active
masks, every tumour evaluated over the whole patch. ``draw`` makes every random choice, ``render`` the rest.
Not in static boxes around each tumour: a box must hold the largest tumour the spec allows, and the liver's
(46.5 mm, lobes reaching 2.1 main radii) reaches 52 mm from its centre, more than a 96^3 patch at 1 mm
(the median tumour reaches 19 mm). Fields are built per axis and per slot instead (axis_coords).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy import ndimage as jndimage
from jax.scipy.special import ndtr

from jaxseg.synth import ops
from jaxseg.synth.spec import MAX_DISPLACEMENT_SIGMAS, ProfileSpec
from jaxseg.synth.synthesizer import _masked_mean, _pick_candidates, sample_voxels, texture_factor

_Z90 = 2.5631   # width of the 10-90% rise of a Gaussian CDF, in its sigmas
_GRID = 20      # static grid per axis on which a tumour's unscaled volume is measured
_INTERIOR_MM = 5.0   # the organ interior (its std) lies this far inside the organ, as in the lesion figures
_MIN_MEAN_PROFILE = 0.2   # floor of mean(g) over a tumour, so a tiny tumour's drop stays bounded


def draw(key: jax.Array, spec: ProfileSpec, shape: tuple[int, ...]) -> dict[str, Any]:
  """Every random choice of one realistic synthesis (arrays, per tumour slot; see ``render``)."""
  r = spec.realistic
  counter = iter(range(1 << 20))
  keys = iter(lambda: jax.random.fold_in(key, next(counter)), None)
  u = lambda shp=(): jax.random.uniform(next(keys), shp)
  urange = lambda lohi, shp: lohi[0] + (lohi[1] - lohi[0]) * u(shp)
  k, nl = r.slots, max(r.lobes[1], 1)
  d: dict[str, Any] = {}
  count = jnp.minimum(r.count[0] + jnp.floor(u() * (r.count[1] - r.count[0] + 1)).astype(jnp.int32), r.count[1])
  d["active"] = jnp.arange(k) < count
  d["diameter_mm"] = jnp.exp(np.log(r.diameter_mm[0]) + np.log(r.diameter_mm[1] / r.diameter_mm[0])
                             * skewed(u((k,)), r.diameter_skew))
  d["axes"] = urange(r.axis_factor, (k, 3))
  d["quat"] = jax.random.normal(next(keys), (k, 4))
  lobes = r.lobes[0] + jnp.floor(u((k,)) * (r.lobes[1] - r.lobes[0] + 1)).astype(jnp.int32)
  d["lobe_on"] = jnp.arange(nl)[None, :] < jnp.minimum(lobes, r.lobes[1])[:, None]
  direction = jax.random.normal(next(keys), (k, nl, 3))
  direction = direction / jnp.maximum(jnp.linalg.norm(direction, axis=-1, keepdims=True), 1e-6)
  d["lobe_center"] = direction * urange(r.lobulation, (k, nl))[..., None]
  d["lobe_radius"] = urange(r.lobe_size, (k, nl))
  d["ctrl"] = jnp.clip(jax.random.normal(next(keys), (k, 3, 3, 3, 3)), -MAX_DISPLACEMENT_SIGMAS,
                       MAX_DISPLACEMENT_SIGMAS)
  d["irregularity"] = urange(r.irregularity, (k,))
  d["contrast"] = r.contrast[0] + (r.contrast[1] - r.contrast[0]) * skewed(u((k,)), r.contrast_skew)
  d["std_ratio"] = urange(r.std_ratio, (k,))
  d["edge_width_mm"] = urange(r.edge_width_mm, (k,))
  d["core_depth_mm"] = urange(r.core_depth_mm, (k,))
  d["rim_on"] = u((k,)) < r.rim_prob
  d["rim_hu"] = urange(r.rim_hu, (k,))
  d["mass_mm"] = urange(r.mass_effect_mm, (k,))
  d["center_u"] = u((k,))
  f = texture_factor(shape)
  d["noise"] = jax.random.normal(next(keys), tuple(n // f for n in shape))
  d["roughness_mm"] = urange(r.roughness_mm, (k,))
  d["rough_noise"] = jax.random.normal(next(keys), tuple(n // f for n in shape))
  return d


def smooth_unit_noise(noise: jax.Array, sigma_mm: float, spacing: jax.Array, shape: tuple[int, ...]
                      ) -> jax.Array:
  """Coarse normal noise blurred to full resolution ``shape``, scaled to unit std (from the blur weights).

  The std comes from the weights, not from the field, so nothing is standardised over the patch: the field
  has mean 0 and std 1 in expectation wherever it is looked at.
  """
  f = texture_factor(shape)
  pos = [f * jnp.arange(n // f, dtype=jnp.float32) + 0.5 * (f - 1) for n in shape]
  sig = jnp.maximum(sigma_mm / spacing, 0.5)
  mats = [ops.gaussian_matrix(jnp.arange(n, dtype=jnp.float32), p, sig[a]) for a, (n, p) in enumerate(zip(shape, pos))]
  var = 1.0
  for m in mats:
    var = var * jnp.sum(jnp.square(m[m.shape[0] // 2]))
  return ops.apply_separable(noise, *mats) / jnp.sqrt(var)


def skewed(u, skew: float):
  """A uniform u in [0, 1] bent towards 1 (skew > 0: 1 - (1 - u)^(1 + skew)) or 0 (skew < 0: u^(1 - skew)).

  Real lesions' figures are skewed (most metastases near the top of their contrast range, a few nearly
  isodense): with a skew a (lo, hi) range can match the real p10, median and p90 (calibrate.py).
  Works on numpy and jax arrays.
  """
  if skew >= 0:
    return 1.0 - (1.0 - u) ** (1.0 + skew)
  return u ** (1.0 - skew)


def _rotation(quat: jax.Array) -> jax.Array:
  """[4] unnormalised quaternion -> [3, 3] rotation matrix (uniform over rotations for a normal quat)."""
  w, x, y, z = quat / jnp.maximum(jnp.linalg.norm(quat), 1e-6)
  return jnp.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _lagrange3(t: jax.Array) -> jax.Array:
  return jnp.stack([0.5 * t * (t - 1.0), 1.0 - t * t, 0.5 * t * (t + 1.0)], axis=-1)


def _tensor_quadratic(c: jax.Array, w: list[jax.Array]) -> jax.Array:
  """sum_ijk c[i, j, k] w0_i w1_j w2_k, contracted one axis at a time with scalar coefficients.

  The same sum as einsum("ijk,...i,...j,...k->..."), which XLA on CPU ran as a [..., 3, 3, 3] product
  over the whole patch: this form is 4x faster for the depth (96^3, three tumours), equal to 2e-5 mm.
  """
  out = 0.0
  for i in range(3):
    row = 0.0
    for j in range(3):
      row = row + (c[i, j, 0] * w[2][..., 0] + c[i, j, 1] * w[2][..., 1] + c[i, j, 2] * w[2][..., 2]) * w[1][..., j]
    out = out + row * w[0][..., i]
  return out


def unit_depth(v: jax.Array, axes: jax.Array, lobe_center: jax.Array, lobe_radius: jax.Array,
               lobe_on: jax.Array, ctrl: jax.Array, irregularity: jax.Array) -> jax.Array:
  """Approximate signed distance (> 0 inside) to the lobulated shape, in units of the main radius.

  Args:
    v: [3, ...] (or 3 broadcastable arrays) points in the tumour's rotated frame, in units of the main radius.
    axes: [3] main semi-axes; lobe_center [L, 3], lobe_radius [L], lobe_on [L]: the extra lobes (spheres).
    ctrl: [3, 3, 3, 3] control displacements (normals) at -2, 0, 2 per axis; irregularity: their std.

  Returns:
    [...]: max over the main ellipsoid ((1 - its radial function) x its smallest semi-axis, a close bound
    for an ovoid) and the lobes (exact for a sphere): the union's signed distance, approximately.
  """
  w = [_lagrange3(jnp.clip(v[a] / 2.0, -1.0, 1.0)) for a in range(3)]
  v = [v[a] + irregularity * _tensor_quadratic(ctrl[a], w) for a in range(3)]
  q = jnp.sqrt(sum(jnp.square(v[a] / axes[a]) for a in range(3)))
  depth = (1.0 - q) * jnp.min(axes)
  for j in range(lobe_center.shape[0]):
    dist = jnp.sqrt(sum(jnp.square(v[a] - lobe_center[j, a]) for a in range(3)))
    depth = jnp.maximum(depth, jnp.where(lobe_on[j], lobe_radius[j] - dist, -jnp.inf))
  return depth


def _bound(spec: ProfileSpec) -> float:
  """Static half-extent (units of the main radius) that holds every shape of the spec."""
  r = spec.realistic
  reach = max(r.axis_factor[1], r.lobulation[1] + r.lobe_size[1] if r.lobes[1] else 0.0)
  return reach + MAX_DISPLACEMENT_SIGMAS * r.irregularity[1] + 0.1


def unit_volume(spec: ProfileSpec, axes, lobe_center, lobe_radius, lobe_on, ctrl, irregularity) -> jax.Array:
  """Volume of the unscaled shape (units of the main radius cubed) on a static _GRID^3 grid."""
  b = _bound(spec)
  g = jnp.linspace(-b, b, _GRID)
  v = jnp.stack(jnp.meshgrid(g, g, g, indexing="ij"))
  inside = unit_depth(v, axes, lobe_center, lobe_radius, lobe_on, ctrl, irregularity) >= 0
  step = 2.0 * b / (_GRID - 1)
  return jnp.maximum(jnp.sum(inside) * step ** 3, step ** 3)


def transition(depth_mm: jax.Array, edge_width_mm: jax.Array, spec: ProfileSpec) -> jax.Array:
  """The share of the full drop at a depth (mm, > 0 inside the label) is g = transition x core_growth.

  transition: a Gaussian-CDF of 10-90% width edge_width_mm (its 10% point on the label boundary when
  label_at_outer_edge, else its middle there); also the weight of a tumour's added noise and vessel pull,
  so render computes it once per tumour.
  """
  mid = 0.5 * edge_width_mm if spec.realistic.label_at_outer_edge else 0.0
  return ndtr((depth_mm - mid) / (edge_width_mm / _Z90))


def core_growth(depth_mm: jax.Array, core_depth_mm: jax.Array, spec: ProfileSpec) -> jax.Array:
  """1 - core_share + core_share x min(depth / core_depth, 1): darkening that keeps growing towards the
  centre instead of a plateau."""
  r = spec.realistic
  return 1.0 - r.core_share + r.core_share * jnp.clip(depth_mm / core_depth_mm, 0.0, 1.0)


def _reduce(op, arrays: list[jax.Array]) -> jax.Array:
  out = arrays[0]
  for a in arrays[1:]:
    out = op(out, a)
  return out


def _argmax_slot(depth: list[jax.Array]) -> jax.Array:
  """jnp.argmax(jnp.stack(depth), axis=0) (the first slot on ties) without stacking."""
  best, owner = depth[0], jnp.zeros(depth[0].shape, jnp.int32)
  for k in range(1, len(depth)):
    better = depth[k] > best
    best, owner = jnp.where(better, depth[k], best), jnp.where(better, k, owner)
  return owner


def select_slot(owner: jax.Array, per_slot: jax.Array) -> jax.Array:
  """per_slot[owner] at every voxel (owner int [X, Y, Z], per_slot [K]) as a chain of K selects: the same
  values as jnp.take, without a per-voxel gather (slow on CPU)."""
  out = jnp.broadcast_to(per_slot[0], owner.shape)
  for k in range(1, per_slot.shape[0]):
    out = jnp.where(owner == k, per_slot[k], out)
  return out


def _slot_weights(shape, centers: jax.Array, spacing: jax.Array, sigma_mm: float) -> list[jax.Array]:
  """Per-axis Gaussian weights [K, n] around each centre (separable local means)."""
  out = []
  for a, n in enumerate(shape):
    x = (jnp.arange(n, dtype=jnp.float32)[None, :] - centers[:, a:a + 1]) * spacing[a]
    out.append(jnp.exp(-0.5 * jnp.square(x / sigma_mm)))
  return out


def axis_coords(shape: tuple[int, ...], axis: int) -> jax.Array:
  """Voxel indices along ``axis`` as a float32 array broadcastable to ``shape`` ([X, 1, 1], ...).

  Fields over the patch are built per axis from these and broadcast, never stacked as [3, X, Y, Z]: XLA on
  CPU ran the stacked form of the mass effect's displacement 40x slower (227 -> 6 ms at 96^3, equal bits).
  """
  return jnp.arange(shape[axis], dtype=jnp.float32).reshape([-1 if b == axis else 1 for b in range(len(shape))])


def _displace(image, organ, label, blocked, centers_mm, radius_mm, amount_mm, active, spacing):
  """Mass effect: tissue and labels pushed outwards from each tumour centre (backward warp).

  The displacement is radial, amount x rho inside the tumour's radius and amount / rho^2 beyond it (a
  divergence-free, volume-preserving push that fades within a few radii); image linear, labels nearest.
  """
  shape = image.shape
  grid = [axis_coords(shape, a) for a in range(3)]
  pos = [grid[a] * spacing[a] for a in range(3)]
  disp = [0.0, 0.0, 0.0]
  for i in range(centers_mm.shape[0]):
    rel = [pos[a] - centers_mm[i, a] for a in range(3)]
    dist = jnp.sqrt(jnp.square(rel[0]) + jnp.square(rel[1]) + jnp.square(rel[2])) + 1e-3
    rho = dist / radius_mm[i]
    mag = amount_mm[i] * jnp.where(rho < 1.0, rho, 1.0 / jnp.square(rho))
    push = jnp.where(active[i], mag / dist, 0.0)
    disp = [disp[a] + push * rel[a] for a in range(3)]
  src = [grid[a] - disp[a] / spacing[a] for a in range(3)]
  image = jndimage.map_coordinates(image, src, order=1, mode="nearest")
  # The masks' nearest-neighbour lookups share one index and one gather (map_coordinates order 0 with
  # mode "nearest" is exactly this: round half away from zero, clip); one warp each was 3 gathers.
  idx = tuple(jnp.clip(lax.round(src[a]).astype(jnp.int32), 0, n - 1) for a, n in enumerate(shape))
  masks = [organ] + [m for m in (label, blocked) if m is not None]
  moved = jnp.stack([m.astype(jnp.int32) for m in masks], axis=-1)[idx]
  organ = moved[..., 0] > 0
  label = None if label is None else moved[..., 1].astype(label.dtype)
  blocked = None if blocked is None else moved[..., -1] > 0
  return image, organ, label, blocked


def render(image: jax.Array, organ: jax.Array, spacing: jax.Array, d: dict, spec: ProfileSpec,
           blocked: jax.Array | None = None, label: jax.Array | None = None, centers: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Deterministic part: draws -> (new image [X, Y, Z], tumour mask [X, Y, Z], extras).

  Args:
    image: float32 [X, Y, Z] HU; organ: bool [X, Y, Z]; spacing: [3] mm; d: ``draw``'s output.
    spec: the organ's ProfileSpec (with ``realistic``).
    blocked: optional bool [X, Y, Z]: voxels a tumour never takes (another organ's label).
    label: optional int [X, Y, Z] label map, displaced with the tissue when the mass effect is on.
    centers: optional int32 [K, 3] tumour centres (the calibration's forward model); None: drawn on the
      profile's centre candidates in the patch (patch placement).

  Returns:
    (image, tumour, extras) with extras "organ" and "label" (displaced by the mass effect, else as given),
    "centers" int32 [K, 3] (-1 for inactive slots), "depth_mm" float32 [K, X, Y, Z].
  """
  r = spec.realistic
  shape = image.shape
  spacing = spacing.astype(jnp.float32)
  img = image.astype(jnp.float32)
  if centers is None:
    centers, _ = sample_voxels(_pick_candidates(organ, spacing, spec), d["center_u"])
  active = d["active"] & ops.any_along(organ)
  cf = centers.astype(jnp.float32)

  # Shape: scale each tumour's unit shape so its volume is that of the drawn equivalent diameter.
  rots = jax.vmap(_rotation)(d["quat"])
  unit_vol = jax.vmap(lambda *a: unit_volume(spec, *a))(d["axes"], d["lobe_center"], d["lobe_radius"],
                                                         d["lobe_on"], d["ctrl"], d["irregularity"])
  scale_mm = jnp.cbrt(np.pi / 6.0 * d["diameter_mm"] ** 3 / unit_vol)              # [K] mm per unit
  radius_mm = 0.5 * d["diameter_mm"]

  if r.mass_effect:
    img, organ, label, blocked = _displace(img, organ, label, blocked, cf * spacing, radius_mm, d["mass_mm"],
                                           active, spacing)

  def depth_of(center, rot, scale, axes, lc, lr, lo, ctrl, irr):
    rel = [(axis_coords(shape, a) - center[a]) * spacing[a] for a in range(3)]          # mm, per axis
    v = [(rot[a, 0] * rel[0] + rot[a, 1] * rel[1] + rot[a, 2] * rel[2]) / scale for a in range(3)]
    return unit_depth(v, axes, lc, lr, lo, ctrl, irr) * scale

  # Per-slot fields are kept as lists of [X, Y, Z] arrays (K is static), reduced per slot and combined with
  # elementwise max: XLA on CPU ran the stacked [K, X, Y, Z] forms several times slower (see axis_coords).
  k_slots = range(d["active"].shape[0])
  depth = [depth_of(cf[k], rots[k], scale_mm[k], d["axes"][k], d["lobe_center"][k], d["lobe_radius"][k],
                    d["lobe_on"][k], d["ctrl"][k], d["irregularity"][k]) for k in k_slots]      # mm
  if r.roughness_mm[1] > 0:   # fine bumps of the outline (mm scale), on top of the smooth lobulated shape
    rough = smooth_unit_noise(d["rough_noise"], r.roughness_scale_mm, spacing, shape)
    depth = [depth[k] + d["roughness_mm"][k] * rough for k in k_slots]
  depth = [jnp.where(active[k], depth[k], -jnp.inf) for k in k_slots]
  allowed = organ if blocked is None else organ & ~blocked
  masks = [(dk >= 0.0) & allowed for dk in depth]
  tumor = _reduce(jnp.logical_or, masks)
  count = jnp.stack([jnp.maximum(jnp.sum(m), 1) for m in masks])

  # Per tumour: the local organ HU around its own centre and the organ interior's std.
  wx, wy, wz = _slot_weights(shape, cf, spacing, r.local_sigma_mm)
  om = organ.astype(jnp.float32)
  num = jnp.einsum("kx,ky,kz,xyz->k", wx, wy, wz, om * img)
  den = jnp.einsum("kx,ky,kz,xyz->k", wx, wy, wz, om)
  local = jnp.where(den > 1e-3, num / jnp.maximum(den, 1e-3), _masked_mean(img, organ, 0.0))   # [K] HU
  rmax = int(np.ceil(_INTERIOR_MM / spec.min_spacing_mm))
  interior = ops.box_morphology(organ, jnp.round(_INTERIOR_MM / spacing).astype(jnp.int32), (rmax,) * 3, erode=True)
  interior = jnp.where(ops.any_along(interior), interior, organ)
  organ_mean = _masked_mean(img, interior, 0.0)
  organ_std = jnp.sqrt(jnp.maximum(_masked_mean(jnp.square(img - organ_mean), interior, 0.0), 1e-6))

  t = [jnp.where(active[k], transition(depth[k], d["edge_width_mm"][k], spec), 0.0) for k in k_slots]
  g = [t[k] * core_growth(depth[k], d["core_depth_mm"][k], spec) for k in k_slots]
  g_mean = jnp.maximum(jnp.stack([jnp.sum(jnp.where(masks[k], g[k], 0.0)) for k in k_slots]) / count,
                       _MIN_MEAN_PROFILE)
  drop = _reduce(jnp.maximum, [(d["contrast"][k] * local[k] / g_mean[k]) * g[k] for k in k_slots])   # HU
  owner = _argmax_slot(depth)                                                         # deepest tumour
  pick = lambda per_slot: select_slot(owner, per_slot)
  inside_w = _reduce(jnp.maximum, t)

  # Vessels: organ voxels inside a tumour far from the local HU (enhanced vessels; at the organ's edge,
  # partial-volume fat) become tumour tissue: pulled to the local HU.
  if r.replace_vessels:
    unlike = jnp.abs(img - pick(local)) > r.vessel_k * organ_std
    pull = jnp.maximum(inside_w, tumor.astype(jnp.float32))   # fully inside the label, fading outside
    img_v = jnp.where(unlike & organ, img + pull * (pick(local) - img), img)
  else:
    img_v = img

  # Heterogeneity: per tumour, the added noise brings its std to std_ratio x the organ interior's std.
  out = img_v - drop
  if r.heterogeneity:
    noise = smooth_unit_noise(d["noise"], r.texture_sigma_mm, spacing, shape)
    mean_in = jnp.stack([jnp.sum(jnp.where(masks[k], out, 0.0)) for k in k_slots]) / count
    var_in = jnp.stack([jnp.sum(jnp.where(masks[k], jnp.square(out - mean_in[k]), 0.0)) for k in k_slots]) / count
    amp = jnp.sqrt(jnp.maximum(jnp.square(d["std_ratio"] * organ_std) - var_in, 0.0))   # [K] HU
    out = out + pick(amp) * inside_w * noise

  # Rim: a ring a few HU bright just outside the label of large enough tumours.
  if r.rim_prob > 0:
    vol = count * jnp.prod(spacing)
    on = active & d["rim_on"] & (vol >= r.rim_min_volume_mm3)
    ring = [jnp.where(on[k] & (depth[k] < 0), d["rim_hu"][k] * jnp.exp(
        -0.5 * jnp.square((-depth[k] - r.rim_offset_mm) / r.rim_sigma_mm)), 0.0) for k in k_slots]
    out = out + jnp.where(tumor, 0.0, _reduce(jnp.maximum, ring))

  out = jnp.where(organ, out, img)
  extras = dict(organ=organ, label=label, centers=jnp.where(active[:, None], centers, -1), depth_mm=jnp.stack(depth),
                local_hu=local, organ_std=organ_std)
  return out, tumor, extras
