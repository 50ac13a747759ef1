"""Prints how real the synthetic tumours look: lesion figures per mode beside the real metastases' ranges.

  JAXSEG_REAL_CT_DIR=/path/to/real-ct python launch/synth_realism.py [--volume=fixture|phantom] \\
      [--modes=patch,reference,realistic] [--seeds=16] [--patch=64] [--json=out.json]

Each seed is one patch centred deep in the liver (>= 15 mm inside) with that seed's tumours; every tumour is
measured with jaxseg/metrics/lesion_figures.py (real_lesions.json's definitions). patch and reference modes
draw their size class per seed (reference: sites drawn on the patch); realistic uses its calibrated
profile. "phantom" is a liver with the real parenchyma's HU (117), noise (16 HU) and texture. "brighter" is
the count of tumours brighter than their parenchyma shell with its exact binomial 95% interval (Clopper-Pearson),
beside the real lesions' 1 of 7.
"""

from __future__ import annotations

import json
import os

from absl import flags

from jaxseg import cli

_CT = flags.DEFINE_string("real_ct_dir", os.environ.get("JAXSEG_REAL_CT_DIR", ""),
                          "Real CT fixture folder (default: $JAXSEG_REAL_CT_DIR).")
_VOLUME = flags.DEFINE_enum("volume", "fixture", ["fixture", "phantom"], "Where the tumours go.")
_MODES = flags.DEFINE_list("modes", ["patch", "reference", "realistic"], "Synthesis modes to measure.")
_SEEDS = flags.DEFINE_integer("seeds", 16, "Patches (one key each) per mode.")
_PATCH = flags.DEFINE_integer("patch", 64, "Patch side (voxels, 1 mm).")
_JSON = flags.DEFINE_string("json", "", "Also write the rows and summaries here.")
FIGURES = ("eq_diam_mm", "rel_contrast", "std_ratio", "edge_ratio_s1", "edge_width_mm", "sphericity_boundary")


@cli.user_errors
def main(argv):
  del argv
  from jaxseg.metrics import lesion_figures  # pylint: disable=import-outside-toplevel
  from jaxseg.synth import realism, spec as spec_lib  # pylint: disable=import-outside-toplevel
  from jaxseg.synth.profiles import default_profiles_config  # pylint: disable=import-outside-toplevel
  if _VOLUME.value == "fixture":
    if not _CT.value:
      raise ValueError("--real_ct_dir: not set (or set JAXSEG_REAL_CT_DIR)")
    vol = realism.load_fixture_organ(_CT.value, "liver", 1.0)
  else:
    vol = realism.phantom_volume(96, 117.0, 16.0, vessel_hu=60.0)
  real = {**{k: v for k, v in lesion_figures.REAL_LIVER_METASTASES.items()}}
  real_1mm = lesion_figures.REAL_LIVER_METASTASES_1MM
  out = {}
  patch = (_PATCH.value,) * 3
  print(f"{'figure':20s} {'real native [p10, med, p90]':30s} {'real 1 mm':26s} "
        + " ".join(f"{m:>14s}" for m in _MODES.value))
  for m in _MODES.value:
    spec = spec_lib.make_spec(default_profiles_config().liver, name="liver", mode=m)
    rows = realism.measure_mode(vol, spec, range(_SEEDS.value), patch)
    k, n = realism.brighter_count(rows)
    out[m] = {"rows": rows, "summary": lesion_figures.summarize(rows), "brighter": [k, n],
              "brighter_ci95": realism.clopper_pearson(k, n)}
  fmt = lambda v: "[" + ", ".join(f"{x:.3g}" for x in v) + "]" if v else "-"
  real_ci = "1 of 7 [" + ", ".join(f"{x:.3f}" for x in realism.clopper_pearson(1, 7)) + "]"
  for f in FIGURES + ("brighter", "n"):
    cells = []
    for m in _MODES.value:
      if f == "brighter":
        (k, n), (lo, hi) = out[m]["brighter"], out[m]["brighter_ci95"]
        cells.append(f"  {k}/{n} [{lo:.2f}, {hi:.2f}]")
      elif f == "n":
        cells.append(f"{len(out[m]['rows']):14d}")
      else:
        s = out[m]["summary"].get(f)
        cells.append(f"{s['median']:14.3g}" if s else f"{'-':>14s}")
    ref = real_ci if f == "brighter" else fmt(real.get(f))
    print(f"{f:20s} {ref:30s} {fmt(real_1mm.get(f)):26s} " + " ".join(cells))
  if _JSON.value:
    with open(_JSON.value, "w") as fh:
      json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
  cli.run(main)
