"""Partial labels: layouts record annotated classes, the cache and loader carry them, the loss ignores the rest.

A tiny AbdomenAtlas-layout set mixes liver-only and kidney-only annotated cases (every case shows both
organs in its image); it is preprocessed, loaded through the production loader and trained for two steps.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import labels as labels_lib
from jaxseg.data import cache
from jaxseg.data.preprocess import preprocess_dataset
from jaxseg.io import layouts
from jaxseg.io.nifti import save_nifti
from jaxseg.train import losses

sys.path.insert(0, os.path.dirname(__file__))
from tiny_config import tiny_config  # noqa: E402

ORGANS = ("liver", "kidney")
AFF = np.diag([2.0, 2.0, 2.0, 1.0])
SHAPE = (20, 20, 16)


def _case(root, name, masks):
  img = np.full(SHAPE, -100.0)
  liver = np.zeros(SHAPE, np.uint8)
  liver[2:10, 2:12, 2:12] = 1
  kidney = np.zeros(SHAPE, np.uint8)
  kidney[12:18, 12:18, 4:10] = 1
  tumor = np.zeros(SHAPE, np.uint8)
  tumor[4:7, 4:7, 4:7] = 1
  img[liver > 0], img[kidney > 0] = 120, 180
  arrays = {"liver": liver, "kidney_left": kidney, "liver_tumor": tumor, "liver_tumor_empty": 0 * tumor,
            "kidney_tumor_empty": 0 * tumor}
  if "liver_tumor" in masks:
    img[tumor > 0] = 60
  d = os.path.join(root, name)
  save_nifti(img, AFF, os.path.join(d, "ct.nii.gz"), np.int16)
  for m in masks:
    save_nifti(arrays[m], AFF, os.path.join(d, "segmentations", m.replace("_empty", "") + ".nii.gz"), np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("partial"))
  _case(root, "L_tumor", ["liver", "liver_tumor"])            # liver-only set, a real tumour
  _case(root, "L_control", ["liver", "liver_tumor_empty"])    # lesions annotated absent: a control
  _case(root, "L_organ", ["liver"])                           # lesions not annotated: never a control
  _case(root, "K_control", ["kidney_left", "kidney_tumor_empty"])  # kidney-only set
  dst = str(tmp_path_factory.mktemp("partial_cache"))
  report = preprocess_dataset("atlas", root, dst, (2.0, 2.0, 2.0), ORGANS, workers=1)
  assert not report.skipped, report.summary()
  return root, dst


def test_layout_and_cache_record_annotated_classes(dataset):
  root, dst = dataset
  recs = {r.case_id: r for r in layouts.read_layout("atlas", root)}
  assert recs["L_organ"].organs == {"liver": layouts.ORGAN_ONLY}
  assert recs["L_control"].annotated_structures() == {"liver", "liver_tumor"}
  by = {c["case_id"]: c for c in cache.list_cases(dst)}
  assert by["L_tumor"]["organs"] == {"liver": "tumor", "kidney": "absent"}
  assert by["L_control"]["organs"] == {"liver": "control", "kidney": "absent"}
  # A missing lesion file is not a lesion-free liver: no control, and the tumour class is unannotated.
  assert by["L_organ"]["organs"] == {"liver": "organ_only", "kidney": "absent"}
  assert by["K_control"]["organs"] == {"liver": "absent", "kidney": "control"}
  mask = lambda cid: cache.annotated_mask(cache.load_meta(dst, cid), ORGANS).tolist()
  assert mask("L_tumor") == mask("L_control") == [1, 1, 1, 0, 0]
  assert mask("L_organ") == [1, 1, 0, 0, 0]
  assert mask("K_control") == [1, 0, 0, 1, 1]
  # Old caches (no annotated_labels): every class of a present organ counts as annotated.
  assert cache.annotated_mask({"organs": {"liver": "control", "kidney": "absent"}}, ORGANS).tolist() == [1, 1, 1, 0, 0]
  with pytest.raises(ValueError, match="annotated_labels"):
    cache.annotated_mask({"case_id": "x", "annotated_labels": [0, 7]}, ORGANS)


def test_phantom_sets_annotate_lesions_exhaustively(tmp_path):
  _case(str(tmp_path), "P1", ["liver", "kidney_left"])
  with pytest.raises(Exception, match="phantoms.json"):
    layouts.read_layout("phantom", str(tmp_path))
  (tmp_path / layouts.PHANTOM_MARKER).write_text("{}")
  (rec,) = layouts.read_layout("phantom", str(tmp_path))
  assert rec.organs == {"liver": "control", "kidney": "control"}
  assert rec.annotated_structures() == {"liver", "liver_tumor", "kidney", "kidney_tumor"}


def _loss_and_grad(logits, labels, annotated, batch_dice=False):
  def f(z):
    return losses.segmentation_loss(z, labels, 5, 1.0, 1.0, batch_dice, annotated=annotated)
  return jax.value_and_grad(f)(logits)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_loss_never_pushes_an_unannotated_organ_to_background(batch_dice):
  """Liver-only sample 0 and kidney-only sample 1; each image holds both organs."""
  labels = np.zeros((2, 8, 8, 8), np.int32)
  liver, kidney = (slice(0, 4), slice(0, 4)), (slice(4, 8), slice(4, 8))
  labels[0][liver] = 1
  labels[0, 1:3, 1:3, 1:3] = 2  # a liver tumour
  labels[1][kidney] = 3          # sample 1 annotates only the kidney; its liver is labelled background
  annotated = jnp.asarray([[1, 1, 1, 0, 0], [1, 0, 0, 1, 1]], jnp.uint8)
  logits = jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 5)) * 2.0
  loss, g = _loss_and_grad(logits, labels, annotated, batch_dice)
  assert np.isfinite(float(loss))
  p = jax.nn.softmax(logits, -1)
  # Sample 0's kidney (unannotated) voxels: d loss / d z_kidney is proportional to p_kidney exactly as
  # d loss / d z_background is to p_background: moving mass between them does not change the loss.
  k0 = (0,) + kidney
  np.testing.assert_allclose(g[k0][..., 3] * p[k0][..., 0], g[k0][..., 0] * p[k0][..., 3], atol=1e-9)
  # The same for sample 1's liver voxels (liver and liver tumour merge into background).
  l1 = (1,) + liver
  np.testing.assert_allclose(g[l1][..., 1] * p[l1][..., 0], g[l1][..., 0] * p[l1][..., 1], atol=1e-9)
  # Stronger: swapping the background and unannotated-organ logits everywhere leaves the loss unchanged.
  swapped = logits.at[0, ..., 0].set(logits[0, ..., 3]).at[0, ..., 3].set(logits[0, ..., 0])
  swapped = swapped.at[1, ..., 0].set(logits[1, ..., 1]).at[1, ..., 1].set(logits[1, ..., 0])
  np.testing.assert_allclose(float(_loss_and_grad(swapped, labels, annotated, batch_dice)[0]), float(loss),
                             rtol=1e-5)
  # The plain loss (every class annotated) does push the unannotated liver of sample 1 to background.
  _, g_full = _loss_and_grad(logits, labels, jnp.ones((2, 5), jnp.uint8), batch_dice)
  assert float(jnp.mean(g_full[l1][..., 1])) > 0  # gradient descent lowers the liver logit there
  full_swapped = float(_loss_and_grad(swapped, labels, jnp.ones((2, 5), jnp.uint8), batch_dice)[0])
  assert abs(full_swapped - float(_loss_and_grad(logits, labels, jnp.ones((2, 5), jnp.uint8), batch_dice)[0])) > 1e-3


def test_all_annotated_equals_the_plain_loss():
  labels = jax.random.randint(jax.random.key(1), (2, 4, 4, 4), 0, 5)
  logits = jax.random.normal(jax.random.key(2), (2, 4, 4, 4, 5))
  for bd in (False, True):
    plain = losses.segmentation_loss(logits, labels, 5, 1.0, 1.0, bd)
    marg = losses.partial_label_loss(logits, jax.nn.one_hot(labels, 5), jnp.ones((2, 5)), 1.0, 1.0, bd)
    np.testing.assert_allclose(float(marg), float(plain), rtol=1e-5)


def test_unannotated_tumour_merges_into_its_organ():
  m = np.asarray(losses.merge_matrix(jnp.asarray([[1, 1, 0, 0, 0]])))[0]
  assert m[1, 2] == 1 and m[0, 2] == 1  # liver tumour counts as liver or background
  assert m[0, 3] == 1 and m[0, 4] == 1 and m[1, 3] == 0  # kidney classes count as background only
  np.testing.assert_array_equal(np.diag(m), 1)


def test_loader_delivers_the_mask(dataset):
  """(Training on this mix through the production loop: tests/test_tb_log.py.)"""
  from jaxseg.data.pipeline import make_train_loader
  _, dst = dataset
  c = tiny_config()
  c.data.organs = ORGANS
  c.data.spacing = (2.0, 2.0, 2.0)
  c.data.batch_size = 4
  c.data.synth_fraction = 0.5
  ids = [x["case_id"] for x in cache.list_cases(dst)]
  it = make_train_loader(c.data, dst, ids, seed=0)
  batch = next(it)
  assert batch["annotated"].shape == (4, 5) and batch["annotated"].dtype == np.uint8
  # Controls are sampled only where lesions were annotated absent (never L_organ's liver).
  for s, a in zip(batch["synth_organ"], batch["annotated"]):
    if s >= 0:
      assert a[labels_lib.tumor_label(ORGANS, ORGANS[s])] == 1
  from jaxseg.data.pipeline import sampling_units
  real, control = sampling_units(cache.list_cases(dst), ids, ORGANS)
  assert real == [("L_tumor", -1)]
  assert control == [("K_control", 1), ("L_control", 0)]  # L_organ's liver may hold unannotated lesions


def test_evaluation_skips_unannotated_labels(dataset):
  from jaxseg.infer.evaluate import _case_labels
  from jaxseg.metrics import evaluation
  _, dst = dataset
  specs = evaluation.labels_for_organs(ORGANS)
  names = lambda cid: [l.name for l in _case_labels(specs, ORGANS, cache.load_meta(dst, cid))]
  assert names("L_control") == ["liver", "liver_tumor"]  # a lesion-free liver: scored as a control
  assert names("L_organ") == ["liver"]                   # its lesions are unknown: not scored
  assert names("K_control") == ["kidney", "kidney_tumor"]
