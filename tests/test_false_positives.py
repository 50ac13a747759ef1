"""Where false-positive tumours lie: components named by the annotated structure under them, and the
per-structure masks put on the canonical grid from any orientation."""

import nibabel as nib
import numpy as np
import pytest

from jaxseg.infer import false_positives as fp


def _case():
  shape = (20, 16, 12)
  liver = np.zeros(shape, bool)
  liver[2:10, 2:14, 2:10] = True
  pancreas = np.zeros(shape, bool)
  pancreas[12:18, 4:10, 3:8] = True
  lesion = np.zeros(shape, bool)                  # another organ's real lesion, inside the pancreas
  lesion[14:17, 5:8, 4:7] = True
  pred = np.zeros(shape, bool)
  pred[4:6, 4:6, 4:6] = True                      # in the liver parenchyma
  pred[13:17, 5:9, 4:7] = True                    # on the pancreas and its lesion
  pred[18:20, 12:15, 8:11] = True                 # in no annotated structure
  pred[9:12, 8:10, 5:7] = True                    # across the liver's edge: one row in, two out
  return shape, {"liver": liver, "pancreas": pancreas, "pancreas_tumor": lesion}, pred


def test_components_are_named_by_the_structure_holding_most_of_them():
  _, structures, pred = _case()
  rows = fp.component_anatomy(pred, structures, "liver", (2.0, 2.0, 3.0))
  assert len(rows) == 4
  by_volume = {round(r["volume_mm3"]): r for r in rows}
  inside = by_volume[8 * 12]
  assert inside["structure"] == "liver" and inside["share_in_organ"] == 1.0 and not inside["on_lesion"]
  on_pancreas = by_volume[48 * 12]
  assert on_pancreas["structure"] == "pancreas" and on_pancreas["on_lesion"]
  assert on_pancreas["structure_share"] == 1.0 and on_pancreas["share_in_organ"] == 0.0
  outside = by_volume[18 * 12]
  assert outside["structure"] == fp.NONE and outside["structure_share"] == 1.0
  (edge,) = [r for r in rows if 0 < r["share_in_organ"] < 1]
  # Row 9 in the liver, rows 10-11 outside it and before the pancreas (from row 12): a third inside.
  assert edge["share_in_organ"] == pytest.approx(1 / 3) and edge["structure"] == fp.NONE
  # With the tumour probability, each component's mean and largest probability.
  prob = np.where(pred, 0.6, 0.1)
  prob[4, 4, 4] = 0.95
  with_prob = fp.component_anatomy(pred, structures, "liver", (2.0, 2.0, 3.0), tumor_prob=prob)
  inside_p = [r for r in with_prob if r["share_in_organ"] == 1.0][0]
  assert inside_p["max_prob"] == pytest.approx(0.95) and inside_p["mean_prob"] == pytest.approx(0.6 + 0.35 / 8)
  assert all(r["max_prob"] == pytest.approx(0.6) for r in with_prob if r is not inside_p)
  # With the annotated tumour, which components hit it.
  gt = np.zeros_like(pred)
  gt[4, 4, 4] = True
  flagged = fp.component_anatomy(pred, structures, "liver", (2.0, 2.0, 3.0), gt_tumor=gt)
  assert [r["true_positive"] for r in flagged] == [r["share_in_organ"] == 1.0 for r in flagged]
  # The detection's volume floor applies: the smallest components are not counted.
  assert len(fp.component_anatomy(pred, structures, "liver", (2.0, 2.0, 3.0), min_volume_mm3=100)) == 3
  table = fp.summarize(rows)
  assert sum(s["components"] for s in table) == 4 and table[0]["structure"] == fp.NONE
  assert any(s["structure"] == "pancreas" for s in table)


def test_kidney_halves_count_as_the_organ_and_its_own_tumour_is_no_other_lesion():
  shape, structures, pred = _case()
  structures = {"kidney_left": structures["liver"], "kidney_tumor": structures["liver"].copy()}
  rows = fp.component_anatomy(pred, structures, "kidney", (1.0, 1.0, 1.0))
  inside = [r for r in rows if r["share_in_organ"] == 1.0]
  assert len(inside) == 1 and not inside[0]["on_lesion"]


def test_structures_are_put_on_the_canonical_grid(tmp_path):
  _, structures, _ = _case()
  seg = tmp_path / "case" / "segmentations"
  seg.mkdir(parents=True)
  # Stored flipped along x (LAS): on the canonical RAS+ grid the mask comes back in its original place.
  affine = np.diag([-2.0, 2.0, 3.0, 1.0])
  for name, m in structures.items():
    nib.save(nib.Nifti1Image(m[::-1].astype(np.uint8), affine), str(seg / f"{name}.nii.gz"))
  out = fp.structures_on_grid(str(tmp_path / "case"), (2.0, 2.0, 3.0), structures["liver"].shape)
  assert set(out) == set(structures)
  for name, m in structures.items():
    np.testing.assert_array_equal(out[name], m)
  with pytest.raises(ValueError, match="liver.nii.gz: on the canonical grid"):
    fp.structures_on_grid(str(tmp_path / "case"), (2.0, 2.0, 3.0), (5, 5, 5))
  with pytest.raises(ValueError, match="no segmentations"):
    fp.structures_on_grid(str(tmp_path), (2.0, 2.0, 3.0), (5, 5, 5))
