"""NIfTI read/write with errors that name the file and what is wrong.

Real data sets hold truncated .nii.gz files, missing files and headers that do not parse. nibabel reports
those as a zoo of exceptions (EOFError, zlib.error, OSError, ImageFileError, ...) raised only when the data
is first touched; these helpers turn all of them into one ``DataError`` with a one-line message, so the
validator can list them and preprocessing can skip the case and go on.
"""

from __future__ import annotations

import os
import zlib

import nibabel as nib
import numpy as np


class DataError(ValueError):
  """A data file is missing, unreadable or inconsistent. The message names the file and the problem."""


def load_nifti(path: str) -> nib.Nifti1Image:
  """Opens a NIfTI image lazily (header only), or raises DataError naming ``path``.

  Args:
    path: a .nii or .nii.gz file.

  Returns:
    The nibabel image; its voxels are read by ``read_array``.
  """
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found")
  try:
    img = nib.load(path)
  except Exception as e:  # nibabel raises many types for a bad header.
    raise DataError(f"{path}: unreadable or truncated NIfTI header ({type(e).__name__}: {e})") from e
  if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
    raise DataError(f"{path}: not a NIfTI image ({type(img).__name__})")
  return img


def read_array(img: nib.Nifti1Image, path: str, dtype: type | None = np.float32) -> np.ndarray:
  """Reads all voxels of ``img`` (scl_slope/scl_inter applied), or raises DataError naming ``path``.

  Args:
    img: an image from ``load_nifti``.
    path: its file, for messages.
    dtype: output dtype; None keeps the stored dtype (without scaling when there is none).

  Returns:
    The voxel array, shape as stored (3D for CT).
  """
  try:
    arr = np.asarray(img.dataobj)
  except (EOFError, zlib.error, OSError, ValueError) as e:
    raise DataError(f"{path}: truncated or corrupt data ({type(e).__name__}: {e})") from e
  return arr if dtype is None else arr.astype(dtype, copy=False)


def spatial_shape(img: nib.Nifti1Image, path: str) -> tuple[int, int, int]:
  """The 3D shape of ``img``; a trailing singleton 4th axis is allowed, anything else raises DataError."""
  shape = tuple(int(s) for s in img.shape)
  while len(shape) > 3 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) != 3:
    raise DataError(f"{path}: expected a 3D image, got shape {tuple(img.shape)}")
  if min(shape) < 1:
    raise DataError(f"{path}: empty image of shape {shape}")
  return shape  # type: ignore[return-value]


def read_volume(path: str, dtype: type | None = np.float32) -> tuple[nib.Nifti1Image, np.ndarray]:
  """Loads a 3D NIfTI volume: header checks, full read, trailing singleton axes dropped.

  Args:
    path: a .nii or .nii.gz file.
    dtype: output dtype (float32 by default, scaling applied).

  Returns:
    (image, array [X, Y, Z] in the file's voxel order).
  """
  img = load_nifti(path)
  shape = spatial_shape(img, path)
  arr = read_array(img, path, dtype)
  return img, arr.reshape(shape)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str, dtype: type | None = None) -> None:
  """Writes ``array`` [X, Y, Z] with ``affine`` (4x4) to ``path`` (compressed when it ends in .gz).

  The qform and sform both carry the affine (code 1, scanner), as most CT tools expect.
  """
  if dtype is not None:
    array = np.asarray(array, dtype=dtype)
  img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
  img.set_qform(img.affine, code=1)
  img.set_sform(img.affine, code=1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  nib.save(img, path)
