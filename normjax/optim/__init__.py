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
from normjax.optim._registry import OPTIMIZERS, register
from normjax.optim import labels
from normjax.optim import _optax_aliases  # noqa: F401  (registers optax's own optimizers)
from normjax.optim._transforms import DecayAfterStepState
from normjax.optim._transforms import add_decayed_weights_after_step
from normjax.optim._adamp import ScaleByAdamPState
from normjax.optim._adamp import adamp
from normjax.optim._adamp import scale_by_adamp
from normjax.optim._sgdp import ScaleBySGDPState
from normjax.optim._sgdp import scale_by_sgdp
from normjax.optim._sgdp import sgdp
from normjax.optim._conda import CondaDimensionNumbers
from normjax.optim._conda import ScaleByCondaState
from normjax.optim._conda import conda
from normjax.optim._conda import scale_by_conda
from normjax.optim._nap import NormalizeAndProjectState
from normjax.optim._nap import nap
from normjax.optim._nap import normalize_and_project

__all__ = (
    "OPTIMIZERS", "register", "labels", "DecayAfterStepState",
    "add_decayed_weights_after_step", "ScaleByAdamPState", "adamp", "scale_by_adamp",
    "ScaleBySGDPState", "scale_by_sgdp", "sgdp", "CondaDimensionNumbers",
    "ScaleByCondaState", "conda", "scale_by_conda", "NormalizeAndProjectState", "nap",
    "normalize_and_project",
)
