"""Weight Compander: Psi, init inverse, export, gradients, updates vs a float64 restatement."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from normjax.models import make_model
from normjax.models import weight_compander as wc
from normjax.optim import compander_adam, labels, scale_by_compander
from normjax.state import pop_aux_loss
from tests import trainer_utils as tu

TINY = dict(num_classes=3, in_channels=2, stage_sizes=(1, 1), width=8)


def tiny_resnet(seed=0, **kw):
  return make_model("resnet", rngs=nnx.Rngs(seed), **TINY, **kw)


def to_f64(model):
  nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.float64), nnx.state(model, nnx.Param)))
  return model


def images(seed=0, n=4):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 6, 6, 2)), jnp.float32)


def kernels_of(model):
  return {p: np.asarray(v[...]) for p, v in nnx.iter_graph(model) if labels.is_kernel(p)}


def test_psi_closed_forms_float64():
  with jax.enable_x64(True):
    v = np.linspace(-3, 3, 13)
    a, b = 0.7, 0.6
    np.testing.assert_allclose(wc.psi(v, a, b), a * np.arctan(v / b), rtol=1e-15)
    np.testing.assert_allclose(wc.psi_derivative(v, a, b), a / (b * (1 + v**2 / b**2)), rtol=1e-14)
    grad = jax.vmap(jax.grad(lambda t: wc.psi(t, a, b)))(jnp.asarray(v))
    np.testing.assert_allclose(grad, wc.psi_derivative(v, a, b), rtol=1e-14)
    w = np.linspace(-1.0, 1.0, 9)  # |w| < a pi / 2 = 1.0996
    np.testing.assert_allclose(wc.psi(wc.psi_inverse(w, a, b), a, b), w, atol=1e-14)


@pytest.mark.parametrize("learnable", [False, True])
def test_init_equals_standard_init_and_export_equals_wrapper(learnable):
  plain = tiny_resnet()
  # a = 1.5: in this narrow net the 1x1 shortcut (fan-out 16) draws |w0| up to 1.4 > 0.5 pi / 2
  wrapped = wc.WeightCompander(tiny_resnet(), a=1.5, b=0.8, learnable=learnable)
  w0, v = kernels_of(plain), kernels_of(wrapped.model)
  assert set(w0) == set(v) and len(w0) == 7  # stem, 2 blocks x 2 convs, shortcut, head
  for path in w0:
    assert not np.allclose(v[path], w0[path])  # v is stored, not w
    np.testing.assert_allclose(wc.psi(v[path], 1.5, 0.8), w0[path], rtol=2e-6, atol=1e-7)
  exported = wc.export(wrapped)
  assert nnx.graphdef(exported) == nnx.graphdef(plain)  # a, b dropped: a plain model
  for model in (plain, wrapped, exported):
    model.eval()
  x = images()
  np.testing.assert_allclose(wrapped(x), exported(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(plain(x), exported(x), rtol=1e-5, atol=1e-5)  # init: w = w0
  pure = nnx.to_pure_dict(nnx.state(wrapped, nnx.Param))
  from_dict = wc.export_params(pure, a=None if learnable else 1.5, b=None if learnable else 0.8)
  nnx.update(plain, nnx.State(from_dict))
  np.testing.assert_allclose(plain(x), exported(x), rtol=1e-6, atol=1e-6)


def test_which_leaves_and_learnable_params():
  wrapped = wc.WeightCompander(tiny_resnet(), a=1.5, b=1.0, learnable=True)
  params = nnx.to_pure_dict(nnx.state(wrapped, nnx.Param))
  flat = {labels.param_names(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  a_names = sorted(n[:-1] for n in flat if n[-1] == "compander_a")
  k_names = sorted(n[:-1] for n in flat if n[-1] == "kernel")
  assert a_names == k_names  # one (a, b) per Dense/Conv layer, none on norms
  assert all(float(flat[n + ("compander_a",)]) == 1.5 for n in a_names)
  decay = {labels.param_names(p): d for p, d in jax.tree_util.tree_flatten_with_path(
    labels.decay_mask(params))[0]}  # fmt: skip
  assert all(decay[n + ("kernel",)] for n in k_names)  # learnable: decay on v
  assert not any(decay[n + ("compander_a",)] or decay[n + ("compander_b",)] for n in a_names)
  fixed = labels.decay_except_kernels(nnx.to_pure_dict(nnx.state(tiny_resnet(), nnx.Param)))
  assert not any(jax.tree.leaves(fixed))  # ResNet: every decayed matrix is a kernel


def _loss(graph, rest, x, y):
  def loss(params):  # fresh state Variables inside the trace (BatchNorm updates them)
    model = nnx.merge(graph, params, jax.tree.map(jnp.asarray, rest))
    return jnp.mean(jnp.square(model(x) - y)) + pop_aux_loss(model)

  return loss


def test_gradient_is_chain_rule_and_decay_on_psi():
  """dL/dv = Psi'(v) dL/dw (+ lambda Psi(v) Psi'(v) from the decay on w), in float64."""
  with jax.enable_x64(True):
    lam, a, b = 0.3, 1.7, 0.7
    model = to_f64(tiny_resnet(dtype="float64"))
    wrapped = wc.WeightCompander(model, a=a, b=b, weight_decay=lam)
    plain = wc.export(wrapped)
    x, y = images().astype(jnp.float64), jnp.ones((4, 3), jnp.float64)
    wrapped.train(), plain.train()
    g_v = jax.grad(_loss(*nnx.split(wrapped, nnx.Param, ...)[::2], x, y))(
      nnx.state(wrapped, nnx.Param)
    )
    g_w = jax.grad(_loss(*nnx.split(plain, nnx.Param, ...)[::2], x, y))(nnx.state(plain, nnx.Param))
    for path in wrapped.paths:
      v = np.asarray(wc._node(wrapped.model, path)[...], np.float64)
      gw = np.asarray(wc._node(g_w, path)[...])
      gv = np.asarray(wc._node(g_v, ("model",) + path)[...])
      d = a * b / (b * b + v * v)
      np.testing.assert_allclose(gv, d * gw + lam * a * np.arctan(v / b) * d, rtol=1e-9, atol=1e-13)


def _restated_adam(g, m, s, t, b1=0.9, b2=0.999, eps=1e-8):
  m, s = b1 * m + (1 - b1) * g, b2 * s + (1 - b2) * g * g
  return m / (1 - b1**t) / (np.sqrt(s / (1 - b2**t)) + eps), m, s


class TwoLayer(nnx.Module):
  def __init__(self, rngs, dtype=jnp.float64):
    self.fc1 = nnx.Linear(3, 5, rngs=rngs, param_dtype=dtype)
    self.norm = nnx.LayerNorm(5, rngs=rngs, param_dtype=dtype)
    self.fc2 = nnx.Linear(5, 2, rngs=rngs, param_dtype=dtype)

  def __call__(self, x):
    return self.fc2(jnp.tanh(self.norm(self.fc1(x))))


@pytest.mark.parametrize("learnable", [False, True])
def test_compander_adam_vs_float64_restatement(learnable):
  """5 steps of compander_adam against NumPy: Adam on dL/dPsi, step * Psi'(v), decay on v."""
  lr, a0, b0, lam, steps = 0.05, 0.8, 0.6, 0.1, 5
  with jax.enable_x64(True):
    wrapped = wc.WeightCompander(TwoLayer(nnx.Rngs(0)), a=a0, b=b0, learnable=learnable)
    graph, params, rest = nnx.split(wrapped, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 3)))
    y = jnp.asarray(np.random.default_rng(1).normal(size=(7, 2)))

    def loss(p):
      state = nnx.State(nnx.to_pure_dict(nnx.state(wrapped, nnx.Param)))
      nnx.replace_by_pure_dict(state, p)
      return jnp.mean(jnp.square(nnx.merge(graph, state, rest)(x) - y))

    tx = compander_adam(lr, a=a0, b=b0, weight_decay=lam, weight_decay_mask=labels.decay_mask)
    opt = tx.init(params)
    ref = jax.tree.map(np.asarray, params)
    mom = jax.tree.map(np.zeros_like, ref)
    sec = jax.tree.map(np.zeros_like, ref)
    grad = jax.jit(jax.grad(loss))
    for t in range(1, steps + 1):
      updates, opt = tx.update(grad(params), opt, params)
      params = optax.apply_updates(params, updates)
      g = jax.tree.map(np.asarray, grad(jax.tree.map(jnp.asarray, ref)))  # dL/dv at ref
      for layer in ("fc1", "fc2"):
        p, gp, mm, ss = (
          ref["model"][layer],
          g["model"][layer],
          mom["model"][layer],
          sec["model"][layer],
        )
        a, b = (p["compander_a"], p["compander_b"]) if learnable else (a0, b0)
        d = a * b / (b * b + p["kernel"] ** 2)
        for name in p:
          grad_in = gp[name] / d if name == "kernel" else gp[name]  # dL/dPsi for the kernel
          step, mm[name], ss[name] = _restated_adam(grad_in, mm[name], ss[name], t)
          if name == "kernel":
            step = step * d + lam * p["kernel"]  # Powerprop scaling; decoupled decay on v
          p[name] = p[name] - lr * step
      for name in ref["model"]["norm"]:
        gn, mm, ss = g["model"]["norm"][name], mom["model"]["norm"], sec["model"]["norm"]
        step, mm[name], ss[name] = _restated_adam(gn, mm[name], ss[name], t)
        ref["model"]["norm"][name] = ref["model"]["norm"][name] - lr * step
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_inject_hyperparams():
  wrapped = wc.WeightCompander(TwoLayer(nnx.Rngs(0), jnp.float32), a=0.8, b=0.6)
  params = nnx.to_pure_dict(nnx.state(wrapped, nnx.Param))
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.1), params)
  plain = compander_adam(1e-2, a=0.8, b=0.6)
  injected = optax.inject_hyperparams(compander_adam)(learning_rate=1e-2, a=0.8, b=0.6)
  s1, s2 = plain.init(params), injected.init(params)
  for _ in range(3):
    u1, s1 = plain.update(grads, s1, params)
    u2, s2 = jax.jit(injected.update)(grads, s2, params)
    for x, z in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
      # injected b1, b2, eps are float32 arrays: 1 - b2 ** t loses ~1e-5 relative
      np.testing.assert_allclose(x, z, rtol=5e-5, atol=1e-9)
  s2.hyperparams["a"] = jnp.asarray(1.6)  # a enters as Psi' = a b / (b^2 + v^2): kernels x2
  u3, _ = jax.jit(injected.update)(grads, s2, params)
  k3, k2 = u3["model"]["fc1"]["kernel"], u2["model"]["fc1"]["kernel"]
  assert not np.allclose(k3, k2)


def test_bad_hyperparameters_fail_with_a_message():
  for kwargs, match in (
    (dict(a=0.0), "weight_compander.a=0.0: must be > 0"),
    (dict(b=-1.0), "weight_compander.b=-1.0: must be > 0"),
    (dict(a=0.01), r"max \|w0\| / a = .* >= pi / 2"),
  ):
    with pytest.raises(ValueError, match=match):
      wc.WeightCompander(tiny_resnet(), **kwargs)
  with pytest.raises(ValueError, match="learnable=True"):
    wc.WeightCompander(tiny_resnet(), learnable=True, weight_decay=1e-4)
  with pytest.raises(ValueError, match="compander a=-1.0"):
    compander_adam(1e-3, a=-1.0)
  with pytest.raises(ValueError, match="needs params"):
    scale_by_compander(optax.scale_by_adam(), 1.0, 1.0).update({}, None)
  # inside jit (the trainer's init) the check runs when the init executes
  with pytest.raises(Exception, match=r"max \|w0\| / a"):
    jax.block_until_ready(
      jax.jit(lambda: nnx.state(wc.WeightCompander(tiny_resnet(), a=0.01), nnx.Param))()
    )
  assert math.pi / 2 * 0.5 > 0.785  # the paper's smallest a admits |w0| < 0.785


def test_config_arms_and_checkpoint_round_trip(tmp_path):
  from normjax import checkpoint, train

  for arm in ("baseline", "fixed", "learnable"):
    config = tu.load_config("resnet_weight_compander", f"arm={arm}")
    assert ("weight_compander" in config) == (arm != "baseline")
  with pytest.raises(ValueError, match="config key weight_compander.a"):
    config = tu.load_config("resnet_weight_compander", "arm=fixed")
    config.weight_compander.a = -1.0
    from normjax import run

    run.build(config)
  config = tu.load_config("resnet_weight_compander", "arm=learnable,a=1.5")
  tu.apply(config, tu.overrides("resnet", 2))
  train.train_and_evaluate(config, str(tmp_path))
  saved = tu.restore_state(tmp_path)["params"]
  assert "compander_a" in saved["model"]["head"]
  _, model = checkpoint.load_run(str(tmp_path))
  loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for x, z in zip(jax.tree.leaves(loaded), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(np.asarray(x), z)
  plain = wc.export(model)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 1)), jnp.float32)
  np.testing.assert_allclose(model(x), plain(x), rtol=1e-6, atol=1e-6)
