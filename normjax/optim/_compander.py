r"""Weight Compander's rule for Adam-type optimizers (Cakaj et al., IJCNN 2023, arXiv 2306.16993).

With w = Psi(v) = a arctan(v / b) (``normjax.models.weight_compander``) the gradient reaching
v is dL/dv = dL/dPsi * Psi'(v), Psi'(v) = a b / (b^2 + v^2). An adaptive optimizer would
normalise that rescaling away, so the paper follows Powerpropagation (Schwarz et al. 2021):
compute the adaptive step from dL/dPsi and multiply the step by Psi'(v). At each Dense/Conv
kernel leaf (``labels.is_kernel``) ``scale_by_compander(inner, a, b)`` does

    g_Psi = g_v / Psi'(v);   (u, s) = inner.update(g_Psi, s, params);   u <- u * Psi'(v)

and passes every other leaf to ``inner`` unchanged. Psi'(v) > 0 everywhere, so the division
is exact algebra (dL/dPsi = dL/dv / Psi'(v)). (a, b): a learnable per-layer pair is read from
the scalars ``compander_a`` / ``compander_b`` next to the kernel in ``params``; otherwise the
fixed ``a``, ``b`` given here (use the model's). ``params`` is required.

``compander_adam(learning_rate, a, b, b1, b2, eps, weight_decay, weight_decay_mask)``:
``scale_by_compander(scale_by_adam)``, then decoupled weight decay on v (AdamW-style,
NOT multiplied by Psi'(v)), then the learning rate: for a kernel
    v <- v - lr (Psi'(v) adam(g_v / Psi'(v)) + lambda v).
Works under ``optax.inject_hyperparams`` (a, b, learning_rate injectable).
With SGD the paper uses Eq. 2 as is: any plain optimizer on v, no transform needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from normjax.optim._registry import register
from normjax.optim.labels import is_kernel, param_names


def _ab_checked(a, b):
  for name, value in (("a", a), ("b", b)):
    if isinstance(value, (int, float)) and not value > 0:
      raise ValueError(f"compander {name}={value!r}: must be > 0 (w = a * arctan(v / b))")


def compander_derivatives(params, a=None, b=None):
  """Psi'(v) at each kernel leaf of ``params`` (per-layer a, b when present), None elsewhere."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  by_name = {param_names(p): x for p, x in flat}

  def derivative(path, v):
    if not is_kernel(path):
      return None
    names = param_names(path)
    la = by_name.get(names[:-1] + ("compander_a",), a)
    lb = by_name.get(names[:-1] + ("compander_b",), b)
    if la is None or lb is None:
      raise ValueError(
        f"scale_by_compander: kernel {'/'.join(names)} has no compander_a / compander_b "
        f"next to it; give the model's fixed a and b"
      )
    v = v.astype(jnp.promote_types(v.dtype, jnp.float32))
    return la * lb / (lb * lb + v * v)

  return treedef.unflatten([derivative(p, x) for p, x in flat])


def scale_by_compander(
  inner: optax.GradientTransformation, a=None, b=None
) -> optax.GradientTransformation:
  """Powerpropagation-style wrapping of ``inner`` for Weight Compander; see the module doc."""
  _ab_checked(a, b)

  def init_fn(params):
    return inner.init(params)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_compander needs params (v) to compute Psi'(v)")
    d = compander_derivatives(params, a, b)
    keep = lambda x: x is None
    grads = jax.tree.map(
      lambda g, s: g if s is None else (g / s).astype(g.dtype), updates, d, is_leaf=keep
    )
    step, state = inner.update(grads, state, params)
    step = jax.tree.map(
      lambda u, s: u if s is None else (u * s).astype(u.dtype), step, d, is_leaf=keep
    )
    return step, state

  return optax.GradientTransformation(init_fn, update_fn)


@register("compander_adam")
def compander_adam(
  learning_rate,
  a=1.0,
  b=0.6,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  *,
  weight_decay: float = 0.0,
  weight_decay_mask=None,
) -> optax.GradientTransformation:
  """Adam with Weight Compander's Powerpropagation-style step; see the module docstring.

  ``a``, ``b``: the model's fixed pair (ignored at layers holding learnable
  ``compander_a`` / ``compander_b``). ``weight_decay``: decoupled, on v, masked by
  ``weight_decay_mask``.
  """
  return optax.chain(
    scale_by_compander(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), a, b),
    optax.add_decayed_weights(weight_decay, weight_decay_mask),
    optax.scale_by_learning_rate(learning_rate),
  )
