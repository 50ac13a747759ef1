"""Two runs compared on the same held-out cases: each run's figures and the paired difference B - A.

  python launch/compare_reports.py --a=runs/phantom/eval/step_2000 --b=runs/phantom_3000/eval/step_3000

Reads both reports' cases.csv (launch/train.py and launch/evaluate.py write them) and prints, per metric,
each run's mean over the cases that count for it with a 95% percentile bootstrap interval over cases, and
the paired difference B - A (the same resampled cases for both runs). One run per side: the intervals cover
the held-out cases, not the training seed (the scaling study resamples seeds too).
"""

import json

from absl import app, flags

from jaxseg import cli
from jaxseg.metrics.compare import compare_reports

_A = flags.DEFINE_string("a", None, "Report folder of run A (e.g. <workdir>/eval/step_2000).", required=True)
_B = flags.DEFINE_string("b", None, "Report folder of run B.", required=True)
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 10_000, "Bootstrap resamples of the cases.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a markdown table.")


def _fmt(t, signed=False):
  est, lo, hi = t
  f = "{:+.3f}" if signed else "{:.3f}"
  return f.format(est) + (f" [{f.format(lo)}, {f.format(hi)}]" if hi == hi else "")


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  r = compare_reports(_A.value, _B.value, _BOOTSTRAP.value)
  if _JSON.value:
    print(json.dumps(r, indent=1))
    return
  print(f"{len(r['cases'])} shared held-out cases ({r['num_tumor_cases']} with tumours); "
        f"95% bootstrap intervals over cases ({_BOOTSTRAP.value} resamples)\n")
  print("| metric | A | B | B - A (paired) |\n| --- | --- | --- | --- |")
  for m, v in r["metrics"].items():
    print(f"| {m} | {_fmt(v['a'])} | {_fmt(v['b'])} | {_fmt(v['b_minus_a'], True)} |")


if __name__ == "__main__":
  cli.run(main)
