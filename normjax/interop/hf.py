r"""Hugging Face GPT-2 (``transformers.GPT2LMHeadModel``) checkpoints in and out of normjax.

``load_gpt2(path)`` reads a local checkpoint (``hf_files.resolve``: a ``save_pretrained``
directory, sharded safetensors, the hub cache layout) with the safetensors numpy API and
returns a normjax ``GPT2`` (eval mode) whose logits equal ``GPT2LMHeadModel``'s;
``save_gpt2(model, out_dir)`` writes a directory that ``GPT2LMHeadModel.from_pretrained``
loads with the same logits. Neither needs torch or transformers.

Tensors (``L.`` = the optional ``transformer.`` prefix of ``GPT2LMHeadModel``; ``GPT2Model`` and
OpenAI's original uploads have none) -> normjax parameters:

  L.wte.weight (V, C)                 token_embedding.embedding
  L.wpe.weight (P, C)                 position_embedding.embedding
  L.h.i.ln_1.{weight,bias}            transformer.blocks.i.attn_norm.{scale,bias}
  L.h.i.attn.c_attn.{weight,bias}     ...blocks.i.attn.qkv.{kernel,bias}  (C, 3C): q | k | v
  L.h.i.attn.c_proj.{weight,bias}     ...blocks.i.attn.proj.{kernel,bias}
  L.h.i.ln_2.{weight,bias}            ...blocks.i.mlp_norm.{scale,bias}
  L.h.i.mlp.c_fc.{weight,bias}        ...blocks.i.mlp.fc1.{kernel,bias}
  L.h.i.mlp.c_proj.{weight,bias}      ...blocks.i.mlp.fc2.{kernel,bias}
  L.ln_f.{weight,bias}                transformer.final_norm.{scale,bias}
  lm_head.weight (V, C)               head.kernel = weight^T, head.bias = 0 (untied heads only)

transformers' ``Conv1D`` (c_attn, c_proj, c_fc) stores its weight as (in, out) and computes
``x @ W + b``: the layout of a flax kernel, so those weights are copied as they are, never
transposed. ``lm_head`` is a torch ``nn.Linear``, (out, in), and is transposed. The buffers
``h.i.attn.bias`` / ``masked_bias`` of old checkpoints (the causal mask) are skipped.

config.json fields (missing ones take ``GPT2Config``'s defaults, ``HF_DEFAULTS``):

* ``n_embd``, ``n_layer``, ``n_head``, ``n_positions``, ``vocab_size`` -> ``width``, ``depth``,
  ``num_heads``, ``max_len``, ``vocab_size``; ``n_inner`` (None: 4 n_embd) -> ``mlp_ratio``
  (a multiple of n_embd, else refused); ``layer_norm_epsilon`` -> ``norm_kwargs.epsilon``;
  ``tie_word_embeddings`` -> ``tie_embeddings``.
* ``activation_function``: 'gelu_new' and 'gelu_pytorch_tanh' are the tanh-approximate GELU,
  0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))), normjax's MLP; others are refused.
* ``scale_attn_weights`` (scores q k^T / sqrt(d_head); False: unscaled) and
  ``scale_attn_by_inverse_layer_idx`` (scores of block i also / (i + 1)): normjax always
  divides by sqrt(d_head), so the remaining factor s is folded into the query columns of
  ``qkv`` (W_q <- s W_q, b_q <- s b_q), which scales the scores by s exactly. The exported
  model is the same function with the plain flags.
* ``reorder_and_upcast_attn``: computes the scores in float32 with the scale applied first;
  only the rounding of float16/bfloat16 runs differs, so it is accepted (normjax computes in
  its ``dtype``; float32 by default).
* ``resid_pdrop``, ``embd_pdrop``, ``attn_pdrop``: training-time dropout, not part of the
  function; the imported model has dropout 0 (a trainer config sets ``model.dropout``).
* ``add_cross_attention=True`` and ``model_type`` other than 'gpt2' are refused.

LN-free models (LayerNorm removal, ``normjax.norms.fakeln``). HF GPT-2 always applies
LayerNorm y = (x - mean) / sqrt(var + eps) * w + b. The released LN-free GPT-2s of Baroni et al.
2025 (``submarat/removing-layer-norm``, ``utils.remove_layernorm_by_scaling``) are stored as
stock GPT-2 with ``layer_norm_epsilon = 1e12`` and every LN weight multiplied by 1e6 / sigma
(sigma its frozen std): then sqrt(var + 1e12) = 1e6 (1 + var / 2e12 + ...), so the LN computes
(x - mean) / sigma * g + b, the frozen FakeLN, with relative error var / (2e12) (below float32
resolution for per-token variances under ~1e5; in float32, 1e12 + var rounds to 1e12 for var
below half its ulp, 32768). ``save_gpt2`` stores a frozen FakeLN model the same way
(``LN_FREE_EPSILON``). normjax's attention-input FakeLN may keep separate stds for the Q/K
and V inputs (sigma_qk, sigma_v); one ``ln_1`` divides by sigma_qk and the V columns of
``c_attn`` absorb the rest: with r = sigma_qk / sigma_v, y_v = r (y_qk - b) + b, so
W_v <- r W_v and b_v <- b_v + (1 - r) b W_v. A model already folded by
``normjax.surgery.folding.fold_norms`` (Identity norms whose next layer ignores the mean, a
centred ``ChannelAffine`` final norm) is stored the same way. Importing such a checkpoint
gives LayerNorms with epsilon 1e12, which compute the same map.

Refused on export (with the reason): norms other than LayerNorm / frozen FakeLN / their folded
forms (HF GPT-2 has LayerNorm only), a live FakeLN, Peri or Post placement, an embedding
norm, CRMSNorm's compressed residual stream, a head with a non-zero bias (``lm_head`` has
none).
"""

from __future__ import annotations

import inspect
import math
import os
import pathlib
import re
import shutil

import numpy as np
from flax import nnx

from normjax.interop import hf_files
from normjax.interop.hf_files import read_config, read_tensors, resolve

LN_FREE_EPSILON = 1e12  # what the released LN-free GPT-2s use; sqrt = 1e6 exactly
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
HF_DEFAULTS = {  # transformers.GPT2Config's defaults (transformers 5.x, same since 4.x)
  "model_type": "gpt2",
  "vocab_size": 50257,
  "n_positions": 1024,
  "n_embd": 768,
  "n_layer": 12,
  "n_head": 12,
  "n_inner": None,
  "activation_function": "gelu_new",
  "resid_pdrop": 0.1,
  "embd_pdrop": 0.1,
  "attn_pdrop": 0.1,
  "layer_norm_epsilon": 1e-5,
  "initializer_range": 0.02,
  "scale_attn_weights": True,
  "scale_attn_by_inverse_layer_idx": False,
  "reorder_and_upcast_attn": False,
  "add_cross_attention": False,
  "tie_word_embeddings": True,
  "bos_token_id": 50256,
  "eos_token_id": 50256,
}
TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "vocab.json",
  "merges.txt",
  "special_tokens_map.json",
)
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")


def _refuse(field: str, value, why: str):
  raise ValueError(f"Hugging Face GPT-2 config field {field}={value!r}: {why}")


def hf_fields(hf_config: dict) -> dict:
  """``config.json`` with ``GPT2Config``'s defaults filled in."""
  return {**HF_DEFAULTS, **hf_config}


def gpt2_kwargs(hf_config: dict) -> dict:
  """normjax ``GPT2`` constructor arguments for a checkpoint's ``config.json`` (module doc)."""
  c = hf_fields(hf_config)
  if c["model_type"] != "gpt2":
    _refuse("model_type", c["model_type"], "only GPT-2 checkpoints ('gpt2') are mapped")
  if c["activation_function"] not in TANH_GELUS:
    _refuse(
      "activation_function",
      c["activation_function"],
      f"normjax's GPT-2 MLP is the tanh-approximate GELU ({' or '.join(TANH_GELUS)})",
    )
  if c["add_cross_attention"]:
    _refuse("add_cross_attention", True, "cross-attention (encoder-decoder) is not implemented")
  width = int(c["n_embd"])
  inner = width * 4 if c["n_inner"] is None else int(c["n_inner"])
  if inner % width:
    _refuse("n_inner", c["n_inner"], f"must be a multiple of n_embd={width} (normjax mlp_ratio)")
  if width % int(c["n_head"]):
    _refuse("n_head", c["n_head"], f"must divide n_embd={width}")
  return {
    "vocab_size": int(c["vocab_size"]),
    "max_len": int(c["n_positions"]),
    "width": width,
    "depth": int(c["n_layer"]),
    "num_heads": int(c["n_head"]),
    "mlp_ratio": inner // width,
    "norm": "layernorm",
    "norm_kwargs": {"epsilon": float(c["layer_norm_epsilon"])},
    "placement": "pre",
    "tie_embeddings": bool(c["tie_word_embeddings"]),
    "dropout": 0.0,
  }


def query_scale(hf_config: dict, block: int) -> float:
  """The factor folded into block ``block``'s query columns (module docstring)."""
  c = hf_fields(hf_config)
  head_dim = int(c["n_embd"]) // int(c["n_head"])
  scale = 1.0 if c["scale_attn_weights"] else math.sqrt(head_dim)
  return scale / (block + 1) if c["scale_attn_by_inverse_layer_idx"] else scale


def gpt2_params(hf_config: dict, tensors: dict[str, np.ndarray]) -> dict:
  """normjax GPT-2 parameters (a pure dict of float32 numpy arrays) from HF tensors."""
  kwargs = gpt2_kwargs(hf_config)
  prefix = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""
  left = dict(tensors)

  def take(name, shape):
    key = name if name == "lm_head.weight" else prefix + name
    if key not in left:
      raise ValueError(f"Hugging Face GPT-2 checkpoint: tensor {key} is missing")
    value = np.asarray(left.pop(key), np.float32)
    if value.shape != tuple(shape):
      raise ValueError(
        f"Hugging Face GPT-2 checkpoint: tensor {key} has shape {value.shape}, config.json "
        f"implies {tuple(shape)}"
      )
    return value

  width, vocab, inner = kwargs["width"], kwargs["vocab_size"], kwargs["mlp_ratio"] * kwargs["width"]

  def norm(name):
    return {"scale": take(f"{name}.weight", (width,)), "bias": take(f"{name}.bias", (width,))}

  def linear(name, n_in, n_out):  # Conv1D: (in, out), as a flax kernel: no transpose
    return {"kernel": take(f"{name}.weight", (n_in, n_out)), "bias": take(f"{name}.bias", (n_out,))}

  blocks = {}
  for i in range(kwargs["depth"]):
    qkv = linear(f"h.{i}.attn.c_attn", width, 3 * width)
    scale = query_scale(hf_config, i)
    if scale != 1.0:
      qkv["kernel"][:, :width] *= np.float32(scale)
      qkv["bias"][:width] *= np.float32(scale)
    blocks[i] = {
      "attn_norm": norm(f"h.{i}.ln_1"),
      "attn": {"qkv": qkv, "proj": linear(f"h.{i}.attn.c_proj", width, width)},
      "mlp_norm": norm(f"h.{i}.ln_2"),
      "mlp": {
        "fc1": linear(f"h.{i}.mlp.c_fc", width, inner),
        "fc2": linear(f"h.{i}.mlp.c_proj", inner, width),
      },
    }
  params = {
    "token_embedding": {"embedding": take("wte.weight", (vocab, width))},
    "position_embedding": {"embedding": take("wpe.weight", (kwargs["max_len"], width))},
    "transformer": {"blocks": blocks, "final_norm": norm("ln_f")},
  }
  if not kwargs["tie_embeddings"]:  # nn.Linear (out, in) -> (in, out)
    head = take("lm_head.weight", (vocab, width))
    params["head"] = {"kernel": np.ascontiguousarray(head.T), "bias": np.zeros(vocab, np.float32)}
  elif "lm_head.weight" in left:
    head = np.asarray(left.pop("lm_head.weight"), np.float32)
    if head.shape != (vocab, width) or not np.array_equal(
      head, params["token_embedding"]["embedding"]
    ):
      _refuse("tie_word_embeddings", True, "but lm_head.weight differs from wte.weight")
  unused = sorted(k for k in left if not _BUFFER.search(k))
  if unused:
    raise ValueError(
      f"Hugging Face GPT-2 checkpoint: tensors {unused[:5]} are not part of a GPT-2 language "
      f"model (the module docstring of normjax.interop.hf lists the mapped ones)"
    )
  return params


def read_gpt2(path) -> tuple[dict, dict, dict]:
  """``(kwargs, params, hf_config)``: a checkpoint as normjax GPT-2 arguments and parameters."""
  hf_config = read_config(path)
  kwargs = gpt2_kwargs(hf_config)
  return kwargs, gpt2_params(hf_config, read_tensors(path)), hf_config


def load_gpt2(path, *, dtype: str = "float32") -> nnx.Module:
  """The checkpoint at ``path`` as a normjax ``GPT2`` in eval mode (see the module docstring);
  ``dtype='float64'`` (under ``jax_enable_x64``) computes in float64."""
  from normjax.surgery.conversions import build

  kwargs, params, _ = read_gpt2(path)
  model = build("gpt2", {**kwargs, "dtype": dtype}, params)
  model.eval()
  return model


# ----------------------------------------------------------------------------- export
def _array(value) -> np.ndarray:
  return np.asarray(value[...] if hasattr(value, "get_value") else value, np.float32)


def _affine(norm, width):
  params = norm.params()
  scale = _array(params["scale"]) if "scale" in params else np.ones(width, np.float32)
  bias = _array(params["bias"]) if "bias" in params else np.zeros(width, np.float32)
  return scale.astype(np.float64), bias.astype(np.float64)


def _export_norm(norm, where: str, reader_kernel=None):
  """``(weight, bias, epsilon, value_ratio)`` of the LayerNorm that computes ``norm``."""
  from normjax.norms.basic import Identity, LayerNorm
  from normjax.norms.fakeln import FakeLN
  from normjax.surgery.folding import ChannelAffine

  width = norm.num_features
  root = math.sqrt(LN_FREE_EPSILON)
  if isinstance(norm, LayerNorm):
    return (*_affine(norm, width), float(norm.epsilon), None)
  if isinstance(norm, FakeLN):
    for value_path in (False, True) if norm.separate_value_path else (False,):
      if not bool(norm.is_frozen(value_path)):
        raise ValueError(
          f"{where}: FakeLN{' (V path)' if value_path else ''} at step {int(norm.step[...])} is "
          f"still live (freeze step "
          f"{norm.value_freeze_step if value_path else norm.freeze_step}); only a model whose "
          f"FakeLNs are all frozen is LayerNorm-free and exportable"
        )
    scale, bias = _affine(norm, width)
    sigma = float(norm.frozen_std())
    ratio = sigma / float(norm.frozen_std(True)) if norm.separate_value_path else None
    return scale * root / sigma, bias, LN_FREE_EPSILON, ratio
  if isinstance(norm, Identity) and reader_kernel is not None:
    kernel = np.asarray(reader_kernel, np.float64)
    if np.abs(kernel.mean(0)).max() > 1e-5 * max(np.abs(kernel).max(), 1e-30):
      raise ValueError(
        f"{where}: an Identity norm is exportable only after fold_norms, whose next layer "
        f"ignores the input's mean (its kernel rows sum to zero); this one does not, and HF "
        f"GPT-2 always centres with LayerNorm"
      )
    return np.full(width, root), np.zeros(width), LN_FREE_EPSILON, None
  if isinstance(norm, ChannelAffine) and norm.centered and norm.remainder is None:
    scale, shift = _array(norm.scale).astype(np.float64), _array(norm.shift).astype(np.float64)
    return scale * root, shift, LN_FREE_EPSILON, None
  raise ValueError(
    f"{where}: {type(norm).__name__} cannot be expressed by Hugging Face GPT-2, which has "
    f"LayerNorm only (exportable: layernorm, a frozen fakeln, or their fold_norms forms)"
  )


def _check_exportable(model):
  from normjax.models.gpt2 import GPT2

  if not isinstance(model, GPT2):
    raise ValueError(f"save_gpt2: a normjax GPT2 is needed, not {type(model).__name__}")
  stack = model.transformer
  width = stack.block_list("save_gpt2 (Hugging Face export)")[0].attn.width
  if model.token_embedding.embedding.shape[1] != width:
    raise ValueError(
      "save_gpt2: the residual stream is compressed to width - 1 coordinates (CRMSNorm); HF "
      "GPT-2 has a full-width stream with LayerNorm: export the Pre-LN model it came from"
    )
  if stack.embedding_norm is not None:
    raise ValueError("save_gpt2: an embedding norm has no place in HF GPT-2")
  for i, block in enumerate(stack.blocks):
    for name in ("attn_output_norm", "mlp_output_norm", "attn_residual_norm", "mlp_residual_norm"):
      if getattr(block, name) is not None:
        raise ValueError(
          f"save_gpt2: blocks[{i}].{name} exists: HF GPT-2 is Pre-LN (norms on the sublayer "
          f"inputs only); Peri and Post placements cannot be expressed"
        )
    if block.attn_norm is None or block.mlp_norm is None:
      raise ValueError(f"save_gpt2: blocks[{i}] lacks an input norm (pre placement needed)")
  if stack.final_norm is None:
    raise ValueError("save_gpt2: no final norm (HF GPT-2 has ln_f)")


def gpt2_tensors(model, extra_config: dict | None = None) -> tuple[dict, dict]:
  """``(config.json, tensors)`` of a normjax GPT-2 as ``GPT2LMHeadModel`` (module docstring)."""
  from normjax.models.transformer import center

  _check_exportable(model)
  model = nnx.clone(model)
  model.eval()
  stack = model.transformer
  attn = stack.blocks[0].attn
  width, depth = attn.width, len(stack.blocks)
  centre = bool(stack.zero_mean_writers)

  def writer(array):  # zero_mean_writers recentres outputs in the forward: centre the weights
    array = np.asarray(array, np.float64)
    return np.asarray(center(array)) if centre else array

  wte = np.asarray(model.token_embedding.embedding[...], np.float64)
  tensors = {
    "transformer.wte.weight": writer(wte),
    "transformer.wpe.weight": writer(model.position_embedding.embedding[...]),
  }
  epsilons = set()

  def put_norm(name, weight, bias, eps):
    epsilons.add(eps)
    tensors[f"transformer.{name}.weight"], tensors[f"transformer.{name}.bias"] = weight, bias

  inner = None
  for i, block in enumerate(stack.blocks):
    p = f"h.{i}"
    kernel = np.asarray(block.attn.qkv.kernel[...], np.float64)
    bias = np.asarray(block.attn.qkv.bias[...], np.float64)
    weight, ln_bias, eps, ratio = _export_norm(block.attn_norm, f"blocks[{i}].attn_norm", kernel)
    if ratio is not None and ratio != 1.0:  # separate V std: the V columns absorb sigma_qk/sigma_v
      v_kernel = kernel[:, 2 * width :]
      bias = bias.copy()
      bias[2 * width :] += (1.0 - ratio) * (ln_bias @ v_kernel)
      kernel = np.concatenate([kernel[:, : 2 * width], ratio * v_kernel], axis=1)
    put_norm(f"{p}.ln_1", weight, ln_bias, eps)
    tensors[f"transformer.{p}.attn.c_attn.weight"] = kernel  # Conv1D: (in, out) as flax
    tensors[f"transformer.{p}.attn.c_attn.bias"] = bias
    tensors[f"transformer.{p}.attn.c_proj.weight"] = writer(block.attn.proj.kernel[...])
    tensors[f"transformer.{p}.attn.c_proj.bias"] = writer(block.attn.proj.bias[...])
    fc1 = np.asarray(block.mlp.fc1.kernel[...], np.float64)
    weight, ln_bias, eps, _ = _export_norm(block.mlp_norm, f"blocks[{i}].mlp_norm", fc1)
    put_norm(f"{p}.ln_2", weight, ln_bias, eps)
    tensors[f"transformer.{p}.mlp.c_fc.weight"] = fc1
    tensors[f"transformer.{p}.mlp.c_fc.bias"] = np.asarray(block.mlp.fc1.bias[...], np.float64)
    tensors[f"transformer.{p}.mlp.c_proj.weight"] = writer(block.mlp.fc2.kernel[...])
    tensors[f"transformer.{p}.mlp.c_proj.bias"] = writer(block.mlp.fc2.bias[...])
    inner = fc1.shape[1]
  head = model.head
  head_kernel = None if head is None else np.asarray(head.kernel[...], np.float64)
  put_norm("ln_f", *_export_norm(stack.final_norm, "final_norm", head_kernel)[:3])
  if head is not None:
    if np.any(np.asarray(head.bias[...]) != 0):
      raise ValueError(
        "save_gpt2: the head has a non-zero bias (a folded final-norm shift?); "
        "GPT2LMHeadModel's lm_head has none"
      )
    tensors["lm_head.weight"] = head_kernel.T  # nn.Linear: (out, in)
  if len(epsilons) > 1:
    raise ValueError(
      f"save_gpt2: the norms need different epsilons {sorted(epsilons)}; HF GPT-2 has one "
      f"layer_norm_epsilon"
    )
  dropout = stack.blocks[0].attn_dropout
  rate = 0.0 if dropout is None else float(dropout.rate)
  vocab = int(wte.shape[0])
  config = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "vocab_size": vocab,
    "n_positions": int(model.position_embedding.embedding.shape[0]),
    "n_embd": width,
    "n_layer": depth,
    "n_head": int(attn.num_heads),
    "n_inner": int(inner),
    "activation_function": "gelu_new",
    "layer_norm_epsilon": float(epsilons.pop()),
    "resid_pdrop": rate,
    "embd_pdrop": rate,
    "attn_pdrop": 0.0,  # normjax has no attention-probability dropout
    "initializer_range": 0.02,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": head is None,
    "bos_token_id": vocab - 1,  # GPT-2's <|endoftext|> is its last id
    "eos_token_id": vocab - 1,
    "use_cache": True,
    "dtype": "float32",
    **(extra_config or {}),
  }
  return config, {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def save_gpt2(model, out_dir, *, extra_config: dict | None = None, tokenizer_from=None):
  """Writes ``model`` (a normjax GPT-2) as a Hugging Face GPT-2 directory; returns its path.

  ``extra_config`` overrides config.json fields (e.g. the source's ``bos_token_id``);
  ``tokenizer_from``: a checkpoint directory whose tokenizer files are copied alongside.
  """
  config, tensors = gpt2_tensors(model, extra_config)
  out = hf_files.write_checkpoint(out_dir, config, tensors)
  if tokenizer_from:
    source = resolve(tokenizer_from)
    for name in TOKENIZER_FILES:
      if (source / name).is_file():
        shutil.copyfile(source / name, out / name)
  return out


# ---------------------------------------------------------------- fine-tuning (trainer)
def _norm_default_epsilon(norm: str) -> float | None:
  from normjax.norms import NORMS

  parameter = inspect.signature(NORMS.get(norm).__init__).parameters.get("epsilon")
  return None if parameter is None else parameter.default


def configure_finetune(c, path: str) -> None:
  """Sets a GPT-2 trainer config ``c`` to fine-tune the checkpoint at ``path``: the model
  shape, tied head and norm epsilon from its config.json, ``init_from = {'hf': path}``, the
  data's vocabulary and a ``seq_len`` within ``n_positions``. Pre-RMSNorm/CRMSNorm configs get
  a separate head (the exact conversion folds the final LN's affine into it)."""
  kwargs = gpt2_kwargs(read_config(path))
  for key in ("vocab_size", "max_len", "width", "depth", "num_heads", "mlp_ratio"):
    c.model[key] = kwargs[key]
  c.model.tie_embeddings = kwargs["tie_embeddings"] and c.model.norm not in ("rmsnorm", "crmsnorm")
  c.model.norm_kwargs = dict(c.model.get("norm_kwargs") or {}, **kwargs["norm_kwargs"])
  c.init_from = {"hf": os.fspath(path)}
  vocab = kwargs["vocab_size"]
  if c.data.name == "pystdlib" and vocab != 256:
    raise ValueError(
      f"config argument hf={os.fspath(path)!r}: the checkpoint has a {vocab}-token vocabulary; "
      f"the embedded pystdlib corpus is bytes (256): add data=tokens,path=DIR with a corpus "
      f"tokenized by its tokenizer (python -m normjax.tools.prepare_text)"
    )
  if c.data.name == "tokens":
    c.data.vocab_size = vocab
  c.data.seq_len = min(int(c.data.get("seq_len") or 128), kwargs["max_len"])


def pretrained_params(path, model_config: dict) -> dict:
  """Parameters for the trainer model ``model_config`` (``config.model``) from the checkpoint.

  ``layernorm`` and ``fakeln`` models take the LayerNorm parameters as they are (a FakeLN has
  LayerNorm's ``scale``/``bias``; its std state starts fresh); ``rmsnorm`` / ``crmsnorm`` models
  take the exact Pre-LN conversion (``normjax.surgery.conversions``). The config must match
  the checkpoint (``configure_finetune`` makes it so); a mismatch is a ValueError naming the key.
  """
  from normjax.surgery.conversions import convert

  kwargs, params, _ = read_gpt2(path)
  model = dict(model_config)
  label = f"init_from.hf={os.fspath(path)!r}"
  if model.get("name") != "gpt2":
    raise ValueError(f"config key model.name={model.get('name')!r}: {label} is a GPT-2 ('gpt2')")
  if model.get("placement", "pre") != "pre" or model.get("embedding_norm", False):
    raise ValueError(
      f"config key model.placement={model.get('placement')!r}: {label} is Pre-LN; only the "
      f"pre placement without an embedding norm takes its parameters"
    )
  norm = model.get("norm", "layernorm")
  epsilon = dict(model.get("norm_kwargs") or {}).get("epsilon", _norm_default_epsilon(norm))
  if epsilon != kwargs["norm_kwargs"]["epsilon"]:
    raise ValueError(
      f"config key model.norm_kwargs.epsilon={epsilon!r}: the checkpoint's layer_norm_epsilon "
      f"is {kwargs['norm_kwargs']['epsilon']!r}; they must be equal for the model to compute "
      f"what the checkpoint computes (configs' hf=PATH set it)"
    )
  tied = bool(model.get("tie_embeddings", True))
  if norm in ("layernorm", "fakeln"):
    if tied != kwargs["tie_embeddings"]:
      raise ValueError(
        f"config key model.tie_embeddings={tied}: the checkpoint's tie_word_embeddings is "
        f"{kwargs['tie_embeddings']}"
      )
    return params
  if norm in ("rmsnorm", "crmsnorm"):
    if tied:
      raise ValueError(
        f"config key model.tie_embeddings=True: the exact Pre-LN -> Pre-{norm} conversion "
        f"moves the final LayerNorm's affine into a separate head; set it to False"
      )
    return convert("gpt2", kwargs, params, norm)[1]
  raise ValueError(
    f"config key model.norm={norm!r}: {label} initializes layernorm, fakeln (the same "
    f"parameters) or rmsnorm / crmsnorm (exact conversion)"
  )


def token_ids(path) -> dict:
  """``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` of a checkpoint's config.json."""
  c = read_config(path)
  return {k: c[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if c.get(k) is not None}


def has_tokenizer(path) -> bool:
  directory = pathlib.Path(resolve(path))
  return (directory / "tokenizer.json").is_file() or (
    (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
  )


__all__ = [
  "LN_FREE_EPSILON",
  "configure_finetune",
  "gpt2_kwargs",
  "gpt2_params",
  "gpt2_tensors",
  "load_gpt2",
  "pretrained_params",
  "read_gpt2",
  "save_gpt2",
]
