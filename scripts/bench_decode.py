r"""Decode speed of ``normjax.tools.sample.generate``: KV cache vs recomputing every step.

  python scripts/bench_decode.py [--width 384 --depth 6 --heads 6 --prompt_len 64 \
      --new_tokens 192 --batch 1 --repeats 3] [--json out.json]

One random byte-level GPT-2 (vocab 256, max_len = prompt + new tokens), one left-padded batch
of random prompts, greedy decoding. Both variants are the same jitted function
(``use_cache=True``: prefill + ``lax.fori_loop`` of one-token steps reading the cache;
``use_cache=False``: the loop recomputes the whole (batch, prompt + new) buffer each step),
compiled by a first call that is not timed, then timed ``--repeats`` times alternately in one
process (median wall time, ``block_until_ready``). With torch and transformers installed, the
same weights (exported by ``save_gpt2``) also run ``GPT2LMHeadModel.generate`` (greedy,
``use_cache=True``, ``--torch_threads`` intra-op threads: 1 by default, because on a shared
2-core machine torch's 2 spinning threads ran 28x slower than one) for the comparison a
researcher would make. Prints
tokens/s, the cache/recompute ratio and how many tokens agree with the KV-cache run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from normjax.models.gpt2 import GPT2
from normjax.tools.sample import generate


def timed(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def transformers_generate(model, prompts, new_tokens, threads):
  """(callable, tokens) of transformers' greedy generate on ``model``'s weights, or None."""
  try:
    import torch
    import transformers
  except ImportError:
    return None
  from normjax.interop.hf import save_gpt2
  from normjax.tools.sample import pad_prompts

  torch.set_num_threads(threads)
  directory = tempfile.mkdtemp(prefix="bench_decode_")
  save_gpt2(model, directory)
  reference = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
  tokens, mask = pad_prompts(prompts)
  ids, attention = torch.as_tensor(tokens, dtype=torch.long), torch.as_tensor(mask).long()

  def run():
    with torch.no_grad():
      return reference.generate(
        ids,
        attention_mask=attention,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        use_cache=True,
      )[:, tokens.shape[1] :].numpy()

  return (
    run,
    f"transformers {transformers.__version__}, torch {torch.__version__}, {threads} thread(s)",
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, default=384)
  parser.add_argument("--depth", type=int, default=6)
  parser.add_argument("--heads", type=int, default=6)
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=192)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_transformers", action="store_true")
  parser.add_argument("--torch_threads", type=int, default=1)
  parser.add_argument("--json", default=None)
  a = parser.parse_args()

  model = GPT2(
    vocab_size=256,
    max_len=a.prompt_len + a.new_tokens,
    width=a.width,
    depth=a.depth,
    num_heads=a.heads,
    norm_kwargs={"epsilon": 1e-5},
    rngs=nnx.Rngs(0),
  )
  model.eval()
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(0, 256, a.prompt_len - i)) for i in range(a.batch)]
  runs = {
    "kv_cache": lambda: generate(model, prompts, max_new_tokens=a.new_tokens),
    "recompute": lambda: generate(model, prompts, max_new_tokens=a.new_tokens, use_cache=False),
  }
  outputs = {}
  compile_s = {}
  for name, fn in runs.items():
    t = time.perf_counter()
    outputs[name] = fn()  # compiles
    compile_s[name] = time.perf_counter() - t
  other = (
    None
    if a.no_transformers
    else transformers_generate(model, prompts, a.new_tokens, a.torch_threads)
  )
  if other is not None:
    runs["transformers"] = other[0]
    outputs["transformers"] = other[0]()
  times = {name: [] for name in runs}
  for _ in range(a.repeats):  # alternate, so a load spike hits all variants alike
    for name, fn in runs.items():
      times[name] += timed(fn, 1)
  new = a.batch * a.new_tokens
  result = {
    "device": str(jax.devices()[0]),
    "cpu_count": os.cpu_count(),
    "load_average": os.getloadavg(),
    "model": dict(width=a.width, depth=a.depth, heads=a.heads, vocab=256),
    "batch": a.batch,
    "prompt_len": a.prompt_len,
    "new_tokens": a.new_tokens,
    "first_call_s": compile_s,
    "median_s": {k: statistics.median(v) for k, v in times.items()},
    "tokens_per_s": {k: new / statistics.median(v) for k, v in times.items()},
  }
  result["cache_over_recompute"] = (
    result["tokens_per_s"]["kv_cache"] / (result["tokens_per_s"]["recompute"])
  )
  # fraction of generated tokens equal to the KV-cache run's (a random-init model has
  # near-tied logits, so rounding may flip an argmax and the continuation after it)
  result["tokens_agree"] = {k: float(np.mean(v == outputs["kv_cache"])) for k, v in outputs.items()}
  if other is not None:
    result["reference"] = other[1]
  for name, rate in result["tokens_per_s"].items():
    print(f"{name:13s} {rate:9.1f} tokens/s  (median {result['median_s'][name]:.3f} s)")
  print(f"KV cache / recompute: {result['cache_over_recompute']:.2f}x")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
