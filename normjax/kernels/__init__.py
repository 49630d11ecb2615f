"""Fast LayerNorm / RMSNorm: one custom_vjp, Pallas on GPU/TPU, fused XLA on CPU.

    from normjax import kernels
    y = kernels.layer_norm(x, scale, bias, epsilon=1e-6)   # over the last axis
    y = kernels.rms_norm(x, scale, epsilon=1e-6)

Statistics are float32 for bf16/f16/f32 inputs (float64 for float64); the output
has ``x.dtype``; ``scale=None`` means no scale. The custom_vjp saves only ``x``,
``scale`` and the per-row mean and rstd, and its backward returns dx, dscale (and
dbias) in one fused pass over the rows. Formulas: ``reference.py`` (forward) and
``fused.py`` (backward).

Implementations (``IMPLEMENTATIONS``):

* ``"reference"``: the plain jnp formula, differentiated by autodiff.
* ``"fused"``: the custom_vjp with the XLA form tuned for XLA:CPU (fused.py).
* ``"pallas"``: the custom_vjp with Pallas kernels: Triton on GPU, Mosaic on TPU.
* ``"pallas_interpret"``: the same kernels in interpret mode, on any backend
  (tests and debugging; slow).
* ``"auto"`` (default): ``"pallas"`` on GPU/TPU, ``"fused"`` elsewhere (also on GPU
  when the Triton API is missing or rows are wider than 16384 features).

Choosing one, first match wins: the ``implementation=`` argument, then
``set_implementation(name)`` / ``with use_implementation(name):``, then the
environment variable ``NORMJAX_KERNELS``, then ``"auto"``. The choice is made when
a function is traced, so a function already jitted keeps the path it was traced
with. The platform is the device of a concrete ``x``, else ``jax.default_backend()``.

Autodiff: the custom_vjp paths support reverse mode (grad, vjp, and
forward-over-reverse Hessian-vector products), not ``jax.jvp``/``jacfwd`` of the
norm itself; use ``implementation="reference"`` for forward mode.

Sharding: "reference" and "fused" are plain XLA and shard like any jnp code
(rows on any mesh axes). The Pallas path, under a mesh set with ``jax.set_mesh``,
runs per shard of the leading axis in ``jax.shard_map`` (tested); without one,
the SPMD partitioner sees an opaque custom call and may replicate its operands.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import jax
import jax.numpy as jnp

from normjax.kernels import fused, pallas_norm, reference

IMPLEMENTATIONS = ("auto", "reference", "fused", "pallas", "pallas_interpret")
ENV_VAR = "NORMJAX_KERNELS"
_ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar(
  "normjax_kernels_implementation", default=None
)


def _check_name(name: str, where: str) -> str:
  if name not in IMPLEMENTATIONS:
    raise ValueError(
      f"{where}={name!r}: unknown kernel implementation; expected one of "
      f"{', '.join(IMPLEMENTATIONS)}"
    )
  return name


def set_implementation(name: str | None) -> None:
  """Forces ``name`` for every later trace (``None`` returns to env/auto)."""
  _forced.set(None if name is None else _check_name(name, "implementation"))


@contextlib.contextmanager
def use_implementation(name: str):
  """Context manager that forces ``name`` inside its block."""
  token = _forced.set(_check_name(name, "implementation"))
  try:
    yield
  finally:
    _forced.reset(token)


def _platform(x) -> str:
  try:
    return next(iter(x.devices())).platform
  except Exception:  # a tracer or a non-jax array: no device to ask
    return jax.default_backend()


def _pallas_flavor(platform: str) -> str:
  return pallas_norm.default_flavor("gpu" if platform in ("gpu", "cuda", "rocm") else platform)


def _triton_available() -> bool:
  try:
    from jax.experimental.pallas import triton  # noqa: F401
  except ImportError:
    return False
  return True


def _pallas_unsupported(platform: str, n_features: int) -> str | None:
  """Why compiled Pallas cannot run here, or None if it can."""
  if platform not in _ACCELERATORS:
    return f"compiled Pallas needs a GPU or TPU, the platform is {platform!r}"
  if _pallas_flavor(platform) == "masked":
    if not _triton_available():
      return "jax.experimental.pallas.triton is not available in this jax"
    if pallas_norm._next_pow2(n_features) > pallas_norm.MAX_MASKED_WIDTH:
      return (
        f"{n_features} features exceed the Triton kernel's {pallas_norm.MAX_MASKED_WIDTH}-wide row"
      )
  return None


def resolve_implementation(x, implementation: str | None = None) -> str:
  """The implementation that ``layer_norm``/``rms_norm`` would use for ``x``."""
  if implementation is not None:
    name = _check_name(implementation, "implementation")
  elif _forced.get() is not None:
    name = _forced.get()
  elif os.environ.get(ENV_VAR):
    name = _check_name(os.environ[ENV_VAR].strip().lower(), ENV_VAR)
  else:
    name = "auto"
  n_features = x.shape[-1] if x.ndim else 0
  if name == "auto":
    return "fused" if _pallas_unsupported(_platform(x), n_features) else "pallas"
  if name == "pallas":
    why = _pallas_unsupported(_platform(x), n_features)
    if why:
      raise ValueError(
        f"implementation='pallas': {why}; use 'pallas_interpret' (any backend, slow) or 'fused'"
      )
  return name


def _check_args(x, scale, bias, epsilon):
  """Validates the arguments; returns ``scale``, ones when it is None."""
  if x.ndim < 1:
    raise ValueError(f"x.shape={x.shape}: expected at least one axis (the features)")
  features = x.shape[-1]
  if scale is None:
    scale = jnp.ones((features,), reference.compute_dtype(x.dtype))
  if scale.shape != (features,):
    raise ValueError(
      f"scale.shape={scale.shape}: expected ({features},), the size of x's last axis, or None"
    )
  if bias is not None and bias.shape != (features,):
    raise ValueError(f"bias.shape={bias.shape}: expected ({features},) or None")
  if not epsilon >= 0:
    raise ValueError(f"epsilon={epsilon!r}: expected a number >= 0")
  return scale


def _pallas_options(x, name):
  interpret = name == "pallas_interpret"
  flavor = "blocked" if interpret else _pallas_flavor(_platform(x))
  return dict(flavor=flavor, interpret=interpret)


def layer_norm(x, scale, bias=None, *, epsilon: float = 1e-6, implementation: str | None = None):
  """LayerNorm over the last axis: ``(x - mean) * rsqrt(var + epsilon) * scale + bias``.

  Args:
    x: array of shape ``(..., D)``, any float dtype (statistics in float32).
    scale: ``(D,)``, or None for no scale.
    bias: ``(D,)`` or None.
    epsilon: added to the variance inside the square root.
    implementation: one of ``IMPLEMENTATIONS`` to force a path (module docstring).

  Returns:
    An array of ``x.shape`` and ``x.dtype``.
  """
  scale = _check_args(x, scale, bias, epsilon)
  name = resolve_implementation(x, implementation)
  if name == "reference" or x.size == 0:
    return reference.layer_norm(x, scale, bias, epsilon=epsilon)
  if name == "fused":
    return fused.layer_norm(x, scale, bias, epsilon=epsilon)
  return pallas_norm.layer_norm(x, scale, bias, epsilon=epsilon, **_pallas_options(x, name))


def rms_norm(x, scale, *, epsilon: float = 1e-6, implementation: str | None = None):
  """RMSNorm over the last axis: ``x * rsqrt(mean(x^2) + epsilon) * scale``.

  Args and returns as ``layer_norm`` (no bias).
  """
  scale = _check_args(x, scale, None, epsilon)
  name = resolve_implementation(x, implementation)
  if name == "reference" or x.size == 0:
    return reference.rms_norm(x, scale, epsilon=epsilon)
  if name == "fused":
    return fused.rms_norm(x, scale, epsilon=epsilon)
  return pallas_norm.rms_norm(x, scale, epsilon=epsilon, **_pallas_options(x, name))


__all__ = [
  "IMPLEMENTATIONS",
  "ENV_VAR",
  "layer_norm",
  "rms_norm",
  "set_implementation",
  "use_implementation",
  "resolve_implementation",
  "reference",
  "fused",
  "pallas_norm",
]
