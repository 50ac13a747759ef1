"""The data-scaling study: tumour DSC and sensitivity against N real tumour cases, real vs real+synthetic.

  python launch/scaling.py --config=configs/scaling_phantom.py --workdir=runs/scaling
  python launch/scaling.py --config=configs/scaling_phantom.py --workdir=runs/scaling --list
  python launch/scaling.py --config=configs/scaling_atlas2.py:pancreas --workdir=/scratch/scaling \
      --only=synth_n500_s0      # one run per cluster job (e.g. a SLURM array over --list)
  python launch/scaling.py --config=... --workdir=... --collect   # tables and plot of finished runs
  python launch/scaling.py --config=... --workdir=... --sampling  # tumour share: training patches vs test windows
  python launch/scaling.py --config=... --workdir=... --false_positives=all  # what lies under the FPs

Reruns skip finished runs. Prints the study's markdown tables (points with 95% bootstrap intervals over
seeds and held-out cases, the paired difference real+synth - real per N, false positives per control case)
and writes results.csv, runs.csv, cases.csv, table.md, summary.json and scaling.png into --workdir
(docs/SCALING.md describes the study and its statistics).
"""

import json

from absl import app, flags
from ml_collections import config_flags

from jaxseg import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config (with a scaling block).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Study folder.", required=True)
_ONLY = flags.DEFINE_string("only", "", "Run just this run (see --list), then collect.")
_LIST = flags.DEFINE_bool("list", False, "Print the run names, one per line, and exit.")
_SAMPLING = flags.DEFINE_bool("sampling", False, "Print how tumour-rich the training patches are against the "
                               "held-out windows (jaxseg.scaling.sampling_report) and exit.")
_FALSE_POSITIVES = flags.DEFINE_string(
    "false_positives", "", "Finished runs (comma-separated names, or all): predict their held-out cases again "
    "(once per run; kept in <run>/eval/components.csv) and print what lies under each false-positive "
    "tumour and whether a confidence rule could separate the controls, per arm and N "
    "(jaxseg.scaling.false_positive_anatomy).")
_COLLECT = flags.DEFINE_bool("collect", False, "Only collect finished runs into the table and plot.")
flags.mark_flags_as_required(["config"])


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxseg import scaling  # pylint: disable=import-outside-toplevel
  config = _CONFIG.value
  if _LIST.value:
    print("\n".join(scaling.run_names(config)))
    return
  if _SAMPLING.value:
    print(json.dumps(scaling.sampling_report(config), indent=1))
    return
  if _FALSE_POSITIVES.value:
    fp = scaling.false_positive_anatomy(config, _WORKDIR.value, _FALSE_POSITIVES.value)
    print(fp["table"])
    print()
    print(json.dumps(fp["runs"]))
    return
  cli.init_processes()
  summary = scaling.collect(config, _WORKDIR.value) if _COLLECT.value else scaling.run_study(
      config, _WORKDIR.value, _ONLY.value)
  print(summary["table"])
  print()
  print(json.dumps({"runs_finished": summary["runs_finished"], "runs_total": summary["runs_total"],
                    "table": f"{_WORKDIR.value}/results.csv", "plot": f"{_WORKDIR.value}/scaling.png"}))


if __name__ == "__main__":
  cli.run(main)
