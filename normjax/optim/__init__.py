"""Optimizers as optax GradientTransformations, resolved by name.

Registry contract: ``OPTIMIZERS.get(name)(learning_rate, *, weight_decay=0.0,
weight_decay_mask=None, **kwargs) -> optax.GradientTransformation``, where
``learning_rate`` is a float or an optax schedule and ``weight_decay_mask`` a pytree of
bools (or a callable of params) marking the leaves that decay. optax's own optimizers
are registered in ``normjax.optim.optax_aliases``; normjax's own register themselves
from their modules (listed in ``lazy_modules``).
"""
from normjax.registry import Registry

OPTIMIZERS = Registry(
    "optimizer", "optimizer.name",
    lazy_modules=("normjax.optim.optax_aliases", "normjax.optim.adamp",
                  "normjax.optim.conda", "normjax.optim.nap"))
register = OPTIMIZERS.register

# Public API (after ``register``, which these modules import). The functions shadow their
# modules' names: reach a module itself with ``importlib.import_module``.
from normjax.optim import labels  # noqa: E402
from normjax.optim.adamp import (ScaleByAdamPState, ScaleBySGDPState, adamp,  # noqa: E402
                                 scale_by_adamp, scale_by_sgdp, sgdp)
from normjax.optim.conda import (CondaDimensionNumbers, ScaleByCondaState,  # noqa: E402
                                 add_decayed_weights_after_step, conda, scale_by_conda)
from normjax.optim.nap import (NormalizeAndProjectState, nap,  # noqa: E402
                               normalize_and_project)
