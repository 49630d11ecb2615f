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
``to_unrolled`` convert a params or model-state tree between the two, and ``match_layout`` turns
a tree into the layout of another: ``config.init_from``, ``normjax.checkpoint.load_run`` (the
sample / eval tools) and ``python -m normjax.tools.relayout`` (a whole run, optimizer state and
data position included) read a checkpoint of either layout. Given the same weights the two
models compute the same outputs, gradients and state updates (tested to float32 rounding).

Optimizers see the unrolled layout. Per-tensor rules (weight-decay masks that test
``ndim >= 2``, AdamP / SGDP's projection, LARS-style trust ratios, Muon's orthogonalisation,
parameter labels by path) would read a stacked ``(depth, ...)`` leaf as one tensor. So the
trainer wraps the optimizer in ``unrolled_view``: it hands the optimizer the per-layer slices
and stacks the updates back. Every optimizer then takes exactly the unrolled model's step, and
the optimizer state has the unrolled layout in both (a checkpoint's ``opt_state`` is the same).
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

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

STACK_PATH = ("transformer", "blocks")


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
  from normjax.models import remat as remat_lib

  if cache is None:

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def forward(layer, x):
      return remat_lib.call(layer, x, mask, remat=remat)

    return forward(block, x), ()

  @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
  def decode(layer, x, layer_cache):
    return layer(x, mask, layer_cache)

  return decode(block, x, cache)


# ---- layouts of pure-dict trees (params, model state) ------------------------------------------


def _is_layer_key(k) -> bool:
  return isinstance(k, int) or (isinstance(k, str) and k.isdigit())


def _blocks(tree):
  node = tree
  for k in STACK_PATH:
    if not isinstance(node, dict) or k not in node:
      return None
    node = node[k]
  return node if isinstance(node, dict) and node else None


def layout(tree) -> str | None:
  """'scanned', 'unrolled', or None when ``tree`` holds no transformer blocks."""
  blocks = _blocks(tree)
  if blocks is None:
    return None
  return "unrolled" if all(_is_layer_key(k) for k in blocks) else "scanned"


def _replace_blocks(tree, blocks):
  out = dict(tree)
  out[STACK_PATH[0]] = dict(tree[STACK_PATH[0]], **{STACK_PATH[1]: blocks})
  return out


def _stack(*arrays):
  numpy = all(isinstance(a, np.ndarray) for a in arrays)  # checkpoints read as NumPy stay so
  return (np if numpy else jnp).stack(arrays)


def to_scanned(tree):
  """An unrolled tree with its blocks stacked along a new leading axis (scanned layout)."""
  if layout(tree) != "unrolled":
    return tree
  blocks = _blocks(tree)
  layers = [blocks[k] for k in sorted(blocks, key=int)]
  return _replace_blocks(tree, jax.tree.map(_stack, *layers))


def to_unrolled(tree, keys=None):
  """A scanned tree with its blocks split into ``{0: ..., 1: ...}`` (int keys, or ``keys``)."""
  if layout(tree) != "scanned":
    return tree
  blocks = _blocks(tree)
  depth = jax.tree.leaves(blocks)[0].shape[0]
  keys = list(range(depth)) if keys is None else keys
  return _replace_blocks(
    tree, {k: jax.tree.map(lambda a: a[i], blocks) for i, k in enumerate(keys)}
  )


def match_layout(tree, like):
  """``tree`` in the layout of ``like`` (unchanged when they agree or hold no blocks)."""
  want, have = layout(like), layout(tree)
  if want == have or None in (want, have):
    return tree
  if want == "scanned":
    return to_scanned(tree)
  return to_unrolled(tree, keys=list(_blocks(like)))


def on_unrolled(fn):
  """``fn(name, params) -> params`` run on the unrolled layout; the result comes back in the
  input's layout (the surgery conversions edit blocks one by one)."""

  @functools.wraps(fn)
  def wrapped(name, params, *args, **kwargs):
    out = fn(name, to_unrolled(params), *args, **kwargs)
    return to_scanned(out) if layout(params) == "scanned" else out

  return wrapped


def is_stacked_path(names) -> bool:
  """Whether a leaf at these key names (``labels.path_names``) lies in a scanned stack."""
  names = tuple(names)
  n = len(STACK_PATH)
  for i in range(len(names) - n):
    if names[i : i + n] == STACK_PATH and not names[i + n].isdigit():
      return True
  return False


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


def view_for(tx: optax.GradientTransformation, params) -> optax.GradientTransformation:
  """``unrolled_view(tx)`` when ``params`` (a pure dict or its abstract form) is scanned."""
  return unrolled_view(tx) if layout(params) == "scanned" else tx
