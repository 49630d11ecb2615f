"""Models resolved by name: vit, resnet, gpt2, nf_resnet, inpaint, cnn, spdnet (Flax NNX).

Contract (what the trainer relies on):

* factory: ``MODELS.get(name)(*, rngs, **kwargs)`` with ``kwargs`` = ``config.model`` minus
  ``name``; ``make_model`` is the short form and checks the keyword names first.
* every model takes ``norm`` (a name in ``normjax.norms.NORMS``), ``norm_kwargs`` and ``dtype``
  ('float32' or 'bfloat16': the activation/compute dtype; parameters are always float32;
  'float64' under ``jax_enable_x64`` for exactness checks against float64 references).
* ``model(inputs)`` -> logits; ``model.train()`` / ``model.eval()`` switch dropout and
  batch-statistics norms (eval is deterministic).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterable

import jax.numpy as jnp
from flax import nnx

from normjax.registry import Registry

MODELS = Registry(
  "model",
  "model.name",
  lazy_modules=(
    "normjax.models.vit",
    "normjax.models.resnet",
    "normjax.models.gpt2",
    "normjax.models.nf_resnet",
    "normjax.models.inpaint",
    "normjax.models.cnn",
    "normjax.models.spdnet",
    "normjax.models.lambda_hypernet",
  ),
)
register = MODELS.register

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def make_model(name: str, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
  """Builds the model registered as ``name``; unknown keyword names raise a ValueError."""
  factory = MODELS.get(name)
  signature = inspect.signature(factory.__init__ if isinstance(factory, type) else factory)
  parameters = [p for p in signature.parameters.values() if p.name != "self"]
  try:
    signature.replace(parameters=parameters).bind(rngs=rngs, **kwargs)
  except TypeError as e:
    accepted = [p.name for p in parameters if p.name != "rngs"]
    raise ValueError(
      f"config.model for model.name={name!r}: {e}; accepted keys: {', '.join(accepted)}"
    ) from None
  return factory(rngs=rngs, **kwargs)


def check_choice(argument: str, value: Any, choices: Iterable[Any]) -> Any:
  """Returns ``value`` if it is one of ``choices``, else a ValueError naming all three."""
  choices = list(choices)
  if value not in choices:
    raise ValueError(
      f"model argument {argument}={value!r}: valid choices are "
      f"{', '.join(repr(c) for c in choices)}"
    )
  return value


def compute_dtype(dtype: str):
  """The jnp dtype for the ``dtype`` model argument ('float32', 'bfloat16' or 'float64')."""
  name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  return COMPUTE_DTYPES[check_choice("dtype", name, COMPUTE_DTYPES)]


def check_divisible(argument: str, value: int, by_argument: str, by: int):
  if by <= 0 or value % by:
    raise ValueError(f"model argument {argument}={value} must be divisible by {by_argument}={by}")


def conv_kernel_init(matrix_init: Callable, fan: str) -> Callable:
  """Variance-scaling init for a conv kernel (kh, kw, in, out), drawn as a matrix.

  ``matrix_init`` (a flax/jax variance-scaling initializer in mode ``fan`` = 'fan_in' or
  'fan_out') draws a 2-D matrix with the kernel's fan, (kh*kw*in, out) or (in, kh*kw*out), which
  is reshaped: entries are i.i.d., so the distribution is the same, but XLA on CPU compiles a
  2-D random draw several times faster than a 4-D one (it dominated model build time).
  """
  check_choice("fan", fan, ("fan_in", "fan_out"))

  def init(key, shape, dtype=jnp.float32):
    receptive = math.prod(shape[:-2])
    matrix = (
      (receptive * shape[-2], shape[-1]) if fan == "fan_in" else (shape[-2], receptive * shape[-1])
    )
    return matrix_init(key, matrix, dtype).reshape(shape)

  return init
