"""LayerNorm removal: FakeLN, the staged schedule, the aux loss, and the trainer fine-tune."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax import norms, train
from normjax.models.transformer import NormSite
from normjax.norms.basic import layer_norm
from normjax.norms.fakeln import FakeLN, removal_schedule, residual_std_loss
from normjax.state import AuxLoss, ModelDef, split
from normjax.surgery.folding import fold_norms
from normjax.tools import ln_removal
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
  kwargs = dict(
    GPT2,
    norm_kwargs=dict(
      removal_start=1, gap_mlp=1, gap_qk=1, gap_v=1, epsilon=EPS, aux_loss_weight=0.1
    ),
  )
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
  np.testing.assert_array_equal(
    states[7]["transformer"]["blocks"][1]["attn_norm"]["value_std"],
    blocks[1]["attn_norm"]["value_std"],
  )


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
  np.testing.assert_allclose(
    norm(a + b) - norm(b), norm(a) - norm(jnp.zeros_like(a)), rtol=1e-5, atol=1e-5
  )


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


# ----------------------------------------------------------------- fidelity to the official code
OFFICIAL_EPS, Q_FREEZE, V_FREEZE, STEPS = 1e-5, 3, 7, 11


def _removal_batches(seed=5):
  """Training batches whose token stds change a lot from step to step."""
  rng = np.random.default_rng(seed)
  scales = rng.uniform(0.5, 3.0, STEPS)
  return [rng.normal(size=(2, 5, C)) * s + rng.normal(size=C) for s in scales]


def _affine(seed=6):
  rng = np.random.default_rng(seed)
  return rng.uniform(0.5, 2, C), rng.normal(size=C)


def np_official_attention_norm(xs, w, b, q_freeze, v_freeze, momentum=0.9, eps=OFFICIAL_EPS):
  """The official ln_1 (one FakeLayerNorm; EXP_RECOMPUTE_STD_ON_REAL=1), float64: per step the
  schedule flips is_fake / attn_v_is_fake at the step's start; the block calls the norm for
  Q/K, for V and for V of EOT tokens; each call updates the EMA, a live call copies it into the
  buffer a fake call divides by. Starts from the first batch's mean std (normjax's start)."""
  ln = lambda x: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
  mean_std = lambda x: np.sqrt(x.var(-1) + eps).mean()
  ema = buffer = mean_std(xs[0])
  outputs = []
  for step, x in enumerate(xs):
    fake = {False: step >= q_freeze, True: step >= v_freeze}
    ys = []
    for v_path in (False, True, True):
      ema = momentum * ema + (1 - momentum) * mean_std(x)
      if fake[v_path]:
        ys.append((x - x.mean(-1, keepdims=True)) / buffer * w + b)
      else:
        buffer = ema
        ys.append(ln(x) * w + b)
    outputs.append(ys[:2])
  return outputs, buffer


def _normjax_attention_norm(xs, w, b, **kwargs):
  from normjax.norms.fakeln import fake_ln

  with jax.enable_x64(True):
    one, zero = jnp.ones((), jnp.float64), jnp.zeros((), jnp.int32)
    state = {
      "average_std": one,
      "tracked": zero,
      "step": zero,
      "value_std": one,
      "value_tracked": zero,
    }
    params = {"scale": jnp.asarray(w), "bias": jnp.asarray(b)}
    outputs = []
    for x in xs:
      (y_qk, y_v), state = fake_ln(
        jnp.asarray(x),
        params,
        state,
        train=True,
        freeze_step=Q_FREEZE,
        value_freeze_step=V_FREEZE,
        paths="qk_v",
        epsilon=OFFICIAL_EPS,
        momentum=0.9,
        **kwargs,
      )
      outputs.append((np.asarray(y_qk), np.asarray(y_v)))
    return outputs, jax.tree.map(np.asarray, state)


def test_shared_attention_std_is_the_official_single_std():
  xs, (w, b) = _removal_batches(), _affine()
  expected, buffer = np_official_attention_norm(xs, w, b, Q_FREEZE, V_FREEZE)
  shared, state = _normjax_attention_norm(xs, w, b, shared_attention_std=True)
  for step, (got, want) in enumerate(zip(shared, expected)):
    for path in (0, 1):
      np.testing.assert_allclose(
        got[path], want[path], rtol=1e-12, atol=1e-12, err_msg=f"step {step} path {path}"
      )
  np.testing.assert_allclose(state["average_std"], buffer, rtol=1e-13)
  # normjax's default (two stds, one update each per step) differs while V is still live
  default, _ = _normjax_attention_norm(xs, w, b)
  gap = max(np.abs(default[s][0] - expected[s][0]).max() for s in range(Q_FREEZE, V_FREEZE))
  assert gap > 0.05
  for s in range(Q_FREEZE):  # both are the real LayerNorm before any freeze
    np.testing.assert_allclose(default[s][0], expected[s][0], rtol=1e-12, atol=1e-12)


def test_shared_attention_std_against_torch_official_formula():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  xs, (w, b) = _removal_batches(seed=9), _affine(seed=10)
  wt, bt = torch.tensor(w), torch.tensor(b)

  class OfficialFakeLN:
    """FakeLayerNorm re-typed from its formula (EXP_RECOMPUTE_STD_ON_REAL=1)."""

    def __init__(self, init_std, momentum=0.9):
      self.real_average_std = self.average_std_buffer = init_std
      self.momentum, self.is_fake, self.attn_v_is_fake = momentum, False, False

    def __call__(self, x, attn_v=False):
      with torch.no_grad():
        batch = (x.var(dim=-1, unbiased=False) + 1e-5).sqrt().mean()
        self.real_average_std = self.momentum * self.real_average_std + (1 - self.momentum) * batch
      if self.attn_v_is_fake if attn_v else self.is_fake:
        return (x - x.mean(-1, keepdim=True)) / self.average_std_buffer * wt + bt
      self.average_std_buffer = self.real_average_std  # sync_std
      return F.layer_norm(x, (C,), wt, bt, 1e-5)

  first = torch.tensor(xs[0])
  ln_1 = OfficialFakeLN((first.var(-1, unbiased=False) + 1e-5).sqrt().mean())
  tokens = np.random.default_rng(11).integers(0, 4, (2, 5))
  eot_mask = torch.tensor(tokens == 3)
  shared, _ = _normjax_attention_norm(xs, w, b, shared_attention_std=True)
  for step, x in enumerate(xs):
    ln_1.is_fake |= step == Q_FREEZE  # LNRemover in on_step_begin
    ln_1.attn_v_is_fake |= step == V_FREEZE
    xt = torch.tensor(x)
    x_qk, x_v = ln_1(xt), ln_1(xt, attn_v=True)
    x_v_eot = ln_1(xt, attn_v=True)  # the EOT call (same buffer without BOS treatment)
    x_v = torch.where(eot_mask[..., None], x_v_eot, x_v)
    np.testing.assert_allclose(shared[step][0], x_qk.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(shared[step][1], x_v.numpy(), rtol=1e-12, atol=1e-12)


def test_module_with_shared_attention_std_has_one_std():
  site = NormSite("attn_input", 0, 1)
  norm = FakeLN(C, freeze_step=1, shared_attention_std=True, site=site)
  assert norm.separate_value_path and norm.value_std is None and norm.value_tracked is None
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, C)), jnp.float32)
  for _ in range(3):
    norm.qk_and_v(x)
  assert int(norm.tracked[...]) == 3 and int(norm.step[...]) == 3  # live V: 3 updates once
  assert norm.frozen_std(True) == norm.frozen_std(False) == norm.average_std[...]
  assert FakeLN(C, site=site).value_std is not None  # default: the V path's own std


@pytest.mark.parametrize("live_at_freeze", [False, True])
def test_eval_exactly_at_a_freeze_step(live_at_freeze):
  from normjax.norms.fakeln import fake_ln

  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, C)) * 3 + 1, jnp.float32)
  params = {"scale": jnp.full((C,), 1.5), "bias": jnp.full((C,), 0.2)}
  state = {
    "average_std": jnp.asarray(0.7, jnp.float32),
    "tracked": jnp.asarray(4),
    "step": jnp.asarray(4),
  }
  layer = layer_norm(x, params, epsilon=EPS)[0]
  frozen = (x - x.mean(-1, keepdims=True)) / 0.7 * 1.5 + 0.2
  for step, official in ((4, layer), (5, frozen)):  # freeze step 4; evaluation after `step`
    y, same = fake_ln(
      x,
      params,
      {**state, "step": jnp.asarray(step)},
      train=False,
      freeze_step=4,
      eval_live_at_freeze_step=live_at_freeze,
      epsilon=EPS,
    )
    want = official if live_at_freeze else frozen
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert int(same["step"]) == step
  # training at step 4 is frozen either way (the official flag flips at the step's start)
  y, _ = fake_ln(
    x,
    params,
    state,
    train=True,
    freeze_step=4,
    eval_live_at_freeze_step=live_at_freeze,
    epsilon=EPS,
  )
  np.testing.assert_allclose(y, frozen, rtol=1e-5, atol=1e-5)
  norm = FakeLN(C, freeze_step=0, eval_live_at_freeze_step=live_at_freeze)
  norm.eval()
  assert bool(norm.is_frozen()) is not live_at_freeze


def np_official_aux_loss(h, tokens, weight, eot=50256, eps=1e-5):
  """CustomTrainer's aux loss, float64: target = mean std over non-BOS, non-EOT positions."""
  std = np.sqrt(h.var(-1) + eps)
  special = tokens == eot
  special[:, 0] = True
  return weight * np.mean((std - std[~special].mean()) ** 2)


def _aux_case(seed=4):
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(3, 6, C)) * rng.uniform(0.5, 4, (3, 6, 1))
  tokens = rng.integers(0, 3, (3, 6))
  tokens[tokens == 2] = 50256
  return h, tokens


def test_aux_loss_target_leaves_out_eot_tokens():
  h, tokens = _aux_case()
  with jax.enable_x64(True):
    got = residual_std_loss(jnp.asarray(h), epsilon=1e-5, target_mask=jnp.asarray(tokens != 50256))
  np.testing.assert_allclose(got, np_official_aux_loss(h, tokens, 1.0), rtol=1e-12)
  without = residual_std_loss(jnp.asarray(h, jnp.float32), epsilon=1e-5)
  assert abs(float(without) - float(got)) > 1e-3  # EOT positions do move the target
  final = FakeLN(
    C, epsilon=1e-5, aux_loss_weight=0.1, eot_token=50256, site=NormSite("final", None, 1)
  )
  assert final.needs_tokens and not FakeLN(C, eot_token=50256).needs_tokens
  final(jnp.asarray(h, jnp.float32), tokens=jnp.asarray(tokens))
  recorded = sum(jax.tree.leaves(nnx.pop(final, AuxLoss)))
  np.testing.assert_allclose(recorded, np_official_aux_loss(h, tokens, 0.1), rtol=1e-5)
  with pytest.raises(ValueError, match="needs the token ids"):
    final(jnp.asarray(h, jnp.float32))


def test_aux_loss_against_torch_official_formula():
  torch = pytest.importorskip("torch")
  h, tokens = _aux_case(seed=13)
  hidden, ids = torch.tensor(h), torch.tensor(tokens)
  # CustomTrainer.compute_loss re-typed: BOS = position 0, EOS = id 50256, eps 1e-5
  special = ids == 50256
  special[:, 0] = True
  std = ((hidden - hidden.mean(-1, keepdim=True)) ** 2).mean(-1).add(1e-5).sqrt()
  expected = 0.1 * ((std - std[~special].mean().detach()) ** 2).mean()
  with jax.enable_x64(True):
    got = 0.1 * residual_std_loss(
      jnp.asarray(h), epsilon=1e-5, target_mask=jnp.asarray(tokens != 50256)
    )
  np.testing.assert_allclose(got, expected.item(), rtol=1e-12)


def test_gpt2_passes_its_tokens_to_an_eot_aware_final_norm():
  from normjax.models import make_model

  kwargs = dict(GPT2, norm_kwargs=dict(aux_loss_weight=0.1, eot_token=3, epsilon=1e-5))
  model = make_model("gpt2", rngs=nnx.Rngs(0), **kwargs)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 6, (2, 8)))
  reference = nnx.clone(model)  # the final norm's input, by running the blocks by hand
  h = reference.token_embedding(tokens) + reference.position_embedding(jnp.arange(8))
  for block in reference.transformer.blocks:
    h = block(h)
  model(tokens)
  recorded = sum(jax.tree.leaves(nnx.pop(model, AuxLoss)))
  expected = np_official_aux_loss(np.asarray(h, np.float64), np.asarray(tokens), 0.1, eot=3)
  np.testing.assert_allclose(recorded, expected, rtol=1e-4)


def test_removal_config_uses_the_official_epsilon():
  config = tu.load_config("gpt2_ln_removal")
  assert config.model.norm == "fakeln" and config.model.norm_kwargs.epsilon == 1e-5
