"""Optimizers as optax GradientTransformations, resolved by name.

Registry contract: ``OPTIMIZERS.get(name)(learning_rate, *, weight_decay=0.0,
weight_decay_mask=None, **kwargs) -> optax.GradientTransformation``, where
``learning_rate`` is a float or an optax schedule and ``weight_decay_mask`` a pytree of
bools (or a callable of params, or a ``labels.LABELS`` name) marking the leaves that decay.

Layout (as ``optax/contrib/__init__.py``): one private module per optimizer, re-exported
here by name; importing this package imports them all, and each registers its alias with
``@register(name)``. A new optimizer is one file plus one import line below. Public
modules: ``labels`` (parameter partitions) and ``build`` (the trainer's optimizer).
"""

# pylint: disable=g-importing-member
from normjax.optim import (
  _optax_aliases,  # noqa: F401  (registers optax's own optimizers)
  labels,
)
from normjax.optim._adamp import ScaleByAdamPState, adamp, scale_by_adamp
from normjax.optim._compander import compander_adam, scale_by_compander
from normjax.optim._conda import CondaDimensionNumbers, ScaleByCondaState, conda, scale_by_conda
from normjax.optim._grassmann import (
  ScaleByGrassmannRSGDState,
  grassmann_rsgd,
  scale_by_grassmann_rsgd,
)
from normjax.optim._nap import NormalizeAndProjectState, nap, normalize_and_project
from normjax.optim._q_galore import (
  LazyRefreshState,
  ScaleByQGaLoreState,
  q_galore,
  q_galore_stats,
  scale_by_q_galore,
)
from normjax.optim._quantize import (
  QuantizedArray,
  WeightStorage,
  float_weights,
  quantized_weights,
)
from normjax.optim._registry import OPTIMIZERS, register
from normjax.optim._riemannian import (
  RiemannianSGDState,
  scale_by_spd_bw,
  scale_by_stiefel,
  spd_rsgd,
  stiefel_rsgd,
)
from normjax.optim._sgdp import ScaleBySGDPState, scale_by_sgdp, sgdp
from normjax.optim._transforms import DecayAfterStepState, add_decayed_weights_after_step

__all__ = (
  "OPTIMIZERS",
  "register",
  "labels",
  "DecayAfterStepState",
  "add_decayed_weights_after_step",
  "compander_adam",
  "scale_by_compander",
  "ScaleByAdamPState",
  "adamp",
  "scale_by_adamp",
  "ScaleBySGDPState",
  "scale_by_sgdp",
  "sgdp",
  "CondaDimensionNumbers",
  "ScaleByCondaState",
  "conda",
  "scale_by_conda",
  "NormalizeAndProjectState",
  "nap",
  "normalize_and_project",
  "ScaleByGrassmannRSGDState",
  "grassmann_rsgd",
  "scale_by_grassmann_rsgd",
  "RiemannianSGDState",
  "scale_by_spd_bw",
  "scale_by_stiefel",
  "spd_rsgd",
  "stiefel_rsgd",
  "LazyRefreshState",
  "ScaleByQGaLoreState",
  "q_galore",
  "q_galore_stats",
  "scale_by_q_galore",
  "QuantizedArray",
  "WeightStorage",
  "float_weights",
  "quantized_weights",
)
