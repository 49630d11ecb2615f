"""Switch / top-k mixture-of-experts FFN with expert capacity, as WideNet's official code has it.

WideNet ("Go Wider Instead of Deeper", Xue et al., AAAI 2022, arXiv 2107.11817) replaces each
transformer FFN by a mixture of experts. The routing follows the official TensorFlow code,
XueFuzhao/WideNet_Code ``widenet/model_configs.py`` (``Router``, ``Switch``,
``load_balanced_loss``), for S tokens x_s (the batch flattened over its tokens), E experts,
top-k, capacity factor cf and load-balancing weight alpha:

  logits = x W_r (no bias; float32), + N(0, (1/E)^2) noise in training;  p = softmax(logits)
  (g_s1..g_sk, e_s1..e_sk) = top_k(p_s)          gates are p itself: NOT renormalised over k
  m_se = 1 if e is one of token s's k choices     (S, E)
  pos_se = sum_{s' <= s} m_s'e                    1-based position of token s in expert e
  C = int(S * cf * k // E);  choice (s, i) kept iff pos_{s e_si} < C  (at most C - 1 tokens)
  y_s = sum_i [kept] g_si * expert_{e_si}(x_s)    a dropped choice adds 0: the residual
                                                  connection carries the token
  aux = alpha * E * sum_e f_e P_e,  f_e = mean_s m_se / k (before capacity),  P_e = mean_s p_se

recorded once per MoE call (per layer) as an ``AuxLoss``. Positions are token-major (a token's
k choices enter the cumulative count together; no priority for first choices, unlike GShard),
slot 0 of every expert is never used (the official 1-based ``position < capacity`` test), and
one routing group is the whole batch the model is called on (the official code routes each TPU
replica's batch; identical on one device). ``dispatch_combine`` gives the official dense
(S, E, C) tensors (for tests and reading); the layer computes the same sums with a scatter into
and a gather from an (E, C, d) buffer, O(S k d) instead of O(S E C d).

An expert is fc2(gelu(fc1 x)) (tanh GELU, as the official ``gelu``), then GELU again when
``expert_out_gelu`` (the official expert: ``Dense(..., activation=gelu)`` twice). Unlike the
official expert there is no dropout inside it: the transformer block's residual dropout acts on
the MoE output, as on the dense MLP, so one expert with top-1 and room for every token IS the
dense MLP (tested). ``share_router=True`` (official) reuses one router in every layer that
shares the experts; ``False`` gives each layer its own router over the shared experts (the
``Widenet`` of hpcaitech/ColossalAI ``model_zoo/moe/models.py``). ``dropless`` (set by
``normjax.tools.sample`` for decoding, where S can be a single token) routes every token to its
k experts (C = S + 1).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.variables import AuxLoss


@dataclasses.dataclass(frozen=True)
class MoeConfig:
  """``model.moe``; defaults are WideNet-B's (``widenet/submit_tpu.sh``): E = 4, top-2,
  capacity factor 1.2, alpha = 0.01, one router shared by every layer, GELU on the expert
  output. ``expert_mlp_dim``: hidden width of an expert (None: the model's MLP width; the
  official WideNet-B uses 4096 for experts against 3072 for the dense MLP). With
  ``model.sharing='none'`` every layer owns its experts and router (``share_router`` unused)."""

  num_experts: int = 4
  top_k: int = 2
  capacity_factor: float = 1.2
  aux_weight: float = 0.01
  share_router: bool = True
  expert_out_gelu: bool = True
  expert_mlp_dim: int | None = None

  @classmethod
  def parse(cls, moe) -> "MoeConfig | None":
    """A ``MoeConfig`` from ``model.moe`` (a mapping; None or empty: no MoE)."""
    if moe is None or isinstance(moe, MoeConfig):
      return moe
    moe = dict(moe)
    if not moe:
      return None
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in moe:
      if key not in fields:
        raise ValueError(
          f"model argument moe.{key}={moe[key]!r}: unknown; keys are {', '.join(fields)}"
        )
    config = cls(**moe)
    config.check()
    return config

  def check(self):
    def fail(key, why):
      raise ValueError(f"model argument moe.{key}={getattr(self, key)!r}: {why}")

    for key in ("num_experts", "top_k"):
      value = getattr(self, key)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        fail(key, "must be an integer >= 1")
    if self.top_k > self.num_experts:
      fail("top_k", f"must be <= moe.num_experts={self.num_experts}")
    if not self.capacity_factor > 0:
      fail("capacity_factor", "must be > 0")
    if not self.aux_weight >= 0:
      fail("aux_weight", "must be >= 0")
    if self.expert_mlp_dim is not None and self.expert_mlp_dim < 1:
      fail("expert_mlp_dim", "must be an integer >= 1 or None")


def capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
  """Slots per expert, ``int(S * cf * k // E)`` (``Switch.expert_capacity``, official)."""
  return int(num_tokens * capacity_factor * top_k // num_experts)


class Routing(NamedTuple):
  """The routing of S tokens over E experts (see the module docstring)."""

  probs: jax.Array  # (S, E) softmax of the router logits
  expert_index: jax.Array  # (S, k) int32, the top-k experts, best first
  gate: jax.Array  # (S, k) their probabilities (not renormalised, not masked)
  position: jax.Array  # (S, k) int32, 1-based position of the token in that expert
  kept: jax.Array  # (S, k) bool, position < capacity
  balance_loss: jax.Array  # () E * sum_e f_e P_e (before the weight alpha)


def route(logits: jax.Array, *, top_k: int, capacity: int) -> Routing:
  """Top-k routing of ``logits`` (S, E) with ``capacity`` slots per expert."""
  num_experts = logits.shape[-1]
  probs = jax.nn.softmax(logits, axis=-1)
  gate, expert_index = jax.lax.top_k(probs, top_k)
  chosen = jax.nn.one_hot(expert_index, num_experts, dtype=jnp.int32).sum(axis=1)  # (S, E)
  positions = jnp.cumsum(chosen, axis=0) * chosen
  position = jnp.take_along_axis(positions, expert_index, axis=1)
  density = jnp.mean(chosen.astype(probs.dtype) / top_k, axis=0)
  balance = num_experts * jnp.sum(density * jnp.mean(probs, axis=0))
  return Routing(probs, expert_index, gate, position, position < capacity, balance)


def dispatch_combine(routing: Routing, capacity: int) -> tuple[jax.Array, jax.Array]:
  """The official dense ``(dispatch, combine)`` tensors (S, E, C): combine[s, e, c] is the gate
  of token s's kept choice of expert e at slot c, dispatch its 0/1 indicator."""
  num_experts = routing.probs.shape[-1]
  slot = jax.nn.one_hot(routing.position, capacity, dtype=routing.gate.dtype)  # (S, k, C)
  expert = jax.nn.one_hot(routing.expert_index, num_experts, dtype=routing.gate.dtype)
  weight = jnp.where(routing.kept, routing.gate, 0.0)
  combine = jnp.einsum("sk,ske,skc->sec", weight, expert, slot)
  dispatch = jnp.einsum("sk,ske,skc->sec", routing.kept.astype(slot.dtype), expert, slot)
  return dispatch, combine


def stacked(init, count: int):
  """Draws a (count, ...) parameter as ``count`` independent draws of ``init`` (so a
  variance-scaling init keeps each expert's own fans)."""

  def init_fn(key, shape, dtype=jnp.float32):
    return jnp.stack([init(k, shape[1:], dtype) for k in jax.random.split(key, count)])

  return init_fn


class Experts(nnx.Module):
  """E two-layer MLPs with stacked weights: fc1 (E, d, h), fc2 (E, h, d), biases (E, h), (E, d).

  ``inits``: the model's ``LinearInits`` (hidden/out kernels and the MLP bias), per expert.
  """

  def __init__(self, num_experts, width, hidden, *, out_gelu, inits, dtype, rngs):
    def param(init, shape):
      return nnx.Param(stacked(init, num_experts)(rngs.params(), (num_experts, *shape)))

    self.out_gelu, self.dtype = out_gelu, dtype
    self.fc1_kernel = param(inits.mlp_hidden_kernel, (width, hidden))
    self.fc1_bias = param(inits.mlp_bias, (hidden,))
    self.fc2_kernel = param(inits.mlp_out_kernel, (hidden, width))
    self.fc2_bias = param(inits.mlp_bias, (width,))

  def __call__(self, x: jax.Array) -> jax.Array:
    """(E, C, d) -> (E, C, d), expert e applied to row e."""
    cast = lambda v: v[...].astype(x.dtype)
    h = jnp.einsum("ecd,edh->ech", x, cast(self.fc1_kernel)) + cast(self.fc1_bias)[:, None]
    h = jax.nn.gelu(h, approximate=True)
    y = jnp.einsum("ech,ehd->ecd", h, cast(self.fc2_kernel)) + cast(self.fc2_bias)[:, None]
    return jax.nn.gelu(y, approximate=True) if self.out_gelu else y


class Router(nnx.Module):
  """logits = x W_r, W_r (d, E) without bias, Glorot-uniform (Keras ``Dense`` default);
  computed in float32 (float64 for float64 inputs) whatever the model's dtype."""

  def __init__(self, width: int, num_experts: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.xavier_uniform()
    self.kernel = nnx.Param(init(rngs.params(), (width, num_experts), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    return x.astype(dtype) @ self.kernel[...].astype(dtype)


class MixtureOfExperts(nnx.Module):
  """One layer's MoE FFN: its ``router`` and ``experts`` may be shared with other layers.

  ``x`` (..., d) -> (..., d); in training (``deterministic=False``) the router logits get
  N(0, (1/E)^2) noise and the weighted balance loss is recorded as ``self.aux_loss``.
  """

  records_aux_loss = True

  def __init__(self, router, experts, config: MoeConfig, *, rngs: nnx.Rngs):
    self.router, self.experts, self.config = router, experts, config
    self.deterministic = False
    self.dropless = False
    self.rngs = rngs["router_noise"].fork()

  def __call__(self, x: jax.Array) -> jax.Array:
    config = self.config
    flat = x.reshape(-1, x.shape[-1])
    tokens, experts = flat.shape[0], config.num_experts
    logits = self.router(flat)
    if not self.deterministic:
      logits = logits + jax.random.normal(self.rngs(), logits.shape, logits.dtype) / experts
    slots = (
      tokens + 1
      if self.dropless
      else capacity(tokens, experts, config.top_k, config.capacity_factor)
    )
    routing = route(logits, top_k=config.top_k, capacity=slots)
    # flat slot id of each kept choice; E * slots (out of range) for a dropped one
    slot = jnp.where(routing.kept, routing.expert_index * slots + routing.position, experts * slots)
    buffer = jnp.zeros((experts * slots, flat.shape[-1]), flat.dtype)
    buffer = buffer.at[slot.reshape(-1)].set(jnp.repeat(flat, config.top_k, axis=0), mode="drop")
    out = self.experts(buffer.reshape(experts, slots, -1)).reshape(experts * slots, -1)
    picked = jnp.take(out, slot, axis=0, mode="fill", fill_value=0)  # (S, k, d)
    gate = jnp.where(routing.kept, routing.gate, 0.0).astype(picked.dtype)
    y = jnp.einsum("sk,skd->sd", gate, picked)
    if not self.deterministic and config.aux_weight > 0:
      self.aux_loss = AuxLoss(config.aux_weight * routing.balance_loss)
    return y.reshape(x.shape)


def install(blocks, config: MoeConfig, *, shared: bool, width, hidden, inits, dtype, rngs):
  """Replaces every block's ``mlp`` by a ``MixtureOfExperts``: one set of experts (and, with
  ``share_router``, one router) for all blocks when ``shared``, else each block its own."""
  hidden = config.expert_mlp_dim or hidden

  def experts():
    return Experts(
      config.num_experts,
      width,
      hidden,
      out_gelu=config.expert_out_gelu,
      inits=inits,
      dtype=dtype,
      rngs=rngs,
    )

  common_experts = experts() if shared else None
  common_router = (
    Router(width, config.num_experts, rngs=rngs) if shared and config.share_router else None
  )
  for block in blocks:
    router = (
      common_router if common_router is not None else Router(width, config.num_experts, rngs=rngs)
    )
    block.mlp = MixtureOfExperts(
      router, common_experts if common_experts is not None else experts(), config, rngs=rngs
    )
