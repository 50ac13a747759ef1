"""Synthetic tumours on a whole CT file: NIfTI in, NIfTI + PNG montage + realism figures out.

For people who want to look at the tumours: the CT is reoriented to canonical RAS (axial axis last), the
jitted synthesizer runs on the whole volume (in reference mode with the sites drawn on the whole organ, as
the published generator does), and the results are written back in the input's orientation with the
input's affine.
"""

from __future__ import annotations

import json
import os

import jax
import matplotlib
import nibabel as nib
import numpy as np

from jaxseg.data.reading import geometry_problems
from jaxseg.io.nifti import load_nifti, read_array
from jaxseg.synth import figures, placement, spec as spec_lib
from jaxseg.synth.batch import synthesize
from jaxseg.synth.profiles import default_profiles_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _to_canonical(img: nib.Nifti1Image, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  ornt = nib.orientations.io_orientation(img.affine)
  return nib.orientations.apply_orientation(data, ornt), ornt


def _from_canonical(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
  inv = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
  return nib.orientations.apply_orientation(data, inv)


def montage(before: np.ndarray, after: np.ndarray, tumor: np.ndarray, path: str, title: str, n: int = 4) -> None:
  """PNG: n axial slices through the tumours, before / after / after with the tumour outline."""
  areas = tumor.sum(axis=(0, 1))
  zs = np.argsort(areas)[::-1][:n] if areas.any() else np.linspace(0, tumor.shape[2] - 1, n).astype(int)
  zs = sorted(int(z) for z in zs if areas[z] > 0 or not areas.any())
  fig, axes = plt.subplots(len(zs), 3, figsize=(9, 3 * len(zs)), squeeze=False)
  for row, z in zip(axes, zs):
    for ax, im, name in zip(row, (before, after, after), ("before", "after", "after + mask")):
      ax.imshow(np.clip(im[:, :, z], -175, 250).T, cmap="gray", origin="lower")
      if name == "after + mask" and tumor[:, :, z].any():
        ax.contour(tumor[:, :, z].T, levels=[0.5], colors="r", linewidths=0.8, origin="lower")
      ax.set_title(f"{name} z={z}", fontsize=8)
      ax.axis("off")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def synthesize_file(image_path: str, mask_path: str, organ: str, out_dir: str, seed: int = 0,
                    size_class: str | None = None, mask_labels: tuple[int, ...] = (),
                    contrast: str = "absolute", mode: str = "reference") -> dict:
  """Writes <out>/ct_synth.nii.gz, tumor_mask.nii.gz, montage.png and figures.json.

  Args:
    image_path: CT in HU.
    mask_path: organ mask on the same grid (voxels > 0), or a label map with ``mask_labels``.
    organ: profile name (liver, pancreas, kidney, colon, esophagus, uterus).
    out_dir: output folder (created).
    seed: key seed.
    size_class: fixed size class, or None to draw one.
    mask_labels: label ids of the organ in the mask file; empty: any non-zero voxel.
    contrast: "absolute" ("relative" is retired: ValueError pointing to mode "realistic").
    mode: "reference" (sites drawn on the whole organ by the published rule, its deformation and texture
      statistics), "patch" (sites drawn by the device on the volume as a patch) or "realistic" (patch
      placement, tumours calibrated on real lesions; the size class does not apply).

  The static tumour boxes are sized for the file's own finest spacing, so tumours have the same size in mm
  at any spacing from 0.5 to 5 mm (outside that range: ValueError naming the spacing).

  Returns:
    A summary dict (tumour voxels, size class, figures).
  """
  profiles = default_profiles_config()
  if organ not in profiles:
    raise ValueError(f"--organ: unknown organ {organ!r}; known: {', '.join(profiles.keys())}")
  img = load_nifti(image_path)
  msk = load_nifti(mask_path)
  data = read_array(img, image_path)
  mdata = read_array(msk, mask_path, dtype=None)
  if data.ndim != 3 or data.shape != mdata.shape:
    raise ValueError(f"{mask_path}: shape {mdata.shape} does not match the image {image_path} {data.shape}")
  if not np.isfinite(data).all():
    # The int16 output would turn NaN into 0 HU (water) silently: a fake tissue value in the written CT.
    raise ValueError(f"{image_path}: {int((~np.isfinite(data)).sum())} NaN or infinite voxels")
  problems = geometry_problems(img, image_path)
  if problems:
    raise ValueError(problems[0])
  organ_mask = np.isin(mdata, mask_labels) if mask_labels else mdata > 0
  if not organ_mask.any():
    raise ValueError(f"{mask_path}: no organ voxel (labels {mask_labels or 'non-zero'})")
  ct, ornt = _to_canonical(img, data)
  om, _ = _to_canonical(img, organ_mask)
  # Voxels of other labelled structures (a label-map mask): a tumour never takes them.
  blocked, _ = _to_canonical(img, (mdata > 0) & ~organ_mask if mask_labels else np.zeros_like(organ_mask))
  spacing = np.asarray(nib.affines.voxel_sizes(img.affine), np.float32)[np.argsort(ornt[:, 0])]
  try:
    spec_lib.check_spacing(spacing, float(spacing.min()))
  except ValueError as e:
    raise ValueError(f"{image_path}: {e}") from None
  sp = spec_lib.make_spec(profiles[organ], name=organ, contrast=contrast,
                          size_class=None if mode == "realistic" else size_class, mode=mode,
                          min_spacing_mm=float(spacing.min()))
  if mode == "reference":
    centres, ok = placement.draw_sites(om.astype(np.uint8), np.argwhere(om), 1, spacing, sp,
                                       np.random.default_rng(seed))
    fn = jax.jit(lambda i, m, s, k, b, c, o: synthesize(i, m, s, k, sp, contrast=contrast, blocked=b, centers=c,
                                                        center_ok=o))
    out, tumor = fn(ct.astype(np.float32), om, spacing, jax.random.key(seed), blocked, centres, ok)
  else:
    fn = jax.jit(lambda i, m, s, k, b: synthesize(i, m, s, k, sp, contrast=contrast, blocked=b))
    out, tumor = fn(ct.astype(np.float32), om, spacing, jax.random.key(seed), blocked)
  out, tumor = np.asarray(out), np.asarray(tumor)
  os.makedirs(out_dir, exist_ok=True)
  hdr = img.header.copy()
  hdr.set_data_dtype(np.int16)
  nib.save(nib.Nifti1Image(np.round(_from_canonical(out, ornt)).astype(np.int16), img.affine, hdr),
           os.path.join(out_dir, "ct_synth.nii.gz"))
  nib.save(nib.Nifti1Image(_from_canonical(tumor, ornt).astype(np.uint8), img.affine),
           os.path.join(out_dir, "tumor_mask.nii.gz"))
  title = f"{organ} ({size_class or 'drawn size'}, {contrast} contrast, {mode} mode, seed {seed}); red: tumour mask"
  montage(ct, out, tumor, os.path.join(out_dir, "montage.png"), title)
  summary = {"organ": organ, "mode": mode, "tumor_voxels": int(tumor.sum()), "tumor_in_organ": bool((tumor <= om).all()),
             "spacing_mm": [float(s) for s in spacing],
             "figures": figures.summarize(figures.tumor_figures(out, tumor, om, spacing))}
  with open(os.path.join(out_dir, "figures.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary
