"""Parameter partitions: functions of a params pytree returning a pytree of labels.

Paths are the key paths of an NNX ``nnx.State`` / nested dict, e.g.
``('blocks', 0, 'attn', 'qkv', 'kernel')``; norm modules sit in attributes whose names
contain ``norm`` (see ``normjax.norms``).
"""
from __future__ import annotations

import jax


def path_names(path) -> tuple[str, ...]:
  """The key path of a leaf as plain strings."""
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return tuple(names)


def is_norm_param(path) -> bool:
  return any("norm" in n.lower() for n in path_names(path)[:-1])


def decay_mask(params):
  """True where weight decay applies: every leaf with ndim >= 2 outside norm layers.

  Skips biases, norm scales/biases (any parameter of a module whose attribute name
  contains ``norm``) and other vectors such as gains.
  """
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x.ndim >= 2 and not is_norm_param(p), params)
