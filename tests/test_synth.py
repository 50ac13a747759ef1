"""Tests of the tumour synthesizer against docs/SYNTHESIS.md, over many keys, at tiny patch sizes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.synth import apply_synthesis, default_profiles_config, ops, synthesize
from jaxseg.synth import reference_numpy as ref
from jaxseg.synth import spec as spec_lib
from jaxseg.synth import synthesizer as sy

N = 32


def _phantom(n=N, seed=0):
  g = (np.arange(n) - (n - 1) / 2) / (n / 2)
  x, y, z = np.meshgrid(g, g, g, indexing="ij")
  organ = (x / 0.85) ** 2 + (y / 0.75) ** 2 + (z / 0.8) ** 2 < 1.0
  img = np.where(organ, 100.0, -100.0) + np.random.default_rng(seed).normal(0, 8, organ.shape)
  return img.astype(np.float32), organ


def _render_many(spec, spacing, keys, n=N):
  img, organ = _phantom(n)

  def one(k):
    d = sy.draw(k, spec, img.shape)
    out, tumor, ex = sy.render(jnp.asarray(img), jnp.asarray(organ), jnp.asarray(spacing, jnp.float32), d, spec)
    return out, tumor, ex["edge"], ex["centers"], ex["candidates"], d

  return img, organ, jax.jit(jax.vmap(one))(keys)


def test_counts_per_class_follow_profile():
  spec = spec_lib.make_spec(default_profiles_config().liver, name="liver")
  d = jax.jit(jax.vmap(lambda k: sy.draw(k, spec, (8, 8, 8))))(jax.random.split(jax.random.key(0), 400))
  cls = np.asarray(d["class_index"])
  assert set(cls) == set(range(5))
  for g, gd in zip(spec.groups, d["groups"]):
    counts = np.asarray(gd["active"]).sum(axis=1)
    for c in range(5):
      lo, hi = g.count_lo[c], g.count_hi[c]
      sel = counts[cls == c]
      assert sel.min() >= lo and sel.max() <= hi, (g.name, spec.classes[c])
      if hi > lo:
        assert sel.min() == lo and sel.max() == hi, (g.name, spec.classes[c], sel)
    ax = np.asarray(gd["axes_mm"]) / g.radius_mm
    assert ax.min() >= 0.75 and ax.max() <= 1.25 and ax.max() - ax.min() > 0.4


def _one_small_tumour_fn():
  p = default_profiles_config().liver
  p.classes = ("small",)
  p.counts.small = (1, 1)
  p.elastic_sigma_mm.small = (0.0, 0.0)
  spec = spec_lib.make_spec(p, name="liver")
  img = jnp.zeros((N, N, N), jnp.float32)
  organ = jnp.ones((N, N, N), bool)

  def one(k, sp):
    d = sy.draw(k, spec, img.shape)
    return sy.render(img, organ, sp, d, spec)[1], d["groups"][0]["axes_mm"][0]

  return jax.jit(jax.vmap(one, in_axes=(0, None)))


def test_semi_axes_in_mm_at_two_spacings():
  fn = _one_small_tumour_fn()   # one compile: the spacing is an argument
  for spacing in ((1.0, 1.0, 1.0), (2.0, 2.0, 3.0)):
    tumors, axes = fn(jax.random.split(jax.random.key(1), 6), jnp.asarray(spacing, jnp.float32))
    for t, a in zip(np.asarray(tumors), np.asarray(axes)):
      idx = np.nonzero(t)
      for k in range(3):
        lo, hi = idx[k].min(), idx[k].max()
        if lo == 0 or hi == N - 1:
          continue  # cut by the patch
        extent = (hi - lo + 1) * spacing[k]
        assert abs(extent - 2 * a[k]) <= 2 * spacing[k], (spacing, k, extent, a[k])


def test_centres_clipping_contrast_and_locality():
  spec = spec_lib.make_spec(default_profiles_config().liver, name="liver")
  img, organ, (out, tumor, edge, centers, cand, d) = _render_many(spec, (1.5, 1.5, 2.0),
                                                                   jax.random.split(jax.random.key(2), 12))
  out, tumor, edge, centers, cand = map(np.asarray, (out, tumor, edge, centers, cand))
  zs = np.nonzero(organ.any(axis=(0, 1)))[0]
  zlo, zhi = zs.min() + 0.3 * (zs.max() - zs.min()), zs.min() + 0.7 * (zs.max() - zs.min())
  for i in range(len(out)):
    c = centers[i][centers[i][:, 0] >= 0]
    assert len(c) > 0
    assert cand[i][tuple(c.T)].all()                      # centre among candidates (eroded organ)
    assert ((c[:, 2] >= zlo - 1e-3) & (c[:, 2] <= zhi + 1e-3)).all()  # middle 40% of the axial extent
    assert not (tumor[i] & ~organ).any()                  # clipped to the organ
    diff = out[i] - img
    assert (diff[~organ] == 0).all()                      # unchanged outside the organ
    assert (np.abs(diff[edge[i] < 1e-4]) < 0.05).all()   # unchanged away from the soft edge
    assert diff.min() >= -145.0 - 1e-3 and diff.max() <= 1e-3   # hypodense, at most the largest delta
    delta = float(d["delta"][i])
    assert 65.0 <= delta <= 145.0
    assert -diff.min() <= delta + 1e-3
  assert tumor.any(axis=(1, 2, 3)).all()


def test_colon_margin_and_kidney_exophytic():
  prof = default_profiles_config()
  img, organ, (out, tumor, *_rest) = _render_many(spec_lib.make_spec(prof.colon, name="colon"), (2.0, 2.0, 2.0),
                                                  jax.random.split(jax.random.key(3), 6))
  from scipy import ndimage
  allowed = ndimage.binary_dilation(organ, np.ones((11, 11, 11), bool))   # 10 mm at 2 mm: 5 voxels each side
  assert not (np.asarray(tumor) & ~allowed).any()
  assert (np.asarray(tumor) & ~organ).any()   # wall thickening does grow outward
  kspec = spec_lib.make_spec(prof.kidney, name="kidney", size_class="large")
  img, organ, (out, tumor, *_rest) = _render_many(kspec, (3.0, 3.0, 3.0), jax.random.split(jax.random.key(4), 8))
  outside = (np.asarray(tumor) & ~organ).any(axis=(1, 2, 3))
  assert 0 < outside.sum() < len(outside)   # exophytic about half of the time


def test_bernoulli_mean_equals_the_float_comparison():
  """The integer threshold fires exactly the bytes with (k + 0.5) / 256 < p, for p on and next to every
  boundary (k + 0.5) / 256, at 0 and 1, and beyond [0, 1]."""
  edges = (np.arange(257) + 0.5) / 256.0
  p = np.concatenate([np.arange(257) / 256.0, edges, np.nextafter(edges.astype(np.float32), np.float32(2)),
                      np.nextafter(edges.astype(np.float32), np.float32(-1)), [-0.1, 1.3]]).astype(np.float32)
  bits = np.broadcast_to(np.arange(256, dtype=np.uint8), (p.size, 256))
  want = ((bits.astype(np.float32) + 0.5) < (p * np.float32(256.0))[:, None]).mean(axis=1)
  got = np.asarray(jax.jit(sy.bernoulli_mean)(jnp.asarray(bits), jnp.asarray(p)))
  assert (got == want).all() and 0 < want.mean() < 1


def test_centre_candidates_equal_the_numpy_rule_including_fallbacks():
  """The first non-empty axial range of the rule's voxels, else the whole organ, as reference_numpy's: on
  organs thin enough that erosion empties some or all ranges (the fallbacks), at two spacings, every profile."""
  rng = np.random.default_rng(0)
  masks = [np.zeros((16, 16, 12), bool)]
  for k in range(5):
    m = np.zeros((40, 40, 30), bool)
    z0 = int(rng.integers(0, 20))
    m[8:12 + 6 * k, 10:16 + 4 * k, z0:z0 + int(rng.integers(3, 10))] = True
    m[30:33, 30:33, int(rng.integers(0, 30))] = True          # a thin extra slab: the organ's z range grows
    masks.append(m)
  levels_hit = set()
  for organ_name, prof in default_profiles_config().items():
    spec = spec_lib.make_spec(prof, name=organ_name, mode="patch")
    fn = jax.jit(lambda o, s, spec=spec: sy._pick_candidates(o, s, spec))  # pylint: disable=protected-access
    for m in masks:
      for sp in ((1.0, 1.0, 1.0), (0.8, 0.8, 2.5)):
        got = np.asarray(fn(jnp.asarray(m), jnp.asarray(sp, jnp.float32)))
        want = ref.candidates(m, np.asarray(sp), spec)
        assert (got == want).all(), (organ_name, sp)
        levels_hit.add("organ" if (want == m).all() else "range")
  assert levels_hit == {"organ", "range"}


@pytest.mark.parametrize("erode", [True, False])
def test_box_morphology_equals_scipy(erode):
  """Both forms of the erosion/dilation equal scipy's with the same box (radius cut to rmax, <= 0 a no-op,
  the border not eroding): shifted reads (rmax <= ops._SHIFTED_READS_UP_TO) on random masks with radii 0,
  past rmax and on a single-voxel axis; window sums of a scan at rmax 7 just past the switch, on an axis of
  1,200 voxels, whose running counts wrap in the uint8 scan, and with rmax 130, counted in int32."""
  from scipy import ndimage
  rng = np.random.default_rng(3)
  for shape, rmax, radius in (((17, 12, 9), (3, 3, 0), (2, 5, 4)), ((9, 20, 1), (4, 0, 2), (-1, 3, 2)),
                              ((24, 24, 16), (6, 6, 6), (6, 1, 3)), ((40, 30, 8), (7, 7, 0), (7, 2, 0)),
                              ((1200, 7, 5), (20, 0, 0), (3, 0, 0)), ((300, 4, 3), (130, 0, 0), (129, 0, 0))):
    m = ndimage.binary_dilation(rng.random(shape) < 0.08, iterations=2)
    if shape[0] == 1200:
      # No structure to hide a wrong count; the voxels that decide (unset ones for erosion, set for dilation)
      # number about 300 per line, so the uint8 running counts wrap.
      m = rng.random(shape) < (0.75 if erode else 0.3)
    if erode and max(rmax) > 100:
      m = rng.random(shape) < 0.998   # mostly set, or a 259-voxel erosion leaves nothing to compare
    got = np.asarray(jax.jit(lambda a, r: ops.box_morphology(a, r, rmax, erode))(m, np.asarray(radius, np.int32)))
    box = np.ones(tuple(2 * np.clip(radius, 0, rmax) + 1), bool)
    want = ndimage.binary_erosion(m, box, border_value=1) if erode else ndimage.binary_dilation(m, box)
    assert got.any() and (got == want).all(), (shape, rmax, radius)


def test_jit_vmap_equals_one_by_one_and_is_deterministic():
  prof = default_profiles_config().pancreas
  img, organ = _phantom()
  sp = jnp.asarray([1.0, 1.0, 1.0])
  keys = jax.random.split(jax.random.key(5), 3)
  fn = lambda i, o, s, k: synthesize(i, o, s, k, prof)
  batched = jax.jit(jax.vmap(fn, in_axes=(None, None, None, 0)))(img, organ, sp, keys)
  single = jax.jit(fn)
  for b in range(3):
    o, t = single(img, organ, sp, keys[b])
    np.testing.assert_allclose(np.asarray(o), np.asarray(batched[0][b]), atol=1e-3)
    assert (np.asarray(t) == np.asarray(batched[1][b])).all()
  o2, t2 = single(img, organ, sp, keys[0])
  assert (np.asarray(o2) == np.asarray(single(img, organ, sp, keys[0])[0])).all()


def test_matches_numpy_oracle_on_same_draws():
  prof = default_profiles_config()
  img, organ = _phantom(40)
  sp = np.array([1.5, 1.5, 2.0])
  for name in ("liver", "colon"):
    spec = spec_lib.make_spec(prof[name], name=name)
    d = sy.draw(jax.random.key(7), spec, img.shape)
    out, tumor, _ = jax.jit(lambda d: sy.render(jnp.asarray(img), jnp.asarray(organ), jnp.asarray(sp, jnp.float32),
                                                d, spec))(d)
    nd, noise, bern = ref.draws_to_numpy(d, img.shape)
    o2, t2 = ref.render_numpy(img, organ, sp, nd, spec, noise, bern)
    tumor = np.asarray(tumor)
    assert t2.sum() > 0
    assert (tumor & t2).sum() / (tumor | t2).sum() > 0.95, name
    assert np.abs(np.asarray(out) - o2)[t2].mean() < 4.0, name


def test_apply_synthesis_labels_and_control():
  import ml_collections
  organs = ("liver", "kidney")
  img, organ = _phantom()
  labels = np.where(organ, 3, 0).astype(np.int32)            # kidney = organ 1 -> label 3
  images = np.stack([img, img, img])
  labs = np.stack([labels, labels, labels])
  cfg = ml_collections.ConfigDict(dict(enabled=True, prob=1.0, contrast="absolute", mode="patch",
                                       min_spacing_mm=1.0, profiles=default_profiles_config()))
  keys = jax.random.split(jax.random.key(8), 3)
  fn = jax.jit(lambda i, l, b, k: apply_synthesis(i, l, b, k, organs, cfg))
  oi, ol = fn(images, labs, {"synth_organ": jnp.asarray([1, -1, 1], jnp.int32), "spacing": jnp.ones((3, 3))}, keys)
  oi, ol = np.asarray(oi), np.asarray(ol)
  assert (oi[1] == images[1]).all() and (ol[1] == labs[1]).all()
  for b in (0, 2):
    assert (ol[b] == 4).any()
    assert set(np.unique(ol[b])) <= {0, 3, 4}
  cfg.enabled = False
  same = apply_synthesis(images, labs, {"synth_organ": jnp.asarray([1, 1, 1], jnp.int32), "spacing": jnp.ones((3, 3))},
                         keys, organs, cfg)
  assert same[0] is images and same[1] is labs


def test_same_key_same_tumour_on_1_and_4_devices():
  code = textwrap.dedent("""
      import os, sys
      os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
      import jax, jax.numpy as jnp, numpy as np, ml_collections
      from jax.sharding import NamedSharding, PartitionSpec as P
      sys.path.insert(0, os.getcwd())
      from jaxseg.synth import apply_synthesis, default_profiles_config
      n = 24
      g = (np.arange(n) - (n - 1) / 2) / (n / 2)
      x, y, z = np.meshgrid(g, g, g, indexing="ij")
      organ = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 0.8) ** 2 < 1
      imgs = np.stack([np.where(organ, 100.0, -100.0).astype(np.float32)] * 4)
      labs = np.stack([organ.astype(np.int32)] * 4)
      cfg = ml_collections.ConfigDict(dict(enabled=True, prob=1.0, contrast="absolute", mode="patch",
                                           min_spacing_mm=1.0, profiles=default_profiles_config()))
      keys = jax.random.split(jax.random.key(11), 4)
      args = (imgs, labs, np.zeros(4, np.int32), np.ones((4, 3), np.float32))
      f = jax.jit(lambda a, b, c, d, k: apply_synthesis(a, b, {"synth_organ": c, "spacing": d}, k, ("liver",), cfg))
      one = f(*args, keys)
      mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
      sh = NamedSharding(mesh, P("data"))
      put = [jax.device_put(a, sh) for a in args]
      four = f(*put, jax.device_put(keys, sh))
      assert len(four[0].sharding.device_set) == 4
      assert np.array_equal(np.asarray(one[1]), np.asarray(four[1]))
      assert np.allclose(np.asarray(one[0]), np.asarray(four[0]), atol=1e-3)
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
  assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_bad_profile_is_a_clear_error():
  p = default_profiles_config().liver
  p.center_rule = "middle"
  with pytest.raises(ValueError, match="center_rule"):
    spec_lib.make_spec(p, name="liver")
  with pytest.raises(ValueError, match="size class"):
    spec_lib.make_spec(default_profiles_config().colon, name="colon", size_class="tiny")


REAL_CT = os.environ.get("JAXSEG_REAL_CT_DIR")


@pytest.mark.skipif(not REAL_CT, reason="JAXSEG_REAL_CT_DIR is not set (real CT fixture)")
@pytest.mark.parametrize("organ,ids", [("liver", (5,)), ("kidney", (2, 3)), ("pancreas", (7,)), ("colon", (20,))])
def test_real_ct_tumours_land_in_the_organ(tmp_path, organ, ids):
  import nibabel as nib
  from jaxseg.synth import nifti_tool
  image = os.path.join(REAL_CT, "example_ct_sm.nii.gz")
  seg = os.path.join(REAL_CT, "example_ct_sm_seg.nii.gz")
  summary = nifti_tool.synthesize_file(image, seg, organ, str(tmp_path), seed=1, mask_labels=ids)
  assert summary["tumor_voxels"] > 0
  mask = np.asarray(nib.load(tmp_path / "tumor_mask.nii.gz").dataobj) > 0
  labels = np.asarray(nib.load(seg).dataobj)
  organ_mask = np.isin(labels, ids)
  assert not (mask & ~organ_mask & (labels > 0)).any()   # never over another labelled structure
  if organ == "colon":   # wall thickening may reach 10 mm (3 voxels at 3 mm) outside the colon
    from scipy import ndimage
    organ_mask = ndimage.binary_dilation(organ_mask, np.ones((7, 7, 7), bool))
  if organ != "kidney":  # medium and large kidney tumours grow out (into unlabelled voxels) half the time
    assert not (mask & ~organ_mask).any()
  assert np.allclose(nib.load(tmp_path / "ct_synth.nii.gz").affine, nib.load(image).affine)
  assert (tmp_path / "montage.png").stat().st_size > 1000


@pytest.mark.skipif(not REAL_CT, reason="JAXSEG_REAL_CT_DIR is not set (real CT fixture)")
def test_realistic_contrast_fixes_the_measured_weakness(tmp_path):
  """docs/SYNTHESIS.md: on this unenhanced scan the absolute drop makes tumours fluid-dark; realistic mode's
  contrast relative to each tumour's local liver does not (the retired "relative" option did this before)."""
  import json
  from jaxseg.synth import nifti_tool
  image = os.path.join(REAL_CT, "example_ct.nii.gz")
  seg = os.path.join(REAL_CT, "example_ct_seg.nii.gz")
  figs = {}
  for mode, size in (("patch", "medium"), ("realistic", None)):
    s = nifti_tool.synthesize_file(image, seg, "liver", str(tmp_path / mode), seed=2, size_class=size,
                                   mask_labels=(5,), mode=mode)
    figs[mode] = s["figures"]
  print(json.dumps(figs))
  # median contrast ratio: real metastases 0.26; the absolute rule about 0.7 here.
  assert abs(figs["realistic"]["contrast_ratio"][0] - 0.26) < abs(figs["patch"]["contrast_ratio"][0] - 0.26)
  assert figs["realistic"]["tumor_mean_hu"][0] > figs["patch"]["tumor_mean_hu"][0]


def test_several_organs_cost_one_synthesis_per_firing_sample_and_match_the_single_organ_result():
  """With several organs the samples are mapped (one switch branch, nothing when a sample does not fire):
  a kidney sample in a liver+kidney run gets exactly the tumour of a kidney-only run with the same key, on
  one device and with the batch split over two (shard_map)."""
  code = textwrap.dedent("""
      import os, sys
      os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
      import jax, jax.numpy as jnp, numpy as np, ml_collections
      from jax.sharding import NamedSharding, PartitionSpec as P
      sys.path.insert(0, os.getcwd())
      from jaxseg import parallel
      from jaxseg.synth import apply_synthesis, default_profiles_config
      n = 24
      g = (np.arange(n) - (n - 1) / 2) / (n / 2)
      x, y, z = np.meshgrid(g, g, g, indexing="ij")
      organ = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 0.8) ** 2 < 1
      img = np.where(organ, 100.0, -100.0).astype(np.float32)
      imgs = np.stack([img] * 4)
      cfg = ml_collections.ConfigDict(dict(enabled=True, prob=1.0, contrast="absolute", mode="patch",
                                           min_spacing_mm=1.0, profiles=default_profiles_config()))
      keys = jax.random.split(jax.random.key(5), 4)
      two = {"synth_organ": np.array([1, -1, 1, 1], np.int32), "spacing": np.ones((4, 3), np.float32)}
      labs_two = np.stack([np.where(organ, 3, 0).astype(np.int32)] * 4)       # kidney of (liver, kidney)
      labs_one = np.stack([organ.astype(np.int32)] * 4)                        # kidney alone
      f2 = jax.jit(lambda i, l, b, k: apply_synthesis(i, l, b, k, ("liver", "kidney"), cfg))
      f1 = jax.jit(lambda i, l, b, k: apply_synthesis(i, l, b, k, ("kidney",), cfg))
      oi2, ol2 = map(np.asarray, f2(imgs, labs_two, two, keys))
      oi1, ol1 = map(np.asarray, f1(imgs, labs_one, dict(two, synth_organ=np.array([0, -1, 0, 0], np.int32)), keys))
      assert (oi2[1] == imgs[1]).all() and (ol2[1] == labs_two[1]).all()   # did not fire: untouched
      for b in (0, 2, 3):
        assert (ol2[b] == 4).sum() > 0
        np.testing.assert_array_equal(ol2[b] == 4, ol1[b] == 2)
        np.testing.assert_allclose(oi2[b], oi1[b], atol=1e-3)
      mesh = parallel.make_mesh(jax.devices())
      sh = NamedSharding(mesh, P("data"))
      put = lambda t: jax.tree.map(lambda a: jax.device_put(a, sh), t)
      f2m = jax.jit(lambda i, l, b, k: apply_synthesis(i, l, b, k, ("liver", "kidney"), cfg, mesh))
      mi, ml = f2m(put(imgs), put(labs_two), put(two), put(keys))
      assert len(mi.sharding.device_set) == 2
      np.testing.assert_array_equal(np.asarray(ml), ol2)
      np.testing.assert_allclose(np.asarray(mi), oi2, atol=1e-3)
      print("ok")
  """)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("organ_name,size,mode,n,min_spacing", [
    ("liver", "tiny", "patch", 48, 1.0), ("liver", "tiny", "reference", 56, 1.0),
    ("liver", "small", "patch", 72, 1.0), ("kidney", "medium", "patch", 64, 3.0)])
def test_box_local_edge_equals_the_whole_patch_blur(monkeypatch, organ_name, size, mode, n, min_spacing):
  """The soft edge blurred box by box (box_blur.py) gives the same tumours as the whole-patch blur: masks
  equal, image within 0.01 HU (the dropped tail beyond 4 sigma and float rounding), for several keys; the
  kidney case blurs the exophytic mask too. Sizes are the smallest patches where the groups use boxes."""
  from jaxseg.synth import box_blur, ops, placement
  prof = default_profiles_config()[organ_name]
  spec = spec_lib.make_spec(prof, name=organ_name, size_class=size, mode=mode, min_spacing_mm=min_spacing)
  assert all(spec_lib.use_box(g, (n,) * 3, spec) for g in spec.groups)
  img, organ = _phantom(n)
  sp = np.array([min_spacing, min_spacing * 1.2, min_spacing * 1.5], np.float32)

  draw = jax.jit(lambda key: sy.draw(key, spec, img.shape))

  def runs():  # one compilation per blur, every key through it
    render = jax.jit(lambda d, kw: sy.render(jnp.asarray(img), jnp.asarray(organ), jnp.asarray(sp), d, spec,
                                             **kw)[:2])
    out = []
    for k in range(4):
      kw = {}
      if mode == "reference":
        m = organ.astype(np.uint8)
        c, o = placement.draw_sites(m, np.argwhere(m), 1, sp, spec, np.random.default_rng(k))
        kw = dict(centers=jnp.asarray(c), center_ok=jnp.asarray(o))
      out.append(tuple(map(np.asarray, render(draw(jax.random.key(k)), kw))))
    return out

  local = runs()
  monkeypatch.setattr(box_blur, "blur_in_boxes",
                      lambda fields, boxes, sigma, margin: tuple(ops.gaussian_blur(f, sigma) for f in fields))
  whole = runs()
  assert sum(t.sum() for _, t in local) > 0
  for (o1, t1), (o2, t2) in zip(local, whole):
    np.testing.assert_array_equal(t1, t2)
    assert np.abs(o1 - o2).max() < 0.01


def test_texture_bank_gives_the_field_textures_masks_on_one_device_and_split_over_two():
  """config.synth.texture = "bank" through the stage (build_synthesizer: init builds the banks, apply reads
  them): liver and kidney share one recipe, so one bank; for the same keys the tumour labels equal the field
  texture's in patch and reference mode, the images differ inside the tumours only, and a batch split over
  two devices (shard_map, the bank replicated) gives the single-device result."""
  code = textwrap.dedent("""
      import os, sys
      os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import NamedSharding, PartitionSpec as P
      sys.path.insert(0, os.getcwd())
      from jaxseg import parallel
      from jaxseg.default_config import get_config
      from jaxseg.synth import placement
      from jaxseg.synth.stage import build_synthesizer
      n = 32
      g = (np.arange(n) - (n - 1) / 2) / (n / 2)
      x, y, z = np.meshgrid(g, g, g, indexing="ij")
      organ = (x / 0.85) ** 2 + (y / 0.75) ** 2 + (z / 0.85) ** 2 < 1
      imgs = np.stack([np.where(organ, 100.0, -100.0).astype(np.float32)] * 4)
      labs = np.stack([np.where(organ, [1, 3, 1, 3][b], 0).astype(np.int32) for b in range(4)])
      keys = jax.random.split(jax.random.key(7), 4)
      for mode in ("patch", "reference"):
        out = {}
        for texture in ("field", "bank"):
          c = get_config()
          c.data.organs, c.data.patch_size, c.data.spacing = ("liver", "kidney"), (n, n, n), (1.0, 1.0, 1.0)
          c.synth.prob, c.synth.mode, c.synth.texture, c.synth.bank_margin = 1.0, mode, texture, 8
          batch = {"synth_organ": np.array([0, 1, -1, 1], np.int32), "spacing": np.ones((4, 3), np.float32)}
          batch.update(placement.sites_for_patches(labs.astype(np.uint8), batch["synth_organ"], batch["spacing"],
                                                   c.data.organs, c.synth))
          synth = build_synthesizer(c)
          params = jax.jit(synth.init)(jax.random.key(1))
          if texture == "bank":
            assert sorted(params) == ["texture_bank_0"], sorted(params)
            assert params["texture_bank_0"].shape == (10, n + 8, n + 8, n + 8)
          else:
            assert params == {}
          oi, ol = map(np.asarray, jax.jit(synth.apply)(params, imgs, labs, batch, keys))
          out[texture] = (oi, ol)
          if texture == "bank":
            mesh = parallel.make_mesh(jax.devices())
            sh = NamedSharding(mesh, P("data"))
            put = lambda t: jax.tree.map(lambda a: jax.device_put(a, sh), t)
            synth_m = build_synthesizer(c, mesh)
            mi, ml = jax.jit(synth_m.apply)(params, put(imgs), put(labs), put(batch), put(keys))
            assert len(mi.sharding.device_set) == 2
            np.testing.assert_array_equal(np.asarray(ml), ol)
            np.testing.assert_allclose(np.asarray(mi), oi, atol=1e-3)
        (fi, fl), (bi, bl) = out["field"], out["bank"]
        tumour = (fl == 2) | (fl == 4)
        assert tumour[[0, 1, 3]].any(axis=(1, 2, 3)).all(), mode
        np.testing.assert_array_equal(fl, bl)
        assert np.abs(fi - bi)[tumour].max() > 1.0, mode
        assert (fi[2] == imgs[2]).all() and (bi[2] == imgs[2]).all()
      print("ok")
  """)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_texture_bank_lives_in_the_train_state_and_comes_back_from_a_checkpoint(tmp_path):
  """The bank is the synthesizer's frozen parameters: built by init_state, unchanged by a train step,
  restored bit for bit; a bad texture setting is one line naming the field."""
  from jaxseg import assembly, checkpoint, parallel
  from jaxseg.config_checks import ConfigError, check_config, resolve_config
  from jaxseg.train import benchmark
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from tiny_config import tiny_config  # pylint: disable=import-outside-toplevel
  config = resolve_config(tiny_config())
  config.synth.texture = "bank"
  run = assembly.assemble(config, parallel.make_mesh())
  state = run.init_state()
  bank = np.asarray(state["synth_params"]["texture_bank_0"])
  assert bank.shape == (10, 48, 48, 48) and 0.0 <= bank.min() and bank.max() <= 1.0 and bank.std() > 0.01
  batch = parallel.global_batch(benchmark.synthetic_batch(config, config.data.batch_size), run.mesh)
  state, metrics = run.train_step()(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  np.testing.assert_array_equal(np.asarray(state["synth_params"]["texture_bank_0"]), bank)
  ckpt = checkpoint.RunCheckpointer(str(tmp_path), keep=1, async_save=False)
  ckpt.save(1, state, None, config)
  restored, _ = ckpt.restore(1, run.abstract_state(), None)
  ckpt.close()
  np.testing.assert_array_equal(np.asarray(restored["synth_params"]["texture_bank_0"]), bank)
  bad = resolve_config(tiny_config())
  bad.synth.texture = "banks"
  with pytest.raises(ConfigError, match="config.synth.texture must be one of"):
    check_config(bad, 1)
  bad.synth.texture, bad.synth.mode = "bank", "realistic"
  with pytest.raises(ConfigError, match="config.synth.texture='bank' works with"):
    check_config(bad, 1)


def test_blur_in_boxes_counts_each_voxel_once_across_overlapping_boxes_of_two_groups():
  """Boxes of two groups overlap each other and themselves; each voxel of the field is blurred by the first
  active box holding it (an inactive box claims nothing), so the sum equals the whole-patch blur up to the
  tail beyond the margin. Counting an overlap twice, or not at all, is off by up to the field's value."""
  from jaxseg.synth import box_blur, ops
  n = 40
  rng = np.random.default_rng(3)
  small = box_blur.Boxes(jnp.asarray([[4, 4, 4], [8, 6, 5], [20, 20, 20]], jnp.int32),
                         jnp.asarray([True, True, False]), (9, 9, 9))
  big = box_blur.Boxes(jnp.asarray([[6, 6, 6], [22, 18, 21]], jnp.int32), jnp.asarray([True, True]),
                       (14, 14, 14))
  field = np.zeros((n,) * 3, np.float32)
  for b in (small, big):
    for (x, y, z), on in zip(np.asarray(b.starts), np.asarray(b.active)):
      if on:
        s = b.sizes[0]
        field[x:x + s, y:y + s, z:z + s] = rng.random((s, s, s)) < 0.6
  sigma = jnp.asarray([1.0, 1.3, 1.6], jnp.float32)
  margin = box_blur.margin_voxels(1.6, 1.0)
  (local,) = jax.jit(lambda f: box_blur.blur_in_boxes((f,), [small, big], sigma, margin))(jnp.asarray(field))
  whole = ops.gaussian_blur(jnp.asarray(field), sigma)
  assert field.sum() > 1000
  np.testing.assert_allclose(np.asarray(local), np.asarray(whole), atol=2e-3)


def test_compare_checkouts_times_two_versions_in_one_process(tmp_path):
  """The A/B benchmark loads another checkout beside this one (here: this one itself) and finds the same
  tumours on both sides; a folder that is not a checkout is refused in one line."""
  from jaxseg.synth import bench
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(bench.__file__))))
  (row,) = bench.compare_checkouts(root, ["tiny"], patch=32, rounds=2)
  with pytest.raises(ValueError, match="--mode"):
    bench.compare_checkouts(root, ["tiny"], patch=32, rounds=1, mode="realistic")
  assert row["same_masks"] and row["rounds"] == 2 and row["this_ms"] > 0 and row["other_ms"] > 0
  assert np.isfinite(row["ratio_this_over_other"]) and row["published_ms_96"] == 16.0
  (row,) = bench.compare_checkouts(root, ["tiny"], patch=32, rounds=2, texture="bank", other_texture="bank")
  assert row["same_masks"] and row["texture"] == row["other_texture"] == "bank"
  with pytest.raises(ValueError, match="is not a jaxseg checkout"):
    bench.load_checkout(str(tmp_path))


def test_linear_upsample_equals_the_dense_product():
  """ops.linear_upsample (slices) gives apply_separable with linear_upsample_matrix's values: bit for bit at
  steps 1 and 2 (every product exact), to float rounding at steps 3 and 4, on shapes that are not multiples
  of the step."""
  from jaxseg.synth import ops
  rng = np.random.default_rng(5)
  for step, shape in ((1, (7, 5, 6)), (2, (13, 10, 9)), (3, (14, 11, 10)), (4, (17, 13, 12))):
    mats = [ops.linear_upsample_matrix(n, step) for n in shape]
    v = rng.random(tuple(m.shape[1] for m in mats), np.float32) * 4.0
    dense = np.asarray(jax.jit(lambda v: ops.apply_separable(v, *map(jnp.asarray, mats)))(v))
    slices = np.asarray(jax.jit(lambda v: ops.linear_upsample(v, step, shape))(v))
    assert slices.shape == shape
    if step <= 2:
      np.testing.assert_array_equal(slices, dense)
    else:
      np.testing.assert_allclose(slices, dense, rtol=1e-6, atol=1e-6)


def test_forms_and_ablation_benchmarks():
  """``bench_synthesis.py --forms``: both separable-blur forms agree to float rounding and both erosion forms
  give the same mask, with a timing and ratio for each. ``--ablate``: a time per variant, and the
  synthesizer's functions are its own again afterwards."""
  from jaxseg.synth import bench, device_bank
  before = (sy._pick_candidates, sy._edges, sy.make_texture, sy._compose, device_bank.read)
  rows = bench.ablation("liver", "tiny", 32, texture="bank", rounds=1)
  assert [r["without"] for r in rows] == ["whole", "candidates", "soft_edge", "texture", "composition"]
  assert all(r["ms"] > 0 for r in rows) and rows[0]["saved_ms"] == 0
  assert (sy._pick_candidates, sy._edges, sy.make_texture, sy._compose, device_bank.read) == before
  (sep,) = bench.separable_forms(pairs=((5, 7),), rounds=2)
  assert sep["max_rel_diff"] < 1e-5 and sep["apply_separable_ms"] > 0 and np.isfinite(sep["ratio_blur_over_apply"])
  (ero,) = bench.morphology_forms(rmaxes=((2, 2, 0),), patch=24, rounds=2)
  assert ero["same_masks"] and ero["scan_ms"] > 0 and ero["shifts_ms"] > 0
