"""Preprocess a data set into the cache the loader memory-maps (resumable; bad cases are skipped and listed).

  python launch/preprocess.py --layout=atlas --src=/data/AbdomenAtlas1.1 --dst=/data/atlas_cache_1mm \
      --spacing=1,1,1 --organs=liver,pancreas,kidney --workers=8
"""

from __future__ import annotations

import sys

from absl import app, flags

from jaxseg import cli
from jaxseg.data.preprocess import preprocess_dataset
from jaxseg.io.layouts import LAYOUTS
from jaxseg.io.nifti import DataError

_LAYOUT = flags.DEFINE_enum("layout", None, list(LAYOUTS), "Layout of --src.", required=True)
_SRC = flags.DEFINE_string("src", None, "Data set folder (or manifest file).", required=True)
_DST = flags.DEFINE_string("dst", None, "Cache folder to write.", required=True)
_SPACING = flags.DEFINE_list("spacing", ["1", "1", "1"], "Target spacing sx,sy,sz in mm (canonical RAS).")
_ORGANS = flags.DEFINE_list("organs", ["liver"], "Organs of the label space (jaxseg/labels.py), in order.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Parallel processes.")


def main(argv):
  del argv
  try:
    spacing = cli.parse_floats("--spacing", _SPACING.value, count=3, positive=True)
    cli.check_output_dir(_DST.value, "--dst")
    report = preprocess_dataset(_LAYOUT.value, _SRC.value, _DST.value, spacing, tuple(_ORGANS.value),
                                workers=_WORKERS.value)
  except (DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(report.summary())
  sys.exit(1 if report.skipped else 0)


if __name__ == "__main__":
  cli.run(main)
