"""Checks of config.synth, raised as one-line ValueErrors naming the field (the lead wires them in)."""

from __future__ import annotations

from jaxseg.synth import spec as spec_lib
from jaxseg.synth.batch import organ_specs


def check_synth_config(config) -> None:
  """Raises ValueError naming the field when config.synth cannot work with config.data.

  Checks: mode, contrast, prob in [0, 1], min_spacing_mm within the supported range and not coarser than
  the finest axis of config.data.spacing (a finer spacing than the static boxes were sized for would cut
  tumours), and that every organ of config.data.organs has a valid profile (and, in reference mode,
  reference-bank texture constants); texture and bank_margin are checked as the profiles' specs are made.
  """
  s = config.synth
  mode = str(s.mode)
  spec_lib.mode_settings(mode)
  spec_lib.check_contrast(str(s.contrast))
  if not 0.0 <= float(s.prob) <= 1.0:
    raise ValueError(f"config.synth.prob must be in [0, 1], got {s.prob}")
  ms = spec_lib.check_min_spacing(float(s.min_spacing_mm))
  spacing = [float(x) for x in config.data.spacing]
  if min(spacing) < ms - 1e-9:
    raise ValueError(f"config.synth.min_spacing_mm={ms} is coarser than config.data.spacing={tuple(spacing)}: "
                     f"set it to <= {min(spacing)}")
  if max(spacing) > spec_lib.SPACING_RANGE_MM[1]:
    raise ValueError(f"config.data.spacing={tuple(spacing)}: synthesis supports "
                     f"{spec_lib.SPACING_RANGE_MM[0]}-{spec_lib.SPACING_RANGE_MM[1]} mm")
  organ_specs(tuple(config.data.organs), s)
