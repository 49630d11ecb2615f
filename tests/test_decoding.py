"""GPT-2's padding mask and key/value cache, and ``normjax.tools.sample.generate`` (no torch).

The references are the model itself: a padded row against the row alone, cached decode steps
against full recomputation, one compilation for many prompts."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.models.gpt2 import GPT2
from normjax.norms.fakeln import FakeLN
from normjax.tools import sample
from tests import trainer_utils as tu

VOCAB, MAX_LEN = 40, 24
ROWS = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9, 7]]


def make_model(norm="layernorm", seed=0, **kwargs):
  model = GPT2(
    vocab_size=VOCAB,
    max_len=MAX_LEN,
    width=32,
    depth=2,
    num_heads=4,
    norm=norm,
    rngs=nnx.Rngs(seed),
    **kwargs,
  )
  matrices = [p for _, p in nnx.iter_graph(model) if isinstance(p, nnx.Param) and p[...].ndim == 2]
  for i, param in enumerate(matrices):  # larger weights: well-separated logits
    param[...] = jax.random.normal(jax.random.key(seed * 100 + i), param[...].shape) * 0.3
  model.eval()
  return model


def frozen_fakeln_model():
  model = make_model("fakeln", norm_kwargs={"freeze_step": 0, "epsilon": 1e-5})
  for _, node in nnx.iter_graph(model):
    if isinstance(node, FakeLN):
      node.average_std[...] = jnp.float32(1.7)
      if node.value_std is not None:
        node.value_std[...] = jnp.float32(0.6)  # the V path divides by its own std
  return model


@pytest.mark.parametrize("kind", ["layernorm", "fakeln"])
def test_padded_rows_compute_what_each_row_computes_alone(kind):
  model = make_model() if kind == "layernorm" else frozen_fakeln_model()
  tokens, mask = sample.pad_prompts(ROWS)
  padded = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
  for row, prompt in enumerate(ROWS):
    alone = np.asarray(model(jnp.asarray([prompt])))[0]
    # float32 rounding only: on CPU the masked rows attend in one block, the row alone in
    # causal query blocks (normjax.kernels.attention), so the sums run in another order
    np.testing.assert_allclose(padded[row, -len(prompt) :], alone, atol=5e-5, rtol=1e-5)
  # right padding too: the positions count real tokens, the keys after them are masked
  right = np.zeros_like(tokens)
  right[0, : len(ROWS[0])] = ROWS[0]
  right_mask = right > 0
  right_logits = np.asarray(model(jnp.asarray(right[:1]), jnp.asarray(right_mask[:1])))
  np.testing.assert_allclose(
    right_logits[0, : len(ROWS[0])], np.asarray(model(jnp.asarray(ROWS[:1])))[0], atol=5e-5
  )


def test_an_all_true_mask_is_the_unmasked_model():
  model = make_model()
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 12)))
  np.testing.assert_allclose(
    model(tokens, jnp.ones((2, 12), bool)), model(tokens), atol=1e-5, rtol=1e-5
  )


def test_cached_decode_steps_equal_full_recomputation():
  model = frozen_fakeln_model()  # the separate V path goes through the cache too
  tokens, mask = sample.pad_prompts(ROWS)
  batch, prompt = tokens.shape
  new = 6
  slots = np.concatenate([mask, np.ones((batch, new), bool)], 1)
  cache = model.init_cache(batch, prompt + new, slots)
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  logits, cache = model(jnp.asarray(tokens), jnp.asarray(mask), positions=positions, cache=cache)
  sequence, lengths = tokens, mask.sum(1)
  for i in range(new):
    nxt = np.asarray(logits[:, -1].argmax(-1))[:, None].astype(np.int32)
    sequence = np.concatenate([sequence, nxt], 1)
    full = np.asarray(model(jnp.asarray(sequence), jnp.asarray(slots[:, : sequence.shape[1]])))
    logits, cache = model(jnp.asarray(nxt), positions=(lengths + i)[:, None], cache=cache)
    np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, -1], atol=3e-5, rtol=1e-5)
    assert int(cache[0].index) == prompt + i + 1


def test_generate_with_and_without_the_cache_agree():
  model = make_model()
  for kwargs in ({}, {"temperature": 0.9, "top_k": 7, "seed": 3}):
    cached = sample.generate(model, ROWS, max_new_tokens=8, **kwargs)
    recomputed = sample.generate(model, ROWS, max_new_tokens=8, use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached, recomputed)
  alone = [sample.generate(model, [row], max_new_tokens=8)[0] for row in ROWS]
  np.testing.assert_array_equal(np.stack(alone), sample.generate(model, ROWS, max_new_tokens=8))
  top1 = sample.generate(model, ROWS, max_new_tokens=8, temperature=2.0, top_k=1, seed=5)
  np.testing.assert_array_equal(top1, sample.generate(model, ROWS, max_new_tokens=8))


def test_generate_compiles_once_for_prompts_of_the_same_shape():
  model = make_model(seed=1)
  sample.generate(model, ROWS, max_new_tokens=5)
  compiled = sample._generate._cache_size()
  other = [[7] * len(ROWS[0]), [8] * len(ROWS[1])]
  sample.generate(model, other, max_new_tokens=5)
  sample.generate(make_model(seed=2), other, max_new_tokens=5)  # new weights, same graph
  assert sample._generate._cache_size() == compiled


def test_generate_stops_rows_and_checks_lengths():
  model = make_model()
  greedy = sample.generate(model, ROWS, max_new_tokens=8)
  stop = int(greedy[0, 2])
  stopped = sample.generate(model, ROWS, max_new_tokens=8, stop_token=stop)
  first = list(greedy[0]).index(stop)
  assert (stopped[0, first:] == stop).all() and (stopped[0, :first] == greedy[0, :first]).all()
  with pytest.raises(ValueError, match="exceeds the model's max_len=24"):
    sample.generate(model, ROWS, max_new_tokens=MAX_LEN)
  with pytest.raises(ValueError, match="at least one token"):
    sample.pad_prompts([[1], []])


def test_sample_command_on_a_byte_level_run(tmp_path):
  config = tu.apply(tu.load_config("gpt2_layernorm"), tu.overrides("gpt2", 2))
  from normjax import train

  train.train_and_evaluate(config, str(tmp_path / "run"))
  args = [sys.executable, "-m", "normjax.tools.sample", "--workdir", str(tmp_path / "run")]
  args += ["--prompt", "def f(", "--prompt", "import o", "--max_new_tokens", "5"]
  out = tu.run_cli(args + ["--temperature", "0"], tu.env())
  assert out.returncode == 0, out.stderr
  assert "--- 'def f('" in out.stdout and "--- 'import o'" in out.stdout
  bad = tu.run_cli(args + ["--max_new_tokens", "500"], tu.env())
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(
    "normjax.tools.sample: the longest prompt"
  )


BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('torch', 'transformers', 'safetensors', 'tokenizers'):
      raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import normjax, normjax.checkpoint, normjax.train
from normjax.interop import hf, text
from normjax.tools import convert, prepare_text, sample
from normjax.tools import hf as hf_tool
try:
  hf.load_gpt2(sys.argv[1])
except ImportError as e:
  print('ImportError:', e)
"""


def test_the_library_imports_without_the_optional_packages(tmp_path):
  (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
  (tmp_path / "model.safetensors").write_bytes(b"")
  out = subprocess.run(
    [sys.executable, "-c", BLOCKED, str(tmp_path)],
    capture_output=True,
    text=True,
    cwd=tu.ROOT,
    env=tu.env(),
    timeout=300,
  )
  assert out.returncode == 0, out.stderr
  assert "needs the optional package 'safetensors': pip install 'normjax[hf]'" in out.stdout
