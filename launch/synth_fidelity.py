"""Prints the synthesizer's fidelity to the published generator: each figure, reference [p10, median, p90]
vs jaxseg's median, for the reference and patch modes, per size class, on the real CT fixture at 1 mm.

  JAXSEG_REAL_CT_DIR=/path/to/real-ct python launch/synth_fidelity.py --organ=liver \\
      --reference_json=/path/to/reference_behaviour.json [--seeds=12] [--classes=tiny,small] [--json=out.json]

Figures and how they are computed: jaxseg/synth/fidelity.py (the definitions of reference_behaviour.json's
``doc`` field). A row is marked "ok" when jaxseg's median lies within the reference's [p10, p90].
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

_ORGAN = flags.DEFINE_string("organ", "liver", "Organ (the reference figures exist for the liver).")
_REF = flags.DEFINE_string("reference_json", os.environ.get("JAXSEG_REFERENCE_SYNTH_JSON", ""),
                           "reference_behaviour.json (default: $JAXSEG_REFERENCE_SYNTH_JSON).")
_CT = flags.DEFINE_string("real_ct_dir", os.environ.get("JAXSEG_REAL_CT_DIR", ""),
                          "Real CT fixture folder (default: $JAXSEG_REAL_CT_DIR).")
_SEEDS = flags.DEFINE_integer("seeds", 12, "Cases (seeds) per size class and mode.")
_CLASSES = flags.DEFINE_list("classes", ["tiny", "small", "medium", "large", "mix"], "Size classes.")
_MODES = flags.DEFINE_list("modes", ["reference", "patch"], "Synthesis modes to measure.")
_CROPS = flags.DEFINE_integer("crops", 600, "Training crops simulated per case (reference mode).")
_JSON = flags.DEFINE_string("json", "", "Also write the measured figures to this JSON file.")


def main(argv):
  del argv
  from jaxseg.synth import fidelity  # pylint: disable=import-outside-toplevel
  try:
    if not _CT.value:
      raise ValueError("--real_ct_dir: not set (or set JAXSEG_REAL_CT_DIR)")
    if not _REF.value or not os.path.exists(_REF.value):
      raise ValueError(f"--reference_json: {_REF.value or 'not set'}: not found")
    ref = fidelity.reference_figures(_REF.value, _ORGAN.value)
    fx = fidelity.load_fixture(_CT.value, _ORGAN.value)
  except ValueError as e:
    sys.exit(f"synth_fidelity: {e}")
  seeds = range(_SEEDS.value)
  results = {}
  for c in _CLASSES.value:
    if c not in ref:
      sys.exit(f"synth_fidelity: --classes: unknown class {c!r}; known: {', '.join(ref)}")
    t0 = time.time()
    results[c] = {}
    for m in _MODES.value:
      if m == "reference":
        results[c][m] = fidelity.measure_reference(fx, c, seeds, crops=_CROPS.value)
      elif m == "patch":
        results[c][m] = fidelity.measure_patch(fx, c, seeds)
      else:
        sys.exit(f"synth_fidelity: --modes: unknown mode {m!r} (reference, patch)")
    print(f"\n{c} ({len(seeds)} cases per mode, {time.time() - t0:.0f} s)")
    print(f"  {'figure':22s} {'reference [p10, median, p90]':32s} " + " ".join(f"{m:>16s}" for m in _MODES.value))
    for k in fidelity.FIGURES:
      r = ref[c][k]
      cells = []
      for m in _MODES.value:
        v = results[c][m][k]["median"]
        cells.append(f"{v:10.3g} {'ok' if r['p10'] <= v <= r['p90'] else 'OUT':>5s}")
      print(f"  {k:22s} [{r['p10']:8.3g}, {r['median']:8.3g}, {r['p90']:8.3g}]   " + " ".join(cells), flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"reference": {c: ref[c] for c in results}, "jaxseg": results}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
