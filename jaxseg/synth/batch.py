"""Synthetic tumours on a batch, inside the jitted and sharded train step.

Each sample is handled alone (lax.map), so the result for a given key does not depend on the batch size or
on how the batch is split over devices. The organ of a sample selects its profile with lax.switch, and only
that branch runs for a sample that fires.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, PartitionSpec
import numpy as np

from jaxseg import labels as labels_lib
from jaxseg.synth import device_bank, realistic, spec as spec_lib
from jaxseg.synth.profile_file import resolve_profile
from jaxseg.synth.synthesizer import draw, render


def uses_realistic(spec: spec_lib.ProfileSpec) -> bool:
  """Realistic mode renders hypodense profiles with realistic.py; the others render as patch mode."""
  return spec.mode == "realistic" and spec.intensity == "hypodense" and spec.realistic is not None


def synthesize(image_hu: jax.Array, organ_mask: jax.Array, spacing: jax.Array, key: jax.Array, profile,
               size_class: str | None = None, contrast: str = "absolute", mode: str | None = None,
               min_spacing_mm: float | None = None, centers: jax.Array | None = None,
               center_ok: jax.Array | None = None, class_index: jax.Array | None = None,
               blocked: jax.Array | None = None, texture_bank: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
  """Puts synthetic tumours into one HU patch.

  Args:
    image_hu: float32 [X, Y, Z] HU.
    organ_mask: bool [X, Y, Z].
    spacing: float32 [3] voxel size in mm (x, y, z; z axial). When concrete it is checked against
      ``min_spacing_mm`` (a finer spacing would cut tumours: ValueError).
    key: typed jax.random key.
    profile: organ profile (a ConfigDict from profiles.py, or a spec.ProfileSpec).
    size_class: static size class; None draws one uniformly from the profile's classes.
    contrast: "absolute" (published HU drop; "relative" is retired, use mode "realistic").
    mode: "patch", "reference" or "realistic" (see docs/SYNTHESIS.md).
    min_spacing_mm: finest spacing the static sizes serve (default 1 mm, or the ProfileSpec's).
    centers, center_ok: optional tumour sites in patch coordinates (placement.draw_sites); else drawn on the
      patch's organ.
    class_index: optional (traced) size class index into the profile's classes.
    blocked: optional bool [X, Y, Z]: voxels a tumour must never take (other organs).
    texture_bank: the device texture bank (device_bank.build) when the profile's spec reads one
      (``make_spec(..., texture="bank")``).

  Returns:
    (image_hu float32 [X, Y, Z], tumor_mask bool [X, Y, Z]). With no organ voxel the image is unchanged.
  """
  sp = spec_lib.make_spec(resolve_profile(profile), contrast=contrast, size_class=size_class, mode=mode,
                          min_spacing_mm=min_spacing_mm)
  if not isinstance(spacing, jax.core.Tracer):
    spec_lib.check_spacing(np.asarray(spacing), sp.min_spacing_mm)
  if uses_realistic(sp):
    d = realistic.draw(key, sp, tuple(image_hu.shape))
    out, tumor, _ = realistic.render(jnp.asarray(image_hu, jnp.float32), jnp.asarray(organ_mask, bool),
                                     jnp.asarray(spacing, jnp.float32), d, sp,
                                     blocked=None if blocked is None else jnp.asarray(blocked, bool))
    return out, tumor
  d = draw(key, sp, tuple(image_hu.shape), class_index=class_index)
  out, tumor, _ = render(jnp.asarray(image_hu, jnp.float32), jnp.asarray(organ_mask, bool),
                         jnp.asarray(spacing, jnp.float32), d, sp, centers=centers, center_ok=center_ok,
                         blocked=None if blocked is None else jnp.asarray(blocked, bool), bank=texture_bank)
  return out, tumor


def organ_specs(organs: tuple[str, ...], synth_cfg: ml_collections.ConfigDict) -> list[spec_lib.ProfileSpec]:
  """The static spec of each organ of ``organs`` under ``synth_cfg`` (mode, contrast, min spacing, texture)."""
  contrast = str(synth_cfg.contrast)
  mode = str(synth_cfg.mode)
  min_spacing = float(synth_cfg.min_spacing_mm)
  texture = str(synth_cfg.get("texture", "field"))
  margin = synth_cfg.get("bank_margin", 32)
  profiles = synth_cfg.profiles
  specs = []
  for o in organs:
    if o not in profiles:
      raise ValueError(f"config.synth.profiles has no profile for organ {o!r}")
    specs.append(spec_lib.make_spec(resolve_profile(profiles[o], o), name=o, contrast=contrast, mode=mode,
                                    min_spacing_mm=min_spacing, texture=texture, bank_margin=margin))
  return specs


def apply_synthesis(images_hu: jax.Array, labels: jax.Array, batch: dict, keys: jax.Array,
                    organs: tuple[str, ...], synth_cfg: ml_collections.ConfigDict, mesh: Mesh | None = None,
                    banks: dict | None = None) -> tuple[jax.Array, jax.Array]:
  """Synthetic tumours on the control samples of a batch, with probability ``synth_cfg.prob`` each.

  Args:
    images_hu: float32 [B, X, Y, Z] HU.
    labels: int32 [B, X, Y, Z] in the label space of ``organs``.
    batch: the host batch dict (jaxseg/data/pipeline.py): reads "synth_organ" (int32 [B], index into
      ``organs`` of the organ to grow a tumour in, -1 to leave the sample), "spacing" (float32 [B, 3] mm) and,
      in reference mode, "synth_centers" (int32 [B, S, 3], patch coordinates) and "synth_center_ok"
      (uint8 [B, S]): the sites the loader drew on the whole case.
    keys: typed key array [B].
    organs: static tuple of organ names (config.data.organs).
    synth_cfg: config.synth (enabled, prob, mode, contrast, min_spacing_mm, profiles).
    mesh: the run's mesh (its "data" axis splits the batch); with several organs, each device then maps
      over its own samples.
    banks: with ``synth_cfg.texture == "bank"``: {name: bank} (``build_banks``; the synthesizer's frozen
      parameters), replicated over the mesh.

  The samples are mapped one by one (``map_samples``: ``lax.map``, inside ``shard_map`` over the mesh's
  "data" axis when a mesh is given), not vmapped: a vmapped ``lax.switch`` would evaluate every organ's
  synthesis for every sample (its index is batched) and a vmapped condition every slot. Mapped, the switch
  and the "fire" condition take scalar predicates, and each sample costs one organ's synthesis when it
  fires and nothing when it does not, whatever the number of organs.

  Returns:
    (images [B, X, Y, Z], labels [B, X, Y, Z]) with the tumours and their tumour labels. A tumour never
    takes a voxel labelled as another organ (or another organ's tumour).
  """
  organs = labels_lib.check_organs(organs)
  if not synth_cfg.enabled:
    return images_hu, labels
  specs = organ_specs(organs, synth_cfg)
  reference = str(synth_cfg.mode) == "reference"
  if reference:
    if "synth_centers" not in batch or "synth_center_ok" not in batch:
      raise ValueError("config.synth.mode='reference' needs the loader's synth_centers/synth_center_ok batch "
                       "fields: build the loader with make_train_loader(..., synth_cfg=config.synth)")
    total = slot_count(specs)
    if batch["synth_centers"].shape[1:] != (total, 3):
      raise ValueError(f"batch['synth_centers'] has shape {batch['synth_centers'].shape}, expected [B, {total}, 3] "
                       f"for config.synth profiles of {organs}")
    centers_all, ok_all = batch["synth_centers"], batch["synth_center_ok"]
  else:
    centers_all = jnp.zeros((images_hu.shape[0], 1, 3), jnp.int32)
    ok_all = jnp.zeros((images_hu.shape[0], 1), jnp.uint8)
  prob = float(synth_cfg.prob)

  def one(banks, image, label, organ_idx, sp, key, centers, ok):
    k_fire, k_synth = jax.random.split(key)
    fire = (organ_idx >= 0) & (jax.random.uniform(k_fire) < prob)

    def branch(i):
      def fn(args):
        img, lab = args
        organ_lab = labels_lib.organ_label(organs, organs[i])
        organ = lab == organ_lab
        blocked = (lab != 0) & ~organ
        if uses_realistic(specs[i]):
          d = realistic.draw(k_synth, specs[i], tuple(img.shape))
          out, tumor, ex = realistic.render(img, organ, sp, d, specs[i], blocked=blocked, label=lab)
          return out, jnp.where(tumor, labels_lib.tumor_label(organs, organs[i]), ex["label"]).astype(lab.dtype)
        d = draw(k_synth, specs[i], tuple(img.shape))
        bank = banks[names[i]] if names[i] is not None else None
        if reference:
          n = sum(g.slots for g in specs[i].groups)
          out, tumor, _ = render(img, organ, sp, d, specs[i], centers=centers[:n], center_ok=ok[:n] > 0,
                                 blocked=blocked, bank=bank)
        else:
          out, tumor, _ = render(img, organ, sp, d, specs[i], blocked=blocked, bank=bank)
        return out, jnp.where(tumor, labels_lib.tumor_label(organs, organs[i]), lab).astype(lab.dtype)
      return fn

    idx = jnp.clip(organ_idx, 0, len(organs) - 1)
    branches = [branch(i) for i in range(len(organs))]
    synth = branches[0] if len(organs) == 1 else (lambda a: jax.lax.switch(idx, branches, a))
    return jax.lax.cond(fire, synth, lambda a: a, (image, label))

  names = bank_names(specs)
  if any(names):
    missing = sorted({n for n in names if n is not None} - set(banks or {}))
    if missing:
      raise ValueError(f"config.synth.texture='bank' needs the texture banks {missing} (build_banks), got "
                       f"{sorted(banks or {})}")
  args = (images_hu, labels, batch["synth_organ"], batch["spacing"], keys, centers_all, ok_all)
  banks = dict(banks or {})
  per_sample = lambda b, *a: map_samples(lambda *x: one(b, *x), a)
  if mesh is None or mesh.devices.size == 1:
    return per_sample(banks, *args)
  spec = PartitionSpec("data")
  # The banks are replicated: each device reads its own copy. check_vma is off because the synthesizer's
  # conditions (an inactive tumour slot returns a constant box) mix per-device values with constants, which
  # the check refuses although every sample is computed on its own device (tests/test_synth.py, boxed groups
  # split over two devices).
  return jax.shard_map(per_sample, mesh=mesh, in_specs=(PartitionSpec(),) + (spec,) * len(args),
                       out_specs=(spec, spec), check_vma=False)(banks, *args)


def build_banks(key: jax.Array, organs: tuple[str, ...], synth_cfg: ml_collections.ConfigDict,
                patch_size, spacing_mm) -> dict:
  """{name: texture bank} for the organs' profiles (``bank_names``: organs with one texture recipe share one),
  each made for ``patch_size`` + ``synth_cfg.bank_margin`` voxels at ``spacing_mm`` (device_bank.py).
  Empty unless ``synth_cfg.texture == "bank"``."""
  specs = organ_specs(tuple(organs), synth_cfg)
  out = {}
  for j, (sp, name) in enumerate(zip(specs, bank_names(specs))):
    if name is not None and name not in out:
      out[name] = device_bank.build(jax.random.fold_in(key, j), sp, tuple(patch_size), spacing_mm)
  return out


def bank_names(specs) -> list[str | None]:
  """Per spec, the name of the texture bank it reads ("texture_bank_<j>", j counting distinct texture
  recipes in organ order), or None when it makes its own texture."""
  recipes = []
  names = []
  for sp in specs:
    if sp.texture_source != "bank":
      names.append(None)
      continue
    r = device_bank.recipe(sp)
    if r not in recipes:
      recipes.append(r)
    names.append(f"texture_bank_{recipes.index(r)}")
  return names


def map_samples(fn, args: tuple) -> tuple:
  """fn over the leading axis of args, one sample at a time (lax.map), whatever the number of organs.

  Mapped, the "fire" condition, the organ switch and the per-slot conditions inside the synthesizer take
  scalar predicates, so a sample that does not fire and a tumour slot that is inactive cost nothing; under
  vmap they become selects and every sample and slot is computed. On this 2-core CPU mapping was as fast or
  faster at every batch measured (docs/SYNTHESIS.md, "Cost"); on an accelerator a vmapped batch would keep
  more of the device busy, but was not measured, so the rule stays one path.
  """
  return jax.lax.map(lambda a: fn(*a), args)


def slot_count(specs) -> int:
  """Site slots the loader provides per sample: the most any organ's profile uses (static)."""
  return max(sum(g.slots for g in sp.groups) for sp in specs)
