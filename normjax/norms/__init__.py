"""Normalization layers, resolved by name.

Contract for every registered norm (what models and the trainer rely on):

* factory: ``NORMS.get(name)(num_features, *, rngs, **kwargs) -> nnx.Module``;
  ``make_norm`` is the short form. ``kwargs`` come from ``config.model.norm_kwargs``.
* call: ``norm(x, mask=None)`` with ``x`` channels-last ``(..., num_features)``;
  ``mask`` (bool, broadcastable to ``x.shape[:-1]``, True = real token) restricts
  batch statistics to non-padding positions where the norm supports it.
* train/eval: the attribute ``use_running_average`` (False = training), flipped for
  the whole model by ``model.train()`` / ``model.eval()``.
* norms whose output depends on other examples of the batch set the class attribute
  ``uses_batch_statistics = True``; their running statistics live in ``nnx.BatchStat``
  variables, which the trainer carries, shards and checkpoints as model state.
* parameter names follow flax: ``scale`` and ``bias``; models put norms in attributes
  whose names contain ``norm`` so parameter labels can find them.
"""
from flax import nnx

from normjax.registry import Registry

NORMS = Registry("norm", "model.norm", lazy_modules=(
    "normjax.norms.basic", "normjax.norms.powernorm", "normjax.norms.unified",
    "normjax.norms.crmsnorm", "normjax.norms.fakeln", "normjax.norms.evonorm",
    "normjax.norms.batch_channel", "normjax.norms.ibn", "normjax.norms.region_norm",
    "normjax.norms.alpha_bn"))
register = NORMS.register

# Public names of the norm modules, imported on first access (``normjax.norms.PowerNorm``).
_EXPORTS = {
    "LayerNorm": "basic", "RMSNorm": "basic", "BatchNorm": "basic", "GroupNorm": "basic",
    "InstanceNorm": "basic", "Identity": "basic",
    "PowerNorm": "powernorm", "power_norm": "powernorm", "group_scaling": "powernorm",
    "UnifiedNorm": "unified", "unified_norm": "unified",
    "CRMSNorm": "crmsnorm", "crms_norm": "crmsnorm",
    "FakeLN": "fakeln", "fake_layer_norm": "fakeln",
    "EvoNormB0": "evonorm", "EvoNormB1": "evonorm", "EvoNormS0": "evonorm",
    "EvoNormS1": "evonorm", "BatchChannelNorm": "batch_channel", "IBN": "ibn",
    "RegionNormB": "region_norm", "RegionNormL": "region_norm", "AlphaBatchNorm": "alpha_bn",
}


def __getattr__(name: str):
  if name in _EXPORTS:
    import importlib
    return getattr(importlib.import_module(f"normjax.norms.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'normjax.norms' has no attribute {name!r}")


def make_norm(name: str, num_features: int, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
  """Builds the norm registered as ``name`` for ``num_features`` channels."""
  return NORMS.get(name)(num_features, rngs=rngs, **kwargs)


def uses_batch_statistics(name: str) -> bool:
  return bool(getattr(NORMS.get(name), "uses_batch_statistics", False))
