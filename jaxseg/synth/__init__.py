"""On-device synthetic tumours (SYNTHESIS.md): organ profiles, the jittable synthesizer, batch application."""

from jaxseg.synth.profiles import default_profiles_config
