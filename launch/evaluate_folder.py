"""Scores a folder of NIfTI label maps against a folder of ground truths (files matched by name).

  python launch/evaluate_folder.py --pred_dir=/tmp/pred --gt_dir=/data/labels \
      --labels=liver:1,liver_tumor:2 --out=/tmp/eval

Writes cases.csv (one row per case and label), tumors.csv, summary.json and PNG plots into --out.
"""

import json

from absl import app, flags

from jaxseg import cli

_PRED = flags.DEFINE_string("pred_dir", None, "Folder of predicted label maps.", required=True)
_GT = flags.DEFINE_string("gt_dir", None, "Folder of ground-truth label maps.", required=True)
_LABELS = flags.DEFINE_string("labels", None, "name:id,... (names with 'tumor' are tumour labels).",
                              required=True)
_OUT = flags.DEFINE_string("out", None, "Report folder.", required=True)
_NSD_TOL = flags.DEFINE_float("nsd_tolerance_mm", 2.0, "NSD tolerance in mm.")
_MIN_VOL = flags.DEFINE_float("min_tumor_volume_mm3", 0.0, "Smallest predicted tumour that counts.")
_BOOT = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the 95% intervals.")
_PLOTS = flags.DEFINE_bool("plots", True, "Write PNG plots.")
_IGNORE = flags.DEFINE_bool("ignore_unlisted_labels", False, "Score only --labels even when a ground truth "
                            "holds other values (default: refuse, naming the file and the values).")


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxseg.metrics.folder import evaluate_folder  # pylint: disable=g-import-not-at-top
  cli.check_output_dir(_OUT.value, "--out")
  s = evaluate_folder(_PRED.value, _GT.value, _LABELS.value, _OUT.value, _NSD_TOL.value, _MIN_VOL.value,
                      _BOOT.value, plots=_PLOTS.value, ignore_unlisted_labels=_IGNORE.value)
  print(json.dumps({k: v for k, v in s.items() if isinstance(v, float) and "/" not in k}))


if __name__ == "__main__":
  cli.run(main)
