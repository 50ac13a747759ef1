"""AbdomenAtlas 2.0: one organ's tumours, or all six together, at the published settings.

  python launch/train.py --config=configs/atlas2.py:liver --workdir=runs/atlas2_liver \
      --config.data.root=/data/AbdomenAtlas2.0
  python launch/train.py --config=configs/atlas2.py:all --workdir=runs/atlas2_all --config.data.root=...

Variants: liver, pancreas, kidney, colon, esophagus, uterus, all. Settings of the synthetic-tumour papers:
1 mm isotropic spacing, 96^3 patches, HU window -175..250, AdamW with warmup and cosine decay, synthetic
tumours on 90% of control patches (half the patches come from control cases). A GPU is needed: on a CPU one
step takes tens of seconds. Multi-GPU and cluster runs: see the README (launch/launch_local.py, launch/slurm/).
Preprocessing (1 mm) of the 10,135 scans takes hours on the first run and is reused by later runs.
"""

import ml_collections

from jaxseg.default_config import get_config as base_config
from jaxseg.labels import ORGANS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  organ = arg or "liver"
  if organ not in ORGANS + ("all",):
    raise ValueError(f"configs/atlas2.py: unknown variant {organ!r}; use one of {', '.join(ORGANS)} or all")
  c = base_config()
  c.data.layout = "atlas2"
  c.data.root = ""  # --config.data.root=/path/to/AbdomenAtlas2.0 (folders ct/ and label/)
  c.data.organs = ORGANS if organ == "all" else (organ,)
  c.data.spacing = (1.0, 1.0, 1.0)
  c.data.patch_size = (96, 96, 96)
  c.data.batch_size = 8 if organ == "all" else 4
  c.data.num_val = 200
  c.data.num_workers = 8
  c.data.synth_fraction = 0.5
  c.data.hu_window = (-175.0, 250.0)
  # The published generator's behaviour: tumour sites on the whole case, pos/neg crops, its deformation and
  # texture statistics (docs/SYNTHESIS.md). Its own liver runs also windowed -21..189 HU:
  # --config.data.hu_window=-21,189 reproduces that; the nnU-Net-style window above is kept by default.
  c.synth.mode = "reference"
  c.model.features = (32, 64, 128, 256, 320)
  c.model.blocks_per_stage = (1, 3, 4, 6, 6)
  c.model.dtype = "bfloat16"
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-4
  c.optim.weight_decay = 1e-5
  c.optim.warmup_steps = 2000
  c.train.num_steps = 100_000
  c.train.checkpoint_every = 2000
  c.train.eval_every = 10_000
  c.eval.max_cases = 200
  return c
