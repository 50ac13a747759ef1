"""Post-processing rules, each on and off, with margins in mm on anisotropic grids."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from jaxseg.config_checks import resolve_config
from jaxseg.default_config import get_config as default_config
from jaxseg.infer.postprocess import postprocess


def _cfg(largest=True, margin=5.0, min_vol=0.0, min_conf=0.0):
  return ml_collections.ConfigDict({"largest_organ_component": largest, "tumor_in_organ_margin_mm": margin,
                                    "min_tumor_volume_mm3": min_vol, "min_tumor_confidence": min_conf})


def _liver():
  lab = np.zeros((40, 30, 20), np.uint8)
  lab[5:25, 5:25, 5:15] = 1         # the organ
  return lab


def test_largest_organ_component_keeps_the_organ_and_its_tumour():
  lab = _liver()
  lab[10:14, 10:14, 5:15] = 2       # a tumour through the organ: organ still one component with it
  lab[30:33, 2:4, 2:4] = 1          # a stray organ blob
  out = postprocess(lab, (1, 1, 1), ("liver",), _cfg(margin=-1))
  assert (out[30:33, 2:4, 2:4] == 0).all()
  assert (out[10:14, 10:14, 5:15] == 2).all() and (out[5:25, 5:25, 5:15] > 0).all()
  same = postprocess(lab, (1, 1, 1), ("liver",), _cfg(largest=False, margin=-1))
  np.testing.assert_array_equal(same, lab)


def test_tumour_inside_or_within_margin_is_kept_far_is_dropped():
  lab = _liver()
  lab[10:13, 10:13, 8:11] = 2            # inside the organ (no organ voxel of its own)
  lab[30:32, 10:12, 8:10] = 2            # 6 voxels (7.2 mm at 1.2 mm) beyond the organ
  sp = (1.2, 1.0, 1.0)
  out = postprocess(lab, sp, ("liver",), _cfg(largest=False, margin=7.0))
  assert (out[10:13, 10:13, 8:11] == 2).all() and (out[30:32, 10:12, 8:10] == 2).all()
  out = postprocess(lab, sp, ("liver",), _cfg(largest=False, margin=4.0))
  assert (out[10:13, 10:13, 8:11] == 2).all()
  assert (out[30:32, 10:12, 8:10] == 0).all()    # dropped, not touching the organ: background
  out = postprocess(lab, sp, ("liver",), _cfg(largest=False, margin=-1.0))
  np.testing.assert_array_equal(out, lab)


def test_min_tumour_volume_in_mm3():
  lab = _liver()
  lab[10, 10, 10] = 2                    # 1 voxel = 3 mm^3 at this spacing: dropped, becomes organ
  lab[15:17, 15:17, 10:12] = 2           # 8 voxels = 24 mm^3: kept
  sp = (1.0, 1.0, 3.0)
  out = postprocess(lab, sp, ("liver",), _cfg(min_vol=10.0))
  assert out[10, 10, 10] == 1 and (out[15:17, 15:17, 10:12] == 2).all()
  out = postprocess(lab, sp, ("liver",), _cfg(min_vol=30.0))
  assert (out[15:17, 15:17, 10:12] == 1).all()


def test_organs_are_independent_in_a_multi_organ_label_space():
  lab = np.zeros((40, 30, 20), np.uint8)
  lab[2:12, 2:12, 2:12] = 1              # liver
  lab[25:35, 15:25, 5:15] = 3            # pancreas
  lab[28:30, 18:20, 8:10] = 4            # pancreas tumour inside the pancreas
  lab[5:7, 5:7, 5:7] = 4                 # a "pancreas tumour" inside the liver: far from the pancreas
  out = postprocess(lab, (1, 1, 1), ("liver", "pancreas"), _cfg(margin=2.0))
  assert (out[28:30, 18:20, 8:10] == 4).all()
  assert (out[5:7, 5:7, 5:7] == 0).all()  # dropped; it touches no pancreas voxel
  assert out.dtype == np.uint8 and lab[5, 5, 5] == 4  # input untouched


def test_min_tumour_confidence_drops_components_by_their_mean_probability():
  lab = _liver()
  lab[8:12, 8:12, 8:12] = 2              # a confident lesion
  lab[16:20, 16:20, 8:12] = 2            # a hesitant one: one voxel at 0.99 does not save it
  probs = np.zeros(lab.shape + (1,), np.float16)
  probs[8:12, 8:12, 8:12] = 0.9
  probs[16:20, 16:20, 8:12] = 0.6
  probs[16, 16, 8] = 0.99
  out = postprocess(lab, (1, 1, 1), ("liver",), _cfg(min_conf=0.7), probs)
  assert (out[8:12, 8:12, 8:12] == 2).all()
  assert (out[16:20, 16:20, 8:12] == 1).all()   # inside the organ: becomes organ
  np.testing.assert_array_equal(postprocess(lab, (1, 1, 1), ("liver",), _cfg(min_conf=0.5), probs), lab)
  with pytest.raises(ValueError, match="tumour probabilities"):
    postprocess(lab, (1, 1, 1), ("liver",), _cfg(min_conf=0.7))
  with pytest.raises(ValueError, match="shape"):
    postprocess(lab, (1, 1, 1), ("liver",), _cfg(min_conf=0.7), probs[..., 0])


def test_a_config_saved_before_the_confidence_rule_has_it_off():
  lab = _liver()
  lab[8:12, 8:12, 8:12] = 2
  saved = default_config().to_dict()
  del saved["eval"]["min_tumor_confidence"]  # As config.json was written before the rule existed.
  old = resolve_config(ml_collections.ConfigDict(saved))
  assert old.eval.min_tumor_confidence == 0.0
  np.testing.assert_array_equal(postprocess(lab, (1, 1, 1), ("liver",), old.eval), lab)
