"""Check a data set and list every problem, one line each with the file's path; exit 1 when any is found.

  python launch/validate_data.py --layout=msd --src=/data/Task03_Liver --workers=4
"""

from __future__ import annotations

import sys

from absl import app, flags

from jaxseg import cli
from jaxseg.data.validate import validate_dataset
from jaxseg.io.layouts import LAYOUTS
from jaxseg.labels import ORGANS

_LAYOUT = flags.DEFINE_enum("layout", None, list(LAYOUTS), "Layout of --src.", required=True)
_SRC = flags.DEFINE_string("src", None, "Data set folder (or manifest file).", required=True)
_ORGANS = flags.DEFINE_list("organs", list(ORGANS), "Organs whose masks are checked.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Parallel processes.")


def main(argv):
  del argv
  try:
    problems = validate_dataset(_LAYOUT.value, _SRC.value, tuple(_ORGANS.value), workers=_WORKERS.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  for line in problems:
    print(line)
  print(f"{len(problems)} problem(s) in {_SRC.value}", file=sys.stderr)
  sys.exit(1 if problems else 0)


if __name__ == "__main__":
  cli.run(main)
