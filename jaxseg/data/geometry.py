"""Canonical geometry: reorient to RAS+ and resample to a target spacing, and the exact inverse.

Sources store CT in RAS, LPS or with the slice axis first, at 0.5-5 mm. Training sees one orientation
(RAS+, as ``nibabel.as_closest_canonical`` gives it; arrays indexed [x, y, z], z the axial axis) and one
spacing. Predictions must go back onto the original voxel grid, so ``to_canonical`` records everything
``from_canonical`` needs in a JSON-serialisable dict.

Resampling keeps the target spacing exact and centres the new grid on the old field of view:
new voxel i sits at old voxel coordinate ``i * r + offset`` with ``r = target / original spacing`` and
``offset = ((n_old - 1) - (n_new - 1) * r) / 2`` per axis.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from scipy import ndimage


def _resample(data: np.ndarray, scale: np.ndarray, offset: np.ndarray, out_shape, order: int) -> np.ndarray:
  """out[i] = data[i * scale + offset] per axis (separable, so a diagonal affine_transform)."""
  if np.allclose(scale, 1.0) and np.allclose(offset, 0.0) and tuple(out_shape) == data.shape:
    return data.copy()
  if order == 0:
    # Nearest neighbour by index gathering: exact, dtype-preserving and far faster than affine_transform.
    idx = [np.clip(np.floor(np.arange(n) * s + o + 0.5).astype(np.int64), 0, d - 1)
           for n, s, o, d in zip(out_shape, scale, offset, data.shape)]
    return data[np.ix_(*idx)]
  return ndimage.affine_transform(data.astype(np.float32, copy=False), scale, offset=offset,
                                  output_shape=tuple(out_shape), order=order, mode="nearest")


def _apply(data: np.ndarray, fn) -> np.ndarray:
  """Applies a 3D function to [X, Y, Z] or to each channel of [X, Y, Z, C]."""
  if data.ndim == 3:
    return fn(data)
  return np.stack([fn(data[..., c]) for c in range(data.shape[-1])], axis=-1)


def to_canonical(image: nib.Nifti1Image, spacing: tuple[float, float, float], order: int,
                 data: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
  """Reorients ``image`` to RAS+ and resamples it to ``spacing``.

  Args:
    image: a 3D NIfTI image (its affine defines the geometry).
    spacing: target (sx, sy, sz) in mm along the canonical x, y, z axes.
    order: interpolation order: 1 (linear) for images, 0 (nearest) for labels.
    data: the voxels [X, Y, Z] in the file's order, when already read (else read from ``image``).

  Returns:
    (array [X', Y', Z'] on the canonical grid (float32 for order >= 1, input dtype for order 0),
     meta: original_affine, original_shape, original_spacing, original_orientation (axis codes),
     ornt (nibabel orientation of the original axes), reoriented_shape, scale, offset, spacing,
     canonical_affine, canonical_shape; all JSON-serialisable).
  """
  if data is None:
    data = np.asanyarray(image.dataobj)
  data = np.asarray(data).reshape(data.shape[:3] if data.ndim > 3 and data.shape[3] == 1 else data.shape)
  affine = np.asarray(image.affine, dtype=np.float64)
  ornt = nio.io_orientation(affine)
  reoriented = nio.apply_orientation(data, ornt)
  reoriented_affine = affine @ nio.inv_ornt_aff(ornt, data.shape[:3])
  zooms = np.sqrt((reoriented_affine[:3, :3] ** 2).sum(axis=0))
  target = np.asarray(spacing, dtype=np.float64)
  scale = target / zooms
  old_shape = np.asarray(reoriented.shape[:3])
  new_shape = np.maximum(1, np.round(old_shape / scale)).astype(int)
  offset = ((old_shape - 1) - (new_shape - 1) * scale) / 2.0
  out = _apply(reoriented, lambda d: _resample(d, scale, offset, new_shape, order))
  step = np.eye(4)
  step[:3, :3] = np.diag(scale)
  step[:3, 3] = offset
  canonical_affine = reoriented_affine @ step
  meta = {
      "original_affine": affine.tolist(),
      "original_shape": [int(s) for s in data.shape[:3]],
      "original_spacing": [float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))],
      "original_orientation": list(nio.aff2axcodes(affine)),
      "ornt": ornt.tolist(),
      "reoriented_shape": [int(s) for s in old_shape],
      "scale": scale.tolist(),
      "offset": offset.tolist(),
      "spacing": [float(s) for s in target],
      "canonical_affine": canonical_affine.tolist(),
      "canonical_shape": [int(s) for s in new_shape],
  }
  return out, meta


def from_canonical(array: np.ndarray, meta: dict, order: int = 0) -> np.ndarray:
  """Maps a canonical-grid array back onto the original voxel grid of the image ``meta`` describes.

  ``nib.Nifti1Image(out, np.array(meta["original_affine"]))`` overlays the original image.

  Args:
    array: [X', Y', Z'] or [X', Y', Z', C] on the canonical grid (shape meta["canonical_shape"]).
    meta: the dict ``to_canonical`` returned.
    order: 0 (nearest, labels) or 1 (linear, probabilities or images).

  Returns:
    [X, Y, Z] (or [X, Y, Z, C]) with X, Y, Z = meta["original_shape"], in the file's axis order.
  """
  array = np.asarray(array)
  if list(array.shape[:3]) != list(meta["canonical_shape"]):
    raise ValueError(f"from_canonical: array shape {array.shape[:3]} != canonical {meta['canonical_shape']}")
  scale = np.asarray(meta["scale"], dtype=np.float64)
  offset = np.asarray(meta["offset"], dtype=np.float64)
  # Inverse of old = new * scale + offset: new = old / scale - offset / scale.
  back = _apply(array, lambda d: _resample(d, 1.0 / scale, -offset / scale, meta["reoriented_shape"], order))
  if order > 0 and np.issubdtype(array.dtype, np.integer):
    back = np.round(back).astype(array.dtype)
  ornt = np.asarray(meta["ornt"])
  inverse = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), ornt)
  out = nio.apply_orientation(back, inverse)
  return np.ascontiguousarray(out)


def voxel_to_world(affine, ijk) -> np.ndarray:
  """World (mm) coordinates of voxel indices ``ijk`` [N, 3] under a 4x4 ``affine``."""
  ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
  a = np.asarray(affine, dtype=np.float64)
  return ijk @ a[:3, :3].T + a[:3, 3]
