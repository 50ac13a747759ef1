"""Layout readers: every supported folder layout becomes one list of ``CaseRecord``.

Nothing else in jaxseg knows about layouts. A record names the image, the labels (one label map with its
class map, or one mask file per structure) and, per organ of ``jaxseg.labels.ORGANS``, what the file names
say about it: "tumor" (a tumour mask file exists), "unknown" (a label map whose class map has the tumour
class; only the voxels tell), "control" (lesions declared absent without a file: the phantom set) or
"organ_only" (the organ is annotated, its lesions are not: no tumour file, no tumour class).
Preprocessing computes the definitive status from the voxels and stores it in the cache index.

Which classes a case annotates (``CaseRecord.annotated_structures``) is what partial-label training needs:
a structure is annotated when its mask file exists (even empty), when the class map names it, or when the
layout declares it annotated-but-absent (``CaseRecord.empty``). A missing file never means "absent": an
AbdomenAtlas case without ``liver_tumor.nii.gz`` has unannotated liver lesions, not a lesion-free liver,
so it cannot be a synthesis control. A phantom set (an AbdomenAtlas 1.x folder with the generator's
``phantoms.json``) annotates lesions exhaustively: its organs without a tumour file are lesion-free.

Source structure names (liver_lesion, pancreatic_lesion, MSD "cancer", KiTS "cyst", ...) are mapped to
jaxseg structure names ("liver", "liver_tumor", ...) by ``structure_name``.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re
from collections.abc import Mapping

from jaxseg.io.nifti import DataError
from jaxseg.labels import ORGANS
from jaxseg.registry import Registry, closest

TUMOR = "tumor"
CONTROL = "control"
UNKNOWN = "unknown"
ORGAN_ONLY = "organ_only"

PHANTOM_MARKER = "phantoms.json"  # written by jaxseg.data.phantom.make_phantoms (its MARKER)

# The combined class map of the AbdomenAtlas 2.0 release (docs/DATA_LAYOUTS.md).
ATLAS2_CLASS_MAP: dict[str, int] = {
    "aorta": 1, "gall_bladder": 2, "kidney_left": 3, "kidney_right": 4, "liver": 5, "pancreas": 6,
    "postcava": 7, "spleen": 8, "stomach": 9, "adrenal_gland_left": 10, "adrenal_gland_right": 11,
    "bladder": 12, "celiac_trunk": 13, "colon": 14, "duodenum": 15, "esophagus": 16, "femur_left": 17,
    "femur_right": 18, "hepatic_vessel": 19, "intestine": 20, "lung_left": 21, "lung_right": 22,
    "portal_vein_and_splenic_vein": 23, "prostate": 24, "rectum": 25, "uterus": 26, "liver_lesion": 27,
    "pancreatic_lesion": 28, "kidney_lesion": 29, "colon_lesion": 30, "endometrioma_tumor": 31,
    "esophagus_tumor": 32,
}

_ORGAN_ALIASES = {
    "liver": "liver", "pancreas": "pancreas", "kidney": "kidney", "kidney_left": "kidney",
    "kidney_right": "kidney", "kidneys": "kidney", "kidney_cyst": "kidney", "colon": "colon",
    "esophagus": "esophagus", "uterus": "uterus",
}
_TUMOR_ALIASES = {
    "liver_tumor": "liver", "liver_tumour": "liver", "liver_lesion": "liver", "liver_cancer": "liver",
    "hepatic_tumor": "liver", "pancreas_tumor": "pancreas", "pancreatic_tumor": "pancreas",
    "pancreatic_lesion": "pancreas", "pancreas_lesion": "pancreas", "pancreas_tumour": "pancreas",
    "kidney_tumor": "kidney", "kidney_tumour": "kidney", "kidney_lesion": "kidney", "renal_tumor": "kidney",
    "colon_tumor": "colon", "colon_lesion": "colon", "colon_cancer": "colon", "colon_tumour": "colon",
    "colon_cancer_primaries": "colon", "esophagus_tumor": "esophagus", "esophagus_lesion": "esophagus",
    "esophagus_tumour": "esophagus", "esophageal_tumor": "esophagus", "uterus_tumor": "uterus",
    "uterus_lesion": "uterus", "endometrioma_tumor": "uterus", "uterine_tumor": "uterus",
}
_GENERIC_TUMOR = {"tumor", "tumour", "tumors", "tumours", "cancer", "lesion", "lesions", "mass"}


def _norm(name: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def structure_name(name: str, organs_in_map: tuple[str, ...] = ()) -> str | None:
  """Maps a source structure name to a jaxseg structure ("liver", "liver_tumor", ...) or None (ignored).

  Args:
    name: the name as the data set spells it (file stem or class-map key).
    organs_in_map: jaxseg organs named elsewhere in the same class map; a generic "tumour"/"cancer" belongs
      to the organ when there is exactly one, and a KiTS "cyst" is merged into the kidney.

  Returns:
    "<organ>" or "<organ>_tumor", or None for structures outside ``ORGANS`` (spleen, aorta, ...).
  """
  n = _norm(name)
  if n in _ORGAN_ALIASES:
    return _ORGAN_ALIASES[n]
  if n in _TUMOR_ALIASES:
    return _TUMOR_ALIASES[n] + "_tumor"
  if n in ("cyst", "cysts") and "kidney" in organs_in_map:
    return "kidney"
  if n in _GENERIC_TUMOR and len(organs_in_map) == 1:
    return organs_in_map[0] + "_tumor"
  return None


def _organs_of(names) -> tuple[str, ...]:
  out = []
  for n in names:
    s = _ORGAN_ALIASES.get(_norm(n))
    if s and s not in out:
      out.append(s)
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class CaseRecord:
  """One case of a data set, whatever its layout.

  Attributes:
    case_id: unique id (folder name or file stem).
    image: path of the CT image.
    label_map: path of a label map, or None when the labels are per-structure masks.
    class_map: for a label map, source class name -> id (background excluded).
    masks: for per-structure masks, source structure name -> mask path.
    organs: per organ of ``ORGANS`` that is annotated: TUMOR, UNKNOWN, CONTROL or ORGAN_ONLY (see module
      docstring).
    empty: jaxseg structures ("liver_tumor", ...) annotated as absent without a file.
  """
  case_id: str
  image: str
  label_map: str | None = None
  class_map: Mapping[str, int] = dataclasses.field(default_factory=dict)
  masks: Mapping[str, str] = dataclasses.field(default_factory=dict)
  organs: Mapping[str, str] = dataclasses.field(default_factory=dict)
  empty: tuple[str, ...] = ()

  def annotated_structures(self) -> frozenset[str]:
    """jaxseg structures ("liver", "liver_tumor", ...) this case annotates, present or declared absent."""
    return frozenset(self.structures()) | frozenset(self.empty)

  def structures(self) -> dict[str, tuple[str, ...] | tuple[int, ...]]:
    """jaxseg structure -> source ids (label map) or mask paths (masks) that make it up."""
    out: dict[str, list] = {}
    if self.label_map is not None:
      in_map = _organs_of(self.class_map)
      for name, idx in self.class_map.items():
        s = structure_name(name, in_map)
        if s is not None:
          out.setdefault(s, []).append(int(idx))
    else:
      in_map = _organs_of(self.masks)
      for name, path in sorted(self.masks.items()):
        s = structure_name(name, in_map)
        if s is not None:
          out.setdefault(s, []).append(path)
    return {k: tuple(v) for k, v in out.items()}

  def tumor_organs(self) -> tuple[str, ...]:
    return tuple(o for o in ORGANS if self.organs.get(o) == TUMOR)

  def control_organs(self) -> tuple[str, ...]:
    return tuple(o for o in ORGANS if self.organs.get(o) == CONTROL)


def _status_from_structures(structs, label_map: bool, empty=()) -> dict[str, str]:
  status = {}
  for organ in ORGANS:
    has_organ = organ in structs
    has_tumor = organ + "_tumor" in structs
    if has_tumor:
      status[organ] = UNKNOWN if label_map else TUMOR
    elif has_organ and organ + "_tumor" in empty:
      status[organ] = CONTROL
    elif has_organ:
      status[organ] = ORGAN_ONLY
  return status


def _record(case_id, image, label_map=None, class_map=None, masks=None, empty=()) -> CaseRecord:
  rec = CaseRecord(case_id=case_id, image=image, label_map=label_map, class_map=dict(class_map or {}),
                   masks=dict(masks or {}), empty=tuple(empty))
  return dataclasses.replace(rec, organs=_status_from_structures(rec.structures(), label_map is not None,
                                                                 rec.empty))


def _lesions_exhaustive(rec: CaseRecord) -> CaseRecord:
  """The record with every annotated organ's missing tumour declared absent (exhaustive lesion labels)."""
  structs = rec.structures()
  empty = tuple(o + "_tumor" for o in ORGANS if o in structs and o + "_tumor" not in structs)
  return _record(rec.case_id, rec.image, rec.label_map, rec.class_map, rec.masks, empty)


def _nii_stem(path: str) -> str:
  base = os.path.basename(path)
  for ext in (".nii.gz", ".nii"):
    if base.endswith(ext):
      return base[: -len(ext)]
  return base


def _mask_dir(seg_dir: str) -> dict[str, str]:
  paths = sorted(glob.glob(os.path.join(seg_dir, "*.nii.gz")) + glob.glob(os.path.join(seg_dir, "*.nii")))
  return {_nii_stem(p): p for p in paths}


def _atlas_case(case_id: str, image: str, label_dir: str) -> CaseRecord:
  seg = os.path.join(label_dir, "segmentations")
  if os.path.isdir(seg):
    return _record(case_id, image, masks=_mask_dir(seg))
  combined = os.path.join(label_dir, "combined_labels.nii.gz")
  if os.path.exists(combined):
    return _record(case_id, image, label_map=combined, class_map=ATLAS2_CLASS_MAP)
  return _record(case_id, image)


def read_atlas(src: str) -> list[CaseRecord]:
  """AbdomenAtlas 1.x: <src>/<case>/ct.nii.gz and <src>/<case>/segmentations/<structure>.nii.gz.

  A lesion is annotated only where its mask file exists. A phantom set (this layout plus the generator's
  phantoms.json) is read as ``read_phantom``.
  """
  exhaustive = os.path.exists(os.path.join(src, PHANTOM_MARKER))
  out = []
  for case_dir in sorted(glob.glob(os.path.join(src, "*"))):
    if os.path.isdir(case_dir) and not os.path.basename(case_dir).startswith("."):
      image = os.path.join(case_dir, "ct.nii.gz")
      if os.path.exists(image) or os.path.isdir(os.path.join(case_dir, "segmentations")):
        rec = _atlas_case(os.path.basename(case_dir), image, case_dir)
        out.append(_lesions_exhaustive(rec) if exhaustive else rec)
  return out


def read_phantom(src: str) -> list[CaseRecord]:
  """A phantom set (jaxseg.data.phantom): AbdomenAtlas 1.x files whose lesion annotation is exhaustive.

  The generator writes a tumour mask only where it drew lesions, and it draws every lesion it paints, so
  an organ mask without a tumour mask is a lesion-free organ: a synthesis control.
  """
  if not os.path.exists(os.path.join(src, PHANTOM_MARKER)):
    raise DataError(f"{os.path.join(src, PHANTOM_MARKER)}: missing; not a finished phantom set "
                    f"(make one with launch/make_phantoms.py)")
  return read_atlas(src)


def read_atlas2(src: str) -> list[CaseRecord]:
  """AbdomenAtlas 2.0: <src>/ct/<case>/ct.nii.gz and <src>/label/<case>/segmentations/<name>.nii.gz."""
  ct_root = os.path.join(src, "ct")
  if not os.path.isdir(ct_root):
    raise DataError(f"{ct_root}: missing (AbdomenAtlas 2.0 layout expects <src>/ct and <src>/label)")
  out = []
  for case_dir in sorted(glob.glob(os.path.join(ct_root, "*"))):
    if os.path.isdir(case_dir):
      case_id = os.path.basename(case_dir)
      out.append(_atlas_case(case_id, os.path.join(case_dir, "ct.nii.gz"), os.path.join(src, "label", case_id)))
  return out


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise DataError(f"{path}: file not found") from e
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: unreadable JSON ({e})") from e


def _class_map(labels, path: str, names_are_keys: bool) -> dict[str, int]:
  out = {}
  try:
    for k, v in labels.items():
      name, idx = (k, v) if names_are_keys else (v, k)
      if isinstance(idx, (list, tuple)):  # nnU-Net v2 regions: not a plain class.
        raise DataError(f"{path}: label {name!r} is a region {idx}; only plain class ids are supported")
      if int(idx) != 0:
        out[str(name)] = int(idx)
  except (TypeError, ValueError, AttributeError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"{path}: 'labels' must map names and integer ids ({e})") from e
  return out


def read_msd(src: str) -> list[CaseRecord]:
  """Medical Segmentation Decathlon: <src>/dataset.json with "labels" {id: name} and "training" pairs."""
  path = os.path.join(src, "dataset.json")
  meta = _read_json(path)
  if "labels" not in meta or "training" not in meta:
    raise DataError(f"{path}: needs 'labels' and 'training'")
  class_map = _class_map(meta["labels"], path, names_are_keys=False)
  out = []
  for item in meta["training"]:
    image = os.path.normpath(os.path.join(src, item["image"]))
    label = os.path.normpath(os.path.join(src, item["label"]))
    out.append(_record(_nii_stem(image), image, label_map=label, class_map=class_map))
  return out


def read_nnunet(src: str) -> list[CaseRecord]:
  """nnU-Net raw: <src>/dataset.json ("labels" {name: id}), imagesTr/<case>_0000.nii.gz, labelsTr/<case>."""
  path = os.path.join(src, "dataset.json")
  meta = _read_json(path)
  if "labels" not in meta:
    raise DataError(f"{path}: needs 'labels'")
  class_map = _class_map(meta["labels"], path, names_are_keys=True)
  ending = meta.get("file_ending", ".nii.gz")
  out = []
  for label in sorted(glob.glob(os.path.join(src, "labelsTr", "*" + ending))):
    case_id = os.path.basename(label)[: -len(ending)]
    image = os.path.join(src, "imagesTr", f"{case_id}_0000{ending}")
    out.append(_record(case_id, image, label_map=label, class_map=class_map))
  return out


def read_manifest(src: str) -> list[CaseRecord]:
  """A CSV or JSON manifest (or a folder holding manifest.csv / manifest.json).

  CSV columns: case_id, image, and either label + class_map (a JSON object {name: id}) or mask_<name>
  columns (one mask path per structure). JSON: a list of cases, or {"class_map": {...}, "cases": [...]},
  each case {"case_id", "image", "label", "class_map"?} or {"case_id", "image", "masks": {name: path}}.
  Relative paths are relative to the manifest's folder.
  """
  if os.path.isdir(src):
    for name in ("manifest.csv", "manifest.json"):
      if os.path.exists(os.path.join(src, name)):
        src = os.path.join(src, name)
        break
    else:
      raise DataError(f"{src}: no manifest.csv or manifest.json in this folder")
  base = os.path.dirname(os.path.abspath(src))
  if src.endswith(".json"):
    meta = _read_json(src)
    default_map = meta.get("class_map", {}) if isinstance(meta, dict) else {}
    rows = meta.get("cases", []) if isinstance(meta, dict) else meta
  else:
    try:
      with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    except OSError as e:
      raise DataError(f"{src}: unreadable manifest ({e})") from e
    default_map = {}
  resolve = lambda p: p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
  out = []
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or not row.get("image"):
      raise DataError(f"{src}: case {i} has no 'image'")
    case_id = str(row.get("case_id") or _nii_stem(row["image"]))
    masks = dict(row.get("masks") or {})
    masks.update({k[len("mask_"):]: v for k, v in row.items() if k.startswith("mask_") and v})
    if masks:
      out.append(_record(case_id, resolve(row["image"]), masks={k: resolve(v) for k, v in masks.items()}))
      continue
    cmap = row.get("class_map") or default_map
    if isinstance(cmap, str):
      try:
        cmap = json.loads(cmap)
      except json.JSONDecodeError as e:
        raise DataError(f"{src}: case {case_id}: class_map is not a JSON object ({e})") from e
    label = row.get("label")
    out.append(_record(case_id, resolve(row["image"]), label_map=resolve(label) if label else None,
                       class_map=_class_map(cmap, src, names_are_keys=True)))
  return out


# The layouts: a new one is a reader function above plus one line here.
READERS: Registry = Registry("data.layout")
READERS.register("atlas", read_atlas)
READERS.register("atlas2", read_atlas2)
READERS.register("msd", read_msd)
READERS.register("nnunet", read_nnunet)
READERS.register("manifest", read_manifest)
READERS.register("phantom", read_phantom)
LAYOUTS = READERS.names()


def read_layout(layout: str, src: str) -> list[CaseRecord]:
  """Reads the case records of the data set at ``src`` in ``layout``.

  Args:
    layout: one of ``LAYOUTS`` (atlas, atlas2, msd, nnunet, manifest, phantom).
    src: the data set folder (or the manifest file).

  Returns:
    The records in a stable order (sorted by folder/file, or manifest order). Duplicate ids are kept, so
    the validator can report them.
  """
  if layout not in READERS:
    raise DataError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}{closest(layout, LAYOUTS)}")
  if not os.path.exists(src):
    raise DataError(f"{src}: data set not found")
  return READERS.get(layout)(src)
