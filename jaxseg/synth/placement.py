"""Reference placement, on the host: tumour sites drawn on the whole case, training crops by pos/neg rule.

The published generator synthesizes on the whole resampled case and only then crops training patches
(MONAI RandCropByPosNegLabeld, 96^3, positive 1 : negative 1, positive = an organ or tumour voxel), so a
patch of a healthy case often holds no tumour, or part of one, and the sites follow the whole organ's axial
band. Choosing the sites inside a patch instead puts a tumour in every patch and moves the band to the
organ's piece in the patch (docs/SYNTHESIS.md, "Placement modes").

Here the loader (jaxseg/data/pipeline.py) calls ``draw_sites`` with the case's organ voxels and its label
volume (memory-mapped), then ``crop_centre`` for the patch, and hands the sites to the device in patch
coordinates; the device renders whatever of them meets the patch. Everything is numpy, cheap (a few
thousand voxel reads per sample) and a pure function of the generator it is given.
"""

from __future__ import annotations

import numpy as np

from jaxseg import labels as labels_lib
from jaxseg.synth.batch import organ_specs, slot_count
from jaxseg.synth.spec import ProfileSpec

_TRIES = 16         # slices drawn in a band before the band counts as empty
_NEG_TRIES = 64     # uniform draws for a negative crop centre before giving up on "not organ"


def slot_names(spec: ProfileSpec) -> list[str]:
  """Size group of each site slot, in the order the device reads them (spec.groups, slots each)."""
  return [g.name for g in spec.groups for _ in range(g.slots)]


def _in_plane_eroded(label: np.ndarray, pts: np.ndarray, organ_label: int, spacing: np.ndarray,
                     erosion_mm: float) -> np.ndarray:
  """bool [N]: pts whose in-plane square neighbourhood of half-width round(erosion_mm / spacing) is organ.

  Neighbours outside the volume count as organ (the border does not erode), as in the device version.
  """
  rx, ry = (int(np.round(erosion_mm / float(s))) for s in spacing[:2])
  ok = np.ones(len(pts), bool)
  x, y, z = (pts[:, a].astype(np.int64) for a in range(3))
  for dx in range(-rx, rx + 1):
    for dy in range(-ry, ry + 1):
      if dx == 0 and dy == 0:
        continue
      xx, yy = x + dx, y + dy
      inside = (xx >= 0) & (xx < label.shape[0]) & (yy >= 0) & (yy < label.shape[1])
      val = np.full(len(pts), organ_label, np.int64)
      if inside.any():
        val[inside] = label[xx[inside], yy[inside], z[inside]]
      ok &= val == organ_label
  return ok


def _centre_pool(label: np.ndarray, pts: np.ndarray, organ_label: int, spacing: np.ndarray, spec: ProfileSpec,
                 n: int, rng: np.random.Generator) -> np.ndarray:
  """n centres by the reference's rule (int64 [n, 3]).

  As the published code does it: an axial slice first, uniformly in the band (z = zmin + u (zmax - zmin),
  u ~ U(lo, hi), rounded), then a voxel uniformly among the slice's organ voxels that pass the centre rule
  (in-plane erosion for "eroded", its complement for "wall"). Drawing the slice first, not a voxel of the
  band, matters: thin ends of the organ get as many sites per slice as its bulk. When no drawn slice of a
  band yields a voxel, the next (wider) band is tried, then the whole organ.
  """
  order = np.argsort(pts[:, 2], kind="stable")
  zs = pts[order, 2].astype(np.int64)
  zmin, zmax = int(zs[0]), int(zs[-1])
  out = np.zeros((n, 3), np.int64)
  for i in range(n):
    found = False
    for lo, hi in spec.axial_ranges:
      for _ in range(_TRIES):
        z = int(np.round(zmin + rng.uniform(lo, hi) * (zmax - zmin)))
        a, b = np.searchsorted(zs, z, side="left"), np.searchsorted(zs, z, side="right")
        if b <= a:
          continue
        cand = pts[order[a + rng.integers(b - a, size=min(b - a, 32))]]
        if spec.center_rule != "organ":
          eroded = _in_plane_eroded(label, cand, organ_label, spacing, spec.erosion_mm)
          cand = cand[eroded if spec.center_rule == "eroded" else ~eroded]
        if len(cand):
          out[i] = cand[0]
          found = True
          break
      if found:
        break
    if not found:
      out[i] = pts[rng.integers(len(pts))]
  return out


def draw_sites(label: np.ndarray, pts: np.ndarray, organ_label: int, spacing, spec: ProfileSpec,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Tumour sites of one synthesis on the whole case, one per slot of ``spec`` (the device uses as many
  of each group as it draws).

  Args:
    label: [X, Y, Z] label volume of the case (memory-mapped is fine: only drawn voxels are read).
    pts: [N, 3] voxels of the organ (all, or a uniform sample as the cache stores them).
    organ_label: the organ's label id.
    spacing: [3] mm.
    spec: the organ's profile spec.
    rng: numpy Generator (Grain's per-element generator in the loader).

  Returns:
    (centres int32 [S, 3] in case voxel coordinates, ok bool [S]); ok is all False without organ voxels.
  """
  names = slot_names(spec)
  s = len(names)
  if pts is None or not len(pts):
    return np.zeros((s, 3), np.int32), np.zeros((s,), bool)
  spacing = np.asarray(spacing, np.float64)
  centres = _centre_pool(label, pts, organ_label, spacing, spec, s, rng)
  if spec.large_at_box_center:
    box_centre = np.round(0.5 * (pts.min(axis=0).astype(np.float64) + pts.max(axis=0))).astype(np.int64)
    for i, name in enumerate(names):
      if name == "large":
        centres[i] = box_centre
  return centres.astype(np.int32), np.ones((s,), bool)


def crop_centre(label: np.ndarray, pts: np.ndarray, organ_label: int, size, rng: np.random.Generator
                ) -> np.ndarray:
  """Centre of a training crop by the reference's rule; see ``crop_centre_and_kind``."""
  return crop_centre_and_kind(label, pts, organ_label, size, rng)[0]


def crop_centre_and_kind(label: np.ndarray, pts: np.ndarray, organ_label: int, size, rng: np.random.Generator
                         ) -> tuple[np.ndarray, bool]:
  """Centre of a training crop by the reference's rule (RandCropByPosNegLabeld, pos 1 : neg 1).

  Positive: a voxel of the organ (``pts``); negative: a uniform voxel not of the organ. As MONAI does, the
  centre is then moved so the crop lies inside the volume (where the volume is at least the crop's size;
  along a shorter axis the crop is centred on the volume and padded).

  Returns:
    (int64 [3] centre in case voxel coordinates (crop start = centre - size // 2), positive or not).
  """
  shape = np.asarray(label.shape, np.int64)
  size = np.asarray(size, np.int64)
  positive = bool(rng.random() < 0.5 and pts is not None and len(pts))
  if positive:
    c = pts[rng.integers(len(pts))].astype(np.int64)
  else:
    c = rng.integers(0, shape)
    for _ in range(_NEG_TRIES):
      if int(label[tuple(c)]) != organ_label:
        break
      c = rng.integers(0, shape)
  lo = size // 2
  hi = shape - size + size // 2
  return np.where(shape >= size, np.clip(c, lo, hi), (shape - size) // 2 + size // 2), positive


def sites_for_patches(labels: np.ndarray, synth_organ: np.ndarray, spacing: np.ndarray, organs, synth_cfg,
                      seed: int = 0) -> dict:
  """The loader's synthesis fields for a batch whose patches are whole cases (benchmarks, tools).

  Args:
    labels: uint8 [B, X, Y, Z] label patches in the label space of ``organs``.
    synth_organ: int32 [B] organ index or -1.
    spacing: float32 [B, 3] mm.
    organs: config.data.organs.
    synth_cfg: config.synth.
    seed: numpy seed of the site draws.

  Returns:
    {"synth_centers": int32 [B, S, 3], "synth_center_ok": uint8 [B, S]} as make_train_loader yields them.
  """
  specs = organ_specs(tuple(organs), synth_cfg)
  s = slot_count(specs)
  b = labels.shape[0]
  centres = np.zeros((b, s, 3), np.int32)
  ok = np.zeros((b, s), np.uint8)
  rng = np.random.default_rng(seed)
  for i in range(b):
    o = int(synth_organ[i])
    if o < 0 or str(synth_cfg.mode) != "reference":
      continue
    lab = labels_lib.organ_label(tuple(organs), organs[o])
    c, k = draw_sites(labels[i], np.argwhere(labels[i] == lab), lab, spacing[i], specs[o], rng)
    centres[i, :len(c)] = c
    ok[i, :len(k)] = k
  return {"synth_centers": centres, "synth_center_ok": ok}
