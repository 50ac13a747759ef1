"""KiTS (kidney tumours), in the nnU-Net raw layout or as a manifest, at the published settings.

  python launch/train.py --config=configs/kits.py --workdir=runs/kits \
      --config.data.root=/data/nnUNet_raw/Dataset220_KiTS2023 --config.data.layout=nnunet

Labels: 1 kidney, 2 tumour, 3 cyst (merged into kidney by the reader). KiTS19 stores volumes with the
slice axis first; preprocessing reorients every case to RAS. 1 mm spacing, 96^3 patches, HU window
-175..250. A GPU is needed.
"""

import ml_collections

from jaxseg.default_config import get_config as base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = base_config()
  c.data.layout = "nnunet"
  c.data.root = ""
  c.data.organs = ("kidney",)
  c.data.spacing = (1.0, 1.0, 1.0)
  c.data.patch_size = (96, 96, 96)
  c.data.batch_size = 2
  c.data.num_val = 60
  c.data.num_workers = 8
  c.data.synth_fraction = 0.0
  c.model.dtype = "bfloat16"
  c.optim.name = "sgd"
  c.train.num_steps = 250_000
  c.train.eval_every = 25_000
  return c
