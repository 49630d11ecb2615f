"""Peri-LN placement, split Q/K-V attention inputs, zero-mean writers and norm sites."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normjax.models import make_model
from normjax.models.transformer import (
  PLACEMENTS,
  LinearInits,
  MultiHeadSelfAttention,
  TransformerBlock,
)

WIDTH, HEADS = 16, 4
INITS = LinearInits(*(nnx.initializers.normal(0.3),) * 4, mlp_bias=nnx.initializers.normal(0.3))


def block(placement, **kwargs):
  return TransformerBlock(
    WIDTH,
    HEADS,
    32,
    norm="layernorm",
    norm_kwargs={},
    placement=placement,
    causal=True,
    dropout=0.0,
    inits=INITS,
    dtype=jnp.float32,
    rngs=nnx.Rngs(0),
    **kwargs,
  )


def test_peri_block_normalizes_sublayer_input_and_output():
  peri = block("peri")
  for name in ("attn_norm", "attn_output_norm", "mlp_norm", "mlp_output_norm"):
    getattr(peri, name).scale[...] = jnp.asarray(
      np.random.default_rng(len(name)).uniform(0.5, 2, WIDTH), jnp.float32
    )
  assert peri.attn_residual_norm is None and peri.mlp_residual_norm is None
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, WIDTH)) * 3, jnp.float32)

  @nnx.jit
  def by_hand(peri, x):
    h = x + peri.attn_output_norm(peri.attn(peri.attn_norm(x)))
    return h + peri.mlp_output_norm(peri.mlp(peri.mlp_norm(h)))

  np.testing.assert_allclose(nnx.jit(lambda b, x: b(x))(peri, x), by_hand(peri, x), rtol=1e-6)
  pre = block("pre")
  assert pre.attn_output_norm is None and pre.mlp_norm is not None
  assert PLACEMENTS["peri"].final_norm and not PLACEMENTS["peri"].residual_norm


def test_peri_models_have_final_and_optional_embedding_norm():
  kwargs = dict(vocab_size=11, max_len=8, width=WIDTH, depth=2, num_heads=HEADS, placement="peri")
  gpt2 = nnx.eval_shape(lambda: make_model("gpt2", rngs=nnx.Rngs(0), **kwargs))
  assert gpt2.transformer.final_norm is not None and gpt2.transformer.embedding_norm is None
  with_embedding = nnx.eval_shape(
    lambda: make_model("gpt2", rngs=nnx.Rngs(0), **kwargs, embedding_norm=True)
  )
  assert with_embedding.transformer.embedding_norm is not None
  # the norm attributes carry their site: role and block index
  fake = nnx.eval_shape(
    lambda: make_model("gpt2", rngs=nnx.Rngs(0), **dict(kwargs, placement="pre", norm="fakeln"))
  )
  assert fake.transformer.blocks[1].attn_norm.separate_value_path
  assert not fake.transformer.blocks[1].mlp_norm.separate_value_path


def test_attention_with_a_separate_value_input():
  attn = MultiHeadSelfAttention(
    WIDTH, HEADS, causal=True, inits=INITS, dtype=jnp.float32, rngs=nnx.Rngs(1)
  )
  rng = np.random.default_rng(2)
  x, v_in = (jnp.asarray(rng.normal(size=(2, 5, WIDTH)), jnp.float32) for _ in range(2))
  np.testing.assert_allclose(attn(x, value_input=x), attn(x), rtol=1e-5, atol=1e-6)
  kernel, bias = attn.qkv.kernel[...], attn.qkv.bias[...]
  heads = lambda a: a.reshape(2, 5, HEADS, WIDTH // HEADS)
  q, k = (
    heads(x @ kernel[:, :WIDTH] + bias[:WIDTH]),
    heads(x @ kernel[:, WIDTH : 2 * WIDTH] + bias[WIDTH : 2 * WIDTH]),
  )
  v = heads(v_in @ kernel[:, 2 * WIDTH :] + bias[2 * WIDTH :])
  out = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(2, 5, WIDTH)
  np.testing.assert_allclose(attn(x, value_input=v_in), attn.proj(out), rtol=1e-5, atol=1e-6)


def test_zero_mean_writers_keep_the_stream_centred():
  kwargs = dict(vocab_size=11, max_len=8, width=WIDTH, depth=2, num_heads=HEADS, norm="none")
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, WIDTH)) + 1.0, jnp.float32)
  for zero_mean in (True, False):
    model = make_model("gpt2", rngs=nnx.Rngs(0), **kwargs, zero_mean_writers=zero_mean)
    stream = model.transformer(x)  # norm 'none': the final "norm" is the identity
    means = np.abs(np.asarray(stream).mean(-1)).max()
    assert (means < 1e-5) if zero_mean else (means > 0.1)


def test_transformer_norm_configs_are_valid():
  """Every config of this family resolves and passes the trainer's checks (no compilation)."""
  from normjax import data as nj_data
  from normjax.config_check import check_config
  from tests import trainer_utils as tu

  expected = {
    "vit_powernorm": ("powernorm", "pre"),
    "vit_unified": ("unifiednorm", "pre"),
    "gpt2_powernorm": ("powernorm", "pre"),
    "gpt2_rmsnorm": ("rmsnorm", "pre"),
    "gpt2_crmsnorm": ("crmsnorm", "pre"),
    "gpt2_perinorm": ("layernorm", "peri"),
    "gpt2_ln_removal": ("fakeln", "pre"),
  }
  for name, (norm, placement) in expected.items():
    config = tu.load_config(name)
    assert (config.model.norm, config.model.placement) == (norm, placement), name
    assert check_config(config, nj_data.get_info(config.data)) == config.total_steps
  pn = tu.load_config("vit_powernorm").model.norm_kwargs
  assert pn.groups == 4 and pn.warmup_steps == tu.load_config("vit_powernorm").schedule.warmup_steps
  assert tu.load_config("gpt2_ln_removal", "remove=False").model.norm == "layernorm"
