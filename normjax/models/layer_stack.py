"""Scanned transformer stacks: ``model.scan_layers`` for ViT and GPT-2.

With ``scan_layers=True`` a ``Transformer`` holds ONE ``TransformerBlock`` whose variables lead
with a depth axis (built by ``nnx.vmap`` over ``depth`` split RNG streams) and applies it with
``nnx.scan``: XLA compiles one block instead of ``depth`` copies, so compile time stops growing
with depth (GPT-2 XL has 48 blocks; table in ``benchmarks.md``). Per-layer norm state is stacked
the same way: running statistics (BatchNorm, PowerNorm), PowerNorm / UN's backward statistic
(``GradStat``, its update arrives as the stacked cotangent) and each layer's dropout stream, all
updated in layer order as in the unrolled model. ``model.remat`` applies inside the scan body.

Layouts. The unrolled model's leaves sit at ``transformer/blocks/<i>/...``; the scanned model's
at ``transformer/blocks/...`` with shape ``(depth, *unrolled shape)``. ``to_scanned`` /
``to_unrolled`` (``normjax.stack_layout``) convert a params or model-state tree between the
two, and ``match_layout`` turns a tree into the layout of another: ``config.init_from``,
``normjax.checkpoint.load_run`` (the sample / eval tools) and ``python -m
normjax.tools.relayout`` (a whole run, optimizer state and data position included) read a
checkpoint of either layout. Given
the same weights the two models compute the same outputs, gradients and state updates
(tested to float32 rounding).

Optimizers take the unrolled model's step. Parameter labels (weight-decay masks that test
``ndim >= 2``, partitions by path) are computed per layer (``stack_layout.per_layer_labels``,
inside ``normjax.optim.labels.resolve``). Elementwise optimizers (``STACK_SAFE_OPTIMIZERS``:
AdamW, SGD) then run on the stacked leaves directly, their state stacked too. Per-tensor
rules (AdamP / SGDP's projection, LAMB / LARS trust ratios, Muon's and Conda's matrices,
GaLore's projectors, NaP, Adafactor's factored moments, AGC's unit norms) would read a
stacked ``(depth, ...)`` leaf as one tensor, so for those the trainer wraps the optimizer in
``unrolled_view``: it hands it the per-layer slices and stacks the updates back (its state
keeps the unrolled layout). The view is exact but costs compile time: XLA compiles the
optimizer per layer plus the slices and stacks (``benchmarks.md``).
FSDP (``normjax.sharding``) never shards the depth axis.

Refused with one line (they need something per block that one scanned block cannot hold):
``sharing`` other than 'none' and ``moe`` (WideNet's shared modules), norms that need their
block's site (FakeLN's per-block removal schedule) or record an auxiliary loss, quantized
weights (``weight_quant``), and the tools that edit modules block by block (Hugging Face
export, ``fold_norms``): relayout the run to unrolled first. The Pre-RMSNorm / CRMSNorm
conversions (``normjax.surgery.conversions``) take either layout (``on_unrolled``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import optax
from flax import nnx

from normjax.models import remat as remat_lib
from normjax.stack_layout import layout, to_scanned, to_unrolled


def refusal(what: str) -> str:
  return (
    f"{what} needs the transformer's blocks one by one, and this model has model.scan_layers="
    f"True; convert the run first: python -m normjax.tools.relayout --workdir W --out W2 "
    f"--scan_layers=false"
  )


def check_scannable(*, sharing: str, moe) -> None:
  if sharing != "none" or moe is not None:
    raise ValueError(
      f"model argument scan_layers=True: needs sharing='none' and no moe (got sharing="
      f"{sharing!r}, moe={'set' if moe is not None else None}); shared blocks already compile "
      f"one block"
    )


def check_scannable_block(block: nnx.Module) -> None:
  """Refuses norms that cannot live in one scanned block (see the module docstring)."""
  for path, node in nnx.iter_graph(block):
    if getattr(node, "needs_site", False) or getattr(node, "records_aux_loss", False):
      why = "needs its block's site" if node.needs_site else "records an auxiliary loss"
      raise ValueError(
        f"model argument scan_layers=True: the norm {type(node).__name__} at "
        f"{'/'.join(map(str, path))} {why}; use scan_layers=False"
      )


def stacked(make_block: Callable[[nnx.Rngs], nnx.Module], depth: int, rngs: nnx.Rngs):
  """One block with every variable stacked over ``depth`` independent initialisations."""

  @nnx.split_rngs(splits=depth)
  @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=depth)
  def make(rngs):
    return make_block(rngs)

  return make(rngs)


def apply(block: nnx.Module, x, mask, cache, *, remat: str):
  """``x`` through every layer of the stacked ``block`` in order; ``(x, new cache or ())``.

  ``cache``: one ``AttentionCache`` with a leading depth axis (``Transformer.init_cache``)."""

  if cache is None:

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def forward(layer, x):
      return remat_lib.call(layer, x, mask, remat=remat)

    return forward(block, x), ()

  @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
  def decode(layer, x, layer_cache):
    return layer(x, mask, layer_cache)

  return decode(block, x, cache)


def on_unrolled(fn):
  """``fn(name, params) -> params`` run on the unrolled layout; the result comes back in the
  input's layout (the surgery conversions edit blocks one by one)."""

  @functools.wraps(fn)
  def wrapped(name, params, *args, **kwargs):
    out = fn(name, to_unrolled(params), *args, **kwargs)
    return to_scanned(out) if layout(params) == "scanned" else out

  return wrapped


# ---- the optimizer's view ----------------------------------------------------------------------


def unrolled_view(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx`` applied to the unrolled layout of scanned params (see the module docstring):
  ``init`` and ``update`` give ``tx`` per-layer slices; the updates come back stacked."""

  def init(params):
    return tx.init(to_unrolled(params))

  def update(updates, state, params=None, **extra_args: Any):
    new, state = tx.update(
      to_unrolled(updates),
      state,
      None if params is None else to_unrolled(params),
      **extra_args,
    )
    return to_scanned(new), state

  return optax.GradientTransformationExtraArgs(init, update)


# Optimizers whose step is elementwise per leaf (given their masks, which
# ``stack_layout.per_layer_labels`` computes per layer): on a stacked leaf they take each
# layer's step exactly, so they run on the scanned layout directly, without the view.
STACK_SAFE_OPTIMIZERS = ("adamw", "sgd")


def stack_safe(config) -> bool:
  """Whether ``config``'s optimizer may run on stacked leaves (see ``STACK_SAFE_OPTIMIZERS``):
  every group's optimizer is elementwise and no unit-wise clipping (AGC's unit norms read a
  stacked kernel's depth axis as a spatial one) precedes it."""
  opt = config.optimizer
  names = {opt.get("name")} | {
    g.get("name", opt.get("name")) for g in (opt.get("groups") or {}).values()
  }
  return names <= set(STACK_SAFE_OPTIMIZERS) and not config.get("adaptive_grad_clip")


def view_for(tx: optax.GradientTransformation, *, scanned: bool, native: bool = False):
  """``tx`` for a model with (``scanned``) or without a scanned stack: unchanged for an
  unrolled model or when ``native`` (an elementwise optimizer), else ``unrolled_view(tx)``."""
  return unrolled_view(tx) if scanned and not native else tx
