r"""Weight Compander (Cakaj, Mehnert, Yang, IJCNN 2023, arXiv 2306.16993) for any NNX model.

No official code exists; the definition is the paper's (Sec. III, Eqs. 1-5). Every Dense and
Conv kernel w (a parameter named ``kernel`` outside norm layers: ``labels.is_kernel``; not
biases, not norm parameters, not embeddings) is re-written

    w = Psi(v) = a * arctan(v / b),   a, b > 0,   so |w| < a * pi / 2,
    dPsi/dv = a / (b (1 + v^2 / b^2)) = a b / (b^2 + v^2)   (largest, a / b, at v = 0),

and the optimizer trains v. Initialisation (Eq. 4): the wrapped model is built with its own
initializers (w0 = the standard init), then v = b * tan(w0 / a), so Psi(v) = w0 exactly; this
needs |w0| < a * pi / 2 for every entry (checked; a ValueError names the layer).

``WeightCompander(model, a=, b=, learnable=, weight_decay=)`` stores v IN PLACE of each kernel
(same parameter paths, under ``model``), and its ``__call__`` writes Psi(v) into those kernels
for the duration of the wrapped model's forward, so gradients reach v through Psi and the model
code is untouched (ResNet, ViT, GPT-2 alike).

* fixed (a, b) (the paper's main method): one pair for the whole network (Table I: e.g.
  ResNet18 CIFAR-10 (1.0, 0.6)). Weight decay acts on w = Psi(v) as a loss term (Eq. 5):
  ``weight_decay`` lambda records (lambda / 2) sum Psi(v)^2 as an ``AuxLoss`` in training,
  i.e. gradient lambda Psi(v) dPsi/dv on v, the same strength as a coupled (PyTorch SGD)
  weight decay lambda on a plain w. The optimizer must then not decay the kernels (v): use
  ``optimizer.decay_mask='decay_except_kernels'``.
* ``learnable=True`` (Sec. III-B, the "fine" variant): one (a, b) per layer, parameters
  ``compander_a`` / ``compander_b`` (scalars) added next to each kernel, initialised to
  ``a``, ``b`` (paper's best: 0.5, 1.0) and trained by backprop through Eq. 1 with the same
  optimizer; weight decay on v only (the optimizer's usual decay: kernels are matrices, a and
  b scalars, so the default ``'decay'`` mask does exactly that). The paper states no
  positivity constraint (it reports |a| of the last layer growing to 8.5); none is enforced:
  a learned a or b may change sign. ``weight_decay`` must be 0 here.

Adam-type optimizers: ``normjax.optim.compander_adam`` (Powerpropagation-style: the adaptive
step is computed from dL/dPsi, then multiplied by dPsi/dv). With SGD, Eq. 2 is used as is.

Inference: ``export(wrapper)`` returns the plain model with w = Psi(v) written into its
kernels (and no a, b); ``export_params(params, a=, b=)`` does the same on a pure-dict
params tree (a checkpoint's ``state['params']``), for ``nnx.update`` of a plain model.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normjax.optim.labels import is_kernel
from normjax.variables import AuxLoss

A_NAME, B_NAME = "compander_a", "compander_b"


def psi(v, a, b):
  """Psi(v) = a arctan(v / b) (Eq. 1)."""
  return a * jnp.arctan(v / b)


def psi_derivative(v, a, b):
  """dPsi/dv = a / (b (1 + v^2 / b^2)) (Eq. 2), written a b / (b^2 + v^2)."""
  return a * b / (b * b + v * v)


def psi_inverse(w, a, b):
  """v = b tan(w / a), the v with Psi(v) = w (Eq. 4); needs |w| < a pi / 2."""
  return b * jnp.tan(w / a)


def check_ab(a, b, *, where: str = "weight_compander") -> None:
  """ValueError unless a and b are positive numbers (skipped for traced values)."""
  for name, value in (("a", a), ("b", b)):
    if isinstance(value, (int, float, np.number)) and not value > 0:
      raise ValueError(f"{where}.{name}={value!r}: must be > 0 (w = a * arctan(v / b))")


def _init_error(path: str, ratio: float, a) -> str:
  return (
    f"weight_compander: kernel {path} has max |w0| / a = {ratio:.4g} >= pi / 2 at init, so "
    f"v = b tan(w0 / a) does not invert Psi (a={a}); use a larger a (the paper uses a >= 0.5)"
  )


def _check_init(path: str, w0, a) -> None:
  ratio = jnp.max(jnp.abs(w0)) / a
  if isinstance(ratio, jax.core.Tracer):  # inside jit / eval_shape: check when it runs

    def check(r):
      if not float(r) < math.pi / 2:
        raise ValueError(_init_error(path, float(r), a))

    jax.debug.callback(check, ratio)
  elif not float(ratio) < math.pi / 2:
    raise ValueError(_init_error(path, float(ratio), a))


def _node(root, path):
  for key in path:
    root = root[key] if isinstance(key, int) else getattr(root, key)
  return root


def kernel_paths(model: nnx.Module) -> tuple[tuple, ...]:
  """Graph paths of the Dense/Conv kernels of ``model`` (``labels.is_kernel``)."""
  return tuple(
    tuple(path)
    for path, node in nnx.iter_graph(model)
    if isinstance(node, nnx.Param) and is_kernel(path)
  )


class WeightCompander(nnx.Module):
  """Weight Compander around any NNX model; see the module docstring.

  Args:
    model: the NNX model, freshly initialised (its kernels are the standard init w0).
    a, b: the fixed pair (``learnable=False``) or the initial per-layer values (True).
    learnable: per-layer trainable (a, b) (the paper's "fine" variant).
    weight_decay: lambda of the (lambda / 2) ||Psi(v)||^2 loss term (fixed (a, b) only).
  """

  records_aux_loss = True

  def __init__(
    self,
    model: nnx.Module,
    *,
    a: float = 1.0,
    b: float = 0.6,
    learnable: bool = False,
    weight_decay: float = 0.0,
  ):
    check_ab(a, b)
    if weight_decay < 0:
      raise ValueError(f"weight_compander.weight_decay={weight_decay!r}: must be >= 0")
    if learnable and weight_decay:
      raise ValueError(
        f"weight_compander.weight_decay={weight_decay!r} with learnable=True: the paper decays "
        "v only in the learnable variant; set it to 0 and use the optimizer's weight_decay"
      )
    self.model = model
    self.a, self.b = float(a), float(b)
    self.learnable, self.weight_decay = bool(learnable), float(weight_decay)
    self.use_running_average = False  # set by model.train() / model.eval()
    self.task = getattr(model, "task", None)
    self.paths = kernel_paths(model)
    if not self.paths:
      raise ValueError("weight_compander: the model has no Dense/Conv kernel to reparameterize")
    for path in self.paths:
      var = _node(model, path)
      w0 = var[...]
      _check_init("/".join(map(str, path)), w0, self.a)
      var[...] = psi_inverse(w0, self.a, self.b).astype(w0.dtype)
      if self.learnable:
        layer = _node(model, path[:-1])
        setattr(layer, A_NAME, nnx.Param(jnp.asarray(self.a, jnp.float32)))
        setattr(layer, B_NAME, nnx.Param(jnp.asarray(self.b, jnp.float32)))

  def _ab(self, path):
    if not self.learnable:
      return self.a, self.b
    layer = _node(self.model, path[:-1])
    return getattr(layer, A_NAME)[...], getattr(layer, B_NAME)[...]

  def __call__(self, *args, **kwargs):
    saved, penalty = [], 0.0
    for path in self.paths:
      var = _node(self.model, path)
      v = var[...]
      w = psi(v, *self._ab(path)).astype(v.dtype)
      if self.weight_decay:
        penalty = penalty + jnp.sum(jnp.square(w.astype(jnp.promote_types(w.dtype, jnp.float32))))
      saved.append((var, v))
      var[...] = w
    try:
      out = self.model(*args, **kwargs)
    finally:
      for var, v in saved:
        var[...] = v
    if self.weight_decay and not self.use_running_average:
      self.decay_loss = AuxLoss(0.5 * self.weight_decay * penalty)
    return out

  def weights(self) -> dict[str, jax.Array]:
    """``{'/'.join(path): Psi(v)}`` for every reparameterized kernel (for histograms)."""
    return {"/".join(map(str, p)): psi(_node(self.model, p)[...], *self._ab(p)) for p in self.paths}


def export(wrapper: WeightCompander) -> nnx.Module:
  """The plain model: a copy of ``wrapper.model`` with kernels Psi(v) and no (a, b)."""
  plain = nnx.clone(wrapper.model)
  for path in wrapper.paths:
    var = _node(plain, path)
    var[...] = psi(var[...], *wrapper._ab(path)).astype(var[...].dtype)
    if wrapper.learnable:
      layer = _node(plain, path[:-1])
      delattr(layer, A_NAME)
      delattr(layer, B_NAME)
  return plain


def export_params(params: dict, *, a: float | None = None, b: float | None = None) -> dict:
  """A wrapper's pure-dict params tree -> the plain model's (top ``'model'`` key removed).

  Kernels become Psi(v) with the layer's ``compander_a`` / ``compander_b`` when present
  (learnable), else the fixed ``a``, ``b``; those scalars are dropped.
  """
  if set(params) != {"model"}:
    raise ValueError(f"export_params: expected a WeightCompander params tree, got {set(params)}")

  def walk(tree, names):
    if not isinstance(tree, dict):
      return tree
    has_ab = A_NAME in tree
    if "kernel" in tree and not has_ab and (a is None or b is None):
      if is_kernel(names + ("kernel",)):
        raise ValueError("export_params: fixed (a, b) needed for this tree (a=..., b=...)")
    out = {}
    for key, value in tree.items():
      if key in (A_NAME, B_NAME):
        continue
      if key == "kernel" and is_kernel(names + (key,)):
        la, lb = (tree[A_NAME], tree[B_NAME]) if has_ab else (a, b)
        out[key] = psi(value, la, lb).astype(value.dtype)
      else:
        out[key] = walk(value, names + (key,))
    return out

  return walk(params["model"], ())


def wrap_factory(make: Callable[..., nnx.Module], options: Any) -> Callable[..., nnx.Module]:
  """``make`` wrapped in a ``WeightCompander`` when ``options`` (``config.weight_compander``:
  a, b, learnable, weight_decay) is given and not empty; else ``make`` unchanged."""
  if not options:
    return make
  options = dict(options.to_dict() if hasattr(options, "to_dict") else options)
  known = ("a", "b", "learnable", "weight_decay")
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise ValueError(f"config key weight_compander.{unknown[0]}: unknown; known: {known}")
  return lambda *args, **kwargs: WeightCompander(make(*args, **kwargs), **options)


__all__ = [
  "psi",
  "psi_derivative",
  "psi_inverse",
  "kernel_paths",
  "WeightCompander",
  "export",
  "export_params",
  "wrap_factory",
]
