"""On-device synthetic tumours (docs/SYNTHESIS.md): organ profiles, the jittable synthesizer, batch application."""

from jaxseg.synth.batch import apply_synthesis, synthesize
from jaxseg.synth.profiles import default_profiles_config

__all__ = ["apply_synthesis", "synthesize", "default_profiles_config"]
