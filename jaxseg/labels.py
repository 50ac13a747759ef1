"""The one label space every part of jaxseg shares.

Layouts name their structures differently (AbdomenAtlas ships one mask per structure, MSD and nnU-Net a
label map with their own ids). Preprocessing maps all of them into this space, so the loader, the
synthesizer, the loss and the metrics never need to know where a case came from.

For the organs of a run (``config.data.organs``, an ordered tuple), organ number ``i`` (0-based) has label
``2 * i + 1`` and its tumour has label ``2 * i + 2``; 0 is background. The number of classes is
``2 * len(organs) + 1``.
"""

from __future__ import annotations

ORGANS: tuple[str, ...] = ("liver", "pancreas", "kidney", "colon", "esophagus", "uterus")


def check_organs(organs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
  """Returns ``organs`` as a tuple after checking each name is one jaxseg knows."""
  organs = tuple(organs)
  for name in organs:
    if name not in ORGANS:
      raise ValueError(f"data.organs: unknown organ {name!r}; known: {', '.join(ORGANS)}")
  if len(set(organs)) != len(organs):
    raise ValueError(f"data.organs: duplicate organ in {organs}")
  if not organs:
    raise ValueError("data.organs: at least one organ is needed")
  return organs


def organ_label(organs: tuple[str, ...], organ: str) -> int:
  """Label id of ``organ`` in the label space of ``organs``."""
  return 2 * organs.index(organ) + 1


def tumor_label(organs: tuple[str, ...], organ: str) -> int:
  """Label id of the tumour of ``organ`` in the label space of ``organs``."""
  return 2 * organs.index(organ) + 2


def num_classes(organs: tuple[str, ...]) -> int:
  """Number of output classes of a model trained on ``organs`` (background included)."""
  return 2 * len(organs) + 1


def class_names(organs: tuple[str, ...]) -> list[str]:
  """Names of all classes in label order: background, organ, organ_tumor, ..."""
  names = ["background"]
  for organ in organs:
    names += [organ, f"{organ}_tumor"]
  return names
