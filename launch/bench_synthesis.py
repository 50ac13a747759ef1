"""Times the jitted synthesizer against the numpy baseline in one run and prints one JSON line.

  python launch/bench_synthesis.py --organ=liver --size=medium --patch=96 --batch=2 [--mode=reference]
  python launch/bench_synthesis.py --size=tiny --patch=96 --texture=bank     # the device texture bank
  python launch/bench_synthesis.py --organ=liver --size=tiny --patch=96 --profile [--mode=reference]
  python launch/bench_synthesis.py --against=/tmp/base --patch=96 [--mode=reference] [--texture=bank]   # A/B
      [--against_texture=bank]
  python launch/bench_synthesis.py --forms     # two forms each of the separable blur and the erosion, alternated
  python launch/bench_synthesis.py --ablate --size=tiny --texture=bank     # where draw + render's time goes

The output also carries the published generator's per-call time for the class (published_ms_96, measured
on a 2-core machine at 96^3, 1 mm, textures prebuilt), the figure a speed-up claim must be stated against.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from jaxseg import cli
from jaxseg.synth import bench

_ORGAN = flags.DEFINE_string("organ", "liver", "Organ profile.")
_SIZE = flags.DEFINE_string("size", "any", "Size class: tiny, small, medium, large, mix, or any (drawn).")
_PATCH = flags.DEFINE_integer("patch", 96, "Cubic patch side in voxels.")
_BATCH = flags.DEFINE_integer("batch", 1, "Patches per jitted call (vmap).")
_SPACING = flags.DEFINE_float("spacing", 1.0, "Isotropic voxel spacing in mm.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed jitted calls (median reported).")
_NUMPY_REPEATS = flags.DEFINE_integer("numpy_repeats", 5, "Timed numpy calls (median reported).")
_ORGAN_SETS = flags.DEFINE_list("organ_count", [], "Instead: time one batch of --batch samples (--fire of them "
                                 "firing) for each organ tuple, e.g. liver,liver+kidney,liver+kidney+pancreas.")
_FIRE = flags.DEFINE_integer("fire", 1, "With --organ_count: samples of the batch that get a tumour.")
_PROFILE = flags.DEFINE_bool("profile", False, "Instead: time the whole-patch sub-steps of one patch "
                             "(bench.profile_steps).")
_AGAINST = flags.DEFINE_string("against", "", "Instead: draw+render of one patch per size class (--sizes), this "
                               "checkout against the jaxseg checkout at this path, alternated in one process "
                               "(bench.compare_checkouts), e.g. after `git worktree add /tmp/base main`.")
_SIZES = flags.DEFINE_list("sizes", ["tiny", "small", "medium", "large", "mix"], "With --against: size classes.")
_ROUNDS = flags.DEFINE_integer("rounds", 30, "With --against: alternated rounds per size class.")
_TEXTURE = flags.DEFINE_enum("texture", "field", ["field", "bank"],
                             "Texture source (config.synth.texture): per-sample field or the device bank.")
_AGAINST_TEXTURE = flags.DEFINE_enum("against_texture", "field", ["field", "bank"],
                                     "With --against: the other checkout's texture source.")
_FORMS = flags.DEFINE_bool("forms", False, "Instead: ops.apply_separable against ops.blur_separable on the "
                           "synthesizer's blur sizes, and the erosion's two forms, alternated for --rounds rounds "
                           "(bench.separable_forms, bench.morphology_forms).")
_ABLATE = flags.DEFINE_bool("ablate", False, "Instead: draw + render of one --size patch against copies with one "
                            "part taken out (candidates, soft edge, texture, composition), alternated for --rounds "
                            "rounds (bench.ablation).")
_MODE = flags.DEFINE_enum("mode", "patch", ["patch", "reference", "realistic"],
                          "Synthesis mode (docs/SYNTHESIS.md; realistic ignores --size).")


def main(argv):
  del argv
  try:
    if _AGAINST.value:
      for row in bench.compare_checkouts(_AGAINST.value, _SIZES.value, _PATCH.value, _ROUNDS.value, _ORGAN.value,
                                         _MODE.value, texture=_TEXTURE.value,
                                         other_texture=_AGAINST_TEXTURE.value):
        print(json.dumps(row))
      return
    if _FORMS.value:
      for row in bench.separable_forms(rounds=_ROUNDS.value) + bench.morphology_forms(rounds=_ROUNDS.value):
        print(json.dumps(row))
      return
    if _ABLATE.value:
      for row in bench.ablation(_ORGAN.value, _SIZE.value, _PATCH.value, _TEXTURE.value, _ROUNDS.value):
        print(json.dumps(row))
      return
    if _PROFILE.value:
      print(json.dumps(bench.profile_steps(_ORGAN.value, _SIZE.value, _PATCH.value, _MODE.value)))
      return
    if _ORGAN_SETS.value:
      sets = [tuple(s.split("+")) for s in _ORGAN_SETS.value]
      print(json.dumps(bench.benchmark_organ_count(sets, _PATCH.value, _BATCH.value, _FIRE.value, _REPEATS.value)))
      return
    result = bench.benchmark(_ORGAN.value, _SIZE.value, _PATCH.value, _BATCH.value, _SPACING.value,
                             _REPEATS.value, _NUMPY_REPEATS.value, mode=_MODE.value, texture=_TEXTURE.value)
  except ValueError as e:
    sys.exit(f"bench_synthesis: {e}")
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
