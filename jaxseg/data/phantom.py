"""The built-in phantom data set: procedural abdominal CT written as NIfTI in the AbdomenAtlas 1.x layout.

A new user runs the whole pipeline with no download, through the same readers as real data. Each case is
an adult abdomen (pelvis to the gastro-oesophageal junction) with per-case anatomy, scale, contrast,
noise, voxel spacing and file orientation. Organs: liver, spleen, kidneys (cortex and medulla), pancreas,
colon (wall, air and stool), oesophagus, stomach, aorta and vena cava, uterus and bladder, spine, ribs,
muscles, fat and small-bowel clutter.

Lesions come from a model deliberately unlike the tumour synthesizer's (elastically deformed ellipsoids,
blurred-noise texture, uniform HU drop): shapes are thresholded sums of Gaussian blobs (lobulated,
"metaball"), texture is cellular (distance to random seeds), contrast is organ-specific (hypodense liver
metastases with rim enhancement or necrotic core, ill-defined hypodense pancreatic masses, heterogeneous
enhancing exophytic renal masses, colon and oesophageal wall masses filling the lumen, hypodense uterine
masses). For each organ, ``tumor_fraction`` of the cases that have it carry lesions; the others are its
control cases (drawn per organ, independently: a liver control case may carry lesions in other organs).

Liver lesions are calibrated to real liver metastases on portal-venous CT (version 3): size (log-normal
radius) and contrast relative to the surrounding liver (a share of the liver's HU, darker towards the
centre; a faint ring outside half of the larger ones; a necrotic core in some), measured with
``jaxseg.metrics.lesion_figures`` like the real ones, medians inside the real p10-p90
(``python launch/make_phantoms.py --out=DIR --num_cases=12 --tumor_fraction=1 --measure`` prints them; the
tests check them). The other organs' lesions are not calibrated. ``lesion_scale``/``lesion_contrast`` make
every lesion larger or more conspicuous (an easier task than real data).

All sizes are in mm of a "normalised adult" and scaled per case; coordinates are RAS+ (x to the patient's
right, y anterior, z superior).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import numpy as np
from scipy import ndimage

from jaxseg.data.preprocess import parallel_map
from jaxseg.io.nifti import save_nifti

LESION_ORGANS = ("liver", "pancreas", "kidney", "colon", "esophagus", "uterus")
MARKER = "phantoms.json"
VERSION = 3  # 3: liver lesions calibrated to real metastases; 2: exclusive organ masks (1 let masks overlap)


def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3 - 2 * x)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
  """[n_out, n_in] linear interpolation weights from an n_in grid onto an n_out grid (same extent)."""
  pos = np.linspace(0, n_in - 1, n_out)
  lo = np.clip(np.floor(pos).astype(int), 0, max(n_in - 2, 0))
  t = pos - lo
  m = np.zeros((n_out, n_in), np.float32)
  m[np.arange(n_out), lo] += 1 - t
  m[np.arange(n_out), np.minimum(lo + 1, n_in - 1)] += t
  return m


def _upsample(g: np.ndarray, shape) -> np.ndarray:
  """Separable linear upsampling of a coarse [a, b, c] grid to ``shape`` as three small matmuls."""
  mx, my, mz = (_interp_matrix(n, m) for n, m in zip(shape, g.shape))
  g = np.matmul(my, g @ mz.T)  # [a, J, K]
  return (mx @ g.reshape(g.shape[0], -1)).reshape(shape)


class _Case:
  """Generates one phantom case on its native grid."""

  def __init__(self, rng: np.random.Generator, ood: bool, lesion_scale: float = 1.0, lesion_contrast: float = 1.0):
    self.rng = rng
    self.ood = ood
    self.lesion_scale, self.lesion_contrast = float(lesion_scale), float(lesion_contrast)
    r = rng.uniform
    self.scale = r(0.78, 1.0) if not ood else r(0.9, 1.15)
    self.body_a, self.body_b = r(125, 150), r(90, 112)
    self.female = bool(rng.random() < 0.5)
    sxy = r(1.8, 3.0) if not ood else r(1.5, 2.4)
    sz = r(2.0, 5.0) if not ood else float(rng.choice([2.0, 6.0]))
    lz = r(215, 245)
    fov_x = (2 * self.body_a + r(15, 40)) * self.scale
    fov_y = (2 * self.body_b + r(25, 60)) * self.scale
    self.shape = (min(160, int(fov_x / sxy)), min(144, int(fov_y / sxy)), min(150, int(lz * self.scale / sz)))
    self.spacing = (sxy, sxy, sz)
    self.z0 = r(0, 12)
    # World coordinates (mm) of voxel centres, then normalised adult coordinates u = world / scale.
    ax = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(self.shape[:2], self.spacing[:2])]
    az = np.arange(self.shape[2]) * sz + self.z0 * self.scale
    x, y, z = np.meshgrid(ax[0] / self.scale, ax[1] / self.scale, az / self.scale, indexing="ij", sparse=True)
    self.u = (x.astype(np.float32), y.astype(np.float32), z.astype(np.float32))
    # One smooth warp for all organs (a few random sinusoids): anatomy varies, organs stay consistent.
    # Evaluated on a 1/4 grid and upsampled linearly: the warp is smooth, and this is 10x cheaper.
    coarse = [max(2, n // 4) for n in self.shape]
    cu = np.meshgrid(*[np.linspace(float(c.min()), float(c.max()), m) for c, m in zip(self.u, coarse)],
                     indexing="ij")
    warped = []
    for c in range(3):
      d = np.zeros(coarse, np.float32)
      for _ in range(3):
        k = rng.normal(0, 1, 3)
        k *= rng.uniform(2 * np.pi / 250, 2 * np.pi / 90) / np.linalg.norm(k)
        d += np.float32(rng.uniform(2, 6)) * np.sin(k[0] * cu[0] + k[1] * cu[1] + k[2] * cu[2]
                                                     + rng.uniform(0, 2 * np.pi)).astype(np.float32)
      warped.append(self.u[c] + _upsample(d, self.shape))
    self.w = tuple(warped)
    self.masks: dict[str, np.ndarray] = {}
    self.hu = self._intensities()

  def _intensities(self) -> dict[str, float]:
    r = self.rng.uniform
    if self.ood:  # unenhanced phase
      hu = dict(liver=r(50, 65), spleen=r(40, 55), cortex=r(30, 40), medulla=r(28, 36), pancreas=r(40, 50),
                blood=r(35, 50), wall=r(35, 50), uterus=r(40, 60), muscle=r(40, 60), noise=r(18, 32))
    else:  # portal-venous phase
      hu = dict(liver=r(100, 130), spleen=r(110, 130), cortex=r(150, 200), medulla=r(100, 150),
                pancreas=r(90, 120), blood=r(150, 200), wall=r(70, 100), uterus=r(90, 130), muscle=r(50, 80),
                noise=r(8, 20))
    hu.update(fat=r(-120, -70), water=r(0, 15), bone=r(200, 300), cortical=r(700, 1000), air=-1000.0)
    return hu

  # Shapes in warped normalised coordinates ------------------------------------------------------------
  def ellipsoid(self, centre, semi, jitter=6.0, grow=0.12) -> np.ndarray:
    r = self.rng
    c = np.asarray(centre) + r.normal(0, jitter, 3)
    s = np.asarray(semi) * r.uniform(1 - grow, 1 + grow, 3)
    f = sum(((self.w[i] - np.float32(c[i])) / np.float32(s[i])) ** 2 for i in range(3))
    return f <= 1.0

  def tube(self, points, radius, jitter=5.0) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) to a polyline and the interpolated radius there; returns (dist, radius field)."""
    pts = np.asarray(points, np.float64) + self.rng.normal(0, jitter, (len(points), 3))
    rad = np.broadcast_to(np.asarray(radius, np.float64), (len(points),))
    best = np.full(self.shape, np.inf, np.float32)
    rbest = np.zeros(self.shape, np.float32)
    # Work inside the polyline's bounding box (plus radius and the largest warp): far voxels stay at inf.
    pad = float(rad.max()) + 25.0
    box = []
    for i in range(3):
      u = self.u[i].ravel()
      idx = np.nonzero((u >= pts[:, i].min() - pad) & (u <= pts[:, i].max() + pad))[0]
      if not len(idx):
        return best, rbest
      box.append(slice(idx[0], idx[-1] + 1))
    box = tuple(box)
    w = [c[box] for c in self.w]
    bb, rb_ = best[box], rbest[box]
    for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
      ab = b - a
      t = sum((w[i] - np.float32(a[i])) * np.float32(ab[i]) for i in range(3)) / np.float32(ab @ ab)
      t = np.clip(t, 0, 1)
      d = np.sqrt(sum((w[i] - (np.float32(a[i]) + t * np.float32(ab[i]))) ** 2 for i in range(3)))
      closer = d < bb
      bb = np.where(closer, d, bb)
      rb_ = np.where(closer, np.float32(ra) + t * np.float32(rb - ra), rb_)
    best[box], rbest[box] = bb, rb_
    return best, rbest

  def coarse_noise(self, factor: int, sigma: float = 1.0) -> np.ndarray:
    """Smooth unit-variance noise: random at 1/factor resolution, blurred, upsampled (cheap)."""
    small = [max(2, n // factor) for n in self.shape]
    g = ndimage.gaussian_filter(self.rng.normal(0, 1, small).astype(np.float32), sigma)
    g /= g.std() + 1e-6
    return _upsample(g, self.shape)

  # Anatomy ----------------------------------------------------------------------------------------------
  def anatomy(self) -> np.ndarray:
    hu, r = self.hu, self.rng.uniform
    a, b = self.body_a, self.body_b
    x, y, z = self.w
    img = np.full(self.shape, hu["air"], np.float32)
    # Body cross-section narrows a little towards the pelvis and the chest.
    taper = 1.0 - 0.08 * ((z - 120.0) / 120.0) ** 2
    rr = np.sqrt((x / (a * taper)) ** 2 + (y / (b * taper)) ** 2)
    body = rr <= 1.0
    fat_t, mus_t = r(0.07, 0.2), r(0.05, 0.09)
    img[body] = hu["fat"]
    wall = body & (rr > 1 - fat_t - mus_t) & (rr <= 1 - fat_t)
    inner = rr <= 1 - fat_t - mus_t
    img[wall] = hu["muscle"]
    # Visceral space: fat with small-bowel loops (soft tissue) and gas bubbles.
    loops = self.coarse_noise(4, 1.2)
    gas = self.coarse_noise(3, 0.8)
    img[inner] = hu["fat"] + 10
    bowel = inner & (loops > r(0.3, 0.8))
    img[bowel] = hu["wall"] - r(5, 25)
    img[bowel & (gas > 1.7)] = hu["air"]
    # Ribs at the upper abdomen: bony arcs inside the muscle wall, periodic along z.
    ribs = body & (rr > 1 - fat_t - mus_t - 0.04) & (rr < 1 - fat_t - mus_t + 0.01) & (z > 150) & (
        np.sin(z / 11.0 + r(0, 6)) > 0.55) & (y > -b * 0.7)
    img[ribs] = hu["cortical"] * 0.7
    # Spine, paraspinal and psoas muscles.
    sy = -b + 42
    vert = ((x / 19) ** 2 + ((y - sy) / 17) ** 2) <= 1
    disc = np.sin(z / 30.0 * 2 * np.pi + r(0, 6)) > 0.8
    img[vert] = np.where(disc, 80.0, hu["bone"])[vert]
    shell = vert & ~(((x / 16) ** 2 + ((y - sy) / 14) ** 2) <= 1) & ~disc
    img[shell] = hu["cortical"]
    post = ((x / 9) ** 2 + ((y - sy + 28) / 12) ** 2) <= 1
    img[post] = hu["cortical"] * 0.8
    for side in (-1, 1):
      img[(((x - side * 35) / 22) ** 2 + ((y - sy + 18) / 18) ** 2) <= 1] = hu["muscle"]
      psoas = ((((x - side * 40) / 16) ** 2 + ((y - sy - 10) / 15) ** 2) <= 1) & (z < 140)
      img[psoas] = hu["muscle"]
    # Vessels.
    aorta = (((x + 15) / 11) ** 2 + ((y - sy - 33) / 11) ** 2 <= 1) & (z > 75)
    ivc = (((x - 22) / 12) ** 2 + ((y - sy - 34) / 9) ** 2 <= 1) & (z > 65)
    self.masks["aorta"], self.masks["postcava"] = aorta, ivc
    # Organs (later ones overwrite earlier ones where they touch).
    liver = (self.ellipsoid((58, -2, 170), (72, 70, 55)) | self.ellipsoid((5, 32, 188), (55, 32, 28))) & inner
    spleen = self.ellipsoid((-82, -38, 175), (25, 42, 45)) & inner
    kid_r = self.ellipsoid((66, -46, 125), (27, 24, 50), jitter=4)
    kid_l = self.ellipsoid((-66, -46, 137), (27, 24, 50), jitter=4)
    d, rad = self.tube([(36, 5, 138), (5, 14, 145), (-38, 6, 150), (-72, -18, 158)], [15, 12, 10, 8])
    pancreas = (d <= rad) & inner
    stomach = self.ellipsoid((-45, 28, 205), (42, 32, 38)) & inner
    colon_path = [(-10, -55, 0), (-5, -45, 40), (-60, -15, 65), (-88, -5, 85), (-88, 5, 165), (-40, 45, 158),
                  (40, 45, 155), (85, 10, 160), (86, 0, 75), (75, 10, 62)]
    cd, crad = self.tube(colon_path, float(r(18, 24)))
    colon = (cd <= crad) & inner
    ed, erad = self.tube([(-5, sy + 60, 260), (-15, sy + 70, 228), (-35, 18, 208)], float(r(8, 10)), jitter=3)
    esophagus = (ed <= erad) & inner & (z > 195)
    bladder = self.ellipsoid((0, 52, 25), (40, 28, 28)) & inner
    uterus = (self.ellipsoid((0, 18, 48), (33, 24, 36)) & inner) if self.female else None

    img[bladder] = hu["water"]
    img[stomach] = hu["water"] + 5
    img[stomach & (y > np.float32(38))] = hu["air"]
    img[stomach & ~ndimage.binary_erosion(stomach, iterations=1)] = hu["wall"]
    img[colon] = hu["air"]
    stool = colon & (self.coarse_noise(3, 1.0) > 0.6)
    img[stool] = -50 + 60 * self.coarse_noise(2, 0.5)[stool]
    colon_wall = colon & (cd >= crad - 3.5)
    img[colon_wall] = hu["wall"]
    img[esophagus] = hu["wall"] + 10
    img[esophagus & (ed < 2.5) & (self.coarse_noise(3) > 0)] = hu["air"]
    img[aorta] = hu["blood"]
    img[ivc] = hu["blood"] - r(10, 30)
    img[liver] = hu["liver"]
    # Hepatic and portal vessels: thin bright branches inside the liver.
    vd, vrad = self.tube([(20, 10, 150), (50, 0, 175), (80, -10, 195)], 4.0, jitter=8)
    img[liver & (vd <= vrad)] = hu["blood"] - 10
    img[spleen] = hu["spleen"]
    img[pancreas] = hu["pancreas"]
    for kid in (kid_r, kid_l):
      img[kid] = hu["cortex"]
      core = ndimage.binary_erosion(kid, iterations=max(1, int(round(6 * self.scale / self.spacing[0]))))
      img[core & (self.coarse_noise(2, 0.7) > -0.3)] = hu["medulla"]
    if uterus is not None:
      img[uterus] = hu["uterus"]
    img[shell] = hu["cortical"]  # the vertebral cortex stays on top of warped organs
    # Masks follow the painted image, as real annotations do: a voxel belongs to the structure painted last
    # (the pancreas and kidneys over the liver, the liver over the stomach, ...). Overlapping masks would
    # label pancreas-looking tissue inside the liver as liver, next to hypodense liver lesions.
    painted = [("bladder", bladder), ("stomach", stomach), ("colon", colon), ("esophagus", esophagus),
               ("aorta", aorta), ("postcava", ivc), ("liver", liver), ("spleen", spleen), ("pancreas", pancreas),
               ("kidney_right", kid_r), ("kidney_left", kid_l)]
    if uterus is not None:
      painted.append(("uterus", uterus))
    taken = vert.copy()
    for name, m in reversed(painted):
      self.masks[name] = m & ~taken
      taken |= m
    self._colon_wall = colon_wall
    self._tube_dist = {"esophagus": (ed, erad)}
    return img

  # Lesions ----------------------------------------------------------------------------------------------
  def lesion(self, img: np.ndarray, organ: str) -> np.ndarray:
    """Draws one lesion in ``organ`` into ``img``; returns its mask (may be empty if it missed)."""
    rng, hu = self.rng, self.hu
    organ_mask = (self.masks["kidney_left"] | self.masks["kidney_right"]) if organ == "kidney" else self.masks[organ]
    seeds = np.argwhere(self._colon_wall if organ == "colon" else organ_mask)
    if len(seeds) == 0:
      return np.zeros(self.shape, bool)
    centre_vox = seeds[rng.integers(len(seeds))]
    if organ == "liver":
      # Calibrated to real liver metastases (README, "Phantom lesions"): log-normal radius, median 9 mm
      # (measured equivalent diameter: median about 19 mm, p10-p90 about 13-34 mm).
      radius = float(np.clip(8.5 * np.exp(rng.normal(0.0, 0.4)), 5.0, 24.0))
    else:
      small = rng.random() < 0.2
      radius = rng.uniform(2.5, 5.0) if small else rng.uniform(5.0, 14.0)  # mm, world
    if organ in ("esophagus",):
      radius = max(radius, rng.uniform(7, 12))
    radius *= self.lesion_scale
    sp = np.asarray(self.spacing)
    half = np.ceil(2.6 * radius / sp).astype(int) + 1
    lo = np.maximum(centre_vox - half, 0)
    hi = np.minimum(centre_vox + half + 1, self.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre_vox, sp)], indexing="ij")
    field = np.zeros(grid[0].shape, np.float32)
    for _ in range(int(rng.integers(2, 6))):
      off = rng.normal(0, 0.45 * radius, 3)
      sig = radius * rng.uniform(0.45, 0.8)
      field += np.exp(-sum((g - o) ** 2 for g, o in zip(grid, off)) / (2 * sig * sig)).astype(np.float32)
    thr = np.float32(0.5)
    if organ == "kidney":  # renal masses bulge out of the kidney
      allowed = ndimage.binary_dilation(organ_mask[sl], iterations=max(1, int(radius / 2 / sp[0])))
    elif organ == "esophagus":
      ed, erad = self._tube_dist["esophagus"]
      allowed = (ed[sl] <= erad[sl] + radius) & (img[sl] > -200)
    else:
      allowed = organ_mask[sl]
    mask = (field > thr) & allowed
    if not mask.any():
      return np.zeros(self.shape, bool)
    # Radial profile: 0 at the core, 1 at the boundary.
    peak = float(field[mask].max())
    rho = 1.0 - np.clip((field - thr) / max(peak - float(thr), 1e-3), 0, 1)
    # Cellular texture: distance to random seeds inside the lesion's box.
    seeds_mm = rng.uniform(-radius, radius, (int(rng.integers(6, 14)), 3))
    dmin = np.min([np.sqrt(sum((g - s) ** 2 for g, s in zip(grid, sd))) for sd in seeds_mm], axis=0)
    cells = (dmin / (dmin[mask].mean() + 1e-3) - 1.0).astype(np.float32)
    # Liver: hypodense by a share of the liver's HU (calibrated: measured contrast / shell HU median about
    # 0.25, real 0.26), darker towards the centre; the other organs keep their uncalibrated values.
    liver_drop = rng.uniform(0.2, 0.42)
    base = {"liver": hu["liver"] * (1.0 - liver_drop), "pancreas": rng.uniform(40, 70),
            "kidney": rng.uniform(80, 150), "colon": rng.uniform(60, 90), "esophagus": rng.uniform(55, 85),
            "uterus": rng.uniform(40, 75)}[organ]
    ref = {"liver": hu["liver"], "pancreas": hu["pancreas"], "kidney": hu["cortex"], "colon": hu["wall"],
           "esophagus": hu["wall"], "uterus": hu["uterus"]}[organ]
    if self.ood:  # unenhanced: lesions a little below their organ
      base = ref - rng.uniform(15, 30)
    base = ref + self.lesion_contrast * (base - ref)
    value = np.full(field.shape, base, np.float32)
    value += cells * (rng.uniform(18, 30) if organ == "kidney" else rng.uniform(8, 16) if organ == "liver" else
                      rng.uniform(6, 12))
    rim = None
    if organ == "liver":
      # Real metastases darken towards the centre over the outer 5-8 mm; some have a necrotic core, and
      # half of the larger ones a faint ring (5-10 HU above the parenchyma) just outside the boundary.
      value -= np.float32(self.lesion_contrast * 0.5 * liver_drop * hu["liver"]) * (0.5 - rho).astype(np.float32)
      if rng.random() < 0.15 and radius > 8.0:
        value = np.where(rho < 0.3, np.float32(ref - self.lesion_contrast * rng.uniform(0.5, 0.7) * ref), value)
      if rng.random() < 0.5 and radius > 7.0:
        rim = np.float32(rng.uniform(5, 10))
    # Blend: sharp edges except pancreas (ill-defined).
    soft = 0.35 if organ == "pancreas" else 0.08
    wgt = _smoothstep((field - thr * (1 - soft)) / (thr * 2 * soft)) * allowed
    region = img[sl]
    if rim is not None:  # a ring of parenchyma 0.5-3 mm outside the lesion (not part of its mask)
      dist = ndimage.distance_transform_edt(~mask, sampling=sp)
      region += rim * ((dist > 0.5) & (dist <= 3.0) & allowed & ~mask).astype(np.float32)
    region[...] = region * (1 - wgt) + value * wgt
    out = np.zeros(self.shape, bool)
    out[sl] = mask
    return out

  def finish(self, img: np.ndarray) -> np.ndarray:
    """Partial-volume blur and correlated noise; returns int16 HU."""
    img = ndimage.gaussian_filter(img, (0.6, 0.6, 0.4))
    noise = ndimage.gaussian_filter(self.rng.normal(0, 1, self.shape).astype(np.float32), 0.6)
    noise *= np.float32(self.hu["noise"] / (noise.std() + 1e-6))
    return np.clip(np.rint(img + noise), -1024, 3071).astype(np.int16)


def _orientation(shape, spacing, origin_mm, rng: np.random.Generator, ood: bool):
  """A random storage orientation: returns (axis permutation, flips, affine) for an RAS-indexed array."""
  perm = (2, 1, 0) if ood and rng.random() < 0.5 else (0, 1, 2)
  flips = [bool(f) for f in rng.choice([[0, 0, 0], [1, 1, 0], [1, 0, 0]])]  # RAS, LPS, LAS
  ras = np.diag(list(spacing) + [1.0])
  ras[:3, 3] = origin_mm
  for ax, f in enumerate(flips):
    if f:
      ras[:3, 3] += (shape[ax] - 1) * ras[:3, ax]
      ras[:3, ax] *= -1
  affine = np.eye(4)
  affine[:, :3] = ras[:, list(perm)]
  affine[:3, 3] = ras[:3, 3]
  return perm, flips, affine


def _store(arr: np.ndarray, perm, flips) -> np.ndarray:
  for ax, f in enumerate(flips):
    if f:
      arr = arr[(slice(None),) * ax + (slice(None, None, -1),)]
  return np.ascontiguousarray(np.transpose(arr, perm))


def lesion_plan(num_cases: int, seed: int, tumor_fraction: float, ood: bool) -> list[tuple[str, ...]]:
  """Which organs carry lesions in each case: for each organ, round(fraction * n) cases (seeded choice)."""
  rng = np.random.default_rng([seed, 7, int(ood)])
  plan: list[list[str]] = [[] for _ in range(num_cases)]
  for organ in LESION_ORGANS:
    k = int(round(tumor_fraction * num_cases))
    for i in rng.permutation(num_cases)[:k]:
      plan[i].append(organ)
  return [tuple(p) for p in plan]


def make_case(out: str, index: int, seed: int, lesion_organs: tuple[str, ...], ood: bool = False,
              lesion_scale: float = 1.0, lesion_contrast: float = 1.0) -> str:
  """Writes phantom case ``index`` (BDMAP_<index+1>) into ``out``; returns its case id."""
  rng = np.random.default_rng([seed, index, int(ood)])
  case = _Case(rng, ood, lesion_scale, lesion_contrast)
  img = case.anatomy()
  tumors = {}
  for organ in lesion_organs:
    if organ == "uterus" and "uterus" not in case.masks:
      continue
    n = int(rng.integers(1, 4 if organ == "liver" else 3))
    m = np.zeros(case.shape, bool)
    for _ in range(n):
      m |= case.lesion(img, organ)
    if m.any():
      tumors[organ] = m
  image = case.finish(img)
  origin = np.array([-(case.shape[0] - 1) / 2 * case.spacing[0], -(case.shape[1] - 1) / 2 * case.spacing[1],
                     case.z0 * case.scale - 300.0])
  perm, flips, affine = _orientation(case.shape, case.spacing, origin, rng, ood)
  case_id = f"BDMAP_{index + 1:08d}"
  root = os.path.join(out, case_id)
  save_nifti(_store(image, perm, flips), affine, os.path.join(root, "ct.nii.gz"), np.int16)
  for name, m in case.masks.items():
    save_nifti(_store(m.astype(np.uint8), perm, flips), affine, os.path.join(root, "segmentations", f"{name}.nii.gz"))
  for organ, m in tumors.items():
    save_nifti(_store(m.astype(np.uint8), perm, flips), affine,
               os.path.join(root, "segmentations", f"{organ}_tumor.nii.gz"))
  return case_id


def _make_case_worker(out, index, seed, lesions, ood, scale, contrast):
  return make_case(out, index, seed, lesions, ood, scale, contrast)


def make_phantoms(out: str, num_cases: int, seed: int, tumor_fraction: float = 0.5, ood: bool = False,
                  workers: int = 1, lesion_scale: float = 1.0, lesion_contrast: float = 1.0) -> None:
  """Writes ``num_cases`` phantom cases into ``out`` (AbdomenAtlas 1.x layout) and a completion marker.

  Args:
    out: folder to write (created; existing cases of the same ids are overwritten).
    num_cases: number of cases.
    seed: the same seed gives the same files.
    tumor_fraction: for each of the six organs, the share of cases with lesions in it.
    ood: the out-of-distribution variant (unenhanced phase, more noise, other spacing/anatomy/orientation).
    workers: parallel processes.
    lesion_scale: multiplies every lesion's radius (1: the sizes above).
    lesion_contrast: multiplies every lesion's HU difference from its organ (1: the values above); rim
      enhancement and necrosis come on top. Both change how hard the task is, not the anatomy.
  """
  if num_cases < 1 or not 0.0 <= tumor_fraction <= 1.0:
    raise ValueError(f"make_phantoms: need num_cases >= 1 and 0 <= tumor_fraction <= 1, got {num_cases}, "
                     f"{tumor_fraction}")
  os.makedirs(out, exist_ok=True)
  plan = lesion_plan(num_cases, seed, tumor_fraction, ood)
  if lesion_scale <= 0 or lesion_contrast < 0:
    raise ValueError(f"make_phantoms: need lesion_scale > 0 and lesion_contrast >= 0, got {lesion_scale}, "
                     f"{lesion_contrast}")
  items = [(out, i, seed, plan[i], ood, lesion_scale, lesion_contrast) for i in range(num_cases)]
  for _ in parallel_map(_make_case_worker, items, workers, "phantoms"):
    pass
  params = {"version": VERSION, "num_cases": num_cases, "seed": seed, "tumor_fraction": tumor_fraction,
            "ood": bool(ood), "lesion_scale": float(lesion_scale), "lesion_contrast": float(lesion_contrast)}
  with open(os.path.join(out, MARKER), "w") as f:
    json.dump(params, f, indent=1)


def default_phantom_root(data_cfg) -> str:
  """$JAXSEG_DATA_DIR/phantom-v<version>-n<num_cases>-s<seed>-t<tumor_fraction>[-l<scale>x<contrast>][-ood].

  (default $JAXSEG_DATA_DIR: ~/.cache/jaxseg; the lesion part only where either factor is not 1.)
  """
  p = data_cfg.phantom
  base = os.environ.get("JAXSEG_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxseg")
  scale, contrast = float(p.get("lesion_scale", 1.0)), float(p.get("lesion_contrast", 1.0))
  lesions = f"-l{scale:g}x{contrast:g}" if (scale, contrast) != (1.0, 1.0) else ""
  return os.path.join(base, f"phantom-v{VERSION}-n{p.num_cases}-s{p.seed}-t{p.tumor_fraction:g}{lesions}"
                            f"{'-ood' if p.ood else ''}")


def ensure_phantoms(data_cfg) -> str:
  """Makes the phantom set of ``data_cfg.phantom`` into ``data_cfg.root`` unless it is already there.

  Idempotent and atomic: the set is written into a temporary sibling folder and renamed into place, so a
  folder with the marker file is always complete; a folder without it is refused, not overwritten.

  Args:
    data_cfg: config.data (root; "" -> ``default_phantom_root``), phantom.*, preprocess_workers.

  Returns:
    The phantom folder (an AbdomenAtlas 1.x layout data set).
  """
  p = data_cfg.phantom
  root = data_cfg.root or default_phantom_root(data_cfg)
  want = {"version": VERSION, "num_cases": int(p.num_cases), "seed": int(p.seed),
          "tumor_fraction": float(p.tumor_fraction), "ood": bool(p.ood),
          "lesion_scale": float(p.get("lesion_scale", 1.0)), "lesion_contrast": float(p.get("lesion_contrast", 1.0))}
  marker = os.path.join(root, MARKER)
  if os.path.exists(marker):
    with open(marker) as f:
      have = json.load(f)
    if have != want:
      raise ValueError(f"{marker}: phantoms were made with {have}, the config asks for {want}; "
                       f"use another data.root")
    return root
  if os.path.exists(root) and os.listdir(root):
    raise ValueError(f"{root}: exists but is not a complete phantom set (no {MARKER}); remove it or use "
                     f"another data.root")
  parent = os.path.dirname(os.path.abspath(root))
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".tmp-{os.path.basename(root)}-{uuid.uuid4().hex[:8]}")
  try:
    make_phantoms(tmp, want["num_cases"], want["seed"], want["tumor_fraction"], want["ood"],
                  workers=int(getattr(data_cfg, "preprocess_workers", 1)), lesion_scale=want["lesion_scale"],
                  lesion_contrast=want["lesion_contrast"])
    if os.path.isdir(root) and not os.listdir(root):
      os.rmdir(root)
    try:
      os.rename(tmp, root)
    except OSError:
      if not os.path.exists(marker):  # Another process may have finished first; else a real error.
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return root
