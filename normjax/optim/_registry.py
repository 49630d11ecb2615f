"""The optimizer registry: ``OPTIMIZERS.get(name)`` and the ``@register(name)`` decorator.

A module of its own so that the optimizer modules can import it while
``normjax.optim.__init__`` is still importing them (no lazy-module list to keep in sync).
"""

from normjax.registry import Registry

OPTIMIZERS = Registry("optimizer", "optimizer.name")
register = OPTIMIZERS.register
