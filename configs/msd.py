"""Medical Segmentation Decathlon: Task03_Liver (LiTS) and Task07_Pancreas, at the published settings.

  python launch/train.py --config=configs/msd.py:liver --workdir=runs/msd_liver \
      --config.data.root=/data/Task03_Liver
  python launch/train.py --config=configs/msd.py:pancreas --workdir=runs/msd_pancreas \
      --config.data.root=/data/Task07_Pancreas

MSD labels are 0 background, 1 organ, 2 tumour (read from dataset.json). MSD has no control cases, so
synthetic tumours need healthy scans from another source (e.g. a manifest of AbdomenAtlas controls); as
configured, patches come from the tumour cases only and the synthesizer idles. 1 mm spacing, 96^3
patches, HU window -175..250. A GPU is needed.
"""

import ml_collections

from jaxseg.default_config import get_config as base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  organ = arg or "liver"
  if organ not in ("liver", "pancreas"):
    raise ValueError(f"configs/msd.py: unknown variant {organ!r}; use liver or pancreas")
  c = base_config()
  c.data.layout = "msd"
  c.data.root = ""
  c.data.organs = (organ,)
  c.data.spacing = (1.0, 1.0, 1.0)
  c.data.patch_size = (96, 96, 96)
  c.data.batch_size = 2
  c.data.num_val = 26 if organ == "liver" else 56   # about 20% of the 131 / 281 training cases
  c.data.num_workers = 8
  c.data.synth_fraction = 0.0
  # The published generator's behaviour: tumour sites on the whole case, pos/neg crops, its deformation and
  # texture statistics (docs/SYNTHESIS.md). Its own liver runs also windowed -21..189 HU:
  # --config.data.hu_window=-21,189 reproduces that; the nnU-Net-style window above is kept by default.
  c.synth.mode = "reference"
  c.model.dtype = "bfloat16"
  c.optim.name = "sgd"            # nnU-Net's recipe
  c.optim.learning_rate = 1e-2
  c.train.num_steps = 250_000
  c.train.eval_every = 25_000
  return c
