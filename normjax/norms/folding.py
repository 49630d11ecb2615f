"""Moved to ``normjax.surgery.folding`` (whole-model rewrites live in ``normjax.surgery``).

TEMPORARY compatibility shim, lazy (this leaf package imports nothing above it at import
time): ``normjax/ln_removal.py`` (being rewritten elsewhere) still imports ``fold_norms`` from
here. Remove once it imports ``from normjax.surgery.folding import fold_norms``.
"""


def __getattr__(name: str):
  if name.startswith("__"):
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  import importlib
  return getattr(importlib.import_module("normjax.surgery.folding"), name)
