"""jaxseg: 3D tumour segmentation in CT from real and synthetic tumours, in JAX."""

__version__ = "0.1.0"
