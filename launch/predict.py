"""Segments CT files with a trained run; writes NIfTI label maps on each input's own grid and affine.

  python launch/predict.py --workdir=runs/phantom --input=/data/ct.nii.gz --output=/tmp/pred
  python launch/predict.py --workdir=runs/phantom --input=/data/cts/ --output=/tmp/pred --checkpoint=best
  python launch/predict.py --workdir=runs/phantom --input=/data/cts/ --output=/tmp/pred --save_probabilities

A folder goes on past a file that cannot be read or predicted: the good ones are written (with scores.json),
the failures are listed at the end, one line each, and the exit status is 1.
"""

import sys

from absl import app, flags

from jaxseg import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of a trained run.", required=True)
_INPUT = flags.DEFINE_string("input", None, "A CT (.nii.gz/.nii) or a folder of them.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the predictions.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint step, 'best', or unset for the latest.")
_SAVE_PROBS = flags.DEFINE_bool("save_probabilities", False,
                                "Also write <name>.npz: class probabilities float16 [X, Y, Z, K] on the "
                                "input's grid, and class_names.")
_RESAMPLE = flags.DEFINE_enum("resample", None, ["probabilities", "labels"],
                              "Back to the input grid: resample probabilities (linear) then argmax (nnU-Net), "
                              "or labels (nearest). Default: the run's eval.resample.")


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.check_output_dir(_OUTPUT.value, "--output")
  step = cli.parse_checkpoint(_CHECKPOINT.value)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxseg import assembly, parallel  # pylint: disable=g-import-not-at-top
  from jaxseg.infer.predict import predict_files  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(jax.local_devices())
  config, params, used = assembly.restore_for_inference(_WORKDIR.value, step, mesh=mesh)
  if _RESAMPLE.value:
    config.eval.resample = _RESAMPLE.value
  failures = []
  written = predict_files(config, params, _INPUT.value, _OUTPUT.value, mesh=mesh,
                          save_probabilities=_SAVE_PROBS.value, failures=failures)
  print(f"wrote {len(written)} prediction(s) of checkpoint {used} to {_OUTPUT.value}")
  if failures:
    for line in failures:
      print(f"failed: {line}", file=sys.stderr)
    print(f"error: {len(failures)} of {len(written) + len(failures)} input(s) failed (listed above)",
          file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
