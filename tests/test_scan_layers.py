"""``model.scan_layers`` (normjax.models.layer_stack): the scanned stack computes what the
unrolled one does from the same weights (outputs, gradients, norm state, dropout, decoding,
optimizer steps), checkpoints cross layouts both ways, and what cannot be scanned is refused."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax import checkpoint, run, sharding, stack_layout, train
from normjax import data as nj_data
from normjax.models import layer_stack
from normjax.models.gpt2 import GPT2
from normjax.state import split
from tests import trainer_utils as tu

DEPTH = 3


def setups(name, model, **extra):
  """(unrolled setup, scanned setup, config) for a 3-block version of a config."""
  values = tu.overrides(model, 4, **{"model.depth": DEPTH, **extra})
  unrolled = tu.apply(tu.load_config(name), values)
  scanned = tu.apply(tu.load_config(name), {**values, "model.scan_layers": True})
  return run.build(unrolled), run.build(scanned), unrolled


def as_scanned(state, like):
  return {
    **state,
    "params": stack_layout.to_scanned(state["params"]),
    "model_state": stack_layout.to_scanned(state["model_state"]),
    "opt_state": stack_layout.match_layout_all(state["opt_state"], like["opt_state"]),
  }


def assert_close(a, b, rtol=2e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
  "name,model,extra",
  [
    ("gpt2_adamw", "gpt2", {"model.dropout": 0.1}),  # dropout streams per layer; AdamW decay mask
    ("vit_powernorm", "vit", {}),  # running statistics + GradStat through custom_vjp
    # Muon orthogonalises each layer's matrix: a stacked (depth, m, n) leaf is not one matrix
    ("gpt2_muon", "gpt2", {"model.remat": "dots_saveable"}),
  ],
)
def test_train_steps_equal_the_unrolled_model_from_the_same_weights(name, model, extra):
  unrolled, scanned, config = setups(name, model, **extra)
  state_u = jax.jit(unrolled.init_state)(jax.random.key(0))
  fresh_s = jax.eval_shape(scanned.init_state, jax.random.key(0))
  state_s = as_scanned(state_u, fresh_s)
  assert jax.tree.structure(state_s) == jax.tree.structure(fresh_s)
  leaf = state_s["params"]["transformer"]["blocks"]["attn"]["qkv"]["kernel"]
  assert leaf.shape[0] == DEPTH
  # AdamW runs on the stacked leaves (its moments stacked); Muon through the unrolled view
  native = layer_stack.stack_safe(scanned.config)
  assert native == (name != "gpt2_muon")
  same_opt_layout = jax.tree.structure(fresh_s["opt_state"]) == jax.tree.structure(
    state_u["opt_state"]
  )
  assert same_opt_layout != native
  batches = nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=0)
  step_u, step_s = jax.jit(unrolled.train_step), jax.jit(scanned.train_step)
  for _ in range(3):
    batch = next(batches)
    state_u, m_u = step_u(state_u, batch)
    state_s, m_s = step_s(state_s, batch)
    np.testing.assert_allclose(m_s["loss"], m_u["loss"], rtol=1e-5)
  # Adam-type steps turn the rounding of near-zero gradients into O(lr) steps: 1e-5 absolute
  # (a per-layer rule applied to the whole stack, e.g. decay of a stacked norm scale, is 1e-4)
  assert_close(state_s["params"], stack_layout.to_scanned(state_u["params"]), 1e-4, 1e-5)
  assert_close(state_s["opt_state"], as_scanned(state_u, fresh_s)["opt_state"], 1e-4, 1e-5)
  assert_close(state_s["model_state"], stack_layout.to_scanned(state_u["model_state"]))
  # scanned means scanned: the step's jaxpr holds one scan over the blocks
  jaxpr = str(jax.make_jaxpr(scanned.train_step)(state_s, batch))
  assert f"length={DEPTH}" in jaxpr


def test_layouts_round_trip_and_match_by_name():
  model = GPT2(vocab_size=16, max_len=8, depth=DEPTH, width=8, num_heads=2, rngs=nnx.Rngs(0))
  params, _ = split(model)
  assert stack_layout.layout(params) == "unrolled"
  stacked = stack_layout.to_scanned(params)
  assert stack_layout.layout(stacked) == "scanned"
  assert_close(stack_layout.to_unrolled(stacked), params, rtol=0, atol=0)
  # a checkpoint's string keys come back as the model's
  strings = {**params, "transformer": {**params["transformer"], "blocks": {"0": 1}}}
  assert stack_layout.layout(strings) == "unrolled"
  assert stack_layout.match_layout(params, stacked) is not params
  assert stack_layout.match_layout(params, params) is params
  assert stack_layout.layout({"blocks": {0: {}}}) is None  # ResNet-style blocks: not a stack


def test_labels_of_a_scanned_stack_are_those_of_each_layer():
  """ndim rules see per-layer shapes: a stacked (depth, C) norm scale or bias is a vector."""
  from normjax.optim import labels

  model = GPT2(vocab_size=16, max_len=8, depth=DEPTH, width=8, num_heads=2, rngs=nnx.Rngs(0))
  params, _ = split(model)
  for name in ("matrices", "decay", "no_decay", "kernels", "attention_mlp_kernels"):
    fn = labels.resolve(name)
    want = fn(params)
    got = fn(stack_layout.to_scanned(params))
    blocks = got["transformer"]["blocks"]
    for i in range(DEPTH):
      assert jax.tree.leaves(want["transformer"]["blocks"][i]) == jax.tree.leaves(blocks), name
  assert not labels.resolve("matrices")(stack_layout.to_scanned(params))["transformer"]["blocks"][
    "attn_norm"
  ]["scale"]


def test_cached_decoding_equals_the_unrolled_model():
  kw = dict(vocab_size=32, max_len=16, depth=DEPTH, width=16, num_heads=2)
  unrolled = GPT2(**kw, rngs=nnx.Rngs(0))
  scanned = GPT2(**kw, scan_layers=True, rngs=nnx.Rngs(1))
  params, rest = split(unrolled)
  graph, abstract_p, abstract_r = nnx.split(scanned, nnx.Param, ...)
  nnx.replace_by_pure_dict(abstract_p, stack_layout.to_scanned(params))
  scanned = nnx.merge(graph, abstract_p, abstract_r)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 6)))
  positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
  np.testing.assert_allclose(scanned(tokens), unrolled(tokens), rtol=1e-5, atol=1e-6)
  cache_s = scanned.init_cache(2, 16)
  assert cache_s.key.shape[0] == DEPTH  # one cache, stacked
  logits_s, cache_s = scanned(tokens, positions=positions, cache=cache_s)
  logits_u, cache_u = unrolled(tokens, positions=positions, cache=unrolled.init_cache(2, 16))
  np.testing.assert_allclose(logits_s, logits_u, rtol=1e-5, atol=1e-6)
  nxt = tokens[:, :1]
  step_s, _ = scanned(nxt, positions=positions[:, :1] + 6, cache=cache_s)
  step_u, _ = unrolled(nxt, positions=positions[:, :1] + 6, cache=cache_u)
  np.testing.assert_allclose(step_s, step_u, rtol=1e-5, atol=1e-6)


def test_fsdp_never_shards_the_depth_axis():
  """Depth 64 is the largest axis of this stacked leaf: sharding goes to the next one."""
  stacked = {"transformer": {"blocks": {"w": jax.ShapeDtypeStruct((64, 32, 16), jnp.float32)}}}
  other = {"stem": {"w": jax.ShapeDtypeStruct((64, 32, 16), jnp.float32)}}
  mesh = jax.make_mesh((1, 8), ("data", "fsdp"))
  spec_s = sharding.state_sharding(stacked, mesh, "fsdp")["transformer"]["blocks"]["w"].spec
  spec_o = sharding.state_sharding(other, mesh, "fsdp")["stem"]["w"].spec
  assert spec_s == jax.sharding.PartitionSpec(None, "fsdp", None)
  assert spec_o == jax.sharding.PartitionSpec("fsdp", None, None)  # not a stack: the largest


def test_checkpoints_cross_layouts_and_relayout_resumes_the_run(tmp_path):
  """A scanned run's checkpoint initialises an unrolled one (init_from) and vice versa; the
  relayout tool turns a run into the other layout and resuming it continues the same run."""
  from normjax.tools import relayout

  values = tu.overrides("gpt2", 4, **{"model.depth": 2, "checkpoint_every": 2})
  config = tu.apply(tu.load_config("gpt2_layernorm"), {**values, "total_steps": 2})
  scanned_dir, unrolled_dir = tmp_path / "s", tmp_path / "u"
  config.model.scan_layers = True
  train.train_and_evaluate(config, str(scanned_dir))
  # the other layout reads it: weights only (config.init_from, the sample / eval tools)
  loaded = checkpoint.load_params(_abstract(values), str(scanned_dir))
  assert stack_layout.layout(loaded["params"]) == "unrolled"
  # the whole run: optimizer state and data position too
  relayout.relayout(str(scanned_dir), str(unrolled_dir))
  with pytest.raises(ValueError, match="already holds a run"):
    relayout.relayout(str(scanned_dir), str(unrolled_dir))
  resumed_config = tu.apply(tu.load_config("gpt2_layernorm"), {**values, "total_steps": 4})
  final_u = train.train_and_evaluate(resumed_config, str(unrolled_dir))
  scanned_config = tu.apply(
    tu.load_config("gpt2_layernorm"), {**values, "total_steps": 4, "model.scan_layers": True}
  )
  final_s = train.train_and_evaluate(scanned_config, str(scanned_dir))
  assert final_u.keys() == final_s.keys() and final_u
  for key in final_u:
    np.testing.assert_allclose(final_u[key], final_s[key], rtol=1e-5, err_msg=key)
  params_u, params_s = (tu.restore_state(d, 4)["params"] for d in (unrolled_dir, scanned_dir))
  assert stack_layout.layout(params_u) == "unrolled"
  assert_close(stack_layout.to_scanned(params_u), params_s, 1e-4, 1e-5)
  # the metrics continue: rows up to step 2 copied, the rest logged by the resumed run
  steps_u, steps_s = (
    [json.loads(r)["step"] for r in (d / "metrics.jsonl").read_text().splitlines()]
    for d in (unrolled_dir, scanned_dir)
  )
  assert steps_u == steps_s and max(steps_u) == 4


def _abstract(values):
  setup = run.build(tu.apply(tu.load_config("gpt2_layernorm"), values))
  return jax.eval_shape(setup.init_state, jax.random.key(0))


@pytest.mark.parametrize(
  "name,model,extra,match",
  [
    ("gpt2_widenet", "gpt2", {}, "sharing='none' and no moe"),
    ("gpt2_ln_removal", "gpt2", {}, "needs its block's site"),
    ("gpt2_qgalore", "gpt2", {}, "weight_quant"),
  ],
)
def test_what_cannot_be_scanned_is_refused_with_the_key(name, model, extra, match):
  config = tu.apply(
    tu.load_config(name), tu.overrides(model, 2, **{"model.scan_layers": True, **extra})
  )
  with pytest.raises(ValueError, match=match):
    run.build(config)


def test_block_by_block_tools_refuse_a_scanned_model():
  from normjax.interop import hf
  from normjax.surgery import folding

  model = GPT2(
    vocab_size=16, max_len=8, depth=2, width=8, num_heads=2, scan_layers=True, rngs=nnx.Rngs(0)
  )
  for call in (lambda: hf.gpt2_tensors(model), lambda: folding.fold_norms(model)):
    with pytest.raises(ValueError, match="normjax.tools.relayout"):
      call()
