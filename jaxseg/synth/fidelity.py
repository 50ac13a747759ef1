"""Fidelity of the synthesizer to the published generator, measured the way the reference figures were.

The reference figures (shared with the project as reference_behaviour.json; its ``doc`` field is the
definition) were measured by running the published code on the real CT fixture's liver resampled to 1 mm.
This module computes the same figures for jaxseg's synthesizer, with numpy/scipy only on the measuring
side, so a test or ``launch/synth_fidelity.py`` can hold jaxseg to the reference's [p10, p90]:

per case   n_tumours: 26-connected components of the tumour mask in the case;
           crop_any_tumour / pos_crop_any_tumour: share of training crops (96^3) holding any tumour voxel,
             over all crops / over positive crops (centred on an organ voxel);
per tumour eq_diam_mm = (6 V / pi)^(1/3);
           sphericity_faces = pi^(1/3) (6 V)^(2/3) / A, A = exposed voxel faces (6-neighbourhood) x face area;
           darkening_hu = mean(before - after) over the tumour; mottle = std(before - after) / darkening;
           centre_axial_frac = (centroid z - organ zmin) / (organ z extent).

Two modes are measured. ``reference``: sites drawn on the whole case (placement.draw_sites), tumours
rendered on the organ's bounding box at once (what the training patches cut out of: the device evaluates
every tumour at its true coordinates, so a patch holds exactly the part of this mask inside it), crops
simulated on the whole volume by the loader's pos/neg rule. ``patch``: each training patch centred on a
random organ voxel, sites drawn inside it, as the loader (its organ-centred control patches) and device do
in patch mode; a "case" is a patch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxseg.data.pipeline import crop
from jaxseg.synth import device_bank, placement, spec as spec_lib
from jaxseg.synth.profiles import SIZE_CLASSES, default_profiles_config
from jaxseg.synth.synthesizer import draw, render

PER_CASE = ("n_tumours", "crop_any_tumour", "pos_crop_any_tumour")
PER_TUMOUR = ("eq_diam_mm", "sphericity_faces", "darkening_hu", "mottle", "centre_axial_frac")
FIGURES = PER_CASE + PER_TUMOUR
ORGAN_IDS = {"liver": (5,), "kidney": (2, 3), "pancreas": (7,)}   # TotalSegmentator ids in the fixture (its README)
PATCH = (96, 96, 96)
# The reference figures were measured with ONE prebuilt texture, get_predefined_texture(shape, 9, 4)
# (reference_behaviour.json's doc), not the bank's mix of sigmas: the mottle figure depends on it, so jaxseg
# is measured with the same texture sigmas (mm at 1 mm).
REFERENCE_RUN_TEXTURE_SIGMAS_MM = ((9.0,), (4.0,))


def reference_run_profile(organ: str = "liver"):
  """The default profile of ``organ`` with the texture sigmas the reference figures were measured with."""
  profile = getattr(default_profiles_config(), organ)
  profile.texture_sigma_a_mm, profile.texture_sigma_b_mm = REFERENCE_RUN_TEXTURE_SIGMAS_MM
  return profile


@dataclasses.dataclass
class Fixture:
  """The fixture's CT and organ at the measuring spacing (canonical RAS, axial axis last)."""
  ct: np.ndarray          # float32 HU [X, Y, Z], the whole volume
  organ: np.ndarray       # bool [X, Y, Z]
  spacing: np.ndarray     # [3] mm
  box: tuple              # slices of the organ's bounding box
  pts: np.ndarray         # int32 [N, 3] organ voxels


def read_fixture(real_ct_dir: str, organ: str = "liver") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The fixture's CT (float32 HU), ``organ`` mask (bool) and spacing (mm), canonical RAS, native grid."""
  import nibabel as nib  # pylint: disable=import-outside-toplevel
  if organ not in ORGAN_IDS:
    raise ValueError(f"--organ: the fixture labels {sorted(ORGAN_IDS)}, not {organ!r}")
  paths = [os.path.join(real_ct_dir, f) for f in ("example_ct.nii.gz", "example_ct_seg.nii.gz")]
  for p in paths:
    if not os.path.exists(p):
      raise ValueError(f"{p}: not found (JAXSEG_REAL_CT_DIR should be the real CT fixture folder)")
  img = nib.as_closest_canonical(nib.load(paths[0]))
  seg = nib.as_closest_canonical(nib.load(paths[1]))
  return (np.asarray(img.dataobj, np.float32), np.isin(np.asarray(seg.dataobj), ORGAN_IDS[organ]),
          np.asarray(img.header.get_zooms()[:3], np.float64))


def load_fixture(real_ct_dir: str, organ: str = "liver", spacing_mm: float = 1.0) -> Fixture:
  """Reads example_ct(.nii.gz) and its label map, resamples to ``spacing_mm`` (CT order 1, mask order 0)."""
  ct, mask, sp = read_fixture(real_ct_dir, organ)
  zoom = sp / spacing_mm
  ct = ndimage.zoom(ct, zoom, order=1)
  mask = ndimage.zoom(mask.astype(np.uint8), zoom, order=0) > 0
  pts = np.argwhere(mask).astype(np.int32)
  box = tuple(slice(int(a), int(b) + 1) for a, b in zip(pts.min(0), pts.max(0)))
  return Fixture(ct, mask, np.full(3, spacing_mm, np.float32), box, pts)


def sphericity_faces(comp: np.ndarray, spacing) -> float:
  """pi^(1/3) (6 V)^(2/3) / A with A the area of exposed voxel faces (6-neighbourhood)."""
  sp = np.asarray(spacing, np.float64)
  c = np.pad(comp, 1)
  area = 0.0
  for a in range(3):
    faces = np.count_nonzero(np.diff(c.astype(np.int8), axis=a))
    area += faces * sp[(a + 1) % 3] * sp[(a + 2) % 3]
  vol = comp.sum() * sp.prod()
  return float(math.pi ** (1 / 3) * (6 * vol) ** (2 / 3) / area) if area else float("nan")


def tumour_figures(before: np.ndarray, after: np.ndarray, tumour: np.ndarray, spacing, zmin: float,
                   zext: float, z0: int = 0) -> list[dict]:
  """Per-tumour figures of one case (26-connected components of ``tumour``)."""
  lab, n = ndimage.label(tumour, structure=np.ones((3, 3, 3), bool))
  rows = []
  sp = np.asarray(spacing, np.float64)
  for i, sl in enumerate(ndimage.find_objects(lab), start=1):
    comp = lab[sl] == i
    vol = comp.sum() * sp.prod()
    diff = (before[sl] - after[sl])[comp].astype(np.float64)
    dark = float(diff.mean())
    zc = np.argwhere(comp)[:, 2].mean() + sl[2].start + z0
    rows.append({"eq_diam_mm": float((6 * vol / math.pi) ** (1 / 3)),
                 "sphericity_faces": sphericity_faces(comp, sp), "darkening_hu": dark,
                 "mottle": float(diff.std() / dark) if dark else float("nan"),
                 "centre_axial_frac": float((zc - zmin) / zext) if zext else float("nan")})
  return rows


def _stats(values) -> dict:
  v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
  if not v.size:
    return {"n": 0, "p10": float("nan"), "median": float("nan"), "p90": float("nan")}
  return {"n": int(v.size), "p10": float(np.percentile(v, 10)), "median": float(np.median(v)),
          "p90": float(np.percentile(v, 90))}


_COMPILED: dict = {}


def _renderer(fx: Fixture, spec, shape, with_sites: bool):
  """One jitted render per (fixture, spec, canvas shape): the class is restricted in ``spec``. With the
  device texture bank (``spec.texture_source == "bank"``) the bank is built once for the canvas and bound."""
  key = (id(fx), spec, shape, with_sites)
  if key not in _COMPILED:
    sp = jnp.asarray(fx.spacing)
    bank = None
    if spec.texture_source == "bank":
      bank = device_bank.build(jax.random.key(0), spec, shape, fx.spacing)
    if with_sites:
      def fn(bank, image, organ, k, centers, ok):
        return render(image, organ, sp, draw(k, spec, shape), spec, centers=centers, center_ok=ok, bank=bank)[:2]
    else:
      def fn(bank, image, organ, k):
        return render(image, organ, sp, draw(k, spec, shape), spec, bank=bank)[:2]
    _COMPILED[key] = functools.partial(jax.jit(fn), bank)
  return _COMPILED[key]


def measure_reference(fx: Fixture, size_class: str, seeds, crops: int = 600, profile=None,
                      texture: str = "field") -> dict:
  """Reference mode on the fixture: figures per case and per tumour over ``seeds`` (one case each).

  ``profile`` defaults to reference_run_profile() (the reference run's texture); ``texture`` is
  config.synth.texture (the bank is built for the organ's box at the fixture's spacing). 600 crops per case keep the
  crop figures' sampling noise (about 0.02 at 200 crops) well inside the reference's [p10, p90].

  Sites come from placement.draw_sites on the whole organ (numpy Generator seeded with the seed), the
  tumours from the device renderer (key = the seed) on the organ's bounding box, and ``crops`` training
  crops per case from placement.crop_centre_and_kind on the whole volume.
  """
  profile = profile if profile is not None else reference_run_profile()
  spec = spec_lib.make_spec(profile, name="liver", mode="reference", min_spacing_mm=float(fx.spacing.min()),
                            size_class=size_class, texture=texture)
  lo = np.asarray([s.start for s in fx.box])
  image = jnp.asarray(fx.ct[fx.box])
  organ = jnp.asarray(fx.organ[fx.box])
  fn = _renderer(fx, spec, tuple(image.shape), True)
  label_full = fx.organ.astype(np.uint8)
  zmin, zmax = int(fx.pts[:, 2].min()), int(fx.pts[:, 2].max())
  per_case = {k: [] for k in PER_CASE}
  rows = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    centres, ok = placement.draw_sites(label_full, fx.pts, 1, fx.spacing, spec, rng)
    out, tumour = fn(image, organ, jax.random.key(seed), jnp.asarray(centres - lo, jnp.int32), jnp.asarray(ok))
    out, tumour = np.asarray(out), np.asarray(tumour)
    case_rows = tumour_figures(fx.ct[fx.box], out, tumour, fx.spacing, zmin, zmax - zmin, z0=int(lo[2]))
    rows += case_rows
    per_case["n_tumours"].append(len(case_rows))
    full = np.zeros(fx.organ.shape, bool)
    full[fx.box] = tumour
    any_t, pos_t, npos = 0, 0, 0
    for _ in range(crops):
      c, positive = placement.crop_centre_and_kind(label_full, fx.pts, 1, PATCH, rng)
      start = c - np.asarray(PATCH) // 2
      sl = tuple(slice(max(int(s), 0), max(int(s) + n, 0)) for s, n in zip(start, PATCH))
      hit = bool(full[sl].any())
      any_t += hit
      npos += positive
      pos_t += hit and positive
    per_case["crop_any_tumour"].append(any_t / crops)
    per_case["pos_crop_any_tumour"].append(pos_t / max(npos, 1))
  return _summary(per_case, rows)


def measure_patch(fx: Fixture, size_class: str, seeds, profile=None) -> dict:
  """Patch mode on the fixture: each seed is one fired training patch centred on a random organ voxel."""
  profile = profile if profile is not None else reference_run_profile()
  spec = spec_lib.make_spec(profile, name="liver", mode="patch", min_spacing_mm=float(fx.spacing.min()),
                            size_class=size_class)
  fn = _renderer(fx, spec, PATCH, False)
  zmin, zmax = int(fx.pts[:, 2].min()), int(fx.pts[:, 2].max())
  per_case = {k: [] for k in PER_CASE}
  rows = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    start = fx.pts[rng.integers(len(fx.pts))].astype(np.int64) - np.asarray(PATCH) // 2
    img = crop(fx.ct, start, PATCH, np.float32(-1024))
    org = crop(fx.organ, start, PATCH, False)
    out, tumour = fn(jnp.asarray(img), jnp.asarray(org), jax.random.key(seed))
    out, tumour = np.asarray(out), np.asarray(tumour)
    case_rows = tumour_figures(img, out, tumour, fx.spacing, zmin, zmax - zmin, z0=int(start[2]))
    rows += case_rows
    per_case["n_tumours"].append(len(case_rows))
    per_case["crop_any_tumour"].append(float(tumour.any()))
    per_case["pos_crop_any_tumour"].append(float(tumour.any()))
  return _summary(per_case, rows)


def _summary(per_case: dict, rows: list[dict]) -> dict:
  out = {k: _stats(v) for k, v in per_case.items()}
  for k in PER_TUMOUR:
    out[k] = _stats([r[k] for r in rows])
  return out


def reference_figures(path: str, organ: str = "liver") -> dict:
  """{class: {figure: {p10, median, p90}}} from reference_behaviour.json."""
  import json  # pylint: disable=import-outside-toplevel
  if organ != "liver":
    raise ValueError(f"--organ: the reference figures are for the liver, not {organ!r}")
  with open(path) as f:
    ref = json.load(f)
  out = {}
  for c, v in ref["classes"].items():
    out[c] = {**{k: v["per_case"][k] for k in PER_CASE}, **{k: v["per_tumour"][k] for k in PER_TUMOUR}}
  return out


def within(ref: dict, ours: dict) -> dict:
  """{figure: ours median within the reference's [p10, p90]}."""
  return {k: bool(ref[k]["p10"] <= ours[k]["median"] <= ref[k]["p90"]) for k in FIGURES}


__all__ = ["Fixture", "load_fixture", "measure_reference", "measure_patch", "reference_figures", "within",
           "sphericity_faces", "tumour_figures", "FIGURES", "SIZE_CLASSES"]
