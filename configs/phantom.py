"""The CPU demo: real phantom tumours plus synthetic tumours on control phantoms, end to end.

  python launch/train.py --config=configs/phantom.py --workdir=runs/phantom

Makes the built-in phantom data set on first use (AbdomenAtlas layout, under $JAXSEG_DATA_DIR, default
~/.cache/jaxseg), preprocesses it, trains a small residual U-Net on liver phantoms, evaluates the final
checkpoint on held-out phantom cases with real (phantom) tumours and prints tumour DSC, NSD, tumour-wise
sensitivity and specificity with the report's path.

The demo's phantom liver lesions are calibrated to real liver metastases (phantoms version 3: size and
contrast relative to the surrounding liver measured like real ones, medians inside the real p10-p90; see
``python launch/make_phantoms.py ... --measure``). It trains with the settings below (more tumour-centred and
liver-centred patches, 15% synthetic-tumour patches, mild intensity augmentation) on 32 phantoms, holding
out 16 (8 with liver tumours). The README's earlier figures (tumour DSC 0.583 after 2,000 steps) were
measured on the "easy" lesions of phantoms version 2 (radii x1.8, contrast x2), now the ``easy`` variant;
they are not the demo's.

Variants (``--config=configs/phantom.py:<variant>``):
  smoke  a tiny model for a few steps on a handful of phantoms: the whole pipeline in well under a minute
         of training on a CPU (used by the tests).
  ood    evaluate on the out-of-distribution phantom variant (other noise, contrast phase, spacing, anatomy).
  easy   lesions made easy: radii x1.8 and twice the calibrated contrast (about twice as dark as real
         metastases, and larger). Chosen until a DSC target was met; report it as "easy", never as the demo.
"""

import ml_collections

from jaxseg.default_config import get_config as base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base_config()
  c.data.layout = "phantom"
  c.data.root = ""  # "" -> $JAXSEG_DATA_DIR/phantom-v<version>-n<num_cases>-s<seed>-t<fraction>[-l<scale>x<contrast>][-ood]
  c.data.organs = ("liver",)
  c.data.spacing = (3.0, 3.0, 3.0)
  c.data.patch_size = (32, 32, 32)
  c.data.batch_size = 2
  c.data.fg_oversample = 0.5
  c.data.organ_centred = 0.5
  c.data.synth_fraction = 0.15
  c.data.num_val = 16  # 8 tumour cases and 8 controls: 4 tumour cases left the DSC at the mercy of the draw
  c.data.num_workers = 0
  c.data.hu_window = (-175.0, 250.0)
  c.data.phantom.num_cases = 48
  c.data.phantom.seed = 0
  c.data.phantom.tumor_fraction = 0.5
  # The generator's calibrated lesions (liver: equivalent diameter about 10-35 mm, median about 20 mm, at
  # 3 mm about 3-12 voxels across; about 25% darker than the liver around them).
  c.data.phantom.lesion_scale = 1.0
  c.data.phantom.lesion_contrast = 1.0

  c.model.features = (8, 16, 32, 64)
  c.model.blocks_per_stage = (1, 1, 1, 1)
  c.loss.batch_dice = True

  # Synthetic tumours of the sizes a 3 mm grid can show (the reference's 4 mm "tiny" class and "mix" are
  # one- or two-voxel specks here), on 70% of the control patches: the rest show tumour-free liver.
  c.synth.prob = 0.7
  # Patch placement (a site in every fired control patch that shows the liver), not the reference's
  # whole-case placement: the demo's small, fast run relies on every such patch showing a tumour, and its
  # README figures were measured this way. --config.synth.mode=reference runs the published placement on the phantoms.
  c.synth.mode = "patch"
  c.synth.profiles.liver.classes = ("small", "medium", "large")

  # Mild intensity augmentation: +-10 HU shifts, +-5% scaling, noise up to 13 HU (the library default,
  # +-42 HU shifts on every patch, hides lesions 30-80 HU below the liver from a model this small); no 90
  # degree rotations (the phantoms share one orientation after preprocessing).
  c.augment.rot90 = False
  c.augment.intensity_shift = (-0.025, 0.025)
  c.augment.intensity_scale = (0.95, 1.05)
  c.augment.noise_std = 0.03

  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 50
  c.optim.clip_norm = 12.0

  c.train.num_steps = 2000
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.eval_every = 0

  c.eval.overlap = 0.5
  c.eval.window_batch = 8
  c.eval.tumor_in_organ_margin_mm = 6.0
  c.eval.min_tumor_volume_mm3 = 100.0
  # Chosen on a separate phantom set (seed 1; README "Results") for the easy version-2 lesions, where it
  # dropped most false-positive components; not re-chosen for the calibrated lesions yet.
  c.eval.min_tumor_confidence = 0.7
  c.eval.bootstrap = 500

  if arg == "smoke":
    c.data.phantom.num_cases = 8
    c.data.num_val = 2
    c.data.spacing = (4.0, 4.0, 4.0)
    c.data.patch_size = (16, 16, 16)
    c.data.batch_size = 2
    c.model.features = (4, 8)
    c.model.blocks_per_stage = (1, 1)
    c.optim.warmup_steps = 0
    c.train.num_steps = 4
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.eval.window_batch = 4
    c.eval.bootstrap = 50
  elif arg == "ood":
    c.data.phantom.ood = True
  elif arg == "easy":
    c.data.phantom.lesion_scale = 1.8
    c.data.phantom.lesion_contrast = 2.0
  elif arg:
    raise ValueError(f"configs/phantom.py: unknown variant {arg!r}; use smoke, ood or easy")
  return c
