"""Puts synthetic tumours into a CT and writes the CT, the tumour mask (NIfTI, input affine) and a montage.

  python launch/synthesize.py --image=ct.nii.gz --organ_mask=liver.nii.gz --organ=liver --out=out/ \
      [--seed=0] [--size=medium] [--mask_labels=5] [--mode=reference|patch|realistic]
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from jaxseg import cli
from jaxseg.synth import nifti_tool

_IMAGE = flags.DEFINE_string("image", None, "CT NIfTI in HU.", required=True)
_MASK = flags.DEFINE_string("organ_mask", None, "Organ mask NIfTI on the same grid.", required=True)
_ORGAN = flags.DEFINE_string("organ", "liver", "Organ profile.")
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_SIZE = flags.DEFINE_string("size", None, "Size class (tiny, small, medium, large, mix); default: drawn.")
_LABELS = flags.DEFINE_list("mask_labels", [], "Label ids of the organ in a label-map mask (default: > 0).")
_CONTRAST = flags.DEFINE_string("contrast", "absolute", "Contrast rule of reference/patch modes: absolute "
                                 "(relative is retired: use --mode=realistic).")
_MODE = flags.DEFINE_enum("mode", "reference", ["reference", "patch", "realistic"],
                          "Synthesis mode (docs/SYNTHESIS.md).")


def main(argv):
  del argv
  try:
    if not all(x.strip().isdigit() for x in _LABELS.value):
      raise ValueError(f"--mask_labels: {','.join(_LABELS.value)!r} must be integer label ids (e.g. 5,6)")
    cli.check_output_dir(_OUT.value, "--out")
    summary = nifti_tool.synthesize_file(_IMAGE.value, _MASK.value, _ORGAN.value, _OUT.value, _SEED.value,
                                         _SIZE.value, tuple(int(x) for x in _LABELS.value), _CONTRAST.value,
                                         _MODE.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(summary))


if __name__ == "__main__":
  cli.run(main)
