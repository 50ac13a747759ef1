"""Writes the README's picture of reference- and realistic-mode tumours on the real CT fixture's liver.

  JAXSEG_REAL_CT_DIR=/path/to/real-ct python launch/synth_montage.py --out=docs/figures/synth_modes.png
"""

from __future__ import annotations

import json
import os

from absl import flags

from jaxseg import cli

_CT = flags.DEFINE_string("real_ct_dir", os.environ.get("JAXSEG_REAL_CT_DIR", ""),
                          "Real CT fixture folder (default: $JAXSEG_REAL_CT_DIR).")
_OUT = flags.DEFINE_string("out", "docs/figures/synth_modes.png", "PNG to write.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "One row (patch and key) per seed.")
_SPACING = flags.DEFINE_float("spacing_mm", 1.0, "Resample the fixture to this spacing.")


@cli.user_errors
def main(argv):
  del argv
  from jaxseg.synth import montage, realism  # pylint: disable=import-outside-toplevel
  if not _CT.value:
    raise ValueError("--real_ct_dir: not set (or set JAXSEG_REAL_CT_DIR)")
  seeds = [int(s) for s in cli.parse_floats("--seeds", _SEEDS.value)]
  vol = realism.load_fixture_organ(_CT.value, "liver", _SPACING.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  summary = montage.mode_montage(vol, _OUT.value, seeds)
  summary["bytes"] = os.path.getsize(_OUT.value)
  print(json.dumps(summary))


if __name__ == "__main__":
  cli.run(main)
