"""The Grain loader: batch contract, sampling rules, padding, sharding, determinism, checkpointing; splits."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest
from absl import flags

from jaxseg.data import cache
from jaxseg.data.pipeline import crop, make_train_loader
from jaxseg.data.preprocess import preprocess_dataset
from jaxseg.data.split import first_tumor_cases, split_cases
from jaxseg.io.nifti import save_nifti

flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags.
ORGANS = ("liver", "kidney")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """6 cases of 24x24x16 voxels at 2 mm: 3 liver-tumour cases, 3 liver controls with kidneys."""
  root = str(tmp_path_factory.mktemp("src"))
  aff = np.diag([2.0, 2.0, 2.0, 1.0])
  for i in range(6):
    img = np.full((24, 24, 16), -100.0)
    liver = np.zeros((24, 24, 16), np.uint8)
    liver[2:14, 2:14, 2:14] = 1
    img[liver > 0] = 120
    kidney = np.zeros_like(liver)
    kidney[16:22, 16:22, 4:10] = 1
    img[kidney > 0] = 180
    d = os.path.join(root, f"c{i}")
    masks = {"liver": liver, "kidney_left": kidney}
    tum = np.zeros_like(liver)  # controls: an empty lesion mask (lesions annotated absent)
    if i < 3:
      tum[4 + i:7 + i, 4:7, 4:7] = 1
      img[tum > 0] = 60
    masks["liver_tumor"] = tum
    masks["kidney_tumor"] = np.zeros_like(liver)  # kidney lesions annotated absent: kidney controls
    save_nifti(img, aff, os.path.join(d, "ct.nii.gz"), np.int16)
    for k, m in masks.items():
      save_nifti(m, aff, os.path.join(d, "segmentations", f"{k}.nii.gz"), np.uint8)
  dst = str(tmp_path_factory.mktemp("cache"))
  preprocess_dataset("atlas", root, dst, (2.0, 2.0, 2.0), ORGANS, workers=1)
  return dst


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(organs=ORGANS, patch_size=(16, 16, 16), batch_size=4, fg_oversample=0.33,
                                     synth_fraction=0.5, num_real_tumor_cases=-1, split_seed=0, num_workers=0,
                                     organ_centred=0.0,
                                     prefetch=2))
  c.update(kw)
  return c


def _ids(cache_dir):
  return [c["case_id"] for c in cache.list_cases(cache_dir)]


def test_batch_contract_and_sampling_rules(cache_dir):
  it = make_train_loader(_cfg(fg_oversample=1.0), cache_dir, _ids(cache_dir), seed=0)
  batches = [next(it) for _ in range(10)]
  b = batches[0]
  assert b["image"].shape == (4, 16, 16, 16) and b["image"].dtype == np.int16
  assert b["label"].shape == (4, 16, 16, 16) and b["label"].dtype == np.uint8
  assert b["synth_organ"].shape == (4,) and b["synth_organ"].dtype == np.int32
  assert b["spacing"].shape == (4, 3) and b["spacing"].dtype == np.float32
  so = np.concatenate([x["synth_organ"] for x in batches])
  assert 0.3 < (so >= 0).mean() < 0.7  # synth_fraction 0.5
  for x in batches:
    for img, lab, s in zip(x["image"], x["label"], x["synth_organ"]):
      if s >= 0:  # control patch: centred on an organ voxel of that organ
        assert lab[8, 8, 8] == 2 * s + 1
      else:  # tumour case with fg_oversample 1: the tumour is in the patch
        assert (lab == 2).any()
  # Padding: the liver corner crop leaves the volume; padded voxels are air and background.
  assert (np.concatenate([x["image"] for x in batches]) == -1024).any()


def test_fg_oversample_zero_and_synth_fraction_zero(cache_dir):
  it = make_train_loader(_cfg(fg_oversample=0.0, synth_fraction=0.0), cache_dir, _ids(cache_dir), seed=1)
  batches = [next(it) for _ in range(8)]
  assert all((x["synth_organ"] == -1).all() for x in batches)
  with_tumour = np.mean([(lab == 2).any() for x in batches for lab in x["label"]])
  assert with_tumour < 0.9  # uniform crops miss the small tumours some of the time


def test_control_patches_are_placed_like_tumour_patches(cache_dir):
  """Control patches follow the tumour cases' rule with the synthesis organ for the tumour: with
  fg_oversample 0 and organ_centred 0 they are uniform, so some miss every organ (a run on controls alone
  must see the abdomen away from the organ); with fg_oversample 1 every one is centred on its organ."""
  uniform = make_train_loader(_cfg(fg_oversample=0.0, synth_fraction=1.0), cache_dir, _ids(cache_dir), seed=3)
  patches = [(lab, s) for x in (next(uniform) for _ in range(8)) for lab, s in zip(x["label"], x["synth_organ"])]
  assert all(s >= 0 for _, s in patches)
  assert any(lab[8, 8, 8] != 2 * s + 1 for lab, s in patches)
  assert any(not (lab == 2 * s + 1).any() for lab, s in patches)   # no organ voxel: no synthetic tumour
  centred = make_train_loader(_cfg(fg_oversample=1.0, synth_fraction=1.0), cache_dir, _ids(cache_dir), seed=3)
  assert all(lab[8, 8, 8] == 2 * s + 1 for x in (next(centred) for _ in range(4))
             for lab, s in zip(x["label"], x["synth_organ"]))


def test_organ_centred_patches_of_tumour_cases(cache_dir):
  it = make_train_loader(_cfg(fg_oversample=0.0, synth_fraction=0.0, organ_centred=1.0), cache_dir, _ids(cache_dir),
                         seed=2)
  centres = [lab[8, 8, 8] for x in (next(it) for _ in range(6)) for lab in x["label"]]
  assert all(c in (1, 2, 3, 4) for c in centres)  # an organ (or its tumour) voxel, never background
  uniform = make_train_loader(_cfg(fg_oversample=0.0, synth_fraction=0.0), cache_dir, _ids(cache_dir), seed=2)
  assert any(lab[8, 8, 8] == 0 for x in (next(uniform) for _ in range(6)) for lab in x["label"])


def test_crop_pads_outside():
  v = np.arange(27, dtype=np.int16).reshape(3, 3, 3)
  c = crop(v, (-1, 1, 2), (3, 3, 3), np.int16(-1024))
  assert c.shape == (3, 3, 3) and c[0].min() == -1024 and c[1, 0, 0] == v[0, 1, 2] and c[1, 2, 0] == -1024


def test_process_shards_are_disjoint_and_cover_the_stream(cache_dir):
  one = make_train_loader(_cfg(batch_size=4), cache_dir, _ids(cache_dir), seed=3)
  p0 = make_train_loader(_cfg(batch_size=4), cache_dir, _ids(cache_dir), seed=3, process_index=0, process_count=2)
  p1 = make_train_loader(_cfg(batch_size=4), cache_dir, _ids(cache_dir), seed=3, process_index=1, process_count=2)
  full = [next(one) for _ in range(2)]
  a, b = next(p0), next(p1)
  assert a["image"].shape[0] == 2
  stream = np.concatenate([x["image"] for x in full])
  np.testing.assert_array_equal(np.concatenate([a["image"], b["image"]]), full[0]["image"])
  np.testing.assert_array_equal(next(p0)["image"], stream[4:6])


def test_same_batches_for_any_worker_count_and_state_restores(cache_dir):
  ref = make_train_loader(_cfg(), cache_dir, _ids(cache_dir), seed=7)
  expect = [next(ref) for _ in range(4)]
  it = make_train_loader(_cfg(num_workers=2), cache_dir, _ids(cache_dir), seed=7)
  try:
    got = [next(it) for _ in range(2)]
    state = it.get_state()
    got += [next(it) for _ in range(2)]
    for e, g in zip(expect, got):
      np.testing.assert_array_equal(e["image"], g["image"])
      np.testing.assert_array_equal(e["synth_organ"], g["synth_organ"])
  finally:
    it.close()
  again = make_train_loader(_cfg(num_workers=0), cache_dir, _ids(cache_dir), seed=7)
  next(again)
  s = again.get_state()
  third = [next(again) for _ in range(2)]
  again.set_state(s)
  np.testing.assert_array_equal(next(again)["label"], third[0]["label"])
  del state


def test_orbax_composite_roundtrip_of_the_iterator(cache_dir, tmp_path):
  grain = pytest.importorskip("grain")
  ocp = pytest.importorskip("orbax.checkpoint")
  it = make_train_loader(_cfg(), cache_dir, _ids(cache_dir), seed=5)
  next(it)
  mgr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  mgr.save(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
  mgr.wait_until_finished()
  want = next(it)
  fresh = make_train_loader(_cfg(), cache_dir, _ids(cache_dir), seed=5)
  mgr.restore(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(next(fresh)["image"], want["image"])
  mgr.close()


def test_split_is_deterministic_stratified_and_nested(cache_dir):
  cases = cache.list_cases(cache_dir)
  tr, va = split_cases(cases, 2, 0, ORGANS)
  assert (tr, va) == split_cases(cases, 2, 0, ORGANS) and not set(tr) & set(va)
  by = {c["case_id"]: c for c in cases}
  assert any(by[v]["organs"]["liver"] == "tumor" for v in va)
  assert any(by[v]["organs"]["liver"] == "control" for v in va)
  fake = [{"case_id": f"t{i:03d}", "organs": {"liver": "tumor"}} for i in range(200)]
  fake += [{"case_id": f"h{i:03d}", "organs": {"liver": "control"}} for i in range(20)]
  ids = [c["case_id"] for c in fake]
  n50 = first_tumor_cases(fake, ids, 50, 0, ("liver",))
  n100 = first_tumor_cases(fake, ids, 100, 0, ("liver",))
  assert set(n50) < set(n100) and len(n50) == 70 and len(n100) == 120
  assert first_tumor_cases(fake, n100, 100, 0, ("liver",)) == n100  # idempotent
  assert first_tumor_cases(fake, ids, -1, 0, ("liver",)) == sorted(ids)
  # The loader applies num_real_tumor_cases: with 0 real tumour cases only control patches remain.
  it = make_train_loader(_cfg(num_real_tumor_cases=0, synth_fraction=0.0), cache_dir, _ids(cache_dir), seed=0)
  assert all((next(it)["synth_organ"] >= 0).all() for _ in range(3))


def test_reference_mode_sites_on_the_whole_case_and_sharding(cache_dir):
  """Reference mode: every sample carries fixed-size site arrays (zeros off control samples); control sites
  are drawn on the whole case, so with a patch smaller than the organ some lie outside their patch, and
  those inside are organ voxels; global_batch splits the new fields like the others."""
  from jaxseg import parallel
  from jaxseg.default_config import get_config
  from jaxseg.synth.batch import organ_specs, slot_count
  synth = get_config().synth
  synth.mode = "reference"
  synth.min_spacing_mm = 2.0
  specs = organ_specs(ORGANS, synth)
  slots = slot_count(specs)
  per_organ = [sum(g.slots for g in sp.groups) for sp in specs]
  it = make_train_loader(_cfg(patch_size=(8, 8, 8), synth_fraction=0.5), cache_dir, _ids(cache_dir), seed=4,
                         synth_cfg=synth)
  outside = inside = controls = 0
  for _ in range(6):
    b = next(it)
    assert b["synth_centers"].shape == (4, slots, 3) and b["synth_centers"].dtype == np.int32
    assert b["synth_center_ok"].shape == (4, slots) and b["synth_center_ok"].dtype == np.uint8
    for i in range(4):
      ok, c = b["synth_center_ok"][i] > 0, b["synth_centers"][i]
      if b["synth_organ"][i] < 0:
        assert not ok.any() and not c.any()
        continue
      controls += 1
      n = per_organ[b["synth_organ"][i]]
      assert ok[:n].all() and not ok[n:].any()
      c = c[:n]
      inn = ((c >= 0) & (c < 8)).all(axis=1)
      outside += int((~inn).sum())
      inside += int(inn.sum())
      organ_label = 2 * int(b["synth_organ"][i]) + 1
      assert (b["label"][i][tuple(c[inn].T)] == organ_label).all()   # voxels of the sample's organ
  assert controls and outside > 0 and inside > 0
  mesh = parallel.make_mesh()
  g = parallel.global_batch(b, mesh)
  assert g["synth_centers"].shape == (4, slots, 3) and g["synth_center_ok"].shape == (4, slots)
  # The patch rule would put every site inside its patch: this is what tells the two placements apart.
  patch = get_config().synth
  patch.min_spacing_mm = 2.0
  b = next(make_train_loader(_cfg(patch_size=(8, 8, 8), synth_fraction=1.0), cache_dir, _ids(cache_dir), seed=4,
                             synth_cfg=patch))
  assert b["synth_centers"].shape == (4, slots, 3) and not b["synth_center_ok"].any()
