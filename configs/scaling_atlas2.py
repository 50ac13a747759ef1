"""The data-scaling study on AbdomenAtlas 2.0 for one organ, for GPU clusters.

  python launch/scaling.py --config=configs/scaling_atlas2.py:pancreas --workdir=/scratch/scaling_pancreas \
      --config.data.root=/data/AbdomenAtlas2.0 --list       # the run names
  # one run per job, e.g. a SLURM array (see launch/slurm/), then:
  python launch/scaling.py --config=configs/scaling_atlas2.py:pancreas --workdir=... --only=synth_n500_s0
  python launch/scaling.py --config=configs/scaling_atlas2.py:pancreas --workdir=... --collect

The grid follows the paper (real tumour cases from 50 to 1,500 and more; real only vs real + synthetic
tumours on the control scans, and synthetic tumours alone at N = 0), 3 seeds, the same step budget per run,
evaluated on the same held-out real tumour and control cases; intervals and paired differences as in
docs/SCALING.md. Set scaling.ood to "layout:dir" of an external set (for example an MSD task)
for the out-of-distribution column.
"""

import os

import ml_collections

from jaxseg.default_config import config_from_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_from_file(os.path.join(os.path.dirname(__file__), "atlas2.py"), arg or "pancreas")
  c.train.num_steps = 60_000
  c.train.eval_every = 0
  c.scaling = ml_collections.ConfigDict()
  c.scaling.num_real = (0, 50, 100, 250, 500, 1000, 1500, 2500)
  c.scaling.arms = ("real", "real+synth")
  c.scaling.seeds = (0, 1, 2)
  c.scaling.ood = ""
  c.scaling.ood_cases = 100
  c.scaling.bootstrap = 2000
  return c
