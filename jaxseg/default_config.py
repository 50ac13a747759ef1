"""Default configuration: every field jaxseg reads, with the published settings for real CT.

It lives in the library (configs/default.py re-exports it) so every config file can import it by a stable
name, whatever the working directory.

This is the base the other configs import and change. On its own it describes a liver run on an
AbdomenAtlas-layout data set at 1 mm spacing with 96^3 patches and the -175..250 HU window (the settings of
the synthetic-tumour papers); point ``data.root`` at your data:

  python launch/train.py --config=configs/default.py --workdir=runs/liver \
      --config.data.root=/data/AbdomenAtlas2.0 --config.data.layout=atlas2

Expect a GPU: one train step at 2x96^3 with this model takes tens of seconds on a CPU.
"""

import ml_collections

from jaxseg.synth.profiles import default_profiles_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data: where the cases are, how they are preprocessed and how patches are drawn (see jaxseg/data).
  c.data = ml_collections.ConfigDict()
  c.data.layout = "atlas2"          # atlas | atlas2 | msd | nnunet | manifest | phantom
  c.data.root = ""                  # folder (or manifest file) of the raw data set
  c.data.cache_dir = ""             # preprocessed cache; "" -> <root>_cache_<spacing>
  c.data.organs = ("liver",)        # label space: organ i -> 2i+1, its tumour -> 2i+2 (jaxseg/labels.py)
  c.data.spacing = (1.0, 1.0, 1.0)  # target voxel spacing in mm (canonical RAS axes x, y, z)
  c.data.patch_size = (96, 96, 96)
  c.data.batch_size = 2             # global batch: split over all devices of all processes
  c.data.fg_oversample = 0.33       # nnU-Net: a third of tumour-case patches centred on foreground
  c.data.organ_centred = 0.0        # share of the other tumour-case patches centred on an organ voxel
  c.data.synth_fraction = 0.5       # share of patches drawn from control cases (synthetic-tumour sites)
  c.data.num_real_tumor_cases = -1  # use the first N real tumour cases of the training split (-1: all)
  c.data.num_val = 0                # held-out cases (tumour and control), chosen by split_seed
  c.data.split_seed = 0
  c.data.num_workers = 0            # Grain worker processes (0: in the main process)
  c.data.prefetch = 2
  c.data.hu_window = (-175.0, 250.0)  # clip and scale to [0, 1] on the device
  c.data.preprocess_workers = 2

  # Phantom data (data.layout == "phantom"): made on first use into data.root.
  c.data.phantom = ml_collections.ConfigDict()
  c.data.phantom.num_cases = 24
  c.data.phantom.seed = 0
  c.data.phantom.tumor_fraction = 0.5
  c.data.phantom.ood = False
  c.data.phantom.lesion_scale = 1.0     # multiplies lesion radii (task difficulty; anatomy unchanged)
  c.data.phantom.lesion_contrast = 1.0  # multiplies lesions' HU difference from their organ

  # Model: a residual-encoder 3D U-Net (jaxseg/models; the zoo and its parameter counts: docs/MODELS.md).
  c.model = ml_collections.ConfigDict()
  c.model.name = "resenc_unet"      # resenc_unet | mednext_s|b|m|l | segresnet_ds | swin_unetr (sizes by name)
  c.model.features = (32, 64, 128, 256, 320)   # resenc_unet only
  c.model.blocks_per_stage = (1, 3, 4, 6, 6)   # resenc_unet only: residual blocks per stage (nnU-Net ResEnc M)
  c.model.deep_supervision = True
  c.model.dtype = "float32"         # compute dtype: float32 | bfloat16 (parameters stay float32)
  # auto: per layer, the form measured fastest on the backend (CPU: depth_folded, input-dilated im2col,
  # depthwise native; accelerators: native) | native | depth_folded (3D as 2D convs) | im2col (3D as
  # matmuls); docs/MODELS.md
  c.model.conv = "auto"

  # Loss: soft Dice + cross-entropy with deep-supervision weights halving per level.
  c.loss = ml_collections.ConfigDict()
  c.loss.dice_weight = 1.0
  c.loss.ce_weight = 1.0
  c.loss.batch_dice = False         # one Dice per class over the whole batch (nnU-Net's batch Dice)

  # Optimizer: "sgd" (nnU-Net: Nesterov 0.99, poly decay) or "adamw" (warmup + cosine).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.learning_rate = 1e-2
  c.optim.momentum = 0.99
  c.optim.weight_decay = 3e-5
  c.optim.poly_power = 0.9
  c.optim.warmup_steps = 0
  c.optim.clip_norm = 12.0

  # Synthetic tumours on control samples, inside the jitted step (jaxseg/synth).
  c.synth = ml_collections.ConfigDict()
  c.synth.enabled = True
  c.synth.name = "rule_based"       # the synthesis stage (jaxseg/synth/stage.py SYNTHESIZERS)
  c.synth.prob = 0.9                # per control sample (the reference's value)
  c.synth.contrast = "absolute"     # the published HU drop ("relative" is retired: use mode "realistic")
  # reference: sites drawn on the whole case by the loader, pos/neg crops, sequential 2D deformation and
  # bank-wide texture statistics (the published generator; the paper configs use it); patch: sites drawn in
  # each patch, one smooth 3D field, per-patch texture rescale (docs/SYNTHESIS.md, "Placement modes").
  # Reference mode needs the loader built with make_train_loader(..., synth_cfg=config.synth). realistic:
  # patch placement, tumours calibrated on real lesions (profile.realistic; docs/SYNTHESIS.md).
  c.synth.mode = "patch"
  c.synth.min_spacing_mm = 1.0      # finest spacing the static tumour boxes are sized for (0.5-5 mm)
  # field: each synthesis makes its texture over the patch; bank: textures built once per run on the device
  # (the published generator's bank, held as the synthesizer's frozen parameters) and read at a random
  # window, much cheaper per synthesis (docs/SYNTHESIS.md, "Texture bank"); modes patch and reference.
  c.synth.texture = "field"
  c.synth.bank_margin = 32          # bank texture side = patch side + this (offsets drawn in [0, margin])
  c.synth.profiles = default_profiles_config()  # per organ, e.g. --config.synth.profiles.liver.delta=...

  # On-device augmentation after synthesis (jaxseg/augment.py), nnU-Net-like.
  c.augment = ml_collections.ConfigDict()
  c.augment.mirror = True
  c.augment.rot90 = True
  c.augment.intensity_scale = (0.9, 1.1)
  c.augment.intensity_shift = (-0.1, 0.1)
  c.augment.spatial = False         # small rotations and scalings
  c.augment.spatial_prob = 0.2      # per sample, when spatial is on (nnU-Net: 0.2)
  c.augment.rotation_deg = 15.0
  c.augment.scale = (0.85, 1.25)
  c.augment.noise_prob = 0.1
  c.augment.noise_std = 0.1
  c.augment.blur_prob = 0.2
  c.augment.blur_sigma = (0.5, 1.0)

  # Training loop.
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 250_000
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.eval_every = 0            # 0: validate only at the end
  c.train.best_metric = "tumor_dsc"  # kept checkpoint: best by this validation metric (higher is better)

  # Inference and evaluation (jaxseg/infer, jaxseg/metrics).
  c.eval = ml_collections.ConfigDict()
  c.eval.overlap = 0.5
  c.eval.window_batch = 4
  c.eval.tta_mirror = False
  # Convolution form of the inference network (same parameters as training's): "auto" is depth_folded on a
  # CPU backend (XLA:CPU runs its 2D convolutions through YNNPACK: 1.4x the sliding window's speed there,
  # README "Speed and memory") and model.conv elsewhere; or native | depth_folded | im2col.
  c.eval.conv = "auto"
  # A checkpoint's evaluation and prediction compile its parameters into the program as constants: "auto"
  # does on a CPU backend for models of >= 1M parameters (XLA:CPU then folds the copies of the kernels'
  # taps away: ResEnc M's sliding window about 5% faster, README "Speed and memory"); "true" | "false".
  # Validation during training never does (new parameters each time, one compilation for all).
  c.eval.constant_params = "auto"
  c.eval.largest_organ_component = True
  c.eval.tumor_in_organ_margin_mm = 5.0   # < 0 disables the organ-mask rule
  c.eval.min_tumor_volume_mm3 = 0.0
  c.eval.min_tumor_confidence = 0.0     # > 0: drop tumour components whose mean probability is lower
  c.eval.nsd_tolerance_mm = 2.0
  c.eval.bootstrap = 1000
  c.eval.max_cases = -1

  # ---- Day-one tooling: experiment tracking, partial labels, prediction resampling. ----
  # TensorBoard event files in the work directory (jaxseg/train/tb_log.py); W&B only when asked and installed.
  c.track = ml_collections.ConfigDict()
  c.track.tensorboard = True
  c.track.image_every = 500         # montage of a post-synthesis training batch every N steps (0: never)
  c.track.num_images = 2            # samples in that montage (<= data.batch_size)
  c.track.wandb = False             # also log to Weights & Biases (needs `pip install wandb`)
  c.track.wandb_project = "jaxseg"
  # Cases annotate only some classes (a liver-only set mixed with a kidney-only set): the loss drops a
  # case's unannotated classes from Dice and merges them into background for CE (jaxseg/train/losses.py).
  c.loss.partial_labels = True
  # Back to the original grid: "probabilities" resamples class probabilities (linear) and takes the argmax
  # there (nnU-Net); "labels" takes the argmax on the training grid and resamples labels (nearest).
  c.eval.resample = "probabilities"
  return c


def config_from_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file, so a config can start from another one beside it.

  Config files are loaded by path (absl's config_flags), not imported as a package; this keeps that true
  when one config builds on another: ``config_from_file(os.path.join(os.path.dirname(__file__), "phantom.py"))``.
  """
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  name = "jaxseg_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
