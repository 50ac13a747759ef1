"""How real the synthetic tumours look: the lesion figures of real metastases, measured on synthetic ones.

``measure_mode`` synthesizes tumours into patches of a healthy CT (the real CT fixture's liver, or a phantom)
and measures every tumour with jaxseg/metrics/lesion_figures.py, the definitions real_lesions.json was
measured with: relative contrast to the parenchyma shell, internal std ratio, smoothed edge ratio,
equivalent diameter, boundary sphericity. ``launch/synth_realism.py`` prints them beside the real lesions'
[p10, median, p90]; tests/test_realistic.py holds realistic mode inside them.

Patches are centred on organ voxels deep in the organ (at least ``depth_mm`` from its edge where there are
such voxels), so the shell of a tumour is parenchyma, as around the real lesions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxseg.data.pipeline import crop
from jaxseg.metrics import lesion_figures
from jaxseg.synth import fidelity, placement, realistic, spec as spec_lib
from jaxseg.synth.batch import uses_realistic
from jaxseg.synth.synthesizer import draw, render



@dataclasses.dataclass
class Volume:
  """A healthy CT and its organ at the measuring spacing (canonical RAS)."""
  ct: np.ndarray        # float32 HU [X, Y, Z]
  organ: np.ndarray     # bool [X, Y, Z]
  spacing: np.ndarray   # float32 [3] mm


def load_fixture_organ(real_ct_dir: str, organ: str = "liver", spacing_mm: float = 1.0,
                       margin_mm: float = 30.0) -> Volume:
  """The real CT fixture's organ box (+ margin), resampled to ``spacing_mm`` (CT linear, mask nearest).

  Cropping before resampling keeps this to a second or two (the fixture is 3 mm; the whole volume at 1 mm
  is 37 M voxels).
  """
  ct, mask, sp = fidelity.read_fixture(real_ct_dir, organ)
  pts = np.argwhere(mask)
  m = np.ceil(margin_mm / sp).astype(int)
  box = tuple(slice(max(int(a) - k, 0), int(b) + 1 + k) for a, b, k in zip(pts.min(0), pts.max(0), m))
  zoom = sp / spacing_mm
  ct = ndimage.zoom(ct[box], zoom, order=1)
  organ_mask = ndimage.zoom(mask[box].astype(np.uint8), zoom, order=0) > 0
  return Volume(ct, organ_mask, np.full(3, spacing_mm, np.float32))


def patch_starts(vol: Volume, patch: tuple[int, int, int], count: int, seed: int, depth_mm: float = 15.0
                 ) -> np.ndarray:
  """``count`` patch starts (int64 [count, 3]) centred on organ voxels at least ``depth_mm`` inside."""
  dist = ndimage.distance_transform_edt(vol.organ, sampling=vol.spacing)
  pts = np.argwhere(dist >= depth_mm)
  if not len(pts):
    pts = np.argwhere(vol.organ)
  rng = np.random.default_rng(seed)
  return pts[rng.integers(len(pts), size=count)].astype(np.int64) - np.asarray(patch) // 2


_COMPILED: dict = {}


def _renderer(spec: spec_lib.ProfileSpec, shape: tuple[int, ...]):
  """One jitted (image, organ, spacing, key, sites) -> (image, tumour, organ after mass effect) per spec."""
  key = (spec, shape)
  if key not in _COMPILED:
    if uses_realistic(spec):
      def fn(image, organ, sp, k, centres, ok):
        del centres, ok
        out, tumour, ex = realistic.render(image, organ, sp, realistic.draw(k, spec, shape), spec)
        return out, tumour, ex["organ"]
    elif spec.mode == "reference":
      def fn(image, organ, sp, k, centres, ok):
        out, tumour, _ = render(image, organ, sp, draw(k, spec, shape), spec, centers=centres, center_ok=ok)
        return out, tumour, organ
    else:
      def fn(image, organ, sp, k, centres, ok):
        del centres, ok
        out, tumour, _ = render(image, organ, sp, draw(k, spec, shape), spec)
        return out, tumour, organ
    _COMPILED[key] = jax.jit(fn)
  return _COMPILED[key]


def measure_mode(vol: Volume, spec: spec_lib.ProfileSpec, seeds, patch: tuple[int, int, int] = (64, 64, 64),
                 start_seed: int = 0) -> list[dict]:
  """Lesion figures of every synthetic tumour over ``seeds`` (one patch and one key per seed).

  Args:
    vol: the healthy volume.
    spec: the organ's ProfileSpec in the mode to measure ("reference" gets its sites from
      placement.draw_sites on the patch, seeded with the seed).
    seeds: key seeds; seed i also picks patch i (patch_starts with ``start_seed``).
    patch: patch shape (voxels).

  Returns:
    One lesion_figures row per tumour (components under 10 mm^3 dropped), each with its "seed".
  """
  seeds = list(seeds)
  starts = patch_starts(vol, patch, len(seeds), start_seed)
  fn = _renderer(spec, tuple(patch))
  slots = sum(g.slots for g in spec.groups)
  rows = []
  for seed, start in zip(seeds, starts):
    img = crop(vol.ct, start, patch, np.float32(-1024))
    org = crop(vol.organ, start, patch, False)
    if spec.mode == "reference":
      centres, ok = placement.draw_sites(org.astype(np.uint8), np.argwhere(org), 1, vol.spacing, spec,
                                         np.random.default_rng(seed))
    else:
      centres, ok = np.zeros((slots, 3), np.int32), np.zeros((slots,), bool)
    out, tumour, organ_after = fn(jnp.asarray(img), jnp.asarray(org), jnp.asarray(vol.spacing),
                                  jax.random.key(seed), jnp.asarray(centres), jnp.asarray(ok))
    out, tumour, organ_after = np.asarray(out), np.asarray(tumour), np.asarray(organ_after)
    for r in lesion_figures.measure_lesions(out, organ_after | tumour, tumour, vol.spacing):
      rows.append(dict(r, seed=int(seed)))
  return rows


def brighter_count(rows: list[dict]) -> tuple[int, int]:
  """(tumours brighter than their parenchyma shell, tumours with a finite contrast); real: 1 of 7."""
  v = [r["contrast_hu"] < 0 for r in rows if np.isfinite(r["contrast_hu"])]
  return int(sum(v)), len(v)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
  """Exact binomial interval of a share k / n: with 7 real lesions (1 brighter: 0.004-0.58) and some 25
  synthetic ones per run, a difference of shares means little unless the intervals say so."""
  from scipy.stats import beta  # pylint: disable=import-outside-toplevel
  a = 0.5 * (1.0 - level)
  lo = float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
  hi = float(beta.ppf(1.0 - a, k + 1, n - k)) if k < n else 1.0
  return lo, hi


def phantom_volume(n: int = 48, organ_hu: float = 110.0, noise_hu: float = 15.0, vessel_hu: float = 0.0,
                   seed: int = 0, spacing_mm: float = 1.0, texture_mm: float = 4.0) -> Volume:
  """A phantom organ filling most of an n^3 volume: HU organ_hu + smoothed noise of std noise_hu, fat around.

  ``texture_mm`` is the noise's Gaussian correlation scale: 4 mm gives the real liver metastases'
  parenchyma (real_lesions.json) its ratio of background gradient (smoothed, 1 mm) to std, about 0.25 / mm,
  which the edge ratio is measured against.

  ``vessel_hu`` > 0 adds a few straight bright tubes (3 mm across) through the organ, to see them replaced.
  """
  g = (np.arange(n) - (n - 1) / 2) / (n / 2)
  x, y, z = np.meshgrid(g, g, g, indexing="ij")
  organ = (x / 1.3) ** 2 + (y / 1.3) ** 2 + (z / 1.3) ** 2 < 1.0
  rng = np.random.default_rng(seed)
  noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, organ.shape), texture_mm / spacing_mm)
  noise /= noise.std()
  ct = np.where(organ, organ_hu + noise_hu * noise, -100.0 + 10.0 * noise)
  if vessel_hu:
    r_vox = 1.5 / spacing_mm
    for a, (u, v) in enumerate(rng.uniform(-0.5, 0.5, (3, 2))):
      axes = [x, y, z]
      del axes[a]
      tube = np.hypot(axes[0] - u, axes[1] - v) * (n / 2) < r_vox
      ct = np.where(tube & organ, ct + vessel_hu, ct)
  return Volume(ct.astype(np.float32), organ, np.full(3, spacing_mm, np.float32))
