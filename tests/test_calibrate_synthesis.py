"""The calibration tool: fitted profiles recover the parameters of phantom lesions made with known ones,
the profile file it writes is usable through the config, and bad input is a one-line error naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from jaxseg.synth import default_profiles_config, realism, realistic
from jaxseg.synth import spec as spec_lib
from jaxseg.synth.profile_file import resolve_profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "calibrate_synthesis.py")
# The phantom lesions' known parameters, and how close the calibration must get (docs/SYNTHESIS.md).
TRUE = dict(diameter_mm=(14.0, 26.0), contrast=(0.15, 0.30), std_ratio=(1.3, 1.7), edge_width_mm=(2.0, 3.0),
            roughness_mm=(0.5, 1.0))
# Each lesion's measured contrast ratio scatters about its drawn contrast by about 0.05 (the phantom's noise
# inside the lesion against its shell), so the median of n lesions is known to about 1.25 x 0.07 / sqrt(n)
# (0.07: that scatter and the drawn spread together): 0.014 at 40, 0.019 at 20, against a tolerance of 0.03.
CASES = 40


def _quantiles(lohi, skew, log=False):
  q = np.asarray([realistic.skewed(np.float64(u), skew) for u in (0.1, 0.5, 0.9)])
  if log:
    return np.exp(np.log(lohi[0]) + np.log(lohi[1] / lohi[0]) * q)
  return lohi[0] + (lohi[1] - lohi[0]) * q


def _run(*args):
  proc = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
  return proc


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory):
  """CASES phantom livers (64^3, 1 mm), one realistic lesion each with the TRUE parameters, as NIfTI pairs
  (label map: 1 liver, 2 tumour). Centres within 6 mm of the middle, so each lesion and its shell are whole."""
  out = tmp_path_factory.mktemp("calib")
  p = default_profiles_config().liver
  for k, v in TRUE.items():
    p.realistic[k] = v
  p.realistic.count = (1, 1)
  p.realistic.contrast_skew = 0.0
  p.realistic.diameter_skew = 0.0
  spec = spec_lib.make_spec(p, name="liver", mode="realistic")
  n = 64
  def one(im, om, k, c):
    d = realistic.draw(k, spec, (n,) * 3)
    out, tumour, ex = realistic.render(im, om, jnp.ones(3), d, spec, centers=c)
    return out, tumour, ex["organ"], {f: d[f][0] for f in TRUE}

  fn = jax.jit(one)
  pairs, drawn = [], {f: [] for f in TRUE}
  for i in range(CASES):
    vol = realism.phantom_volume(n, 117.0, 16.0, seed=i)
    c = np.random.default_rng(i).integers(n // 2 - 6, n // 2 + 7, (1, 3)).astype(np.int32)
    img, tumour, organ, params = fn(jnp.asarray(vol.ct), jnp.asarray(vol.organ), jax.random.key(500 + i),
                                    jnp.asarray(c))
    for f, v in params.items():
      drawn[f].append(float(v))
    label = np.where(np.asarray(tumour), 2, np.where(np.asarray(organ), 1, 0)).astype(np.uint8)
    ct_path, lab_path = str(out / f"c{i}_ct.nii.gz"), str(out / f"c{i}_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.round(np.asarray(img)).astype(np.int16), np.eye(4)), ct_path)
    nib.save(nib.Nifti1Image(label, np.eye(4)), lab_path)
    pairs.append((ct_path, lab_path))
  return out, pairs, drawn


def test_round_trip_recovers_known_lesion_parameters_and_the_file_works(phantom_cases, tmp_path):
  _, pairs, drawn = phantom_cases
  profile_path = str(tmp_path / "profile.py")
  args = [a for ct, lab in pairs for a in (f"--ct={ct}", f"--labels={lab}")]
  proc = _run(*args, "--organ=liver", f"--out={profile_path}", "--forward_tumours=48")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["lesions"] == CASES
  cfg = default_profiles_config().liver
  cfg.profile_file = profile_path
  fitted = resolve_profile(cfg, "liver").realistic
  print({k: fitted[k] for k in TRUE}, fitted.contrast_skew, fitted.diameter_skew)
  # Against the parameters the phantoms' lesions were actually drawn with (CASES draws of the TRUE ranges):
  # diameter p10, median and p90 of the fitted distribution within 10%, contrast's median within 0.03 and its
  # p10 and p90 within 0.08 (relative drop: each is the 4th lesion from an end of 40); the std ratio's, edge
  # width's and roughness's range centre within 0.2, 30% and 45% of the median.
  q = lambda f: np.percentile(drawn[f], (10, 50, 90))
  got = _quantiles(fitted.diameter_mm, fitted.diameter_skew, log=True)
  assert np.all(np.abs(got / q("diameter_mm") - 1) < 0.10), (got, q("diameter_mm"))
  got = _quantiles(fitted.contrast, fitted.contrast_skew)
  assert np.all(np.abs(got - q("contrast")) < (0.08, 0.03, 0.08)), (got, q("contrast"))
  centre = lambda v: 0.5 * (v[0] + v[1])
  assert abs(centre(fitted.std_ratio) - q("std_ratio")[1]) < 0.2, (fitted.std_ratio, q("std_ratio"))
  assert abs(centre(fitted.edge_width_mm) / q("edge_width_mm")[1] - 1) < 0.3, (fitted.edge_width_mm,
                                                                              q("edge_width_mm"))
  assert abs(centre(fitted.roughness_mm) / q("roughness_mm")[1] - 1) < 0.45, (fitted.roughness_mm,
                                                                             q("roughness_mm"))
  # The file is a profile: the realistic spec builds from it, and a command-line change wins over it.
  cfg.realistic.rim_prob = 0.0
  spec = spec_lib.make_spec(resolve_profile(cfg, "liver"), name="liver", mode="realistic")
  assert spec.realistic.rim_prob == 0.0 and spec.realistic.diameter_mm == tuple(fitted.diameter_mm)


def test_bad_input_is_one_line_naming_the_file_or_flag(phantom_cases, tmp_path):
  out, pairs, _ = phantom_cases
  (ct, lab), (ct2, _) = pairs[0], pairs[1]
  empty = str(tmp_path / "empty_seg.nii.gz")
  nib.save(nib.Nifti1Image(np.ones((64, 64, 64), np.uint8), np.eye(4)), empty)
  small = str(tmp_path / "small_seg.nii.gz")
  nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), np.eye(4)), small)
  cases = [
      ([f"--ct={ct}", f"--labels={lab}", f"--ct={ct2}"], "--labels 1 times"),
      ([f"--ct={out}/missing.nii.gz", f"--labels={lab}"], "missing.nii.gz"),
      ([f"--ct={ct}", f"--labels={empty}"], "empty_seg.nii.gz: no tumour voxel"),
      ([f"--ct={ct}", f"--labels={small}"], "small_seg.nii.gz: shape"),
      ([f"--ct={ct}", f"--labels={lab}", "--tumor_labels=two"], "--tumor_labels"),
      ([f"--figures={tmp_path}/none.json"], "none.json: no such file"),
      ([f"--ct={ct}", f"--labels={lab}"], "at least 3 measured lesions"),
  ]
  for args, expected in cases:
    proc = _run(*args, f"--out={tmp_path}/p.py")
    assert proc.returncode == 1, (args, proc.stderr[-2000:])
    err = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(err) == 1 and expected in err[0], (args, proc.stderr[-2000:])


def test_profile_file_errors_name_the_file_and_field(tmp_path):
  cfg = default_profiles_config().liver
  for text, expected in (("x = 1\n", "no get_profile"),
                         ("import ml_collections\ndef get_profile():\n  return ml_collections.ConfigDict({'colour': 1})\n",
                          "unknown profile field 'colour'"),
                         ("def get_profile(:\n", "cannot be loaded")):
    path = tmp_path / "p.py"
    path.write_text(text)
    cfg.profile_file = str(path)
    with pytest.raises(ValueError, match=expected) as e:
      resolve_profile(cfg, "liver")
    assert str(path) in str(e.value) and "\n" not in str(e.value)
  cfg.profile_file = str(tmp_path / "nowhere.py")
  with pytest.raises(ValueError, match="nowhere.py: no such file"):
    resolve_profile(cfg, "liver")
