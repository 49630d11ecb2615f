"""Normalization layers, resolved by name. A leaf package: it imports no other normjax wing
(state, train, optim, models, surgery); they import it.

Contract for every registered norm (what models and the trainer rely on):

* class: a subclass of ``normjax.norms.base.Norm``; ``register`` refuses anything else.
* factory: ``NORMS.get(name)(num_features, *, rngs, **kwargs) -> Norm``; ``make_norm`` is the
  short form. ``kwargs`` come from ``config.model.norm_kwargs``.
* call: ``norm(x, mask=None)`` with ``x`` channels-last ``(..., num_features)``; ``mask``
  (bool, broadcastable to ``x.shape[:-1]``, True = real token) restricts statistics taken
  across positions to non-padding positions where the norm supports it.
* math: a pure function ``f(x, params, state, *, train, mask=None, ...) -> (y, new_state)``
  beside the module; the module owns the variables (``StatefulNorm`` does the write-back).
* train/eval: the attribute ``use_running_average`` (False = training) of norms with running
  statistics, flipped for the whole model by ``model.train()`` / ``model.eval()`` or
  ``nnx.view(model, use_running_average=...)``.
* traits, declared once with their defaults on ``normjax.norms.base.Norm`` (its docstring has
  the details) and read by models as plain attributes:
  - ``uses_batch_statistics`` (False): the output depends on other examples of the batch;
  - ``needs_site`` (False): the constructor takes ``site=NormSite(role, block, depth)``;
  - ``compressed_residual`` (False): reads d-1 stored coordinates (residual stream width-1);
  - ``separate_value_path`` (False): has ``qk_and_v(x, mask)`` for the attention input;
  - ``fuses_activation`` (False): takes ``apply_act`` and applies its own nonlinearity;
  - ``records_aux_loss`` (False): training calls record an ``AuxLoss``;
  - ``needs_tokens`` (False): the call takes ``tokens=`` (an LM's token ids);
  - ``needs_task_ids`` (False): the call takes ``task_ids=`` (continual-learning task ids);
  - ``eval_affine`` (None): else a method ``() -> (a, c)``, eval output ``a * x + c``.
  Running statistics live in ``nnx.BatchStat`` variables, backward-pass statistics in
  ``normjax.variables.GradStat``, auxiliary losses in ``normjax.variables.AuxLoss``.
* parameter names follow flax: ``scale`` and ``bias``; models put norms in attributes whose
  names contain ``norm`` so parameter labels can find them.

Adding a norm is one file: a module in this package that registers its classes with
``@register('name')`` and lists its public names in ``__all__``. Submodules are discovered
(``pkgutil``) and imported on the first registry lookup or the first attribute access, so
``normjax.norms.PowerNorm`` / ``normjax.norms.power_norm`` need no table here (a public name
equal to a submodule's name, as the function ``ibn.ibn``, resolves to the submodule).
"""

from __future__ import annotations

import importlib
import pkgutil

from flax import nnx

from normjax.norms.base import Norm
from normjax.registry import Registry


def _submodule_names() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


_SUBMODULES = _submodule_names()
NORMS = Registry(
  "norm", "model.norm", lazy_modules=tuple(f"{__name__}.{name}" for name in _SUBMODULES)
)


def register(name: str, obj=None):
  """Registers a ``Norm`` subclass under ``name``; usable as ``@register('name')``."""

  def add(cls):
    if not (isinstance(cls, type) and issubclass(cls, Norm)):
      raise TypeError(
        f"norm {name!r}: {cls!r} is not a subclass of normjax.norms.base.Norm; "
        f"registered norms inherit it so models can read its traits"
      )
    return NORMS.register(name, cls)

  return add if obj is None else add(obj)


_exports: dict | None = None


def _public_names() -> dict:
  """Name -> object from every submodule's ``__all__`` (imports them all, once)."""
  global _exports
  if _exports is None:
    found, owner = {}, {}
    for module_name in _SUBMODULES:
      module = importlib.import_module(f"{__name__}.{module_name}")
      for public in getattr(module, "__all__", ()):
        value = getattr(module, public)
        if public in found and found[public] is not value:
          raise ImportError(
            f"normjax.norms: {public!r} is exported by both {owner[public]} and {module_name}"
          )
        found[public], owner[public] = value, module_name
    _exports = found
  return _exports


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  if not name.startswith("__"):
    exports = _public_names()
    if name in exports:
      return exports[name]
  raise AttributeError(f"module 'normjax.norms' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_SUBMODULES) | set(_public_names()))


def make_norm(name: str, num_features: int, *, rngs: nnx.Rngs, **kwargs) -> Norm:
  """Builds the norm registered as ``name`` for ``num_features`` channels."""
  return NORMS.get(name)(num_features, rngs=rngs, **kwargs)


def uses_batch_statistics(name: str) -> bool:
  """The ``uses_batch_statistics`` trait of the norm registered as ``name``."""
  return NORMS.get(name).uses_batch_statistics
