"""Name -> object lookup shared by norms, optimizers, models and datasets.

One mechanism for every component a config names: ``REGISTRY.register('name')`` as a
decorator, ``REGISTRY.get('name')`` to resolve. An unknown name raises a ``KeyError``
whose message names the config key, the bad value and every known name.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry:
  """A named table of factories.

  Args:
    kind: what the entries are ("norm", "optimizer", ...), used in error messages.
    config_key: the config key users set to pick an entry (e.g. ``model.norm``).
    lazy_modules: modules imported on the first lookup, so that entries defined
      in optional or heavy modules register themselves without import cycles.
  """

  def __init__(self, kind: str, config_key: str, lazy_modules: tuple[str, ...] = ()):
    self.kind = kind
    self.config_key = config_key
    self._entries: dict[str, Any] = {}
    self._lazy_modules = list(lazy_modules)

  def register(self, name: str, obj: Any = None) -> Callable:
    """Registers ``obj`` under ``name``; usable as ``@REG.register('name')``."""

    def add(o):
      if name in self._entries and self._entries[name] is not o:
        raise KeyError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = o
      return o

    return add if obj is None else add(obj)

  def _load(self):
    while self._lazy_modules:
      importlib.import_module(self._lazy_modules.pop(0))

  def names(self) -> list[str]:
    self._load()
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    self._load()
    return name in self._entries

  def get(self, name: str) -> Any:
    self._load()
    if not isinstance(name, str):
      raise ValueError(
        f"config key {self.config_key}={name!r}: must be a string naming a "
        f"{self.kind}; known: {', '.join(self.names())}"
      )
    try:
      return self._entries[name]
    except KeyError:
      raise KeyError(
        f"config key {self.config_key}={name!r}: unknown {self.kind}; "
        f"known: {', '.join(self.names())}"
      ) from None
