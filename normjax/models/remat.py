"""Activation rematerialisation per block: ``model.remat`` for ViT, GPT-2 and ResNet.

A block called through ``call(block, *args, remat=...)`` runs under ``nnx.remat`` (JAX's
``jax.checkpoint``): its forward is recomputed in the backward pass instead of storing its
intermediates, trading compute for memory. The policy says what is still saved:

* ``'none'``: no rematerialisation (default): every intermediate the backward needs is kept;
* ``'block'``: nothing inside a block is saved (``nothing_saveable``); only each block's
  input stays, and the whole block is recomputed: the least memory, about one more forward;
* ``'dots_saveable'``: the outputs of matmuls and convolutions are saved, the elementwise
  work between them (norms, GELU, softmax, residual adds) is recomputed: most of the memory
  saving of elementwise intermediates at little extra compute;
* ``'dots_with_no_batch_dims_saveable'``: as above but only matmuls without batch
  dimensions (weight matmuls) are saved; attention's batched score matmuls are recomputed.

The same loss and gradients as without (tested), including norms whose state changes in the
forward (BatchNorm running statistics) or the backward (PowerNorm / UN's ``GradStat``
through ``jax.custom_vjp``), and the custom-VJP LayerNorm/RMSNorm kernels.
"""

from __future__ import annotations

import jax
from flax import nnx

POLICIES = {
  "none": None,
  "block": jax.checkpoint_policies.nothing_saveable,
  "dots_saveable": jax.checkpoint_policies.dots_saveable,
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check(remat: str) -> str:
  if remat not in POLICIES:
    raise ValueError(
      f"model argument remat={remat!r}: valid choices are {', '.join(map(repr, POLICIES))}"
    )
  return remat


def call(block: nnx.Module, *args, remat: str = "none"):
  """``block(*args)``, rematerialised under ``remat``'s policy (see the module docstring)."""
  if remat == "none":
    return block(*args)
  return nnx.remat(lambda module, *a: module(*a), policy=POLICIES[remat])(block, *args)
