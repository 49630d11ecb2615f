"""Exact Pre-LN -> Pre-RMSNorm -> Pre-CRMSNorm conversions of GPT-2 and ViT parameters.

Jiang, Gu, Zhu, Pan (NeurIPS 2023), "Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and
Efficient Pre-LN Transformers"; float64 demo in ZixuanJiang/pre-rmsnorm-transformer:example.py.
Every read of the residual stream of a Pre-LN transformer goes through a LayerNorm, which ignores
the stream's mean, so:

1. Recentre every writer (token/patch embedding, position embedding, class token, attention
   ``proj``, MLP ``fc2``): W <- W - mean over the output axis, b <- b - mean(b). The stream
   becomes zero-mean and the outputs do not change.
2. For zero-mean x, LN(x) = x / sqrt(mean(x^2) + eps) = RMSNorm(x) with the same eps; fold each
   LN's scale g and bias b into the linear layer that reads it (W' = diag(g) W, b' = b + b_ln W;
   ``qkv``, ``fc1`` and the head; GPT-2's tied head becomes a separate head with a bias,
   ``tie_embeddings=False``) and use RMSNorm with scale 1.
3. CRMSNorm: store only the first d-1 coordinates of the zero-mean stream. Writers drop their
   last output (W[..., :-1]); readers use W'[i] = W[i] - W[d] (row i of a (d, out) kernel),
   since x_d = -sum_i x_i; norms become ``crmsnorm`` (``normjax.norms.crmsnorm``).

The converted models compute the same outputs (float64: to ~1e-12; float32: to rounding).
Training: with ``zero_mean_writers=True`` a Pre-RMSNorm model computes exactly the function of a
Pre-LN model with the SAME parameters when the norms have no affine (the official repo's
``elementwise_affine=False`` setting), so both train identically (``tests/
test_crmsnorm_conversions.py``). LN's affine, once folded, is a different parameterisation of
the same function: it trains differently, as in the paper.

Parameters are pure dicts (``normjax.state.split``); arithmetic is numpy in the input dtype.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normjax.models import layer_stack, make_model

MODELS = ("gpt2", "vit")


def _centered_out(w):
  return w - np.mean(w, axis=-1, keepdims=True)


def _fold_affine(linear: dict, norm: dict, width: int) -> dict:
  """Linear reading g * z + b_ln: kernel diag(g) W, bias b + b_ln W."""
  kernel = np.asarray(linear["kernel"])
  scale = np.asarray(norm.get("scale", np.ones(width, kernel.dtype)))
  shift = np.asarray(norm.get("bias", np.zeros(width, kernel.dtype)))
  bias = np.asarray(linear.get("bias", np.zeros(kernel.shape[-1], kernel.dtype)))
  return {"kernel": scale[:, None] * kernel, "bias": bias + shift @ kernel}


def _unit_norm(width, dtype) -> dict:
  return {"scale": np.ones(width, dtype)}


def check_convertible(name: str, kwargs: dict, from_norm: str = "layernorm"):
  """ValueError unless ``kwargs`` describe a Pre-``from_norm`` GPT-2 or ViT."""
  if name not in MODELS:
    raise ValueError(f"conversion: model {name!r} is not supported; use one of {MODELS}")
  if kwargs.get("norm", "layernorm") != from_norm:
    raise ValueError(f"conversion: model norm={kwargs.get('norm')!r}; expected {from_norm!r}")
  if kwargs.get("placement", "pre") != "pre" or kwargs.get("embedding_norm", False):
    raise ValueError(
      f"conversion: placement={kwargs.get('placement')!r}, embedding_norm="
      f"{kwargs.get('embedding_norm', False)}; only the pre placement without an "
      f"embedding norm is equivalent (every read of the stream is normalized)"
    )


def _writers(name: str, params: dict) -> list[tuple[tuple, str]]:
  """(path to a dict, key) of every array written into the residual stream (output axis last)."""
  if name == "gpt2":
    out = [(("token_embedding",), "embedding"), (("position_embedding",), "embedding")]
  else:
    out = [
      (("patch_embedding",), "kernel"),
      (("patch_embedding",), "bias"),
      ((), "cls_token"),
      ((), "position_embedding"),
    ]
  for i in params["transformer"]["blocks"]:
    for layer in (("attn", "proj"), ("mlp", "fc2")):
      for key in ("kernel", "bias"):
        out.append((("transformer", "blocks", i) + layer, key))
  return [(path, key) for path, key in out if key in _node(params, path)]


def _node(tree, path):
  for p in path:
    tree = tree[p]
  return tree


@layer_stack.on_unrolled
def ln_to_rmsnorm(name: str, params: dict) -> dict:
  """Pre-LN ``params`` -> Pre-RMSNorm params (steps 1 and 2 of the module docstring).

  The result belongs to the same model with ``norm='rmsnorm'``, the LN's epsilon, and for GPT-2
  ``tie_embeddings=False`` (the final LN's affine moves into the head).
  """
  params = copy.deepcopy(jax_to_numpy(params))
  blocks = params["transformer"]["blocks"]
  tied_embedding = (
    np.array(params["token_embedding"]["embedding"])
    if name == "gpt2" and "head" not in params
    else None
  )
  for path, key in _writers(name, params):
    node = _node(params, path)
    node[key] = _centered_out(node[key])
  for block in blocks.values():
    width = block["attn"]["qkv"]["kernel"].shape[0]
    block["attn"]["qkv"] = _fold_affine(block["attn"]["qkv"], block.pop("attn_norm", {}), width)
    block["mlp"]["fc1"] = _fold_affine(block["mlp"]["fc1"], block.pop("mlp_norm", {}), width)
    dtype = block["attn"]["qkv"]["kernel"].dtype
    block["attn_norm"], block["mlp_norm"] = _unit_norm(width, dtype), _unit_norm(width, dtype)
  final = params["transformer"].pop("final_norm", {})
  head = params.get("head") or {
    "kernel": tied_embedding.T,
    "bias": np.zeros(tied_embedding.shape[0], tied_embedding.dtype),
  }
  width = head["kernel"].shape[0]
  params["head"] = _fold_affine(head, final, width)
  params["transformer"]["final_norm"] = _unit_norm(width, head["kernel"].dtype)
  return params


@layer_stack.on_unrolled
def rmsnorm_to_crmsnorm(name: str, params: dict) -> dict:
  """Pre-RMSNorm params with a zero-mean stream -> Pre-CRMSNorm params (step 3)."""
  params = copy.deepcopy(jax_to_numpy(params))
  for path, key in _writers(name, params):
    node = _node(params, path)
    node[key] = node[key][..., :-1]
  readers = [params["head"]]
  for block in params["transformer"]["blocks"].values():
    readers += [block["attn"]["qkv"], block["mlp"]["fc1"]]
    for norm in ("attn_norm", "mlp_norm"):
      block[norm] = {k: v[:-1] for k, v in block[norm].items()}
  final = params["transformer"]["final_norm"]
  params["transformer"]["final_norm"] = {k: v[:-1] for k, v in final.items()}
  for reader in readers:
    kernel = reader["kernel"]
    reader["kernel"] = kernel[:-1] - kernel[-1:]
  return params


def jax_to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def convert(name: str, kwargs: dict, params: dict, to: str) -> tuple[dict, dict]:
  """A Pre-LN model (``make_model(name, **kwargs)`` with ``params``) as Pre-``to``.

  Args:
    name: 'gpt2' or 'vit'. kwargs: its constructor keyword arguments (config.model minus name).
    params: its parameters (pure dict). to: 'rmsnorm' or 'crmsnorm'.

  Returns:
    ``(kwargs, params)`` of the equivalent model.
  """
  check_convertible(name, kwargs)
  if to not in ("rmsnorm", "crmsnorm"):
    raise ValueError(f"conversion to={to!r}: valid targets are 'rmsnorm', 'crmsnorm'")
  epsilon = dict(kwargs.get("norm_kwargs") or {}).get("epsilon", 1e-6)
  new_params = ln_to_rmsnorm(name, params)
  if to == "crmsnorm":
    new_params = rmsnorm_to_crmsnorm(name, new_params)
  new_kwargs = {**kwargs, "norm": to, "norm_kwargs": {"epsilon": epsilon}}
  if name == "gpt2":
    new_kwargs["tie_embeddings"] = False
  return new_kwargs, new_params


def build(name: str, kwargs: dict, params: dict, seed: int = 0) -> nnx.Module:
  """``make_model(name, **kwargs)`` holding ``params`` (cast to the model's parameter dtypes).

  The structure comes from ``nnx.eval_shape`` (no parameter initialization runs); non-parameter
  state (dropout keys, running statistics), if any, is initialized in one jitted call.
  """
  make = lambda: make_model(name, rngs=nnx.Rngs(seed), **kwargs)
  graph, abstract_params, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
  if jax.tree.leaves(rest):
    rest = jax.jit(lambda: nnx.split(make(), nnx.Param, ...)[2])()
  names = lambda path: tuple(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
  flat_new = {names(path): v for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}

  def take(path, like):
    key = names(path)
    if key not in flat_new:
      raise ValueError(f"conversion: parameter {'/'.join(key)} is missing")
    value = flat_new.pop(key)
    if tuple(np.shape(value)) != tuple(like.shape):
      raise ValueError(
        f"conversion: parameter {'/'.join(key)} has shape {np.shape(value)}, "
        f"the model expects {like.shape}"
      )
    return jnp.asarray(value, like.dtype)

  new = jax.tree_util.tree_map_with_path(take, nnx.to_pure_dict(abstract_params))
  if flat_new:
    raise ValueError(f"conversion: unexpected parameters {sorted(flat_new)[:5]}")
  nnx.replace_by_pure_dict(abstract_params, new)
  return nnx.merge(graph, abstract_params, rest)


__all__ = ["convert", "build", "ln_to_rmsnorm", "rmsnorm_to_crmsnorm", "check_convertible"]
