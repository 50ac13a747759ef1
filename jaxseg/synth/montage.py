"""A side-by-side picture of the synthesis modes on a real CT: the same patches with reference-mode and
realistic-mode tumours (docs/figures/, launch/synth_montage.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data.pipeline import crop
from jaxseg.synth import placement, realism, spec as spec_lib
from jaxseg.synth.profiles import default_profiles_config


def _render(vol: realism.Volume, spec, start, seed: int, patch):
  img = crop(vol.ct, start, patch, np.float32(-1024))
  org = crop(vol.organ, start, patch, False)
  slots = sum(g.slots for g in spec.groups)
  if spec.mode == "reference":
    centres, ok = placement.draw_sites(org.astype(np.uint8), np.argwhere(org), 1, vol.spacing, spec,
                                       np.random.default_rng(seed))
  else:
    centres, ok = np.zeros((slots, 3), np.int32), np.zeros((slots,), bool)
  fn = realism._renderer(spec, tuple(patch))  # pylint: disable=protected-access
  out, tumour, _ = fn(jnp.asarray(img), jnp.asarray(org), jnp.asarray(vol.spacing), jax.random.key(seed),
                      jnp.asarray(centres), jnp.asarray(ok))
  return img, np.asarray(out), np.asarray(tumour)


def mode_montage(vol: realism.Volume, path: str, seeds=(0, 1, 2), patch=(80, 80, 80),
                 reference_class: str = "small", window=(-60.0, 160.0), dpi: int = 70) -> dict:
  """Writes a PNG: per seed one patch of ``vol``'s organ, axial slice through the largest tumour, as it was,
  with reference-mode tumours (size class ``reference_class``) and with realistic-mode tumours.

  Returns:
    {"path", "rows": [{"seed", "reference_slice", "realistic_slice"}]}.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  profile = default_profiles_config().liver
  specs = {"reference": spec_lib.make_spec(profile, name="liver", mode="reference", size_class=reference_class),
           "realistic": spec_lib.make_spec(profile, name="liver", mode="realistic")}
  starts = realism.patch_starts(vol, patch, len(seeds), seed=0, depth_mm=20.0)
  fig, axes = plt.subplots(len(seeds), 3, figsize=(6.6, 2.3 * len(seeds)), squeeze=False)
  rows = []
  for r, (seed, start) in enumerate(zip(seeds, starts)):
    row = {"seed": int(seed)}
    for c, mode in enumerate(("reference", "realistic")):
      img, out, tumour = _render(vol, specs[mode], start, int(seed), patch)
      z = int(np.argmax(tumour.sum(axis=(0, 1)))) if tumour.any() else patch[2] // 2
      row[f"{mode}_slice"] = z
      if c == 0:
        axes[r][0].imshow(img[:, :, z].T, cmap="gray", vmin=window[0], vmax=window[1], origin="lower")
        axes[r][0].set_title(f"CT (seed {seed})" if r == 0 else "", fontsize=8)
      ax = axes[r][c + 1]
      ax.imshow(out[:, :, z].T, cmap="gray", vmin=window[0], vmax=window[1], origin="lower")
      if tumour[:, :, z].any():
        ax.contour(tumour[:, :, z].T, levels=[0.5], colors="r", linewidths=0.5, origin="lower")
      if r == 0:
        ax.set_title(f"{mode} mode" + (f" ({reference_class})" if mode == "reference" else ""), fontsize=8)
    rows.append(row)
  for ax in axes.ravel():
    ax.set_axis_off()
  fig.suptitle(f"Real CT fixture liver (unenhanced, {vol.spacing[0]:g} mm), axial; red: tumour label; "
               f"window {window[0]:g}..{window[1]:g} HU", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return {"path": path, "rows": rows}
