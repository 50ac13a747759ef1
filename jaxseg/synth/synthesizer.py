"""The jittable tumour synthesizer: one pure function of (HU patch, organ mask, spacing, key, profile).

It is split in two so the numpy reference can be checked against it on identical random numbers:
``draw`` makes every random choice (size class, counts, semi-axes, displacements, centre uniforms, noise),
``render`` turns the draws into the tumour mask and the new image deterministically. All shapes are static:
each size group has a fixed number of slots with an active mask; small tumours are evaluated in a static
box, large ones over the whole patch on a coarse grid (their shape function is smooth), textures are
generated on a grid twice as coarse and blurred straight back to full resolution.

The spec's mode decides the statistics (docs/SYNTHESIS.md, "Placement modes"): "reference" deforms with the
published generator's three sequential 2D passes and order-0 lookups, evaluated per voxel, and rescales
the texture with the published bank's fixed constants (texture_bank.py); "patch" uses one smooth 3D field
and rescales the texture over the patch. In reference mode the tumour sites come from the loader, drawn on
the whole case (placement.py); ``render`` then draws only the tumours whose reach meets the patch.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.synth import box_blur, device_bank, ops, spec as spec_lib
from jaxseg.synth.spec import ProfileSpec

_FAR = 4.0          # shape-function value for "no tumour here" (tumour is <= 1)
_CELL = 4           # centre sampling: candidate counts per 4^3 cell, then a voxel inside the cell


def texture_factor(shape: tuple[int, ...]) -> int:
  return 2 if all(n % 2 == 0 for n in shape) else 1


def draw(key: jax.Array, spec: ProfileSpec, shape: tuple[int, ...], class_index: jax.Array | None = None
         ) -> dict[str, Any]:
  """Every random choice of one synthesis, as a dict of arrays (see ``render``).

  ``class_index`` (optional, may be traced) fixes the size class without changing the slot layout, so one
  compiled program serves every class (the fidelity measurement); the other draws do not change.
  """
  counter = iter(range(1 << 20))
  keys = iter(lambda: jax.random.fold_in(key, next(counter)), None)
  u = lambda shp=(): jax.random.uniform(next(keys), shp)
  urange = lambda lohi, shp=(): lohi[0] + (lohi[1] - lohi[0]) * u(shp)
  d: dict[str, Any] = {}
  d["class_index"] = jax.random.randint(next(keys), (), 0, len(spec.classes))
  if class_index is not None:
    d["class_index"] = jnp.asarray(class_index, jnp.int32)
  d["groups"] = []
  for g in spec.groups:
    lo = jnp.asarray(g.count_lo)[d["class_index"]]
    hi = jnp.asarray(g.count_hi)[d["class_index"]]
    count = lo + jnp.floor(u() * (hi - lo + 1)).astype(jnp.int32)
    count = jnp.minimum(count, hi)
    gd = dict(
        active=jnp.arange(g.slots) < count,
        axes_mm=g.radius_mm * urange(g.axis_factor, (g.slots, 3)),
        sigma_mm=urange(g.sigma_mm, (g.slots,)),
        ctrl=jnp.clip(jax.random.normal(next(keys), (g.slots, 3, 3, 3, 3)),
                      -spec_lib.MAX_DISPLACEMENT_SIGMAS, spec_lib.MAX_DISPLACEMENT_SIGMAS),
        center_u=u((g.slots,)),
        free=u((g.slots,)) < (spec.exophytic_prob if g.exophytic else 0.0))
    d["groups"].append(gd)
  f = texture_factor(shape)
  coarse = tuple(n // f for n in shape)
  k_noise, k_bits = next(keys), next(keys)
  if spec.texture_source == "field":
    # Bytes for the Bernoulli step, f^3 per coarse voxel (one per fine voxel), from 32-bit draws (cheaper).
    d["noise_a"] = jax.random.uniform(k_noise, coarse)
    words = jax.random.bits(k_bits, coarse + (max(f ** 3 // 4, 1),), jnp.uint32)
    d["bits_b"] = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(coarse + (-1,))[..., :f ** 3]
  # (With the device bank the two fields are not drawn; their keys are still taken, so every later draw,
  # and the masks, are the same for a key whatever the texture source.)
  d["sigma_a_index"] = jax.random.randint(next(keys), (), 0, len(spec.texture_sigma_a_mm))
  d["sigma_b_index"] = jax.random.randint(next(keys), (), 0, len(spec.texture_sigma_b_mm))
  d["sigma_a_mm"] = jnp.asarray(spec.texture_sigma_a_mm)[d["sigma_a_index"]]
  d["sigma_b_mm"] = jnp.asarray(spec.texture_sigma_b_mm)[d["sigma_b_index"]]
  d["scale"] = urange(spec.texture_scale)
  d["base"] = urange(spec.texture_base)
  d["u0"] = urange(spec.texture_u0)
  d["edge_sigma_mm"] = urange(spec.edge_sigma_mm)
  d["delta"] = urange(spec.delta)
  d["mass_hu"] = urange(spec.mass_hu)
  if spec.texture_source == "bank":
    # Which bank texture (the same index as the field's sigma pair) and where the patch sits in it.
    d["texture_index"] = d["sigma_a_index"] * len(spec.texture_sigma_b_mm) + d["sigma_b_index"]
    d["bank_offset"] = jax.random.randint(next(keys), (3,), 0, spec.bank_margin + 1)
  return d


def _pick_candidates(organ: jax.Array, spacing: jax.Array, spec: ProfileSpec) -> jax.Array:
  """Centre candidates: the first non-empty of the rule's voxels in each axial range, else the whole organ.

  The ranges are slabs in z, so which one is non-empty is read from the rule's per-slice occupancy [Z]:
  one pass over the patch builds the chosen mask, instead of one masked copy and one reduction per range.
  """
  rmax_mm = spec.erosion_mm / spec.min_spacing_mm
  rmax = (int(np.ceil(rmax_mm)), int(np.ceil(rmax_mm)), 0)
  radius = jnp.round(spec.erosion_mm / spacing).astype(jnp.int32) * jnp.array([1, 1, 0])
  eroded = ops.box_morphology(organ, radius, rmax, erode=True)
  if spec.center_rule == "eroded":
    base = eroded
  elif spec.center_rule == "wall":
    base = organ & ~eroded
  else:
    base = organ
  z = jnp.arange(organ.shape[2], dtype=jnp.float32)
  has_z = ops.any_along(organ, axis=(0, 1))
  base_z = ops.any_along(base, axis=(0, 1))
  zmin = jnp.min(jnp.where(has_z, z, jnp.inf))
  zmax = jnp.max(jnp.where(has_z, z, -jnp.inf))
  # Slices allowed: those of the first range holding a rule voxel (in order of preference), else none.
  keep, found = jnp.zeros_like(has_z), jnp.zeros((), bool)
  for lo, hi in spec.axial_ranges:
    in_range = (z >= zmin + lo * (zmax - zmin) - 1e-3) & (z <= zmin + hi * (zmax - zmin) + 1e-3)
    hit = jnp.any(base_z & in_range)
    keep = jnp.where(found, keep, jnp.where(hit, in_range, keep))
    found = found | hit
  return jnp.where(found, base & keep[None, None, :], organ)


def sample_voxels(mask: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Voxel indices [S, 3] chosen uniformly among True voxels of mask by uniforms u [S]; and "any".

  The order u indexes into: cells of CELL^3 voxels in row-major cell order, and inside a cell row-major
  voxel order (the numpy oracle's ``candidates`` order). The count per cell is a sum over the three inner
  axes of a 6D view, and only the S chosen cells are read voxel by voxel, so the mask is never transposed
  into cell order (that transpose cost 0.9 of 1.2 ms per call at 96^3 in a one-off timing here, the same
  indices; ``python launch/bench_synthesis.py --against=<checkout>`` times the synthesis with it).
  """
  pad = [(0, (-n) % _CELL) for n in mask.shape]
  m = jnp.pad(mask, pad)
  a, b, c = (n // _CELL for n in m.shape)
  counts = jnp.sum(m.astype(jnp.uint8).reshape(a, _CELL, b, _CELL, c, _CELL), axis=(1, 3, 5),
                   dtype=jnp.int32).reshape(-1)
  csum = jax.lax.associative_scan(jnp.add, counts)        # jnp.cumsum lowers to a quadratic window on CPU
  total = csum[-1]
  t = jnp.minimum(jnp.floor(u * total).astype(jnp.int32), jnp.maximum(total - 1, 0))
  cell = jnp.searchsorted(csum, t, side="right")
  cell = jnp.minimum(cell, counts.shape[0] - 1)
  offset = t - (csum[cell] - counts[cell])
  ci, cj, ck = cell // (b * c), (cell // c) % b, cell % c
  blocks = jax.vmap(lambda i, j, k: jax.lax.dynamic_slice(m, (i * _CELL, j * _CELL, k * _CELL),
                                                          (_CELL,) * 3).reshape(-1))(ci, cj, ck)
  inner = jnp.cumsum(blocks.astype(jnp.int32), axis=1)      # [S, CELL^3]
  within = jnp.argmax(inner > offset[:, None], axis=1)
  wi, wj, wk = within // (_CELL * _CELL), (within // _CELL) % _CELL, within % _CELL
  idx = jnp.stack([ci * _CELL + wi, cj * _CELL + wj, ck * _CELL + wk], axis=1)
  return idx, total > 0


def _lagrange3(t: jax.Array) -> jax.Array:
  """Quadratic interpolation weights through t = -1, 0, 1: [..., 3]."""
  return jnp.stack([0.5 * t * (t - 1.0), 1.0 - t * t, 0.5 * t * (t + 1.0)], axis=-1)


def shape_function(grids: list[jax.Array], center: jax.Array, axes_mm: jax.Array, disp_mm: jax.Array,
                   radius_mm: float, spacing: jax.Array) -> jax.Array:
  """sqrt of the deformed-ellipsoid function on the grid given by per-axis voxel coordinates.

  Args:
    grids: three float32 vectors of voxel coordinates (x, y, z).
    center: float32 [3] voxel centre.
    axes_mm: [3] semi-axes in mm.
    disp_mm: [3 (component), 3, 3, 3] control-point displacements in mm at -2R, 0, 2R per axis.
    radius_mm: the class's base radius R (the box is 4R per side).
    spacing: [3] mm.

  Returns:
    [len(gx), len(gy), len(gz)]: < 1 inside the tumour (distance-like, so it interpolates well).
  """
  rel = [(g - center[a]) * spacing[a] for a, g in enumerate(grids)]                    # mm
  w = [_lagrange3(jnp.clip(r / (2.0 * radius_mm), -1.0, 1.0)) for r in rel]
  disp = jnp.einsum("mijk,xi,yj,zk->mxyz", disp_mm, w[0], w[1], w[2])
  f = (jnp.square((rel[0][:, None, None] + disp[0]) / axes_mm[0])
       + jnp.square((rel[1][None, :, None] + disp[1]) / axes_mm[1])
       + jnp.square((rel[2][None, None, :] + disp[2]) / axes_mm[2]))
  return jnp.sqrt(f)


# The reference's three 2D passes, in the order they are applied to the ellipsoid: axes (0, 1), then (1, 2),
# then (0, 2). A voxel of the result is looked up backwards: through the last pass first.
_PASSES = ((0, 1), (1, 2), (0, 2))


def _mirror_bspline_segments() -> np.ndarray:
  """[2 (segment), 4 (power of u), 3 (control value)]: the cubic-spline interpolant through 3 control values.

  The reference's elastic passes (elasticdeform.deform_grid) interpolate the 3 x 3 control displacements with
  scipy's cubic spline (``map_coordinates(order=3)``: prefiltered, mirror boundary) at ``linspace(0, 2, N)``
  over the box. With mirror boundaries 3 values (a, b, c) extend to the 4-periodic a b c b; the interpolating
  B-spline coefficients solve (c[k-1] + 4 c[k] + c[k+1]) / 6 = f[k]. On the segment [k, k+1], k in {0, 1},
  s(k + u) = sum_m b_m(u) c[k - 1 + m] with the uniform cubic B-spline pieces b_m; expanded here into
  polynomial coefficients in u, so the device evaluates two cubics and a select (tests pin this to scipy).
  """
  circ = np.zeros((4, 4))
  for k in range(4):
    circ[k, (k - 1) % 4], circ[k, k], circ[k, (k + 1) % 4] = 1 / 6, 4 / 6, 1 / 6
  periodic = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0]], float)       # a b c b
  coef = np.linalg.solve(circ, periodic)                                            # [4, 3]
  # b_m(u) as polynomial coefficients (1, u, u^2, u^3).
  pieces = np.array([[1, -3, 3, -1], [4, 0, -6, 3], [1, 3, 3, -3], [0, 0, 0, 1]], float) / 6.0
  return np.stack([sum(np.outer(pieces[m], coef[(k - 1 + m) % 4]) for m in range(4)) for k in (0, 1)])


_BSPLINE3 = _mirror_bspline_segments()


def bspline3_weights(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Weights of the 3 control values at grid coordinate ``x`` in [0, 2] (clipped), as elementwise arrays."""
  x = jnp.clip(x, 0.0, 2.0)
  upper = x > 1.0
  u = jnp.where(upper, x - 1.0, x)
  out = []
  for j in range(3):
    lo, hi = _BSPLINE3[0, :, j], _BSPLINE3[1, :, j]
    c = [jnp.where(upper, float(hi[i]), float(lo[i])) for i in range(4)]
    out.append(((c[3] * u + c[2]) * u + c[1]) * u + c[0])
  return tuple(out)


# The reference's three 2D passes, in the order they are applied to the ellipsoid: axes (0, 1), then (1, 2),
# then (0, 2). A voxel of the result is looked up backwards: through the last pass first.
_PASSES = ((0, 1), (1, 2), (0, 2))


def shape_function_sequential(grids: list[jax.Array], center: jax.Array, axes_mm: jax.Array,
                              ctrl_mm: jax.Array, radius_mm: float, spacing: jax.Array) -> jax.Array:
  """The reference's deformation: three sequential 2D elastic passes with nearest-voxel (order 0) lookup.

  As elasticdeform.deform_random_grid(points=3, order=0) on the reference's ellipsoid box (4 x each semi-
  axis per side): each pass displaces two axes by a field interpolated (cubic spline, mirror boundary) from
  a 3 x 3 grid of control displacements spanning the box; every voxel of the output takes the value of the
  voxel it is displaced to, rounded to the grid, and nothing exists outside the box. Two of the three passes
  move each axis, so an axis moves by about sqrt(2) sigma, and the rounding in each pass leaves the jagged
  outline the sphericity figure sees.

  Args:
    grids: three float32 vectors of voxel coordinates (x, y, z).
    center: float32 [3] voxel centre (integer valued).
    axes_mm: [3] semi-axes in mm.
    ctrl_mm: [3 (pass), 2 (component), 3, 3] control displacements in mm.
    radius_mm: the class's base radius R (unused: the box follows the semi-axes, as in the reference).
    spacing: [3] mm.

  Returns:
    [len(gx), len(gy), len(gz)]: sqrt of the ellipsoid function at the looked-up voxel (< 1 inside).
  """
  del radius_mm
  shp = (grids[0].shape[0], grids[1].shape[0], grids[2].shape[0])
  # Coordinates stay broadcastable ([X,1,1], [1,Y,1], [1,1,Z]) until a pass mixes them, so the first pass
  # looked up works on an [X,1,Z] plane, not the box: the same values, a third less work.
  q = [(grids[a] - center[a]).reshape([-1 if b == a else 1 for b in range(3)]) for a in range(3)]  # voxels
  half_box = [2.0 * axes_mm[a] / spacing[a] for a in range(3)]                        # voxels
  inside_box = functools.reduce(jnp.logical_and, [jnp.abs(q[a]) <= half_box[a] for a in range(3)])
  for p in reversed(range(3)):
    a, b = _PASSES[p]
    wa = bspline3_weights(q[a] / half_box[a] + 1.0)
    wb = bspline3_weights(q[b] / half_box[b] + 1.0)
    da = sum(wa[i] * sum(wb[j] * ctrl_mm[p, 0, i, j] for j in range(3)) for i in range(3))
    db = sum(wa[i] * sum(wb[j] * ctrl_mm[p, 1, i, j] for j in range(3)) for i in range(3))
    q[a], q[b] = jnp.round(q[a] + da / spacing[a]), jnp.round(q[b] + db / spacing[b])
    # A lookup that lands outside the box reads the constant 0 (elasticdeform's mode="constant").
    inside_box = inside_box & (jnp.abs(q[a]) <= half_box[a]) & (jnp.abs(q[b]) <= half_box[b])
  f = sum(jnp.square(q[a] * spacing[a] / axes_mm[a]) for a in range(3))
  return jnp.broadcast_to(jnp.where(inside_box, jnp.sqrt(f), _FAR), shp)


def _slot_function(spec: ProfileSpec, grids, center, axes, dd, radius_mm, spacing):
  if spec.deformation == "sequential2d":
    # dd: [3, 3, 3, 3] control displacements (81 independent normals); pass p uses dd[p, :2]: 2 x 3 x 3.
    return shape_function_sequential(grids, center, axes, dd[:, :2], radius_mm, spacing)
  return shape_function(grids, center, axes, dd, radius_mm, spacing)


def _meets_patch(g, gd: dict, centers: jax.Array, spacing: jax.Array, shape: tuple[int, ...],
                 spec: ProfileSpec) -> jax.Array:
  """The group's active slots whose tumour can reach the patch (reference sites come from the whole case)."""
  reach_vox = spec.half_extent_mm(g) / spacing
  nearest = jnp.clip(centers, 0, jnp.asarray(shape) - 1)
  return gd["active"] & jnp.all(jnp.abs(centers - nearest) <= reach_vox + 1.0, axis=-1)


def _group_fields(g, gd: dict, centers: jax.Array, spacing: jax.Array, shape: tuple[int, ...],
                  spec: ProfileSpec) -> tuple[jax.Array, jax.Array | None]:
  """Union shape function over the patch of one size group too big for boxes: (clipped-kind, exophytic-kind
  or None); < 1 inside a tumour.

  ``centers`` may lie outside the patch (reference placement): the shape is evaluated at true coordinates,
  so a tumour cut by the border is cut, and one that misses the patch leaves nothing. Groups that fit in
  boxes go through ``_group_masks_in_boxes`` instead.
  """
  gd = dict(gd, active=_meets_patch(g, gd, centers, spacing, shape, spec))
  disp = gd["ctrl"] * gd["sigma_mm"][:, None, None, None, None]
  want_free = g.exophytic and spec.exophytic_prob > 0
  # On a grid of every step-th voxel: the smooth shape function on a coarse one, upsampled afterwards;
  # order-0 lookups (sequential2d) are not smooth, so at full resolution (step 1). One slot at a time into
  # a running minimum (a loop-carried buffer, so the union is materialised before the upsampling's slices
  # read each grid value twice per axis; fused into them, the shape functions were recomputed up to eight
  # times; vmapped, XLA:CPU's minimum over the slot axis ran as a slow library reduction), inactive slots
  # skipped.
  step = 1 if spec.deformation == "sequential2d" else spec_lib.coarse_step(g, spec)
  grids = [step * jnp.arange((n - 1 + step - 1) // step + 1, dtype=jnp.float32) for n in shape]
  grid_shape = tuple(len(x) for x in grids)

  def body(carry, xs):
    center, axes, dd, active, free = xs
    q = jax.lax.cond(active, lambda: jnp.minimum(
        _slot_function(spec, grids, center.astype(jnp.float32), axes, dd, g.radius_mm, spacing), _FAR),
        lambda: jnp.full(grid_shape, _FAR, jnp.float32))
    if want_free:
      return (jnp.minimum(carry[0], jnp.where(free, _FAR, q)), jnp.minimum(carry[1], jnp.where(free, q, _FAR))), None
    return (jnp.minimum(carry[0], q),), None

  init = tuple(jnp.full(grid_shape, _FAR, jnp.float32) for _ in range(2 if want_free else 1))
  res, _ = jax.lax.scan(body, init, (centers, gd["axes_mm"], disp, gd["active"], gd["free"]))
  if step == 1:
    fine = list(res)
  elif step == 2:
    # Weights 1 and 1/2: every product is exact, so the slices give the dense product's values bit for bit.
    fine = [ops.linear_upsample(r, step, shape) for r in res]
  else:
    # Weights such as 3/4 round, differently in the slices than in the dense product: the dense product
    # keeps the masks of earlier commits bit for bit.
    fine = [ops.apply_separable(r, *[jnp.asarray(ops.linear_upsample_matrix(n, step)) for n in shape]) for r in res]
  return fine[0], (fine[1] if want_free else None)


def _tumour_parts(clipped: jax.Array, grown: jax.Array | None, allowed: jax.Array, blocked: jax.Array | None
                  ) -> list[jax.Array]:
  """[tumour] or [tumour, exophytic] from where shapes are inside: ``clipped`` tumours only on ``allowed``
  voxels, exophytic (``grown``) ones anywhere, neither on ``blocked`` voxels. The one rule for box-local and
  whole-patch groups (on a box, the arrays are the box's windows)."""
  tumour = clipped & allowed
  if grown is not None:
    grown = grown if blocked is None else grown & ~blocked
    tumour = tumour | grown
  if blocked is not None:
    tumour = tumour & ~blocked
  return [tumour] if grown is None else [tumour, grown]


def _group_masks_in_boxes(g, gd: dict, centers: jax.Array, spacing: jax.Array, spec: ProfileSpec,
                          masks: tuple[jax.Array, ...], allowed: jax.Array, blocked: jax.Array | None
                          ) -> tuple[tuple[jax.Array, ...], box_blur.Boxes]:
  """Adds one size group's tumours to the patch's bool masks (tumour[, exophytic]) box by box.

  A voxel is tumour where any slot's shape function is <= 1 (clipped to ``allowed`` unless exophytic, never
  ``blocked``), so each slot ORs its own thresholded, clipped box into the masks, one slot at a time in a
  loop up to the last active slot (small HLO, fast compile), and nothing patch-sized is made per group.
  (Until commit 7123c0b each slot wrote the minimum of its shape function into a patch of _FAR, thresholded
  and clipped over the patch afterwards: the same masks, ``python launch/bench_synthesis.py
  --against=<that checkout>``.)

  ``centers`` may lie outside the patch (reference placement): the box is clamped into the patch but the
  shape is evaluated at true coordinates, so a tumour cut by the border is cut. Returns the masks and the
  slots' boxes (starts, active, static sizes), which the soft edge is blurred in (box_blur.py).
  """
  shape = masks[0].shape
  disp = gd["ctrl"] * gd["sigma_mm"][:, None, None, None, None]
  active = _meets_patch(g, gd, centers, spacing, shape, spec)
  want_free = len(masks) == 2
  sizes = [spec_lib.box_size(g, n, spec) for n in shape]
  half = jnp.asarray([b // 2 for b in sizes])
  hi = jnp.asarray([n - b for n, b in zip(shape, sizes)])

  def body(i, masks):
    center, axes, dd, on, free = centers[i], gd["axes_mm"][i], disp[i], active[i], gd["free"][i]
    start = jnp.clip(center - half, 0, hi)
    grids = [start[a].astype(jnp.float32) + jnp.arange(sizes[a], dtype=jnp.float32) for a in range(3)]
    inside = jax.lax.cond(on, lambda: _slot_function(spec, grids, center.astype(jnp.float32), axes, dd,
                                                     g.radius_mm, spacing) <= 1.0,
                          lambda: jnp.zeros(tuple(sizes), bool))
    box = lambda a: None if a is None else jax.lax.dynamic_slice(a, start, sizes)
    parts = _tumour_parts(inside & ~free, inside & free if want_free else None, box(allowed), box(blocked))
    out = tuple(jax.lax.dynamic_update_slice(m, jax.lax.dynamic_slice(m, start, sizes) | p, start)
                for m, p in zip(masks, parts))
    return out

  masks = jax.lax.fori_loop(0, box_blur.slots_in_use(active), body, masks)
  starts = jnp.clip(centers - half, 0, hi).astype(jnp.int32)
  return masks, box_blur.Boxes(starts, active, tuple(sizes))


def bernoulli_mean(bits: jax.Array, p: jax.Array) -> jax.Array:
  """Share of the bytes ``bits`` [..., K] that fire at probability ``p`` [...]: byte k fires where
  (k + 0.5) / 256 < p.

  Counted with one integer threshold per voxel, t = floor(256 p) + [floor(256 p) + 0.5 < 256 p], and the
  bytes compared as integers: the same hits as the float comparison for every p (tests/test_synth.py),
  and about 4x faster on this CPU than converting each byte to float (a one-off timing, not kept; the
  texture's cost as it is: ``python launch/bench_synthesis.py --profile``).
  """
  q = p * 256.0
  t = jnp.floor(q)
  t = jnp.clip(t + (t + 0.5 < q), 0, 256).astype(jnp.int16)
  hits = bits.astype(jnp.int16) < t[..., None]
  return jnp.sum(hits, axis=-1, dtype=jnp.int32).astype(jnp.float32) / bits.shape[-1]


def make_texture(d: dict, spacing: jax.Array, shape: tuple[int, ...], spec: ProfileSpec) -> jax.Array:
  """Texture in [0, 1] over the patch (docs/SYNTHESIS.md, step 4), generated per sample.

  Steps a-c run on the grid ``f`` times coarser: the blurred noise is smooth (sigma_a >= 3 mm), so each
  coarse voxel's Bernoulli probability holds for its f^3 fine voxels and their f^3 Bernoulli draws are
  summed there; step d blurs that sum straight back to full resolution (the same as blurring the fine
  Bernoulli field, since sigma_b is several fine voxels).
  """
  f = texture_factor(shape)
  coarse_pos = [f * jnp.arange(n // f, dtype=jnp.float32) + 0.5 * (f - 1) for n in shape]
  sig_a = d["sigma_a_mm"] / spacing
  mats = [ops.gaussian_matrix(p, p, sig_a[i]) for i, p in enumerate(coarse_pos)]
  a = ops.blur_separable(d["noise_a"], *mats)
  bank = spec.texture_rescale == "bank"
  if bank:
    # The reference rescales over its whole bank: map this field onto the bank's distribution (same
    # z-score), then use the bank's fixed min and max. The field's std follows from the blur weights (a
    # middle row per axis: sum of squared weights) and the uniform noise's variance 1/12.
    consts = [spec_lib.bank_constants(sa, sb) for sa in spec.texture_sigma_a_mm for sb in spec.texture_sigma_b_mm]
    nb = len(spec.texture_sigma_b_mm)
    table = jnp.asarray(consts, jnp.float32)[d["sigma_a_index"] * nb + d["sigma_b_index"]]
    lo, hi, std_bank, mean_above_bank = table[0], table[1], table[2], table[3]
    var = jnp.float32(1.0 / 12.0)
    for m in mats:
      var = var * jnp.sum(jnp.square(m[m.shape[0] // 2]))
    a = 0.5 + (a - 0.5) * std_bank / jnp.sqrt(var)
    a = jnp.clip((a - lo) / (hi - lo), 0.0, 1.0)
  else:
    a = (a - jnp.min(a)) / jnp.maximum(jnp.max(a) - jnp.min(a), 1e-6)
  p = d["scale"] * a + d["base"]
  bern = bernoulli_mean(d["bits_b"], p)
  b = ops.coarse_to_fine_blur(bern, f, d["sigma_b_mm"] / spacing, shape)
  if bank:
    # The bank's mean above the threshold, measured at the central rescale, moved with this draw's
    # rescale (the field's mean is about scale / 2 + base).
    mean_above = mean_above_bank * (0.5 * d["scale"] + d["base"]) / (0.5 * spec_lib.BANK_SCALE + spec_lib.BANK_BASE)
  else:
    above = b > spec.texture_threshold
    mean_above = jnp.sum(jnp.where(above, b, 0.0)) / jnp.maximum(jnp.sum(above), 1)
  beta = d["u0"] / jnp.maximum(mean_above, 1e-6)
  return jnp.clip(b * beta, 0.0, 1.0)


def _edges(tumor: jax.Array, free: jax.Array | None, boxes: list, sig_e: jax.Array, spec: ProfileSpec
           ) -> tuple[jax.Array, ...]:
  """The soft edges: Gaussian blur of the tumour mask (and of the exophytic mask, when there is one).

  When every group is evaluated in boxes the masks are zero outside the active boxes, so they are blurred
  box by box (box_blur.py: the cost of the boxes, not the patch); otherwise over the whole patch.
  """
  fields = (tumor,) if free is None else (tumor, free)
  if boxes and all(b is not None for b in boxes):
    margin = box_blur.margin_voxels(spec.edge_sigma_mm[1], spec.min_spacing_mm)
    return box_blur.blur_in_boxes(fields, boxes, sig_e, margin)
  return tuple(ops.gaussian_blur(f.astype(jnp.float32), sig_e) for f in fields)


def _masked_mean(v, m, default):
  n = jnp.sum(m)
  return jnp.where(n > 0, jnp.sum(jnp.where(m, v, 0.0)) / jnp.maximum(n, 1), default)


def _compose(img: jax.Array, organ: jax.Array, allowed: jax.Array, edges: tuple[jax.Array, ...],
             texture: jax.Array, d: dict, spec: ProfileSpec, organ_mean, fill) -> jax.Array:
  """The new image from the soft edges and the texture (docs/SYNTHESIS.md, step 5), voxel by voxel.

  Elementwise: where every edge is 0 it returns ``img`` exactly. ``organ_mean`` and ``fill`` are the
  patch's organ statistics (scalars; read only for exophytic tumours and ``spec.fat_fill``).
  """
  edge = edges[0]
  if spec.intensity == "replace":
    tissue = d["mass_hu"] + spec.mass_texture_hu * (texture - 0.5)
    return jnp.where(allowed, img + edge * (tissue - img), img)
  if spec.fat_fill:
    img_in = jnp.where(organ & (img <= spec.fat_hu_max), img + edge * (fill - img), img)
  else:
    img_in = img
  out = jnp.where(organ, img_in - texture * edge * d["delta"], img)
  if len(edges) == 2:
    tissue = organ_mean - texture * d["delta"]
    out = jnp.where(organ, out, img + edges[1] * (tissue - img))
  return out


def render(image: jax.Array, organ: jax.Array, spacing: jax.Array, d: dict, spec: ProfileSpec,
           centers: jax.Array | None = None, center_ok: jax.Array | None = None,
           blocked: jax.Array | None = None, bank: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Deterministic part: draws -> (new image [X, Y, Z], tumour mask [X, Y, Z], intermediates).

  Args:
    image, organ, spacing, d, spec: the patch, its organ mask, voxel size (mm), draws and profile.
    centers: optional int32 [S, 3] tumour centres in patch coordinates (may lie outside the patch), S the
      total slots of ``spec.groups`` in order: reference placement, drawn on the whole case by the loader.
      None: centres are drawn on the patch's own organ (patch placement).
    center_ok: bool [S] with ``centers``: slots that got a centre.
    blocked: optional bool [X, Y, Z]: voxels a tumour must never take (another organ's label), removed
      before the soft edge so image and label agree.
    bank: float32 [P, X + m, Y + m, Z + m] with ``spec.texture_source == "bank"``: the device texture bank
      (device_bank.py; m = spec.bank_margin), read at the draw's offset instead of making a texture.
  """
  shape = image.shape
  if spec.texture_source == "bank":
    want = (device_bank.recipe(spec).textures,) + device_bank.bank_shape(shape, spec.bank_margin)
    if bank is None or tuple(bank.shape) != want:
      raise ValueError(f"config.synth.texture='bank': expected a texture bank of shape {want} for profile "
                       f"{spec.name} on {shape} patches, got {None if bank is None else tuple(bank.shape)} "
                       f"(the bank is built for config.data.patch_size + config.synth.bank_margin)")
  spacing = spacing.astype(jnp.float32)
  if centers is not None:
    total = sum(g.slots for g in spec.groups)
    if centers.shape != (total, 3) or center_ok is None or center_ok.shape != (total,):
      raise ValueError(f"synth centres: expected [{total}, 3] centres and [{total}] flags for profile "
                       f"{spec.name}, got {centers.shape} and {None if center_ok is None else center_ok.shape}")
    cand = organ
  else:
    cand = _pick_candidates(organ, spacing, spec)
  if spec.large_at_box_center and centers is None and any(g.name == "large" for g in spec.groups):
    coords = [jnp.arange(n, dtype=jnp.float32) for n in shape]
    box_center = []
    for a in range(3):
      has = ops.any_along(organ, axis=tuple(b for b in range(3) if b != a))
      box_center.append(0.5 * (jnp.min(jnp.where(has, coords[a], jnp.inf))
                               + jnp.max(jnp.where(has, coords[a], -jnp.inf))))
    box_center = jnp.round(jnp.stack(box_center)).astype(jnp.int32)
    organ_in_patch = jnp.any(has)
  if spec.clip_margin_mm > 0:
    r = int(np.ceil(spec.clip_margin_mm / spec.min_spacing_mm))
    radius = jnp.round(spec.clip_margin_mm / spacing).astype(jnp.int32)
    allowed = ops.box_morphology(organ, radius, (r, r, r), erode=False)
  else:
    allowed = organ
  want_free = any(g.exophytic for g in spec.groups) and spec.exophytic_prob > 0
  masks = tuple(jnp.zeros(shape, bool) for _ in range(2 if want_free else 1))   # tumour[, exophytic]
  q = q_free = None            # union shape functions of the groups evaluated over the whole patch
  centers_out = []
  boxes = []
  offset = 0
  for g, gd in zip(spec.groups, d["groups"]):
    if centers is not None:
      # Reference placement: the loader chose the sites on the whole case (large-at-box-centre included).
      gc = centers[offset:offset + g.slots].astype(jnp.int32)
      gd = dict(gd, active=gd["active"] & center_ok[offset:offset + g.slots].astype(bool))
      offset += g.slots
    else:
      if spec.large_at_box_center and g.name == "large":
        # At the organ's box centre: no candidates are read, so none are computed for this group.
        gc, organ_any = jnp.broadcast_to(box_center, (g.slots, 3)), organ_in_patch
      else:
        # Some candidate exists exactly when the organ is in the patch (the candidates fall back to it).
        gc, organ_any = sample_voxels(cand, gd["center_u"])
      gd = dict(gd, active=gd["active"] & organ_any)
    centers_out.append(jnp.where(gd["active"][:, None], gc, -1))
    if spec_lib.use_box(g, shape, spec):
      masks, gboxes = _group_masks_in_boxes(g, gd, gc, spacing, spec, masks, allowed, blocked)
      boxes.append(gboxes)
      continue
    boxes.append(None)
    gq, gq_free = _group_fields(g, gd, gc, spacing, shape, spec)
    q = gq if q is None else jnp.minimum(q, gq)
    if gq_free is not None:
      q_free = gq_free if q_free is None else jnp.minimum(q_free, gq_free)
  tumor, free = masks[0], (masks[1] if want_free else None)
  if q is not None:
    # The whole-patch groups' tumours, by the same rule as the boxes'.
    parts = _tumour_parts(q <= 1.0, None if q_free is None else q_free <= 1.0, allowed, blocked)
    tumor = tumor | parts[0]
    if q_free is not None:
      free = free | parts[1]
  if spec.texture_source == "bank":
    texture = device_bank.read(bank, d["texture_index"], d["bank_offset"], shape)
  else:
    texture = make_texture(d, spacing, shape, spec)
  sig_e = d["edge_sigma_mm"] / spacing
  edges = _edges(tumor, free, boxes, sig_e, spec)
  edge = edges[0]
  img = image.astype(jnp.float32)
  # Patch statistics, computed only where the composition reads them (exophytic tumours, fat fill).
  organ_mean = _masked_mean(img, organ, 0.0) if free is not None else None
  fill = (_masked_mean(img, organ & (img > spec.fat_hu_max), spec.fat_hu_max)
          if spec.fat_fill and spec.intensity != "replace" else None)
  # Over the whole patch: composing only the boxes' windows (a scan of dynamic slices and updates) took
  # longer than this one fused pass for tiny tumours at 96^3 here (4.6 against 3.4 ms, a one-off timing).
  out = _compose(img, organ, allowed, edges, texture, d, spec, organ_mean, fill)
  extras = dict(texture=texture, edge=edge, allowed=allowed, candidates=cand,
                centers=jnp.concatenate(centers_out, axis=0) if centers_out else jnp.zeros((0, 3), jnp.int32))
  return out, tumor, extras
