"""LayerNorm removal: FakeLN, the staged schedule, the aux loss, and the trainer fine-tune."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax import ln_removal, norms, train
from normjax.models.transformer import NormSite
from normjax.norms.basic import layer_norm
from normjax.norms.fakeln import FakeLN, removal_schedule, residual_std_loss
from normjax.surgery.folding import fold_norms
from normjax.state import AuxLoss, ModelDef, split
from tests import trainer_utils as tu

EPS, C = 1e-6, 6
GPT2 = dict(vocab_size=29, max_len=8, width=16, depth=2, num_heads=4, norm="fakeln")


def np_token_std(x):
  return np.sqrt(x.var(-1) + EPS)


def test_fakeln_tracks_then_freezes():
  rng = np.random.default_rng(0)
  norm = FakeLN(C, epsilon=EPS, momentum=0.7, freeze_step=2)
  norm.scale[...] = jnp.asarray(rng.uniform(0.5, 2, C), jnp.float32)
  norm.bias[...] = jnp.asarray(rng.normal(size=C), jnp.float32)
  xs = [rng.normal(size=(4, 5, C)) * s + 3.0 for s in (1.0, 2.0, 5.0, 0.5)]
  mask = rng.random((4, 5)) < 0.7
  scale, bias = np.asarray(norm.scale[...], np.float64), np.asarray(norm.bias[...], np.float64)
  expected_std = None
  for i, x in enumerate(xs):
    y = norm(jnp.asarray(x, jnp.float32), mask=mask)
    centered = x - x.mean(-1, keepdims=True)
    if i < 2:  # live: exactly LayerNorm; tracks the mean std of real tokens
      lnorm = layer_norm(jnp.asarray(x, jnp.float32), norm.params(), epsilon=EPS)[0]
      np.testing.assert_allclose(y, lnorm, rtol=1e-6, atol=1e-6)
      batch = np_token_std(x)[mask].mean()
      expected_std = batch if i == 0 else 0.7 * expected_std + 0.3 * batch
    else:  # frozen: the linear map with the tracked std
      np.testing.assert_allclose(y, centered / expected_std * scale + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.average_std[...], expected_std, rtol=1e-6)
  assert int(norm.tracked[...]) == 2 and int(norm.step[...]) == 4
  norm.eval()  # eval does not advance the schedule
  norm(jnp.asarray(xs[0], jnp.float32))
  assert int(norm.step[...]) == 4 and bool(norm.is_frozen())


def test_removal_schedule_is_the_official_one():
  depth, start, g2, gqk, gv = 3, 20, 2, 2, 3
  schedule = removal_schedule(depth, start, g2, gqk, gv)
  start_qk = start + depth * g2  # submarat/removing-layer-norm config.py
  start_v = start_qk + depth * gqk
  for i in range(depth):
    assert schedule[("mlp_input", i, "main")] == start + i * g2
    assert schedule[("attn_input", i, "main")] == start_qk + i * gqk
    assert schedule[("attn_input", i, "v")] == start_v + i * gv
  assert schedule[("final", None, "main")] == start_v + depth * gv
  with pytest.raises(ValueError, match="gap_v=-1"):
    removal_schedule(2, 0, 1, 1, -1)


def test_aux_loss_is_the_residual_std_mse():
  x = np.random.default_rng(1).normal(size=(3, 5, C)) * np.arange(1, 6)[None, :, None]
  std = np_token_std(x)
  expected = np.mean((std - std[:, 1:].mean()) ** 2)  # target excludes position 0
  np.testing.assert_allclose(residual_std_loss(jnp.asarray(x), epsilon=EPS), expected, rtol=1e-5)
  final = FakeLN(C, epsilon=EPS, aux_loss_weight=0.5, site=NormSite("final", None, 1))
  final(jnp.asarray(x, jnp.float32))
  recorded = jax.tree.leaves(nnx.pop(final, AuxLoss))
  np.testing.assert_allclose(sum(recorded), 0.5 * expected, rtol=1e-5)
  assert final.records_aux_loss and not FakeLN(C, aux_loss_weight=0.5).records_aux_loss
  with pytest.raises(ValueError, match="role is 'attn_output'"):
    FakeLN(C, removal_start=0, site=NormSite("attn_output", 0, 1))


@pytest.fixture(scope="module")
def scheduled_gpt2():
  """A depth-2 FakeLN GPT-2 (schedule from step 1, gaps 1) after 8 training calls."""
  kwargs = dict(GPT2, norm_kwargs=dict(removal_start=1, gap_mlp=1, gap_qk=1, gap_v=1,
                                       epsilon=EPS, aux_loss_weight=0.1))
  from normjax.models import make_model
  make = lambda rngs: make_model("gpt2", rngs=rngs, **kwargs)
  model_def = ModelDef.create(make)
  params, state = jax.jit(lambda: split(make(nnx.Rngs(0))))()
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 29, (4, 8)))
  @jax.jit
  def call(state):
    model = model_def.merge(params, state, train=True)
    model(tokens)
    nnx.pop(model, AuxLoss)
    return split(model)[1]
  states = [state]
  for _ in range(8):
    states.append(call(states[-1]))
  return model_def, params, states, tokens


def test_each_norm_and_path_freezes_on_its_step(scheduled_gpt2):
  model_def, _, states, _ = scheduled_gpt2
  assert model_def.has_aux_loss
  final = states[-1]["transformer"]
  blocks = final["blocks"]
  # live calls = freeze step: mlp 1, 2 | qk 3, 4 | v 5, 6 | final 7
  assert [int(blocks[i]["mlp_norm"]["tracked"]) for i in (0, 1)] == [1, 2]
  assert [int(blocks[i]["attn_norm"]["tracked"]) for i in (0, 1)] == [3, 4]
  assert [int(blocks[i]["attn_norm"]["value_tracked"]) for i in (0, 1)] == [5, 6]
  assert int(final["final_norm"]["tracked"]) == 7
  assert all(int(blocks[i][n]["step"]) == 8 for i in (0, 1) for n in ("mlp_norm", "attn_norm"))
  # after freezing, the std does not move any more
  np.testing.assert_array_equal(states[7]["transformer"]["blocks"][1]["attn_norm"]["value_std"],
                                blocks[1]["attn_norm"]["value_std"])


def test_finished_model_has_no_per_token_normalization(scheduled_gpt2):
  model_def, params, states, tokens = scheduled_gpt2
  model = model_def.merge(params, states[-1], train=False)
  status = ln_removal.fakeln_status(model)
  assert len(status) == 7 and all(r["frozen"] for r in status)
  folded = fold_norms(model)  # every FakeLN folded away: a GPT-2 with no norm at all
  assert not [n for _, n in nnx.iter_graph(folded) if isinstance(n, FakeLN)]
  np.testing.assert_allclose(folded(tokens), model(tokens), rtol=1e-4, atol=1e-4)
  # one step earlier the final norm is still live: folding refuses
  with pytest.raises(ValueError, match="still live"):
    fold_norms(model_def.merge(params, states[6], train=False))
  # a frozen norm is affine in its input: N(a + b) - N(b) = N(a) - N(0)
  norm = model.transformer.blocks[0].mlp_norm
  a, b = (jnp.asarray(np.random.default_rng(s).normal(size=(2, 16)), jnp.float32) for s in (3, 4))
  np.testing.assert_allclose(norm(a + b) - norm(b), norm(a) - norm(jnp.zeros_like(a)),
                             rtol=1e-5, atol=1e-5)


def test_finetune_from_layernorm_run_and_report(tmp_path):
  base = tu.apply(tu.load_config("gpt2_layernorm"), tu.overrides("gpt2", 2))
  train.train_and_evaluate(base, str(tmp_path / "base"))
  config = tu.load_config("gpt2_ln_removal", f"init={tmp_path / 'base'},start=1,aux=0.1,steps=10")
  config = tu.apply(config, {**tu.overrides("gpt2", 10), "eval_every": 0})
  train.train_and_evaluate(config, str(tmp_path / "removal"))
  rows = [json.loads(l) for l in (tmp_path / "removal" / "metrics.jsonl").read_text().splitlines()]
  assert all(r["aux_loss"] > 0 for r in rows if "loss" in r)
  result = ln_removal.report(str(tmp_path / "removal"))
  assert not result["live_paths"] and len(result["fakeln"]) == 4  # depth 1: qk, v, mlp, final
  base_final = [r for r in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()][-1]
  np.testing.assert_allclose(result["before"], json.loads(base_final)["eval_loss"], rtol=1e-5)
  np.testing.assert_allclose(result["norm_free"], result["after"], rtol=1e-4)
  assert "after removal" in ln_removal.format_report(result)
  assert (tmp_path / "removal" / "ln_removal.json").exists()
  assert norms.FakeLN is FakeLN
