"""WideNet (arXiv 2107.11817): the top-k router against a float64 NumPy re-statement of the
official Keras code (XueFuzhao/WideNet_Code widenet/model_configs.py), parameter counts, and
the invariants of ``model.sharing`` / ``model.moe`` (normjax.models.moe, normjax.models.sharing).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.models import make_model
from normjax.models import moe as moe_lib
from normjax.state import pop_aux_loss


# ------------------------------------------------------------------ the official router in NumPy
def official_router(logits, top_k, capacity, alpha):
  """The official ``Router.call`` (top_k > 1 branch; top_k = 1 is the same sums), in float64
  NumPy, step by step as written there: (dispatch, combine, aux loss)."""
  logits = np.asarray(logits, np.float64)
  num_tokens, num_experts = logits.shape
  e = np.exp(logits - logits.max(-1, keepdims=True))
  probs = e / e.sum(-1, keepdims=True)
  index = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
  gate = np.take_along_axis(probs, index, axis=1)
  one_hot = lambda i, n: np.eye(n)[i]
  mask_sum = one_hot(index, num_experts).sum(axis=1)  # (S, E)
  density = (mask_sum / top_k).mean(0)
  aux = np.mean(probs.mean(0) * density) * num_experts**2 * alpha
  position = (np.cumsum(mask_sum, axis=0) * mask_sum).astype(int)
  kept_mask = mask_sum * (position < capacity)
  flat = (kept_mask.sum(-1) > 0).astype(np.float64)
  slot_one_hot = np.zeros((num_tokens, num_experts, capacity))
  for s in range(num_tokens):
    for ex in range(num_experts):
      if position[s, ex] < capacity:
        slot_one_hot[s, ex, position[s, ex]] = 1.0  # tf.one_hot: out of range -> zeros
  combine = np.zeros((num_tokens, num_experts, capacity))
  for i in range(top_k):
    g = gate[:, i] * flat * flat
    combine += (g[:, None] * one_hot(index[:, i], num_experts))[..., None] * slot_one_hot
  return (combine != 0).astype(np.float64), combine, aux


def expert_np(x, p, e, out_gelu):
  gelu = lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))
  h = gelu(x @ p["fc1_kernel"][e] + p["fc1_bias"][e])
  y = h @ p["fc2_kernel"][e] + p["fc2_bias"][e]
  return gelu(y) if out_gelu else y


def official_switch(x, logits, p, *, top_k, capacity, alpha, out_gelu):
  """``Switch.call`` in NumPy: dispatch einsum, each expert on its (C, d) rows, combine."""
  dispatch, combine, aux = official_router(logits, top_k, capacity, alpha)
  expert_inputs = np.einsum("ab,acd->cdb", x, dispatch)
  outputs = np.stack([expert_np(xi, p, e, out_gelu) for e, xi in enumerate(expert_inputs)], 1)
  return np.einsum("abc,xba->xc", outputs, combine), aux


def fixed_logits(tokens=24, experts=4, seed=0):
  return np.random.default_rng(seed).normal(size=(tokens, experts)) * 2.0


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_router_matches_the_official_code_on_fixed_logits(top_k):
  logits = fixed_logits()
  cap = moe_lib.capacity(24, 4, top_k, 0.6)  # small: tokens are dropped
  with jax.enable_x64(True):
    routing = moe_lib.route(jnp.asarray(logits), top_k=top_k, capacity=cap)
    dispatch, combine = moe_lib.dispatch_combine(routing, cap)
    ref_dispatch, ref_combine, ref_aux = official_router(logits, top_k, cap, 0.01)
    np.testing.assert_array_equal(np.asarray(dispatch), ref_dispatch)
    np.testing.assert_allclose(np.asarray(combine), ref_combine, rtol=1e-14, atol=0)
    np.testing.assert_allclose(0.01 * float(routing.balance_loss), ref_aux, rtol=1e-13)
    # each choice is kept iff its slot exists in the official dense tensors
    kept = ref_dispatch.sum(-1)[np.arange(24)[:, None], np.asarray(routing.expert_index)] > 0
    np.testing.assert_array_equal(np.asarray(routing.kept), kept)
  assert ref_dispatch.sum() < 24 * top_k  # some choices were dropped
  per_expert = ref_dispatch.sum(axis=(0, 2))
  assert per_expert.max() <= cap - 1  # the official 1-based positions: slot 0 stays empty
  assert not ref_dispatch[:, :, 0].any()


def test_capacity_is_the_official_formula():
  assert moe_lib.capacity(6304, 4, 2, 1.2) == int(6304 * 1.2 * 2 // 4)
  assert moe_lib.capacity(130, 4, 2, 1.2) == 78
  assert moe_lib.capacity(10, 4, 1, 1.0) == 2


def make_moe(width=6, hidden=10, experts=4, top_k=2, cf=0.8, out_gelu=True, dtype=jnp.float64):
  config = moe_lib.MoeConfig(
    num_experts=experts, top_k=top_k, capacity_factor=cf, aux_weight=0.01, expert_out_gelu=out_gelu
  )
  normal = nnx.initializers.normal(0.5)
  inits = type("Inits", (), dict(mlp_hidden_kernel=normal, mlp_out_kernel=normal, mlp_bias=normal))
  rngs = nnx.Rngs(0)
  router = moe_lib.Router(width, experts, rngs=rngs)
  bank = moe_lib.Experts(
    experts, width, hidden, out_gelu=out_gelu, inits=inits, dtype=dtype, rngs=rngs
  )
  return moe_lib.MixtureOfExperts(router, bank, config, rngs=rngs)


@pytest.mark.parametrize("top_k,out_gelu", [(1, False), (2, True)])
def test_moe_layer_equals_the_official_switch_in_float64(top_k, out_gelu):
  with jax.enable_x64(True):
    layer = make_moe(top_k=top_k, out_gelu=out_gelu)
    layer.deterministic = True  # no router noise: fixed logits
    x = np.random.default_rng(1).normal(size=(3, 8, 6))
    y = np.asarray(call(layer, jnp.asarray(x)))
    flat = x.reshape(24, 6)
    names = ("fc1_kernel", "fc1_bias", "fc2_kernel", "fc2_bias")
    p = {k: np.asarray(getattr(layer.experts, k)[...], np.float64) for k in names}
    logits = flat @ np.asarray(layer.router.kernel[...])
    cap = moe_lib.capacity(24, 4, top_k, 0.8)
    ref, _ = official_switch(
      flat, logits, p, top_k=top_k, capacity=cap, alpha=0.01, out_gelu=out_gelu
    )
    np.testing.assert_allclose(y.reshape(24, 6), ref, rtol=1e-12, atol=1e-12)
    assert (np.abs(ref).sum(-1) == 0).any()  # a token dropped by every choice: output 0


def test_moe_training_noise_and_aux_loss_are_recorded():
  layer = make_moe(dtype=jnp.float32)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 6)), jnp.float32)
  y1, y2 = call(layer, x), call(layer, x)
  assert not np.allclose(y1, y2)  # N(0, 1/E^2) logit noise: a new draw per call
  assert float(pop_aux_loss(layer)) > 0
  layer.deterministic = True
  np.testing.assert_array_equal(call(layer, x), call(layer, x))
  assert float(pop_aux_loss(layer)) == 0.0  # eval records nothing


# ------------------------------------------------------------------------------ models
VIT = dict(
  num_classes=10, image_size=8, in_channels=1, patch_size=2, width=16, num_heads=2, mlp_dim=24
)


def vit(depth=3, abstract=False, **kwargs):
  build = lambda: make_model("vit", rngs=nnx.Rngs(0), depth=depth, **VIT, **kwargs)
  return nnx.eval_shape(build) if abstract else build()


call = nnx.jit(lambda model, x: model(x))


def n_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_parameter_counts_count_shared_modules_once():
  d, h, L, tokens = 16, 24, 3, 17
  attn, mlp, norms = d * 3 * d + 3 * d + d * d + d, 2 * d * h + h + d, 4 * d
  rest = 4 * d + d + tokens * d + d + 2 * d + d * 10 + 10  # patches, cls, positions, final, head
  E = 4
  experts, router = E * mlp, d * E
  expected = {
    ("none", None): L * (attn + mlp + norms) + rest,
    ("all", None): attn + mlp + norms + rest,
    ("weights", None): attn + mlp + L * norms + rest,
    ("weights", True): attn + experts + router + L * norms + rest,  # WideNet
    ("weights", False): attn + experts + L * router + L * norms + rest,  # ColossalAI
    ("all", True): attn + experts + router + norms + rest,
    ("none", True): L * (attn + experts + router + norms) + rest,
  }
  for (sharing, share_router), count in expected.items():
    moe = None if share_router is None else dict(num_experts=E, share_router=share_router)
    model = vit(L, abstract=True, sharing=sharing, moe=moe)
    assert n_params(model) == count, (sharing, share_router)


def test_weights_sharing_with_depth_one_is_the_unshared_model():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
  a, b = vit(1), vit(1, sharing="weights")
  for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
    np.testing.assert_array_equal(x, y)
  a.head.kernel[...] = b.head.kernel[...] = jnp.ones_like(a.head.kernel[...])
  np.testing.assert_array_equal(call(a, images), call(b, images))


def test_one_expert_top1_with_room_equals_shared_weights_without_moe():
  """WideNet with E = 1, k = 1, C >= S (every token kept) = sharing='weights' + dense MLP."""
  moe = dict(num_experts=1, top_k=1, capacity_factor=2.0, expert_out_gelu=False)
  dense, wide = vit(sharing="weights"), vit(sharing="weights", moe=moe)
  dense_params = nnx.to_pure_dict(nnx.state(dense, nnx.Param))
  params = nnx.to_pure_dict(nnx.state(wide, nnx.Param))
  block0 = params["transformer"]["blocks"][0]
  mlp = dense_params["transformer"]["blocks"][0].pop("mlp")
  experts = block0["mlp"].pop("experts")
  for name in ("fc1", "fc2"):
    experts[f"{name}_kernel"] = mlp[name]["kernel"][None]
    experts[f"{name}_bias"] = mlp[name]["bias"][None]
  block0["mlp"]["experts"] = experts
  dense_params["transformer"]["blocks"][0]["mlp"] = mlp
  for key in ("patch_embedding", "position_embedding", "cls_token", "head"):
    params[key] = dense_params[key]
  for i, blk in dense_params["transformer"]["blocks"].items():
    for k, v in blk.items():
      if k != "mlp":
        params["transformer"]["blocks"][i][k] = v
  params["transformer"]["final_norm"] = dense_params["transformer"]["final_norm"]
  params["head"] = {"kernel": jnp.full((16, 10), 0.1), "bias": jnp.zeros(10)}
  nnx.update(dense, nnx.State({"head": params["head"]}))
  state = nnx.state(wide, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(wide, state)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
  wide.train()
  dense.train()
  np.testing.assert_allclose(call(wide, images), call(dense, images), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pop_aux_loss(wide), 3 * 0.01, rtol=1e-6)  # alpha * E * 1 * 1 / layer


@pytest.mark.parametrize("norm", ["fakeln", "powernorm"])
def test_full_sharing_refuses_norms_with_per_block_state(norm):
  with pytest.raises(ValueError, match="sharing='all'.*sharing='weights'"):
    vit(sharing="all", norm=norm, abstract=True)
  vit(sharing="weights", norm=norm, abstract=True)  # individual norms: fine


def test_bad_moe_keys_name_the_key():
  with pytest.raises(ValueError, match="moe.top_k=5"):
    vit(moe=dict(num_experts=4, top_k=5))
  with pytest.raises(ValueError, match="moe.experts"):
    vit(moe=dict(experts=4))
  with pytest.raises(ValueError, match="sharing='some'"):
    vit(sharing="some")
