"""Models: parameter counts, shapes, train/eval, causality, init, placement, sharding, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from normjax.models import MODELS, make_model
from normjax.models.transformer import TransformerBlock, residual_branch

# one width and MLP size everywhere, so that jit caches are shared between the models
TINY_GPT2 = dict(vocab_size=37, max_len=16, width=32, depth=2, num_heads=4)
TINY_VIT = dict(
  num_classes=5,
  image_size=8,
  in_channels=1,
  patch_size=2,
  width=32,
  depth=2,
  num_heads=4,
  mlp_dim=128,
)
TINY_RESNET = dict(num_classes=5, in_channels=1, stage_sizes=(1, 1), width=8)
# the models that are really built (once per test module; tests work on clones)
BUILT = {
  "gpt2": {**TINY_GPT2, "dropout": 0.5},
  "vit": {**TINY_VIT, "norm": "batchnorm"},
  "resnet": TINY_RESNET,
}


@pytest.fixture(scope="module")
def built_models():
  return {name: make_model(name, rngs=nnx.Rngs(0), **kwargs) for name, kwargs in BUILT.items()}


@pytest.fixture
def models(built_models):
  return {name: nnx.clone(model) for name, model in built_models.items()}


def num_params(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract(name, **kwargs):
  return nnx.eval_shape(lambda: make_model(name, rngs=nnx.Rngs(0), **kwargs))


def output_shape(model, x):
  return nnx.eval_shape(lambda m, x: m(x), model, x)


# ----------------------------------------------------------------------- sizes
def test_parameter_counts_of_reference_architectures():
  gpt2_small = abstract("gpt2", vocab_size=50257, max_len=1024, width=768, depth=12, num_heads=12)
  vit_b16 = abstract(
    "vit",
    num_classes=1000,
    image_size=224,
    in_channels=3,
    patch_size=16,
    width=768,
    depth=12,
    num_heads=12,
    mlp_dim=3072,
    pool="cls",
  )
  resnet50 = abstract(
    "resnet",
    num_classes=1000,
    in_channels=3,
    stage_sizes=(3, 4, 6, 3),
    block="bottleneck",
    width=64,
    stem="imagenet",
  )
  assert num_params(gpt2_small) == 124_439_808
  assert num_params(vit_b16) == 86_567_656
  assert num_params(resnet50) == 25_557_032
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(resnet50)))


def test_output_shapes_and_dtypes_of_variants():
  images = jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32)
  for kwargs in [
    dict(pool="cls", placement="pre"),
    dict(pool="mean", placement="post"),
    dict(norm="batchnorm", dtype="bfloat16"),
    dict(norm="rmsnorm", dropout=0.1),
  ]:
    out = output_shape(abstract("vit", **{**TINY_VIT, **kwargs}), images)
    assert (out.shape, out.dtype) == ((3, 5), jnp.float32), kwargs
  tokens = jax.ShapeDtypeStruct((2, 16), jnp.int32)
  for kwargs in [dict(), dict(placement="post", norm="rmsnorm"), dict(dtype="bfloat16")]:
    out = output_shape(abstract("gpt2", **{**TINY_GPT2, **kwargs}), tokens)
    assert (out.shape, out.dtype) == ((2, 16, 37), jnp.float32), kwargs
  bf16 = abstract("gpt2", **TINY_GPT2, dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  big_images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  for kwargs in [
    dict(block="bottleneck", stem="imagenet"),
    dict(norm="groupnorm", norm_kwargs={"num_groups": 4}),
  ]:
    model = abstract("resnet", **{**TINY_RESNET, "in_channels": 3, **kwargs})
    assert output_shape(model, big_images).shape == (2, 5), kwargs


def test_structure_follows_placement_and_pool():
  pre = abstract("vit", **TINY_VIT)
  post = abstract("vit", **TINY_VIT, placement="post", pool="mean")
  block = pre.transformer.blocks[0]
  assert block.attn_norm is not None and block.attn_residual_norm is None
  assert pre.transformer.final_norm is not None and pre.cls_token is not None
  assert pre.position_embedding.shape == (17, 32)
  block = post.transformer.blocks[0]
  assert block.attn_norm is None and block.mlp_residual_norm is not None
  assert post.transformer.final_norm is None and post.cls_token is None
  assert post.position_embedding.shape == (16, 32)
  paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(pre, nnx.Param))]
  assert "transformer.blocks.0.attn_norm.scale" in paths
  assert "transformer.final_norm.bias" in paths


# ----------------------------------------------------------------------- placement math
class _RecordingNorm:
  """Stand-in norm: x -> 2x + 1, remembering the mask it was given."""

  def __init__(self):
    self.masks = []

  def __call__(self, x, mask=None):
    self.masks.append(mask)
    return 2 * x + 1


def test_residual_branch_orders_norms_and_passes_mask():
  x, mask = jnp.arange(4.0), jnp.array([True, True, False, True])
  f = lambda h: h**2
  norm = _RecordingNorm()
  np.testing.assert_allclose(
    residual_branch(x, f, input_norm=norm, mask=mask), x + (2 * x + 1) ** 2
  )
  np.testing.assert_allclose(
    residual_branch(x, f, residual_norm=norm, mask=mask), 2 * (x + x**2) + 1
  )
  np.testing.assert_allclose(
    residual_branch(x, f, input_norm=norm, output_norm=norm), x + 2 * (2 * x + 1) ** 2 + 1
  )
  assert all(m is mask for m in norm.masks[:2])


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_block_computes_its_placement(placement):
  from normjax.models.transformer import LinearInits

  init = nnx.initializers.normal(0.3)
  block = TransformerBlock(
    32,
    4,
    128,
    norm="layernorm",
    norm_kwargs={},
    placement=placement,
    causal=False,
    dropout=0.0,
    inits=LinearInits(init, init, init, init),
    dtype=jnp.float32,
    rngs=nnx.Rngs(1),
  )
  x = jax.random.normal(jax.random.key(0), (2, 5, 32))

  @nnx.jit
  def block_and_by_hand(block, x):
    if placement == "pre":
      h = x + block.attn(block.attn_norm(x))
      return block(x), h + block.mlp(block.mlp_norm(h))
    h = block.attn_residual_norm(x + block.attn(x))
    return block(x), block.mlp_residual_norm(h + block.mlp(h))

  np.testing.assert_allclose(*block_and_by_hand(block, x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- GPT-2
def test_gpt2_causal_tied_dropout_and_init(models):
  model = models["gpt2"]
  forward = nnx.jit(lambda m, t: m(t))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 37)
  model.eval()
  logits = forward(model, tokens)
  np.testing.assert_array_equal(logits, forward(model, tokens))  # eval is deterministic
  changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % 37)
  logits_changed = forward(model, changed)
  np.testing.assert_allclose(logits_changed[:, :10], logits[:, :10], rtol=1e-5, atol=1e-6)
  assert np.abs(logits_changed[:, 10:] - logits[:, 10:]).max() > 1e-4
  # weight tying: logits are the final hidden state times the token embedding
  tied_by_hand = nnx.jit(
    lambda m, t: (
      m.transformer(m.token_embedding(t) + m.position_embedding(jnp.arange(16)))
      @ m.token_embedding.embedding.T
    )
  )
  np.testing.assert_allclose(logits, tied_by_hand(model, tokens), rtol=1e-4, atol=1e-5)
  model.train()
  assert np.abs(forward(model, tokens) - forward(model, tokens)).max() > 1e-3  # fresh masks
  # nanoGPT init: N(0, 0.02), residual-writing projections N(0, 0.02 / sqrt(2 * depth))
  block = model.transformer.blocks[1]
  assert abs(np.std(block.attn.qkv.kernel[...]) - 0.02) < 0.002
  assert abs(np.std(model.token_embedding.embedding[...]) - 0.02) < 0.002
  for kernel in (block.attn.proj.kernel, block.mlp.fc2.kernel):
    assert abs(np.std(kernel[...]) / (0.02 / np.sqrt(4)) - 1) < 0.15
  assert not np.any(block.mlp.fc1.bias[...])


# ----------------------------------------------------------------------- ViT
def test_vit_zero_head_and_class_token_readout(models):
  model = models["vit"]
  model.eval()
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))

  @nnx.jit
  def model_and_by_hand(model, images):
    patches = model.patch_embedding(images).reshape(2, 16, 32)
    cls = jnp.broadcast_to(model.cls_token[...], (2, 1, 32))
    tokens = model.transformer(jnp.concatenate([cls, patches], 1) + model.position_embedding)
    return model(images), model.head(tokens[:, 0])

  np.testing.assert_array_equal(model_and_by_hand(model, images)[0], 0.0)  # zero-init head
  model.head.kernel[...] = jax.random.normal(jax.random.key(1), model.head.kernel.shape)
  np.testing.assert_allclose(*model_and_by_hand(model, images), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="images of shape"):
    output_shape(model, jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32))


# ----------------------------------------------------------------------- ResNet
def test_resnet_batchnorm_train_vs_eval_and_zero_init_residual(models):
  model = models["resnet"]
  for stage in model.stages:
    for block in stage:
      np.testing.assert_array_equal(block.norm_act2.norm.scale[...], 0.0)
      assert block.norm_act1.norm.scale[...].min() == 1.0
  images = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  forward = nnx.jit(lambda m, x: m(x))
  stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  train_logits = forward(model, images)
  stats_after = nnx.state(model, nnx.BatchStat)
  assert not np.allclose(
    stats_before["stem_norm_act"]["norm"]["mean"], stats_after["stem_norm_act"]["norm"]["mean"]
  )
  # train mode: an example's logits depend on the rest of the batch
  other_batch = images.at[1:].multiply(3.0)
  assert np.abs(forward(model, other_batch)[0] - train_logits[0]).max() > 1e-5
  model.eval()
  stats_after = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
  eval_logits = forward(model, images)
  np.testing.assert_allclose(forward(model, other_batch)[0], eval_logits[0], rtol=1e-5, atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.BatchStat), stats_after)


# ----------------------------------------------------------------------- data parallel
def test_sharded_forward_equals_unsharded_for_every_model(models):
  """jit + a batch sharded over an explicit 8-device mesh: same logits, same running stats."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  images = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
  models["gpt2"].eval()  # dropout masks are not part of this comparison
  models["vit"].head.kernel[...] = jnp.ones(models["vit"].head.kernel.shape)
  inputs = {
    "vit": images,
    "resnet": images,
    "gpt2": jax.random.randint(jax.random.key(0), (8, 16), 0, 37),
  }
  for name, x in inputs.items():
    graphdef, state = nnx.split(models[name])

    @jax.jit
    def forward(state, x):
      model = nnx.merge(graphdef, state)
      return model(x), nnx.state(model, nnx.BatchStat)

    logits, stats = forward(state, x)
    with jax.set_mesh(mesh):
      sharded_logits, sharded_stats = forward(
        state, jax.device_put(x, NamedSharding(mesh, P("data")))
      )
    np.testing.assert_allclose(sharded_logits, logits, rtol=1e-5, atol=1e-5, err_msg=name)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sharded_stats, stats
    )


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize(
  "name, kwargs, message",
  [
    ("vit", dict(TINY_VIT, placement="sandwich"), "placement='sandwich'.*'pre', 'post'"),
    ("vit", dict(TINY_VIT, pool="max"), "pool='max'.*'cls', 'mean'"),
    ("vit", dict(TINY_VIT, num_heads=5), "width=32 must be divisible by num_heads=5"),
    ("vit", dict(TINY_VIT, image_size=9), "image_size=9 must be divisible by patch_size=2"),
    ("gpt2", dict(TINY_GPT2, dtype="float16"), "dtype='float16'.*'float32', 'bfloat16'"),
    ("gpt2", dict(TINY_GPT2, dropout=1.0), "dropout=1.0"),
    ("resnet", dict(TINY_RESNET, block="wide"), "block='wide'.*'basic', 'bottleneck'"),
    ("resnet", dict(TINY_RESNET, stem="tiny"), "stem='tiny'.*'cifar', 'imagenet'"),
    ("resnet", dict(TINY_RESNET, width=0), "width=0"),
    ("resnet", dict(TINY_RESNET, depth=50), "unexpected keyword argument 'depth'.*stage_sizes"),
  ],
)
def test_bad_model_arguments_fail_early(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    abstract(name, **kwargs)


def test_unknown_names_list_the_known_ones():
  with pytest.raises(KeyError, match="model.name='bert': unknown model; known: ") as error:
    MODELS.get("bert")
  assert {"gpt2", "resnet", "vit"} <= set(
    str(error.value).split("known: ")[1].strip("'\"").split(", ")
  )
  with pytest.raises(KeyError, match="model.norm='fancynorm'.*batchnorm.*layernorm"):
    abstract("gpt2", **TINY_GPT2, norm="fancynorm")
