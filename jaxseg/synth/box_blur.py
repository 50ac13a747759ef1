"""A Gaussian blur of a field that is zero outside a set of static-size boxes, at the cost of the boxes.

The soft tumour edge blurs the tumour mask, which lives in the slots' boxes; blurring the whole patch with
three dense matmuls costs about 2.3 ms at 96^3 here whatever the tumours' size (``python
launch/bench_synthesis.py --forms``). Here each box is blurred alone:
the voxels of the field are split between the boxes (each active box, in order, claims the voxels of its box
not claimed before), so the boxes' parts sum to the field and, the blur being linear, their blurs sum to the
field's blur. A box's blur is evaluated for its voxels and ``margin`` voxels beyond (rows of the patch-wide
blur matrices, normalised over the whole patch as in ops.gaussian_blur, so each value is the whole-patch
value); what lies further out is the Gaussian's tail beyond ``margin`` and is dropped (below exp(-8) of the
peak weight for margin >= 4 sigma). The work is per active box: the loop stops at the last active slot
and an inactive one before it is skipped (lax.cond; under vmap it becomes a box-sized select, never a
patch-sized one).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxseg.synth import ops


class Boxes(NamedTuple):
  """One size group's boxes: int32 starts [S, 3], bool active [S], static sizes (3 ints)."""
  starts: jax.Array
  active: jax.Array
  sizes: tuple[int, int, int]


def _claimed_by(start: jax.Array, sizes: tuple[int, int, int], earlier: list[tuple[Boxes, jax.Array]]
                ) -> jax.Array:
  """bool [sizes]: voxels of the box at ``start`` that lie in any of the ``earlier`` boxes.

  ``earlier``: (a group's boxes, bool [S] which of them count). A box is a product of three intervals, so
  the cover is a sum over boxes of outer products of per-axis indicators: box-sized work, no patch.
  """
  cover = jnp.zeros(sizes, jnp.float32)
  for group, counts in earlier:
    ind = []
    for a in range(3):
      coord = start[a] + jnp.arange(sizes[a])
      lo = group.starts[:, a][:, None]
      ind.append(((lo <= coord[None]) & (coord[None] < lo + group.sizes[a])).astype(jnp.float32))
    cover = cover + jnp.einsum("j,jx,jy,jz->xyz", counts.astype(jnp.float32), *ind)
  return cover > 0


def blur_in_boxes(fields: tuple[jax.Array, ...], boxes: list[Boxes], sigma_vox: jax.Array,
                  margin: int) -> tuple[jax.Array, ...]:
  """Gaussian blur (sigma_vox [3] voxels, traced) of each field, all zero outside the active boxes.

  Args:
    fields: [X, Y, Z] fields (bool or float; blurred as float32) with the same boxes (the tumour mask, the
      exophytic mask).
    boxes: the groups' boxes; every nonzero voxel of every field must lie in an active box.
    sigma_vox: per-axis sigma in voxels.
    margin: static voxels beyond a box where its blur is kept (>= 4 x the largest sigma).

  A box's share of a field is the field's voxels in it that no earlier active box holds (groups in order,
  slots in order), read from the boxes' coordinates (``_claimed_by``), so the scan carries one patch-sized
  sum per field and nothing else (carrying the unclaimed rest of each field as well, as before, took
  about twice the time: ``python launch/bench_synthesis.py --against=<checkout of the parent commit>``).

  Returns:
    The blurred fields, equal to ops.gaussian_blur of each up to the dropped tail and float rounding.
  """
  shape = fields[0].shape
  full = [jnp.arange(n, dtype=jnp.float32) for n in shape]
  # The whole-patch blur's matrices, made once; each box multiplies by its window's rows and its box's columns.
  patch_mats = [ops.gaussian_matrix(full[a], full[a], sigma_vox[a]) for a in range(3)]
  acc = tuple(jnp.zeros(shape, jnp.float32) for _ in fields)
  for gi, group in enumerate(boxes):
    sizes = group.sizes
    out_sizes = tuple(min(n, b + 2 * margin) for n, b in zip(shape, sizes))
    out_hi = jnp.asarray([n - o for n, o in zip(shape, out_sizes)])
    slots = group.starts.shape[0]
    before = [(b, b.active) for b in boxes[:gi]]

    def body(i, acc, group=group, sizes=sizes, out_sizes=out_sizes, out_hi=out_hi, slots=slots, before=before):
      start, active = group.starts[i], group.active[i]
      out_start = jnp.clip(start - margin, 0, out_hi)

      def blur(_):
        claimed = _claimed_by(start, sizes, before + [(group, group.active & (jnp.arange(slots) < i))])
        owns = [jnp.where(claimed, 0.0, jax.lax.dynamic_slice(f, start, sizes).astype(jnp.float32)) for f in fields]
        mats = [jax.lax.dynamic_slice(patch_mats[a], (out_start[a], start[a]), (out_sizes[a], sizes[a]))
                for a in range(3)]
        return tuple(ops.blur_separable(o, *mats) for o in owns)

      blurred = jax.lax.cond(active, blur, lambda _: tuple(jnp.zeros(out_sizes, jnp.float32) for _ in fields), None)
      acc = tuple(jax.lax.dynamic_update_slice(t, jax.lax.dynamic_slice(t, out_start, out_sizes) + b, out_start)
                  for t, b in zip(acc, blurred))
      return acc

    acc = jax.lax.fori_loop(0, slots_in_use(group.active), body, acc)
  return acc


def slots_in_use(active: jax.Array) -> jax.Array:
  """1 + the last active slot's index (0 if none): a loop over the slots stops there. Slots are filled from
  the front (a count per size class), so the inactive ones after it cost no iteration: 3.5 of the 10 slots
  on average for the liver's tiny and small tumours (3-10 of them)."""
  return jnp.max(jnp.where(active, jnp.arange(1, active.shape[0] + 1), 0))


def margin_voxels(edge_sigma_mm_max: float, min_spacing_mm: float) -> int:
  """Static margin for the edge blur: 4 sigma at the largest sigma and the finest spacing."""
  return int(math.ceil(4.0 * edge_sigma_mm_max / min_spacing_mm - 1e-9))
