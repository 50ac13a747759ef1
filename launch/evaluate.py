"""Evaluates a checkpoint on a data set end to end: cases.csv, summary.json and plots in the workdir.

  python launch/evaluate.py --config=configs/phantom.py --workdir=runs/phantom \
      --data=msd:/data/Task03_Liver [--checkpoint=1000|best]

The run's own config fixes the model, organs and spacing; --config supplies the eval block (overlap,
mirroring, post-processing, NSD tolerance), so --config.eval.tta_mirror=True etc. work.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from jaxseg import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file; its eval block is used.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of a trained run.", required=True)
_DATA = flags.DEFINE_string("data", None, "layout:dir of the data set to evaluate on.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint step, 'best', or unset for the latest.")
_OUT = flags.DEFINE_string("out", None, "Report folder (default <workdir>/eval/<data>_step_<step>).")
_CACHE = flags.DEFINE_string("cache_dir", None, "Preprocessed cache of --data (default <dir>_cache_<spacing> "
                             "beside the data set; set it when that folder is read-only).")


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxseg.infer.evaluate import evaluate_checkpoint  # pylint: disable=g-import-not-at-top
  step = cli.parse_checkpoint(_CHECKPOINT.value)
  config = _CONFIG.value
  eval_cfg = config.eval if config is not None else None
  if _OUT.value:
    cli.check_output_dir(_OUT.value, "--out")
  if _CACHE.value:
    cli.check_output_dir(_CACHE.value, "--cache_dir")
  s = evaluate_checkpoint(_WORKDIR.value, _DATA.value, step, eval_cfg, _OUT.value, cache_dir=_CACHE.value)
  print(json.dumps({k: v for k, v in s.items() if isinstance(v, (float, str)) and "/" not in k}))


if __name__ == "__main__":
  cli.run(main)
