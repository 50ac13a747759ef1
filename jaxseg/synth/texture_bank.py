"""Measures the published generator's texture-bank statistics that ``bank`` texture rescaling uses.

The published code pre-builds one texture per (sigma_a, sigma_b) over a 420 x 300 x 320 volume at 1 mm and
rescales each over that whole volume: the min and max of the blurred noise, and the mean of the final
field above 0.12, are bank-wide numbers, not a patch's. This recomputes them with scipy (the reference's
own filter), at the central rescale (scale 0.2, base 0.05), and prints the tables held in spec.py:

  python -m jaxseg.synth.texture_bank            # about 5 minutes and 1 GB on one core

One draw per sigma pair: the min and max of a 40-million-voxel field move by well under 1% between draws.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

BANK_SHAPE = (420, 300, 320)


def bank_statistics(shape=BANK_SHAPE, sigmas_a=(3.0, 6.0, 9.0, 12.0, 15.0), sigmas_b=(4.0, 7.0), seed: int = 0,
                    scale: float = 0.2, base: float = 0.05, threshold: float = 0.12) -> tuple[dict, dict]:
  """({sigma_a: (min, max, std) of the blurred noise}, {(sigma_a, sigma_b): mean of the field above 0.12})."""
  rng = np.random.default_rng(seed)
  noise, above = {}, {}
  for sa in sigmas_a:
    a2 = gaussian_filter(rng.random(shape, dtype=np.float32), sa, output=np.float32)
    lo, hi = float(a2.min()), float(a2.max())
    noise[sa] = (lo, hi, float(a2.std()))
    bern = ((scale * (a2 - lo) / (hi - lo) + base) > rng.random(shape, dtype=np.float32)).astype(np.float32)
    del a2
    for sb in sigmas_b:
      b = gaussian_filter(bern, sb, output=np.float32)
      above[(sa, sb)] = float(b[b > threshold].mean())
  return noise, above


if __name__ == "__main__":
  n, m = bank_statistics()
  print("BANK_NOISE =", {k: tuple(round(x, 8) for x in v) for k, v in n.items()})
  print("BANK_MEAN_ABOVE =", {k: round(v, 6) for k, v in m.items()})
