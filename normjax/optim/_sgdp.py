r"""SGDP: SGD with momentum, radial part of the step removed on scale-invariant weights.

Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum
Optimizers on Scale-invariant Weights", ICLR 2021 (arXiv 2006.08217). Follows the
official code, clovaai/AdamP:adamp/sgdp.py (v0.3.0; timm's ``timm/optim/sgdp.py`` is the
same), including its quirks. The scale-invariance test and the projection ``proj`` are
AdamP's (``_adamp.py``: two views, output channel = last axis of a Flax kernel).

Step (decay ratio r in {1, wd_ratio})::

  buf <- momentum buf + (1 - dampening) g            (no first-step special case)
  d    = g + momentum buf if nesterov else buf
  d    = proj(d)
  buf <- d                                           (without nesterov, by default)
  p   <- p (1 - lr wd r / (1 - momentum)) - lr d

**The projected direction becomes the momentum buffer** (without Nesterov). The
official step writes ``d_p = buf`` -- the buffer tensor itself, not a copy -- and the
projection then subtracts the radial part in place (``perturb -= p_n * ...``), so the
buffer carried into the next step is the projected one. With Nesterov ``d`` is a new
tensor (``grad + momentum * buf``) and the buffer stays unprojected. normjax follows the
official code by default (``project_momentum=True``); ``project_momentum=False`` projects
a copy and keeps the raw buffer (normjax's behaviour before this option existed). The
two agree with Nesterov, with ``momentum == 0`` and on leaves that never pass the test;
otherwise they diverge, by O(1) relative parameter differences within 40 steps on
scale-invariant leaves (``tests/test_optim_sgdp.py``). AdamP has no such effect: its
direction ``exp_avg / denom`` is a new tensor. NaP (``_nap.py``) projects weights, not
optimizer state, so ``nap(base='sgdp')`` inherits the choice made here.

The weight decay is decoupled and applied before the step (to the current weights), so
it is part of ``scale_by_sgdp`` (the ratio ``r`` is only known there): its output is
``proj(d) + wd r p / (1 - momentum)`` and the alias chains ``scale_by_learning_rate``.
SGDP equals ``optax.sgd(momentum)`` (plus the scaled decay) on leaves that never pass the
test. ``update`` needs ``params``. Arithmetic runs in the wider of float32 and the leaf's
dtype (float64 runs stay float64); the buffer is stored in its own dtype.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from normjax.optim._adamp import project_radial, radial_sums
from normjax.optim._registry import register
from normjax.optim._transforms import (
  bool_mask,
  check_nonnegative,
  compute_dtype,
  require_params,
  unzip,
)


class ScaleBySGDPState(NamedTuple):
  """State of ``scale_by_sgdp``: step count and the momentum buffer."""

  count: jax.Array  # int32 scalar
  momentum: optax.Updates


def scale_by_sgdp(
  momentum: float = 0.0,
  dampening: float = 0.0,
  nesterov: bool = False,
  eps: float = 1e-8,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  weight_decay: float = 0.0,
  weight_decay_mask: Any = None,
  *,
  momentum_dtype: Optional[Any] = None,
  project_momentum: bool = True,
) -> optax.GradientTransformation:
  """SGDP's direction plus its decoupled weight decay ``wd r p / (1 - momentum)``.

  Args:
    momentum, dampening, nesterov: as ``torch.optim.SGD``. The buffer is kept even when
      ``momentum == 0`` (it then equals ``(1 - dampening) g``), so ``momentum`` can be
      injected as a hyperparameter.
    eps, delta, wd_ratio: the test and projection's (``_adamp.py``).
    weight_decay, weight_decay_mask: as ``scale_by_adamp``.
    momentum_dtype: dtype of the buffer (default: the parameter's).
    project_momentum: without Nesterov, store the projected direction as the new buffer,
      as the official code's in-place projection does (module docstring); False keeps
      the unprojected buffer.
  """
  check_nonnegative(
    momentum=momentum,
    dampening=dampening,
    eps=eps,
    delta=delta,
    wd_ratio=wd_ratio,
    weight_decay=weight_decay,
  )
  if isinstance(momentum, (int, float)) and momentum >= 1:
    raise ValueError(
      f"momentum={momentum!r}: must be < 1 (SGDP divides the weight decay by 1 - momentum)"
    )
  momentum_dtype = None if momentum_dtype is None else jnp.dtype(momentum_dtype)

  def init_fn(params):
    return ScaleBySGDPState(
      count=jnp.zeros([], jnp.int32), momentum=optax.tree.zeros_like(params, dtype=momentum_dtype)
    )

  def update_fn(updates, state, params=None):
    require_params(params, "sgdp")

    def leaf(g, b, p, decays):
      dtype = compute_dtype(g, p)
      c = lambda x: jnp.asarray(x, dtype)
      g_ = g.astype(dtype)
      buf = c(momentum) * b.astype(dtype) + c(1.0 - dampening) * g_
      d = g_ + c(momentum) * buf if nesterov else buf
      ratio = 1.0
      if p.ndim > 1:
        # <p, d> = <p, g> + momentum <p, buf'> (Nesterov) or <p, buf'>: reduced from the
        # new buffer, not from d. Reading the old buffer instead makes XLA copy the
        # donated buffer that buf' overwrites in place.
        sums = radial_sums(g, p, dtype)
        p_buf = jnp.sum(p.astype(dtype) * buf, axis=tuple(range(p.ndim - 1)))
        pd = sums[0] + c(momentum) * p_buf if nesterov else p_buf
        d, passed = project_radial(d, p, sums, pd, delta=c(delta), eps=c(eps))
        ratio = jnp.where(passed, c(wd_ratio), c(1.0))
        if project_momentum and not nesterov:
          buf = d  # the official in-place projection of the buffer (module docstring)
      if decays:
        d = d + (c(weight_decay) * ratio / c(1.0 - momentum)) * p.astype(dtype)
      return d.astype(g.dtype), buf.astype(b.dtype)

    decays = bool_mask(weight_decay_mask, params, name="weight_decay_mask")
    outputs = jax.tree.map(leaf, updates, state.momentum, params, decays)
    new_updates, buffers = unzip(updates, outputs, 2)
    return new_updates, ScaleBySGDPState(count=optax.safe_increment(state.count), momentum=buffers)

  return optax.GradientTransformation(init_fn, update_fn)


@register("sgdp")
def sgdp(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float = 0.0,
  dampening: float = 0.0,
  weight_decay: float = 0.0,
  nesterov: bool = False,
  eps: float = 1e-8,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  *,
  weight_decay_mask: Any = None,
  momentum_dtype: Optional[Any] = None,
  project_momentum: bool = True,
) -> optax.GradientTransformation:
  """SGDP (defaults of clovaai/AdamP): ``chain(scale_by_sgdp, scale_by_learning_rate)``.

  ``update(grads, state, params)`` needs ``params``. ``project_momentum=True`` (default)
  carries the projected direction in the momentum buffer, as the official code does;
  see ``scale_by_sgdp`` and the module docstring.
  """
  return optax.chain(
    scale_by_sgdp(
      momentum,
      dampening,
      nesterov,
      eps,
      delta,
      wd_ratio,
      weight_decay,
      weight_decay_mask,
      momentum_dtype=momentum_dtype,
      project_momentum=project_momentum,
    ),
    optax.scale_by_learning_rate(learning_rate),
  )
