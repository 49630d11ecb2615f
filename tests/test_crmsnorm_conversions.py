"""CRMSNorm and the exact Pre-LN -> Pre-RMSNorm -> Pre-CRMSNorm conversions (Jiang et al. 2023).

The float64 checks run an independent numpy forward of GPT-2 / ViT written from the formulas;
the float32 checks run the normjax models; training equivalence runs the trainer's step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from normjax import norms, run
from normjax.models import make_model
from normjax.norms.crmsnorm import CRMSNorm, compress, crms_norm, decompress
from normjax.surgery.conversions import build, convert

EPS = 1e-6
GPT2 = dict(vocab_size=29, max_len=8, width=16, depth=2, num_heads=4)
VIT = dict(
  num_classes=5,
  image_size=4,
  in_channels=2,
  patch_size=2,
  width=16,
  depth=2,
  num_heads=4,
  mlp_dim=32,
)


# ----------------------------------------------------------------- numpy float64 reference
def np_norm(h, q, kind):
  if kind == "layernorm":
    c = h - h.mean(-1, keepdims=True)
    y = c / np.sqrt((c**2).mean(-1, keepdims=True) + EPS)
  elif kind == "rmsnorm":
    y = h / np.sqrt((h**2).mean(-1, keepdims=True) + EPS)
  else:  # crmsnorm on d-1 stored coordinates
    d = h.shape[-1] + 1
    y = h / np.sqrt(((h**2).sum(-1, keepdims=True) + h.sum(-1, keepdims=True) ** 2) / d + EPS)
  return y * q.get("scale", 1.0) + q.get("bias", 0.0)


def np_linear(h, q):
  return h @ q["kernel"] + q.get("bias", 0.0)


def np_attention(h, q, heads, causal):
  batch, length, _ = h.shape
  width = q["proj"]["kernel"].shape[0]
  qkv = np_linear(h, q["qkv"]).reshape(batch, length, 3, heads, width // heads)
  scores = np.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0], qkv[:, :, 1]) / np.sqrt(width // heads)
  if causal:
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", probs, qkv[:, :, 2]).reshape(batch, length, width)
  return np_linear(out, q["proj"])


def np_gelu(u):
  return 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3)))


def np_forward(name, p, kind, inputs):
  if name == "gpt2":
    h = (
      p["token_embedding"]["embedding"][inputs]
      + p["position_embedding"]["embedding"][: inputs.shape[1]]
    )
  else:
    size = VIT["patch_size"]
    b, hh, ww, c = inputs.shape
    patches = inputs.reshape(b, hh // size, size, ww // size, size, c).transpose(0, 1, 3, 2, 4, 5)
    kernel = p["patch_embedding"]["kernel"]
    h = patches.reshape(b, -1, size * size * c) @ kernel.reshape(-1, kernel.shape[-1])
    h = h + p["patch_embedding"]["bias"]
    cls = np.broadcast_to(p["cls_token"], (b, 1, h.shape[-1]))
    h = np.concatenate([cls, h], axis=1) + p["position_embedding"]
  blocks = p["transformer"]["blocks"]
  for i in sorted(blocks):
    blk = blocks[i]
    h = h + np_attention(
      np_norm(h, blk.get("attn_norm", {}), kind),
      blk["attn"],
      GPT2["num_heads"],
      causal=name == "gpt2",
    )
    mlp = blk["mlp"]
    h = h + np_linear(
      np_gelu(np_linear(np_norm(h, blk.get("mlp_norm", {}), kind), mlp["fc1"])), mlp["fc2"]
    )
  h = np_norm(h, p["transformer"].get("final_norm", {}), kind)
  if name == "vit":
    h = h[:, 0]
  if "head" in p:
    return np_linear(h, p["head"])
  return h @ p["token_embedding"]["embedding"].T


# ----------------------------------------------------------------- fixtures
def random_params(name, kwargs, seed=0):
  """float64 parameters, all non-trivial: LN affine, head, biases, off-centre embeddings."""
  abstract = nnx.eval_shape(lambda: make_model(name, rngs=nnx.Rngs(0), **kwargs))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    names = [str(getattr(k, "key", k)) for k in path]
    value = 0.3 * rng.standard_normal(x.shape)
    if names[-1] == "scale":
      value += 1.0
    elif names[-1] == "kernel" and len(x.shape) >= 2:
      value *= 3.0 / np.sqrt(np.prod(x.shape[:-1]))
    return value + (0.5 if "embedding" in names[0] else 0.0)

  return jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))


def forward(model, inputs):
  graph, state = nnx.split(model)
  return jax.jit(lambda state, x: nnx.merge(graph, state)(x))(state, jnp.asarray(inputs))


def model_inputs(name):
  rng = np.random.default_rng(1)
  if name == "gpt2":
    return rng.integers(0, GPT2["vocab_size"], (3, GPT2["max_len"]))
  return rng.standard_normal((3, VIT["image_size"], VIT["image_size"], VIT["in_channels"]))


# ----------------------------------------------------------------- tests
def test_crms_norm_is_rmsnorm_of_the_decompressed_vector():
  with jax.enable_x64(True):
    x = np.random.default_rng(0).standard_normal((4, 7)) * 3
    full = decompress(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(full).sum(-1), 0, atol=1e-12)
    np.testing.assert_array_equal(compress(full), x)
    expected = np_norm(np.asarray(full), {}, "rmsnorm")[:, :-1]
    got, _ = crms_norm(jnp.asarray(x), {}, epsilon=EPS)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got, np_norm(x, {}, "crmsnorm"), rtol=1e-12)
  module = CRMSNorm(7, epsilon=EPS)
  x32 = jnp.asarray(x, jnp.float32)
  np.testing.assert_array_equal(module(x32), crms_norm(x32, module.params(), epsilon=EPS)[0])
  assert norms.NORMS.get("crmsnorm") is CRMSNorm and CRMSNorm.compressed_residual


def test_crmsnorm_models_keep_a_width_minus_one_stream():
  gpt2 = nnx.eval_shape(lambda: make_model("gpt2", rngs=nnx.Rngs(0), **GPT2, norm="crmsnorm"))
  vit = nnx.eval_shape(lambda: make_model("vit", rngs=nnx.Rngs(0), **VIT, norm="crmsnorm"))
  d = GPT2["width"]
  assert gpt2.token_embedding.embedding.shape == (GPT2["vocab_size"], d - 1)
  block = gpt2.transformer.blocks[0]
  assert block.attn.qkv.kernel.shape == (d - 1, 3 * d)
  assert block.attn.proj.kernel.shape == (d, d - 1)
  assert block.mlp.fc2.kernel.shape == (4 * d, d - 1) and block.mlp_norm.scale.shape == (d - 1,)
  assert vit.patch_embedding.kernel.shape[-1] == d - 1 and vit.head.kernel.shape == (d - 1, 5)


@pytest.mark.parametrize("name,kwargs", [("gpt2", GPT2), ("vit", VIT)])
def test_conversions_are_exact(name, kwargs):
  params = random_params(name, kwargs)
  inputs = model_inputs(name)
  reference = np_forward(name, params, "layernorm", inputs)
  original = forward(build(name, kwargs, params), inputs)
  # the numpy reference is the normjax model (float32 rounding apart)
  np.testing.assert_allclose(original, reference, rtol=1e-4, atol=1e-4)
  for to in ("rmsnorm", "crmsnorm"):
    new_kwargs, new_params = convert(name, kwargs, params, to)
    assert new_kwargs["norm"] == to and new_kwargs["norm_kwargs"]["epsilon"] == EPS
    # float64: the same function to ~1e-12
    converted = np_forward(name, new_params, to, inputs)
    np.testing.assert_allclose(converted, reference, rtol=0, atol=1e-10, err_msg=to)
    # float32: the normjax model of the converted architecture
    np.testing.assert_allclose(
      forward(build(name, new_kwargs, new_params), inputs),
      original,
      rtol=1e-5,
      atol=2e-5,
      err_msg=to,
    )
  assert np.abs(reference).max() > 0.1  # not a trivially small output


def test_zero_mean_reparameterisation_trains_like_pre_ln():
  """With affine-free norms, Pre-RMSNorm + zero-mean writers is Pre-LN for ANY parameters."""
  ln = dict(GPT2, norm="layernorm", norm_kwargs={"use_scale": False, "use_bias": False})
  rms = dict(GPT2, norm="rmsnorm", norm_kwargs={"use_scale": False})
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), random_params("gpt2", rms))
  tokens = np.random.default_rng(2).integers(0, GPT2["vocab_size"], (2, 4, GPT2["max_len"] + 1))
  batches = [{"inputs": t[:, :-1], "targets": t[:, 1:]} for t in tokens]
  tx = optax.sgd(0.5)  # plain SGD: Adam would blow round-off in zero-gradient directions up
  results = {}
  for tag, kwargs in {"ln": ln, "rms_zero_mean": dict(rms, zero_mean_writers=True)}.items():
    make = lambda rngs, kwargs=kwargs: make_model("gpt2", rngs=rngs, **kwargs)
    step = jax.jit(
      run.from_model(make, tx, task="lm", schedule=optax.constant_schedule(0.5)).train_step
    )
    state = {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "model_state": {},
      "opt_state": tx.init(params),
    }
    losses = []
    for batch in batches:  # the second loss is the loss after one training step
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
    results[tag] = (losses, state["params"])
  (ln_losses, ln_params), (zm_losses, zm_params) = results["ln"], results["rms_zero_mean"]
  assert abs(ln_losses[1] - ln_losses[0]) > 1e-2  # the step changed the model
  np.testing.assert_allclose(zm_losses, ln_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(zm_params), jax.tree.leaves(ln_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # without the reparameterisation the same parameters give another function
  plain = forward(build("gpt2", rms, params), batches[0]["inputs"])
  same = forward(build("gpt2", ln, params), batches[0]["inputs"])
  assert np.abs(np.asarray(plain) - np.asarray(same)).max() > 1e-2


def test_conversion_rejects_non_pre_ln_models():
  for kwargs, match in [
    (dict(GPT2, placement="post"), "placement"),
    (dict(GPT2, norm="rmsnorm"), "norm='rmsnorm'"),
    (dict(GPT2, embedding_norm=True), "embedding_norm"),
  ]:
    with pytest.raises(ValueError, match=match):
      convert("gpt2", kwargs, {}, "rmsnorm")
  with pytest.raises(ValueError, match="to='layernorm'"):
    convert("gpt2", GPT2, {}, "layernorm")
