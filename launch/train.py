"""Trains a segmentation model: the thin command-line face of jaxseg.train.loop.

  python launch/train.py --config=configs/phantom.py --workdir=runs/phantom
  python launch/train.py --config=configs/phantom.py:smoke --workdir=/tmp/smoke --config.train.num_steps=5

Rerunning the same command resumes from the work directory's last checkpoint. At the end the final
checkpoint is evaluated on the held-out cases and a short summary is printed.
"""

from absl import app, flags
from ml_collections import config_flags

from jaxseg import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally with :variant.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (checkpoints, logs, reports).")
flags.mark_flags_as_required(["config"])


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.init_processes()
  from jaxseg.train.loop import train_and_evaluate, format_summary  # pylint: disable=import-outside-toplevel
  summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    print(format_summary(summary))


if __name__ == "__main__":
  cli.run(main)
