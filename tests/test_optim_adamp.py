"""AdamP / SGDP against a float64 numpy re-implementation of clovaai/AdamP (torch layout)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normjax.optim import adamp, scale_by_adamp, sgdp
from tests import optim_harness as harness

# ----------------------------------------------------------------- the oracle
# A literal loop over parameters, in torch layout ((out, in) / (out, in, kh, kw)), of
# clovaai/AdamP:adamp/adamp.py and adamp/sgdp.py v0.3.0, written from the algorithm.


def to_torch(x):
  """Flax (..., in, out) kernel -> torch (out, in, ...) weight."""
  x = np.asarray(x, np.float64)
  if x.ndim == 2:
    return x.T
  if x.ndim == 4:  # (kh, kw, in, out) -> (out, in, kh, kw)
    return x.transpose(3, 2, 0, 1)
  return x


def from_torch(x, ndim):
  if ndim == 2:
    return x.T
  if ndim == 4:
    return x.transpose(2, 3, 1, 0)
  return x


def torch_cosine(x, y, eps):
  nx = np.maximum(np.linalg.norm(x, axis=1), eps)
  ny = np.maximum(np.linalg.norm(y, axis=1), eps)
  return np.sum((x / nx[:, None]) * (y / ny[:, None]), axis=1)


def torch_projection(p, grad, perturb, delta, wd_ratio, eps):
  for view in (lambda x: x.reshape(x.shape[0], -1), lambda x: x.reshape(1, -1)):
    cosine = np.abs(torch_cosine(view(grad), view(p), eps))
    if cosine.max() < delta / np.sqrt(view(p).shape[1]):
      p_n = view(p) / (np.linalg.norm(view(p), axis=1, keepdims=True) + eps)
      u = view(perturb)
      u = u - p_n * np.sum(p_n * u, axis=1, keepdims=True)
      return u.reshape(p.shape), wd_ratio
  return perturb, 1.0


class AdamPReference:
  def __init__(self, lr, b1, b2, eps, weight_decay, delta, wd_ratio, nesterov):
    self.__dict__.update(locals())
    self.state = {}

  def step(self, name, p, grad):
    st = self.state.setdefault(name, dict(step=0, m=np.zeros_like(p), v=np.zeros_like(p)))
    st["step"] += 1
    st["m"] = self.b1 * st["m"] + (1 - self.b1) * grad
    st["v"] = self.b2 * st["v"] + (1 - self.b2) * grad * grad
    bc1, bc2 = 1 - self.b1 ** st["step"], 1 - self.b2 ** st["step"]
    denom = np.sqrt(st["v"]) / np.sqrt(bc2) + self.eps
    step_size = self.lr / bc1
    if self.nesterov:
      perturb = (self.b1 * st["m"] + (1 - self.b1) * grad) / denom
    else:
      perturb = st["m"] / denom
    ratio = 1.0
    if p.ndim > 1:
      perturb, ratio = torch_projection(p, grad, perturb, self.delta, self.wd_ratio, self.eps)
    if self.weight_decay > 0:
      p = p * (1 - self.lr * self.weight_decay * ratio)
    return p - step_size * perturb, ratio


class SGDPReference:
  """``project_momentum``: the official ``d_p = buf`` is the buffer itself, projected in
  place, so without Nesterov the projected direction is the next step's buffer."""

  def __init__(
    self,
    lr,
    momentum,
    dampening,
    weight_decay,
    nesterov,
    eps,
    delta,
    wd_ratio,
    project_momentum=True,
  ):
    self.__dict__.update(locals())
    self.state = {}

  def step(self, name, p, grad):
    buf = self.state.get(name, np.zeros_like(p))
    buf = self.momentum * buf + (1 - self.dampening) * grad
    self.state[name] = buf
    d = grad + self.momentum * buf if self.nesterov else buf
    ratio = 1.0
    if p.ndim > 1:
      d, ratio = torch_projection(p, grad, d, self.delta, self.wd_ratio, self.eps)
      if self.project_momentum and not self.nesterov:
        self.state[name] = d
    if self.weight_decay > 0:
      p = p * (1 - self.lr * self.weight_decay * ratio / (1 - self.momentum))
    return p - self.lr * d, ratio


# --------------------------------------------------- gradients with known geometry


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "channel_si": rng.normal(size=(5, 4)),  # grads orthogonal per output channel
    "layer_si": rng.normal(size=(6, 3)),  # grads orthogonal to the whole leaf only
    "conv_si": rng.normal(size=(2, 2, 3, 4)),  # conv kernel, per-channel orthogonal
    "plain": rng.normal(size=(3, 4)),  # grads with a radial part
    "bias": rng.normal(size=(4,)),
  }


def gradient(name, p, r):
  """Flax-layout gradient with the geometry its name says, from a random draw ``r``."""
  if name in ("channel_si", "conv_si"):
    axes = tuple(range(p.ndim - 1))
    return r - p * np.sum(p * r, axis=axes) / np.sum(p * p, axis=axes)
  if name == "layer_si":
    return r - p * np.sum(p * r) / np.sum(p * p)
  if name == "plain":
    return r + 0.7 * p
  return r


EXPECTED_RATIO = {"channel_si": 0.1, "layer_si": 0.1, "conv_si": 0.1, "plain": 1.0, "bias": 1.0}


def run_against_reference(tx, reference, steps=6, seed=0):
  params = make_params(seed)
  ref_params = {k: to_torch(v) for k, v in params.items()}
  jax_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(jax_params)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(seed + 1)
  for _ in range(steps):
    draws = {k: rng.normal(size=v.shape) for k, v in params.items()}
    grads = {k: gradient(k, np.asarray(jax_params[k], np.float64), draws[k]) for k in params}
    updates, state = update(
      jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads), state, jax_params
    )
    jax_params = optax.apply_updates(jax_params, updates)
    for k in params:
      p = from_torch(ref_params[k], params[k].ndim)
      g = to_torch(gradient(k, p, draws[k]))
      ref_params[k], ratio = reference.step(k, ref_params[k], g)
      assert ratio == EXPECTED_RATIO[k], (k, ratio)
  for k in params:
    np.testing.assert_allclose(
      np.asarray(jax_params[k]),
      from_torch(ref_params[k], params[k].ndim),
      rtol=1e-5,
      atol=1e-5,
      err_msg=k,
    )


@pytest.mark.parametrize("nesterov,eps", [(False, 1e-8), (True, 1e-3)])
def test_adamp_matches_official_algorithm(nesterov, eps):
  kw = dict(
    b1=0.9, b2=0.999, eps=eps, weight_decay=0.05, delta=0.1, wd_ratio=0.1, nesterov=nesterov
  )
  run_against_reference(adamp(0.05, **kw), AdamPReference(lr=0.05, **kw))


@pytest.mark.parametrize("project_momentum", [True, False])
@pytest.mark.parametrize(
  "nesterov,momentum,dampening",
  [(False, 0.9, 0.0), (True, 0.9, 0.0), (False, 0.0, 0.0), (False, 0.8, 0.3)],
)
def test_sgdp_matches_official_algorithm(nesterov, momentum, dampening, project_momentum):
  kw = dict(
    momentum=momentum,
    dampening=dampening,
    weight_decay=0.02,
    nesterov=nesterov,
    eps=1e-8,
    delta=0.1,
    wd_ratio=0.1,
    project_momentum=project_momentum,
  )
  run_against_reference(sgdp(0.05, **kw), SGDPReference(lr=0.05, **kw))


def test_weight_decay_mask_and_zero_norm_leaf():
  """Masked leaves do not decay; a zero weight passes the channel test (cos = 0), its
  projection is a no-op, as in the official code."""
  params = {"w": jnp.zeros((3, 2)), "v": jnp.ones((2, 2))}
  grads = {"w": jnp.ones((3, 2)), "v": jnp.zeros((2, 2))}
  tx = adamp(0.1, weight_decay=0.5, weight_decay_mask={"w": True, "v": False})
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  # first Adam step: g / |g| (1 - b2 rounds in float32, as in optax)
  np.testing.assert_allclose(updates["w"], -0.1 * np.ones((3, 2)), rtol=1e-5)
  np.testing.assert_array_equal(updates["v"], 0.0)


def test_update_is_orthogonal_on_scale_invariant_leaf():
  """Per output channel, <update, w> = 0 for a loss invariant to each channel's scale."""
  rng = np.random.default_rng(3)
  w0 = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
  loss = lambda w: jnp.sum(jnp.square(x @ (w / jnp.linalg.norm(w, axis=0)) - target))
  tx = adamp(0.01)
  state, w = tx.init(w0), w0
  step = jax.jit(lambda w, state: tx.update(jax.grad(loss)(w), state, w))
  for _ in range(5):
    updates, state = step(w, state)
    radial = np.sum(np.asarray(updates) * np.asarray(w), axis=0)
    assert np.max(np.abs(radial)) < 1e-6 * np.linalg.norm(updates) * np.linalg.norm(w)
    w = optax.apply_updates(w, updates)


def test_norm_growth_smaller_than_adam():
  rng = np.random.default_rng(4)
  w0 = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)

  def loss(w):  # a LayerNorm-style layer-wise scale invariance
    return jnp.mean(jnp.square(x @ (w / jnp.linalg.norm(w)) * 4.0 - target))

  def growth(tx):
    @jax.jit
    def run(w):
      def body(carry, _):
        w, state = carry
        updates, state = tx.update(jax.grad(loss)(w), state, w)
        return (optax.apply_updates(w, updates), state), None

      return jax.lax.scan(body, (w, tx.init(w)), length=300)[0][0]

    return float(jnp.linalg.norm(run(w0)) / jnp.linalg.norm(w0))

  adam_growth, adamp_growth = growth(optax.adam(0.05)), growth(adamp(0.05))
  assert adam_growth > 1.2, adam_growth
  assert adamp_growth - 1 < 0.25 * (adam_growth - 1), (adamp_growth, adam_growth)


def test_equals_adamw_and_sgd_off_scale_invariant_leaves():
  """Where the test fails (radial gradients) AdamP is optax.adamw and SGDP is SGD with
  momentum plus decoupled decay wd / (1 - momentum) applied before the step."""
  rng = np.random.default_rng(5)
  params = {
    "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
    "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
  }
  pairs = [
    (adamp(0.01, weight_decay=0.1), optax.adamw(0.01, weight_decay=0.1)),
    (
      sgdp(0.01, momentum=0.9, nesterov=True, weight_decay=0.1),
      optax.chain(
        optax.trace(decay=0.9, nesterov=True),
        optax.add_decayed_weights(0.1 / (1 - 0.9)),
        optax.scale_by_learning_rate(0.01),
      ),
    ),
  ]
  for tx, ref in pairs:
    p_tx, p_ref = params, params
    s_tx, s_ref = tx.init(params), ref.init(params)
    for _ in range(5):
      u_tx, s_tx = tx.update(jax.tree.map(lambda p: 0.5 * p + 0.1, p_tx), s_tx, p_tx)
      u_ref, s_ref = ref.update(jax.tree.map(lambda p: 0.5 * p + 0.1, p_ref), s_ref, p_ref)
      p_tx, p_ref = optax.apply_updates(p_tx, u_tx), optax.apply_updates(p_ref, u_ref)
    for a, b in zip(jax.tree.leaves(p_tx), jax.tree.leaves(p_ref)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sgdp_equals_sgd_momentum_nesterov():
  rng = np.random.default_rng(6)
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  for nesterov in (False, True):
    tx, ref = (
      sgdp(0.01, momentum=0.9, nesterov=nesterov),
      optax.sgd(0.01, momentum=0.9, nesterov=nesterov),
    )
    p_tx, p_ref, s_tx, s_ref = params, params, tx.init(params), ref.init(params)
    for _ in range(5):
      u, s_tx = tx.update(jax.tree.map(lambda p: p + 0.1, p_tx), s_tx, p_tx)
      v, s_ref = ref.update(jax.tree.map(lambda p: p + 0.1, p_ref), s_ref, p_ref)
      p_tx, p_ref = optax.apply_updates(p_tx, u), optax.apply_updates(p_ref, v)
    np.testing.assert_allclose(p_tx["w"], p_ref["w"], rtol=1e-5, atol=1e-6)


def test_params_required():
  tx = adamp(0.1)
  params = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="needs params"):
    tx.update(params, tx.init(params))


def test_bad_arguments():
  with pytest.raises(ValueError, match="momentum"):
    sgdp(0.1, momentum=1.0)
  with pytest.raises(ValueError, match="delta"):
    scale_by_adamp(delta=-1.0)


# ------------------------------------------------------------ the optax harness
OPTIMIZERS = {
  "adamp": (adamp, dict(learning_rate=1e-2)),
  "adamp_wd": (adamp, dict(learning_rate=1e-2, weight_decay=1e-4, nesterov=True)),
  "sgdp": (sgdp, dict(learning_rate=1e-3, momentum=0.9, nesterov=True)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_extra_args_and_no_recompile(name):
  factory, kw = OPTIMIZERS[name]
  harness.check_extra_args_and_no_recompile(factory(**kw))


@pytest.mark.parametrize("target", list(harness.TARGETS))
@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_convergence(name, target):
  factory, kw = OPTIMIZERS[name]
  harness.check_convergence(factory(**kw), target)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inject_hyperparams(name):
  factory, kw = OPTIMIZERS[name]
  params = {
    "w": -jnp.ones((2, 3)) + jnp.arange(6.0).reshape(2, 3) * 0.1,
    "k": jnp.ones((2, 5, 2)),
    "b": jnp.ones((3,)),
  }
  # a tangential gradient on "w" so that the traced test passes there
  grads = {
    "w": jnp.asarray([[1.0, 0.0, -1.0], [-1.0, 0.0, 1.0]]) @ jnp.eye(3),
    "k": -jnp.ones((2, 5, 2)),
    "b": jnp.ones((3,)),
  }
  harness.check_inject_hyperparams(factory, kw, params, grads)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", ["adamp_wd", "sgdp"])
def test_dtypes_multisteps_and_cond(name, dtype):
  factory, kw = OPTIMIZERS[name]
  harness.check_preserve_dtype(factory(**kw), dtype)
  harness.check_multisteps(factory(**kw), dtype)
  harness.check_state_stable_under_cond(factory(**kw), dtype)


@pytest.mark.parametrize(
  "tx", [adamp(1e-2, mu_dtype="bfloat16"), sgdp(1e-2, momentum=0.9, momentum_dtype="bfloat16")]
)
def test_bfloat16_momentum_with_float32_params(tx):
  harness.check_preserve_dtype(tx, "float32")
  assert jax.tree.leaves(tx.init(harness.dtype_params("float32"))[0])[1].dtype == jnp.bfloat16


def test_registered_and_importable():
  from normjax import optim
  from normjax.optim import OPTIMIZERS as registry

  module = importlib.import_module("normjax.optim")  # the public names
  assert registry.get("adamp") is module.adamp and registry.get("sgdp") is module.sgdp
  tx = registry.get("adamp")(1e-3, weight_decay=0.1, weight_decay_mask=lambda p: {"w": True})
  params = {"w": jnp.ones((2, 2))}
  tx.update(params, tx.init(params), params)
  if callable(getattr(optim, "adamp", None)) and not isinstance(optim.adamp, type(module)):
    assert optim.adamp is module.adamp
