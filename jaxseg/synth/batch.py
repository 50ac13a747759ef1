"""Synthetic tumours on a batch, inside the jitted and sharded train step.

Each sample is handled alone (vmap), so the result for a given key does not depend on the batch size or on
how the batch is split over devices. The organ of a sample selects its profile with lax.switch; under vmap
every organ branch runs, so keep ``config.data.organs`` to the organs you train on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg import labels as labels_lib
from jaxseg.synth import spec as spec_lib
from jaxseg.synth.synthesizer import draw, render


def synthesize(image_hu: jax.Array, organ_mask: jax.Array, spacing: jax.Array, key: jax.Array, profile,
               size_class: str | None = None, contrast: str = "absolute") -> tuple[jax.Array, jax.Array]:
  """Puts synthetic tumours into one HU patch.

  Args:
    image_hu: float32 [X, Y, Z] HU.
    organ_mask: bool [X, Y, Z].
    spacing: float32 [3] voxel size in mm (x, y, z; z axial).
    key: typed jax.random key.
    profile: organ profile (a ConfigDict from profiles.py, or a spec.ProfileSpec).
    size_class: static size class; None draws one uniformly from the profile's classes.
    contrast: "absolute" (published HU drop) or "relative" (to the organ's local HU).

  Returns:
    (image_hu float32 [X, Y, Z], tumor_mask bool [X, Y, Z]). With no organ voxel the image is unchanged.
  """
  sp = spec_lib.make_spec(profile, contrast=contrast, size_class=size_class)
  d = draw(key, sp, tuple(image_hu.shape))
  out, tumor, _ = render(jnp.asarray(image_hu, jnp.float32), jnp.asarray(organ_mask, bool),
                         jnp.asarray(spacing, jnp.float32), d, sp)
  return out, tumor


def apply_synthesis(images: jax.Array, labels: jax.Array, batch: dict, keys: jax.Array,
                    organs: tuple[str, ...], synth_cfg: ml_collections.ConfigDict
                    ) -> tuple[jax.Array, jax.Array]:
  """Synthetic tumours on the control samples of a batch, with probability ``synth_cfg.prob`` each.

  Args:
    images: float32 [B, X, Y, Z] HU.
    labels: int32 [B, X, Y, Z] in the label space of ``organs``.
    batch: the loader's batch; reads ``synth_organ`` (int32 [B]: index into ``organs`` of the organ to grow
      a tumour in, -1 to leave the sample) and ``spacing`` (float32 [B, 3] mm).
    keys: typed key array [B].
    organs: static tuple of organ names (config.data.organs).
    synth_cfg: config.synth (enabled, prob, contrast, profiles).

  Returns:
    (images [B, X, Y, Z], labels [B, X, Y, Z]) with the tumours and their tumour labels.
  """
  organs = labels_lib.check_organs(organs)
  if not synth_cfg.enabled:
    return images, labels
  contrast = str(synth_cfg.contrast)
  profiles = synth_cfg.profiles
  specs = []
  for o in organs:
    if o not in profiles:
      raise ValueError(f"config.synth.profiles has no profile for organ {o!r}")
    specs.append(spec_lib.make_spec(profiles[o], name=o, contrast=contrast))
  prob = float(synth_cfg.prob)

  def one(image, label, organ_idx, sp, key):
    k_fire, k_synth = jax.random.split(key)
    fire = (organ_idx >= 0) & (jax.random.uniform(k_fire) < prob)

    def branch(i):
      def fn(args):
        img, lab = args
        organ = lab == labels_lib.organ_label(organs, organs[i])
        d = draw(k_synth, specs[i], tuple(img.shape))
        out, tumor, _ = render(img, organ, sp, d, specs[i])
        return out, jnp.where(tumor, labels_lib.tumor_label(organs, organs[i]), lab).astype(lab.dtype)
      return fn

    idx = jnp.clip(organ_idx, 0, len(organs) - 1)
    out, lab = jax.lax.switch(idx, [branch(i) for i in range(len(organs))], (image, label))
    return jnp.where(fire, out, image), jnp.where(fire, lab, label)

  return jax.vmap(one)(images, labels, batch["synth_organ"], batch["spacing"], keys)
