"""The vocabulary every norm module shares, the trait contract, and the stateful-norm base.

Shared numerics (flax ``flax/nnx/nn/normalization.py`` conventions, reference/norms.md §11):

* ``moments``: mean and population (biased) variance over given axes, over real positions
  only (``mask``), two-pass (mean((x - mean)^2), not E[x^2] - E[x]^2), in ``stats_dtype``:
  float32, or float64 for float64 inputs, so bfloat16 activations keep float32 statistics.
* ``normalize``: (x - mean) * rsqrt(var + eps) * scale + bias, cast back to ``x.dtype``.
* ``batch_axes``: every axis but the last (channels-last: batch, positions, space).
* ``check_positive`` / ``check_fraction`` / ``check_steps``: argument checks whose message
  names the norm, the argument and what would work. Momentum-type arguments are checked with
  ``check_fraction`` (flax convention: the weight on the OLD running value; PyTorch's
  momentum=0.1 is 0.9 here).

Classes:

* ``Norm``: the base of every registered norm (``normjax.norms.register`` refuses anything
  else). It declares each trait ONCE, with its default; models read them as plain attributes.
* ``AffineNorm``: a ``Norm`` with optional per-channel ``scale`` (init 1) and ``bias`` (init 0).
* ``RunningAverageView``: the ``use_running_average`` flag and its ``nnx.view`` hook.
* ``StatefulNorm``: owns the "collect the named state, call the pure function, write back
  when training" pattern. A subclass declares ``state_variables`` (forward state, written
  back after a training call), ``grad_stat_variables`` (``GradStat``s, updated by the
  backward pass, never written back here), the pure ``function`` and its ``function_kwargs``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
Params = dict[str, Array]

TORCH_MOMENTUM = "weight on the old running value; PyTorch's momentum=0.1 is 0.9 here"


# ----------------------------------------------------------------------------- numerics
def stats_dtype(x: Array):
  """The dtype statistics of ``x`` are computed in: float32, or wider if ``x`` is wider."""
  return jnp.promote_types(x.dtype, jnp.float32)


def batch_axes(x: Array) -> tuple[int, ...]:
  """Every axis of a channels-last ``x`` but the last."""
  return tuple(range(x.ndim - 1))


def moments(
  x: Array, axes: tuple[int, ...], mask: Array | None = None, *, center: bool = True
) -> tuple[Array, Array]:
  """Mean and population variance of ``x`` over ``axes`` (keepdims), over real positions only.

  ``mask`` is broadcastable to ``x.shape[:-1]`` (True = include). With ``center=False`` the
  mean is 0 and the "variance" is the mean square E[x^2] (RMSNorm). Statistics are in
  ``stats_dtype(x)``. A reduction group with no real position gets mean 0 and variance 0.
  """
  x = x.astype(stats_dtype(x))
  if mask is None:
    mean = jnp.mean(x, axes, keepdims=True) if center else jnp.zeros((), x.dtype)
    return mean, jnp.mean(jnp.square(x - mean), axes, keepdims=True)
  keep = jnp.broadcast_to(jnp.asarray(mask, bool)[..., None], x.shape)
  count = jnp.maximum(jnp.sum(keep, axes, keepdims=True, dtype=x.dtype), 1)
  if center:
    mean = jnp.sum(jnp.where(keep, x, 0), axes, keepdims=True) / count
  else:
    mean = jnp.zeros((), x.dtype)
  var = jnp.sum(jnp.where(keep, jnp.square(x - mean), 0), axes, keepdims=True) / count
  return mean, var


def apply_affine(y: Array, params: Params) -> Array:
  """y * scale + bias for whichever of the two ``params`` holds."""
  if params.get("scale") is not None:
    y = y * params["scale"]
  if params.get("bias") is not None:
    y = y + params["bias"]
  return y


def normalize(x: Array, mean: Array, var: Array, params: Params, epsilon: float) -> Array:
  """(x - mean) * rsqrt(var + epsilon) * scale + bias in the statistics dtype, cast to x.dtype."""
  y = (x.astype(stats_dtype(x)) - mean) * jax.lax.rsqrt(var + epsilon)
  return apply_affine(y, params).astype(x.dtype)


# ----------------------------------------------------------------------------- argument checks
def check_positive(name: str, value: float, norm: str = "norm argument"):
  """ValueError unless ``value > 0`` (epsilons)."""
  if not value > 0:
    raise ValueError(f"{norm} {name}={value!r}: must be > 0")


def check_fraction(name: str, value: float, norm: str, meaning: str = "weight on the old value"):
  """ValueError unless 0 <= ``value`` <= 1 (momenta, EMA weights, mixing weights)."""
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{norm} {name}={value!r}: must be in [0, 1] ({meaning})")


def check_steps(name: str, value: int, norm: str):
  """ValueError unless ``value`` is an integer >= 0 (step counts)."""
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ValueError(f"{norm} {name}={value!r}: must be an integer >= 0")


# ----------------------------------------------------------------------------- the contract
class Norm(nnx.Module):
  """Base of every registered norm: ``num_features`` and the traits, each with its default.

  Traits are class attributes (a norm whose trait depends on where it sits sets it on the
  instance in ``__init__``, as FakeLN does). Models read them without defaults:

  * ``uses_batch_statistics`` (False): the output depends on other examples of the batch
    (in training, or always); running statistics live in ``nnx.BatchStat`` variables, which
    the trainer carries, shards and checkpoints. A model without a batch axis refuses them.
  * ``needs_site`` (False): the constructor takes ``site=NormSite(role, block, depth)``, where
    the transformer places it (FakeLN's removal schedule).
  * ``compressed_residual`` (False): the norm reads the d-1 stored coordinates of a zero-mean
    vector (CRMSNorm), so transformers keep their residual stream ``width - 1`` wide.
  * ``separate_value_path`` (False; per instance): an attention-input norm with a method
    ``qk_and_v(x, mask) -> (y_qk, y_v)`` giving the Q/K input and the V input separately.
  * ``fuses_activation`` (False): the constructor takes ``apply_act`` and the norm applies its
    own nonlinearity (EvoNorm); models add no activation after it.
  * ``records_aux_loss`` (False; per instance): training calls record an ``AuxLoss``
    (``normjax.variables``); ``ModelDef.has_aux_loss`` is True when any node of a model has it.
  * ``needs_tokens`` (False; per instance): the call takes ``tokens=`` (the int token ids
    (B, T) of a language model), which the transformer passes to it (FakeLN's EOT-aware aux
    target).
  * ``needs_task_ids`` (False; per instance): the call takes ``task_ids=`` (int (N,), the
    continual-learning task of each example, or None), which models built for task streams
    (``normjax.models.cnn``) pass to it (AdaB²N's task-weighted batch statistics).
  * ``eval_affine`` (None): else a method ``() -> (a, c)`` with per-channel arrays such that the
    eval-mode output is ``a * x + c`` (PowerNorm: ``a * group_scaling(x) + c``), so
    ``surgery/folding.py`` can fold the norm into an adjacent linear layer.
  """

  uses_batch_statistics = False
  needs_site = False
  compressed_residual = False
  separate_value_path = False
  fuses_activation = False
  records_aux_loss = False
  needs_tokens = False
  needs_task_ids = False
  eval_affine: Callable | None = None

  def __init__(self, num_features: int):
    self.num_features = num_features

  def params(self) -> Params:
    """The parameters as the dict the norm's pure function takes."""
    return {}

  def _check_features(self, x):
    if x.shape[-1] != self.num_features:
      raise ValueError(
        f"{type(self).__name__} built for num_features={self.num_features} got "
        f"input with {x.shape[-1]} channels (shape {x.shape}); channels go last"
      )


class RunningAverageView:
  """Mixin for modules with a ``use_running_average`` flag (train vs eval statistics):
  ``nnx.view(model, use_running_average=True)`` switches every such module at once."""

  def set_view(self, use_running_average: bool | None = None):
    """Hook for ``nnx.view``."""
    if use_running_average is not None:
      self.use_running_average = use_running_average


class AffineNorm(Norm):
  """A norm with optional per-channel ``scale`` (init 1) and ``bias`` (init 0), float32."""

  def __init__(self, num_features: int, *, use_scale: bool = True, use_bias: bool = True):
    super().__init__(num_features)
    ones, zeros = jnp.ones((num_features,), jnp.float32), jnp.zeros((num_features,), jnp.float32)
    self.scale = nnx.Param(ones) if use_scale else nnx.data(None)
    self.bias = nnx.Param(zeros) if use_bias else nnx.data(None)

  def params(self) -> Params:
    return {
      name: var[...]
      for name, var in (("scale", self.scale), ("bias", self.bias))
      if var is not None
    }


class StatefulNorm(RunningAverageView, Norm):
  """A norm whose pure function takes and returns a state dict (see the module docstring).

  Subclasses set ``state_variables`` / ``grad_stat_variables`` (attribute names; an attribute
  may be ``None`` when a configuration has no such state), ``function`` (the pure function,
  as ``staticmethod``, called ``function(x, params, state, train=, mask=, **function_kwargs(),
  **call_kwargs) -> (y, new_state)``) and ``function_kwargs``. ``use_running_average``
  (False = training) selects train or eval; ``model.train()`` / ``model.eval()`` flip it.
  """

  state_variables: tuple[str, ...] = ()
  grad_stat_variables: tuple[str, ...] = ()
  function: Callable

  def function_kwargs(self) -> dict:
    """The pure function's keyword arguments held by the module (epsilon, momentum, ...)."""
    return {}

  def state_dict(self) -> dict:
    """Current values of the declared state (forward and backward), by name."""
    names = self.state_variables + self.grad_stat_variables
    return {n: getattr(self, n)[...] for n in names if getattr(self, n) is not None}

  def run(self, x, mask=None, **call_kwargs):
    """Collect the state, call the pure function, write the forward state back in training."""
    return self.run_with_state(x, mask, **call_kwargs)[0]

  def run_with_state(self, x, mask=None, **call_kwargs):
    """``run`` that also returns the pure function's new state (for values a module reads
    from it besides the written-back variables, e.g. an auxiliary loss)."""
    self._check_features(x)
    train = not self.use_running_average
    y, new_state = type(self).function(
      x,
      self.params(),
      self.state_dict(),
      train=train,
      mask=mask,
      **self.function_kwargs(),
      **call_kwargs,
    )
    if train:
      for name in self.state_variables:
        variable = getattr(self, name)
        if variable is not None:
          variable[...] = new_state[name]
    return y, new_state

  def __call__(self, x, mask=None):
    return self.run(x, mask)


__all__ = [
  "TORCH_MOMENTUM",
  "stats_dtype",
  "batch_axes",
  "moments",
  "apply_affine",
  "normalize",
  "check_positive",
  "check_fraction",
  "check_steps",
  "Norm",
  "RunningAverageView",
  "AffineNorm",
  "StatefulNorm",
]
