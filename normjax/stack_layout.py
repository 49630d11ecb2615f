"""Where a transformer's block variables live, as pure-dict trees (params, model state,
optimizer state): the unrolled layout ``transformer/blocks/<i>/...`` or the scanned one
``transformer/blocks/...`` with a leading depth axis (``model.scan_layers``,
``normjax.models.layer_stack``). A leaf module (jax and NumPy only): the sharding rules,
the checkpoint readers and the parameter labels use it without importing the models.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

STACK_PATH = ("transformer", "blocks")


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


def is_stacked_path(names) -> bool:
  """Whether a leaf at these key names (``labels.path_names``) lies in a scanned stack."""
  names = tuple(names)
  n = len(STACK_PATH)
  for i in range(len(names) - n):
    if names[i : i + n] == STACK_PATH and not names[i + n].isdigit():
      return True
  return False


def _param_trees(tree):
  """Is-leaf test for ``jax.tree.map``: dict subtrees holding transformer blocks."""
  return lambda x: isinstance(x, dict) and layout(x) is not None


def match_layout_all(tree, like):
  """``match_layout`` for every params-shaped dict inside ``tree`` (an optimizer state holds
  several: Adam's ``mu`` and ``nu``), to the layout of those in ``like``."""
  found = [x for x in jax.tree.leaves(like, is_leaf=_param_trees(like)) if isinstance(x, dict)]
  if not found:
    return tree
  convert = to_scanned if layout(found[0]) == "scanned" else to_unrolled
  return jax.tree.map(
    lambda x: convert(x) if isinstance(x, dict) else x, tree, is_leaf=_param_trees(tree)
  )


def per_layer_labels(fn):
  """A label function (``normjax.optim.labels``) that labels a scanned stack as it labels
  each unrolled layer: ``fn`` sees the per-layer shapes (``ndim`` rules, paths with the block
  index), and every layer's labels must agree. Unrolled trees pass straight through.
  Idempotent: a function already wrapped is returned as is."""
  if getattr(fn, "per_layer", False):
    return fn

  @functools.wraps(fn)
  def labelled(params, **kwargs):
    if layout(params) != "scanned":
      return fn(params, **kwargs)
    blocks = _blocks(params)
    depth = jax.tree.leaves(blocks)[0].shape[0]
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), blocks)
    unrolled = _replace_blocks(params, {i: one for i in range(depth)})
    out = fn(unrolled, **kwargs)
    per_layer = [out[STACK_PATH[0]][STACK_PATH[1]][i] for i in range(depth)]
    first = per_layer[0]
    for other in per_layer[1:]:
      if jax.tree.structure(other) != jax.tree.structure(first) or any(
        a != b for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(first))
      ):
        raise ValueError(
          f"the labels {getattr(fn, '__name__', fn)!r} differ between the blocks of a scanned "
          f"stack; use model.scan_layers=False"
        )
    return _replace_blocks(out, first)

  labelled.per_layer = True
  return labelled
