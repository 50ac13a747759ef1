"""Fits the realistic synthesis mode to real lesions and writes a profile file (jaxseg/synth/calibrate.py).

  python launch/calibrate_synthesis.py --ct=case1_ct.nii.gz --labels=case1_seg.nii.gz \\
      [--ct=case2_ct.nii.gz --labels=case2_seg.nii.gz ...] --organ=liver --out=profile.py
  python launch/calibrate_synthesis.py --atlas=/data/AbdomenAtlas --organ=liver --out=profile.py
  python launch/calibrate_synthesis.py --figures=real_lesions.json:ircad_p1_iso1 --organ=liver --out=profile.py

--labels is a label map on the CT's grid (--organ_labels, --tumor_labels; default 1 and 2, the MSD liver
convention); --atlas reads an AbdomenAtlas-layout folder (<case>/ct.nii.gz, segmentations/<organ>.nii.gz and
<organ>_tumor.nii.gz); --figures reads per-lesion figures measured by the shared measure.py. Then train with

  --config.synth.mode=realistic --config.synth.profiles.liver.profile_file=profile.py
"""

from __future__ import annotations

import json
import os

from absl import flags

from jaxseg import cli

_CT = flags.DEFINE_multi_string("ct", [], "CT NIfTI in HU (repeat, one per --labels).")
_LABELS = flags.DEFINE_multi_string("labels", [], "Label map NIfTI on the CT's grid (repeat, one per --ct).")
_ATLAS = flags.DEFINE_string("atlas", "", "An AbdomenAtlas-layout folder instead of --ct/--labels.")
_FIGURES = flags.DEFINE_string("figures", "", "A measure.py JSON (file.json or file.json:source) instead.")
_ORGAN = flags.DEFINE_string("organ", "liver", "Organ profile to fit.")
_ORGAN_LABELS = flags.DEFINE_list("organ_labels", ["1"], "Label ids of the organ in --labels.")
_TUMOR_LABELS = flags.DEFINE_list("tumor_labels", ["2"], "Label ids of its tumours in --labels.")
_ISO = flags.DEFINE_float("iso_mm", 1.0, "Resample to this isotropic spacing before measuring (0: native).")
_TUMOURS = flags.DEFINE_integer("forward_tumours", 48, "Tumours of the forward model.")
_OUT = flags.DEFINE_string("out", None, "The profile file to write (python).", required=True)


def _label_ids(flag: str, values: list[str]) -> list[int]:
  if not values or not all(v.strip().isdigit() for v in values):
    raise ValueError(f"{flag}: {','.join(values)!r} must be integer label ids (e.g. {flag}=1,2)")
  return [int(v) for v in values]


@cli.user_errors
def main(argv):
  del argv
  from jaxseg.synth import calibrate  # pylint: disable=import-outside-toplevel
  from jaxseg.synth.profiles import default_profiles_config  # pylint: disable=import-outside-toplevel
  if _ORGAN.value not in default_profiles_config():
    raise ValueError(f"--organ: unknown organ {_ORGAN.value!r}")
  sources = sum(bool(x) for x in (_CT.value, _ATLAS.value, _FIGURES.value))
  if sources != 1:
    raise ValueError("give exactly one of --ct/--labels, --atlas, --figures")
  if _FIGURES.value:
    rows, inputs = calibrate.rows_from_figures_json(_FIGURES.value), _FIGURES.value
  elif _ATLAS.value:
    rows, inputs = calibrate.rows_from_atlas(_ATLAS.value, _ORGAN.value, _ISO.value or None), _ATLAS.value
  else:
    if len(_CT.value) != len(_LABELS.value):
      raise ValueError(f"--ct given {len(_CT.value)} times but --labels {len(_LABELS.value)} times: one each per case")
    organ_ids, tumor_ids = (_label_ids(f, v) for f, v in (("--organ_labels", _ORGAN_LABELS.value),
                                                           ("--tumor_labels", _TUMOR_LABELS.value)))
    cases = (calibrate.load_case(c, l, organ_ids, tumor_ids, _ISO.value or None)
             for c, l in zip(_CT.value, _LABELS.value))
    rows, inputs = calibrate.measure_cases(cases), ", ".join(_CT.value)
  spacing = _ISO.value or 1.0
  profile, report = calibrate.calibrate(rows, _ORGAN.value, spacing, tumours=_TUMOURS.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    f.write(calibrate.profile_source(profile, report, _ORGAN.value, inputs))
  print(json.dumps({"out": _OUT.value, **report}, default=float))


if __name__ == "__main__":
  cli.run(main)
