"""optax's own optimizers under the normjax registry contract.

Each factory is ``f(learning_rate, *, weight_decay=0.0, weight_decay_mask=None, **kwargs)``
and forwards ``kwargs`` to the optax alias unchanged, so every optax keyword works from
a config. Weight decay is optax's own for each alias:

* adamw, lamb, muon, galore: the alias's decoupled decay (multiplied by the learning rate).
* adafactor: ``weight_decay_rate``.
* lars: its own (``weight_decay_mask`` passed through).
* sgd: L2 added to the gradient before momentum (``add_decayed_weights`` ahead of
  ``optax.sgd``), as ``torch.optim.SGD(weight_decay=...)`` does.
"""

import optax
from optax import contrib

from normjax.optim._registry import register


@register("adamw")
def adamw(learning_rate, *, weight_decay=0.0, weight_decay_mask=None, **kwargs):
  return optax.adamw(learning_rate, weight_decay=weight_decay, mask=weight_decay_mask, **kwargs)


@register("sgd")
def sgd(learning_rate, *, weight_decay=0.0, weight_decay_mask=None, **kwargs):
  tx = optax.sgd(learning_rate, **kwargs)
  if weight_decay:
    tx = optax.chain(optax.add_decayed_weights(weight_decay, weight_decay_mask), tx)
  return tx


@register("lamb")
def lamb(learning_rate, *, weight_decay=0.0, weight_decay_mask=None, **kwargs):
  return optax.lamb(learning_rate, weight_decay=weight_decay, mask=weight_decay_mask, **kwargs)


@register("lars")
def lars(learning_rate, *, weight_decay=0.0, weight_decay_mask=None, **kwargs):
  mask = True if weight_decay_mask is None else weight_decay_mask
  return optax.lars(learning_rate, weight_decay=weight_decay, weight_decay_mask=mask, **kwargs)


@register("adafactor")
def adafactor(learning_rate, *, weight_decay=0.0, weight_decay_mask=None, **kwargs):
  return optax.adafactor(
    learning_rate,
    weight_decay_rate=weight_decay or None,
    weight_decay_mask=weight_decay_mask,
    **kwargs,
  )


@register("muon")
def muon(learning_rate, *, weight_decay=0.0, weight_decay_mask=None, **kwargs):
  return contrib.muon(
    learning_rate, weight_decay=weight_decay, weight_decay_mask=weight_decay_mask, **kwargs
  )


@register("galore")
def galore(learning_rate, *, weight_decay=0.0, weight_decay_mask=None, **kwargs):
  return contrib.galore(learning_rate, weight_decay=weight_decay, mask=weight_decay_mask, **kwargs)
