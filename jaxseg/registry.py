"""Named registries: the one place where each model, layout, optimizer or synthesizer declares itself.

A registry maps a config name (``model.name``, ``data.layout``, ``optim.name``, ``synth.name``) to an
entry that carries what the rest of the code needs to know about it: how to build it, its config checks
and its facts. Adding a variant is one module plus one ``register`` line; an unknown name gets one line
naming the config field and the closest known names, so a typo costs seconds.
"""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


def closest(name: str, known) -> str:
  """', or did you mean X?' style suffix naming the closest known names (empty when none is close)."""
  near = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.6)
  return f"; did you mean {' or '.join(near)}?" if near else ""


class Registry(Generic[T]):
  """Entries by name for one config field (``field`` is its dotted name, used in error messages)."""

  def __init__(self, field: str):
    self.field = field
    self._entries: dict[str, T] = {}

  def register(self, name: str, entry: T) -> T:
    """Adds ``entry`` under ``name``; registering a name twice is a programming error."""
    if name in self._entries:
      raise ValueError(f"{self.field}: {name!r} is registered twice")
    self._entries[name] = entry
    return entry

  def get(self, name: str) -> T:
    """The entry of ``name``. Raises ValueError naming the field, the known names and the closest ones."""
    if name not in self._entries:
      raise ValueError(f"{self.field}: unknown name {name!r}; known: {', '.join(self._entries)}"
                       f"{closest(name, self._entries)}")
    return self._entries[name]

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)
