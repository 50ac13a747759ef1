"""Write the procedural phantom data set (AbdomenAtlas 1.x layout NIfTI) into --out.

  python launch/make_phantoms.py --out=/tmp/phantoms --num_cases=24 --seed=0 [--ood] [--tumor_fraction=0.5] \
      [--lesion_scale=1.8 --lesion_contrast=2]
  # The calibration figures: phantom liver lesions measured like real metastases, beside the real ones.
  python launch/make_phantoms.py --out=/tmp/phantoms_fig --num_cases=12 --tumor_fraction=1 --measure
"""

from __future__ import annotations

from absl import app, flags

from jaxseg import cli
from jaxseg.data.phantom import make_phantoms

_OUT = flags.DEFINE_string("out", None, "Folder to write.", required=True)
_NUM = flags.DEFINE_integer("num_cases", 24, "Number of cases.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed (same seed, same files).")
_FRACTION = flags.DEFINE_float("tumor_fraction", 0.5, "Per organ, the share of cases with lesions.")
_OOD = flags.DEFINE_bool("ood", False, "Out-of-distribution variant (unenhanced, noisier, other geometry).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Parallel processes.")
_SCALE = flags.DEFINE_float("lesion_scale", 1.0, "Multiplies lesion radii (1: calibrated; the :easy variant: 1.8).")
_MEASURE = flags.DEFINE_bool("measure", False, "Then measure the liver lesions (jaxseg/metrics/lesion_figures.py) "
                              "and print them beside real liver metastases as a markdown table.")
_CONTRAST = flags.DEFINE_float("lesion_contrast", 1.0, "Multiplies lesions' HU difference from the organ (1: calibrated; :easy: 2).")


def main(argv):
  del argv
  try:
    make_phantoms(_OUT.value, _NUM.value, _SEED.value, _FRACTION.value, _OOD.value, workers=_WORKERS.value,
                  lesion_scale=_SCALE.value, lesion_contrast=_CONTRAST.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print(f"wrote {_NUM.value} phantom cases to {_OUT.value}")
  if _MEASURE.value:
    from jaxseg.metrics import lesion_figures  # pylint: disable=import-outside-toplevel
    rows = lesion_figures.measure_atlas_cases(_OUT.value, "liver")
    print(f"liver lesions: {len(rows)} components in {len({r['case'] for r in rows})} cases")
    print(lesion_figures.comparison_table(lesion_figures.summarize(rows)))


if __name__ == "__main__":
  cli.run(main)
