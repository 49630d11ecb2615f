r"""Generate text from a normjax GPT-2 run or a Hugging Face GPT-2, with a key/value cache.

  python -m normjax.tools.sample --workdir W --prompt "def main(" [--prompt "import os" ...]
  python -m normjax.tools.sample --hf DIR --prompt "Hello" --max_new_tokens 50 \
      --temperature 0.8 --top_k 40 --seed 0 [--tokenizer PATH]

``generate`` runs inside one ``jax.jit``: the prompts are left-padded to a common length P
with a padding mask (``normjax.models.gpt2``: padding keys are masked and positions count
each row's real tokens, so a row computes what it computes alone), a prefill writes the
prompt's keys and values into an ``AttentionCache`` of P + N slots per block, and a
``lax.fori_loop`` of N - 1 one-token decode steps follows, with fixed shapes: one compilation
per (batch, P, N, sampling settings), none per token. ``use_cache=False`` is the same loop
recomputing the whole (B, P + N) buffer every step (the baseline of ``scripts/bench_decode.py``).

Choosing a token: ``temperature == 0`` is greedy (argmax; equals ``transformers``' greedy
``generate`` on an imported checkpoint), else softmax(logits / T) restricted to the ``top_k``
largest logits (0: all), drawn with ``jax.random.categorical`` from ``fold_in(key(seed), i)``
for new token i. ``stop_token``: after a row emits it, the row's later tokens are the stop
token too (as ``generate`` pads finished rows with the end-of-text id).

Text: vocab-256 models are byte-level (UTF-8 bytes; invalid sequences print as U+FFFD); other
models use ``--tokenizer``, else the tokenizer files of ``--hf DIR`` (or of the checkpoint a
run was initialised from, ``init_from.hf``), else the ``tokenizer`` named by the run's
``data.path/meta.json`` (``normjax.tools.prepare_text``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normjax import cli


def _choose(logits, key, temperature, *, greedy: bool, top_k: int):
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(
  jax.jit, static_argnames=("graph", "max_new_tokens", "greedy", "top_k", "use_cache")
)
def _generate(
  state, tokens, mask, key, temperature, *, graph, max_new_tokens, greedy, top_k, use_cache
):
  batch, prompt = tokens.shape
  total = prompt + max_new_tokens
  choose = functools.partial(_choose, temperature=temperature, greedy=greedy, top_k=top_k)
  slots = jnp.concatenate([mask, jnp.ones((batch, max_new_tokens), bool)], axis=1)
  lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
  out = jnp.zeros((batch, max_new_tokens), jnp.int32)
  if use_cache:
    model = nnx.merge(graph, state)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)
    cache = model.init_cache(batch, total, slots)
    logits, cache = model(tokens, mask, positions=positions, cache=cache)
    out = out.at[:, 0].set(choose(logits[:, -1], jax.random.fold_in(key, 0)))

    def step(i, carry):
      out, cache = carry
      model = nnx.merge(graph, state)  # a module of this trace level
      previous = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
      logits, cache = model(previous, positions=(lengths + i - 1)[:, None], cache=cache)
      return out.at[:, i].set(choose(logits[:, 0], jax.random.fold_in(key, i))), cache

    out, _ = jax.lax.fori_loop(1, max_new_tokens, step, (out, cache))
    return out
  # no cache: the logits of the whole (B, P + N) buffer every step (causal attention, so the
  # slots after the current one do not change them)
  buffer = jnp.concatenate([tokens, jnp.zeros((batch, max_new_tokens), tokens.dtype)], axis=1)
  positions = jnp.maximum(jnp.cumsum(slots, axis=1, dtype=jnp.int32) - 1, 0)

  def logits_at(buffer, slot):
    logits = nnx.merge(graph, state)(buffer, slots, positions=positions)
    return jax.lax.dynamic_index_in_dim(logits, slot, axis=1, keepdims=False)

  out = out.at[:, 0].set(choose(logits_at(buffer, prompt - 1), jax.random.fold_in(key, 0)))

  def recompute(i, carry):
    out, buffer = carry
    previous = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
    buffer = jax.lax.dynamic_update_slice(buffer, previous, (0, prompt + i - 1))
    last = logits_at(buffer, prompt + i - 1)
    return out.at[:, i].set(choose(last, jax.random.fold_in(key, i))), buffer

  out, _ = jax.lax.fori_loop(1, max_new_tokens, recompute, (out, buffer))
  return out


def pad_prompts(prompts: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded ``(tokens (B, P) int32, mask (B, P) bool)`` of token-id prompts."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), bool)
  for row, p in enumerate(prompts):
    tokens[row, width - len(p) :], mask[row, width - len(p) :] = p, True
  return tokens, mask


def generate(
  model: nnx.Module,
  prompts: list[list[int]],
  *,
  max_new_tokens: int,
  temperature: float = 0.0,
  top_k: int = 0,
  seed: int = 0,
  stop_token: int | None = None,
  use_cache: bool = True,
) -> np.ndarray:
  """New token ids (B, max_new_tokens) for a batch of token-id prompts (module docstring)."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
  if temperature < 0 or top_k < 0:
    raise ValueError(f"temperature={temperature}, top_k={top_k}: must be >= 0")
  tokens, mask = pad_prompts(prompts)
  if tokens.shape[1] + max_new_tokens > model.max_len:
    raise ValueError(
      f"the longest prompt ({tokens.shape[1]} tokens) + max_new_tokens={max_new_tokens} "
      f"exceeds the model's max_len={model.max_len}"
    )
  model = nnx.clone(model)
  model.eval()
  # mixture-of-experts FFNs (normjax.models.moe) route every token: no capacity in decoding
  model.set_attributes(dropless=True, raise_if_not_found=False)
  graph, state = nnx.split(model)
  out = _generate(
    state,
    jnp.asarray(tokens),
    jnp.asarray(mask),
    jax.random.key(seed),
    jnp.float32(max(temperature, 1e-6)),
    graph=graph,
    max_new_tokens=int(max_new_tokens),
    greedy=temperature == 0,
    top_k=min(int(top_k), model.token_embedding.embedding.shape[0]),
    use_cache=use_cache,
  )
  out = np.array(out)
  if stop_token is not None:
    stopped = np.cumsum(out == stop_token, axis=1) > 0
    after = np.concatenate([np.zeros((len(out), 1), bool), stopped[:, :-1]], axis=1)
    out[after] = stop_token
  return out


# --------------------------------------------------------------------------- the command
def _run_tokenizer(config, vocab: int, explicit: str | None):
  from normjax.data.tokens import token_meta
  from normjax.interop import hf, text

  if explicit:
    return text.load_tokenizer(explicit)
  source = (config.get("init_from") or {}).get("hf")
  if source and hf.has_tokenizer(source):
    return text.load_tokenizer(hf.resolve(source))
  if vocab == 256:
    return text.ByteTokenizer()
  path = config.data.get("path")
  named = token_meta(path).get("tokenizer") if path else None
  if named:
    return text.load_tokenizer(named)
  raise FileNotFoundError(
    f"the model has a {vocab}-token vocabulary and no tokenizer was found: pass --tokenizer "
    f"(a tokenizer.json, or GPT-2's vocab.json + merges.txt)"
  )


def load_for_sampling(workdir=None, hf_dir=None, tokenizer=None, step=None):
  """``(model, tokenizer, stop_token)`` for ``--workdir`` or ``--hf``."""
  from normjax.interop import hf, text

  if (workdir is None) == (hf_dir is None):
    raise ValueError("give exactly one of --workdir (a normjax run) and --hf (a HF GPT-2 dir)")
  if hf_dir is not None:
    model = hf.load_gpt2(hf_dir)
    vocab = model.token_embedding.embedding.shape[0]
    if tokenizer:
      tok = text.load_tokenizer(tokenizer)
    elif hf.has_tokenizer(hf_dir):
      tok = text.load_tokenizer(hf.resolve(hf_dir))
    elif vocab == 256:
      tok = text.ByteTokenizer()
    else:
      raise FileNotFoundError(f"{hf_dir}: no tokenizer files; pass --tokenizer")
    eos = hf.token_ids(hf_dir).get("eos_token_id")
  else:
    from normjax.checkpoint import load_run

    config, model = load_run(workdir, step)
    vocab = model.token_embedding.embedding.shape[0]
    tok = _run_tokenizer(config, vocab, tokenizer)
    eos = None
  stop = tok.eot if tok.eot is not None else eos
  return model, tok, (stop if isinstance(stop, int) and 0 <= stop < vocab else None)


def main():
  from absl import app, flags, logging

  workdir = flags.DEFINE_string("workdir", None, "A normjax GPT-2 run.")
  hf_dir = flags.DEFINE_string("hf", None, "A Hugging Face GPT-2 directory (or hub id in cache).")
  prompt = flags.DEFINE_multi_string("prompt", None, "Prompt text; repeat for a batch.")
  max_new = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
  temperature = flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 = greedy.")
  top_k = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
  seed = flags.DEFINE_integer("seed", 0, "Sampling seed.")
  tokenizer = flags.DEFINE_string("tokenizer", None, "tokenizer.json or vocab.json+merges.txt.")
  step = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: latest).")
  no_cache = flags.DEFINE_bool("no_cache", False, "Recompute every step (no KV cache).")
  verbose = cli.define_verbose_flag()

  def run_command(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if not prompt.value:
      raise app.UsageError("--prompt is required (repeat it for a batch)")

    def body():
      model, tok, stop = load_for_sampling(workdir.value, hf_dir.value, tokenizer.value, step.value)
      ids = [tok.encode(p) for p in prompt.value]
      if any(not p for p in ids) and stop is not None:  # an empty prompt starts at end-of-text
        ids = [p or [stop] for p in ids]
      out = generate(
        model,
        ids,
        max_new_tokens=max_new.value,
        temperature=temperature.value,
        top_k=top_k.value,
        seed=seed.value,
        stop_token=stop,
        use_cache=not no_cache.value,
      )
      for text, row in zip(prompt.value, out):
        row = list(row)
        if stop is not None and stop in row:
          row = row[: row.index(stop)]
        print(f"--- {text!r}\n{text}{tok.decode(row)}")

    cli.guarded("normjax.tools.sample", body, verbose_flag=verbose.value)

  app.run(run_command)


if __name__ == "__main__":
  main()
