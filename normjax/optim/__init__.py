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
    lazy_modules=("normjax.optim.optax_aliases",))
register = OPTIMIZERS.register
