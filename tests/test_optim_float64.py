"""Every normjax optimizer computes in the wider of float32 and the leaf's dtype: float64
runs match float64 NumPy re-statements of the official steps to 1e-12 (relative to the
largest entry) over 24+ steps, and half-precision leaves still get float32 statistics.
SGDP's float64 tests are in ``test_optim_sgdp.py``. ``jax.enable_x64`` is scoped to each
run, so other tests keep the default."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normjax import optim
from tests import test_optim_conda as conda_ref
from tests.test_optim_adamp import AdamPReference, from_torch, to_torch
from tests.test_optim_sgdp import VIEWS, OfficialSGDP, assert_close, gradient, make_params

STEPS = 24


def float64_state(tree):
  return all(x.dtype in (jnp.float64, jnp.int32) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_float64(nesterov):
  kw = dict(
    b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, delta=0.1, wd_ratio=0.1, nesterov=nesterov
  )
  params, reference = make_params(), AdamPReference(lr=0.02, **kw)
  ref = {k: to_torch(v) for k, v in params.items()}
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    tx = optim.adamp(0.02, **kw)
    p = jax.tree.map(jnp.asarray, params)
    state, update = tx.init(p), jax.jit(tx.update)
    for _ in range(STEPS):
      draws = {k: rng.normal(size=v.shape) for k, v in params.items()}
      grads = {k: jnp.asarray(gradient(k, np.asarray(p[k]), draws[k])) for k in params}
      updates, state = update(grads, state, p)
      p = optax.apply_updates(p, updates)
      for k in params:
        g = to_torch(gradient(k, from_torch(ref[k], params[k].ndim), draws[k]))
        ref[k], ratio = reference.step(k, ref[k], g)
        assert ratio == (0.1 if VIEWS[k] else 1.0), k
    assert float64_state((p, state))
    got = {k: np.asarray(v) for k, v in p.items()}
  assert_close(got, {k: from_torch(v, params[k].ndim) for k, v in ref.items()}, 1e-12)


@pytest.mark.parametrize("rotated_momentum", [False, True])
def test_conda_float64(rotated_momentum):
  rng = np.random.default_rng(0)
  shapes, specs = conda_ref.SHAPES, conda_ref.SPECS
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  # optax's schedules evaluate in float32 on the int32 count even under x64; this one
  # keeps the learning rate float64, so that the comparison is the optimizer's alone
  schedule = lambda count: 0.02 - 0.0005 * jnp.minimum(count, 20).astype(jnp.float64)
  kw = dict(b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1, scale=0.25, update_proj_gap=5)
  reference = conda_ref.CondaReference(
    lambda t: float(schedule(t)), conda_names={k for k, v in specs.items() if v}, **kw
  )
  ref = {k: (conda_ref.as_matrix(k, v).T if v.ndim >= 2 else v) for k, v in params.items()}
  with jax.enable_x64(True):
    tx = optim.conda(schedule, conda_mask=specs, rotated_momentum=rotated_momentum, **kw)
    p = jax.tree.map(jnp.asarray, params)
    state, update = tx.init(p), jax.jit(tx.update)
    for _ in range(STEPS):  # refreshes at counts 0, 5, 10, 15, 20
      grads = {k: rng.normal(size=s) for k, s in shapes.items()}
      updates, state = update(jax.tree.map(jnp.asarray, grads), state, p)
      p = optax.apply_updates(p, updates)
      for k, g in grads.items():
        ref[k] = reference.step(k, ref[k], conda_ref.as_matrix(k, g).T if g.ndim >= 2 else g)
    assert float64_state((p, state))
    got = {k: np.asarray(v) for k, v in p.items()}
  want = {k: ref[k].T.reshape(s) if len(s) >= 2 else ref[k] for k, s in shapes.items()}
  assert_close(got, want, 1e-12)


def test_nap_on_sgdp_float64():
  """``nap(base='sgdp')``: the official SGDP step, then each matrix back to its initial
  norm (the default mask: every leaf with ndim >= 2)."""
  kw = dict(momentum=0.9, weight_decay=0.02)
  params, reference = make_params(), OfficialSGDP(lr=0.05, **kw)
  ref = {k: to_torch(v).copy() for k, v in params.items()}
  targets = {k: np.linalg.norm(v) for k, v in params.items()}
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    tx = optim.nap(0.05, base="sgdp", **kw)
    p = jax.tree.map(jnp.asarray, params)
    state, update = tx.init(p), jax.jit(tx.update)
    for _ in range(STEPS):
      draws = {k: rng.normal(size=v.shape) for k, v in params.items()}
      grads = {k: jnp.asarray(gradient(k, np.asarray(p[k]), draws[k])) for k in params}
      updates, state = update(grads, state, p)
      p = optax.apply_updates(p, updates)
      for k in params:
        reference.step(
          k, ref[k], to_torch(gradient(k, from_torch(ref[k], params[k].ndim), draws[k]))
        )
        if ref[k].ndim >= 2:
          ref[k] *= targets[k] / np.linalg.norm(ref[k])
    assert float64_state((p, state))
    got = {k: np.asarray(v) for k, v in p.items()}
  assert_close(got, {k: from_torch(v, params[k].ndim) for k, v in ref.items()}, 1e-12)


FACTORIES = {
  "adamp": lambda: optim.adamp(1e-3, weight_decay=0.1),
  "sgdp": lambda: optim.sgdp(1e-3, momentum=0.9, weight_decay=0.1),
  "conda": lambda: optim.conda(1e-3),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_float16_leaves_get_float32_statistics(name):
  """Tangential gradients of 1e-4: their squares (1e-8, Adam's second moment and the
  scale-invariance test's |g|^2) underflow float16. The float16 step's update is the
  float32 step's, rounded to float16 (one step from a fresh state: the state itself is
  stored in the parameters' dtype, as optax's adam does)."""
  rng = np.random.default_rng(5)
  w = rng.normal(size=(6, 4)).astype(np.float16)
  g = 1e-4 * gradient("dense_channel", w.astype(np.float64), rng.normal(size=(6, 4)))
  g = g.astype(np.float16)
  updates = {}
  for dtype in (jnp.float16, jnp.float32):
    tx = FACTORIES[name]()
    params, grads = {"w": jnp.asarray(w, dtype)}, {"w": jnp.asarray(g, dtype)}
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert u["w"].dtype == dtype
    updates[dtype] = np.asarray(u["w"], np.float32)
  want = updates[jnp.float32]  # float16 rounding (Conda also stores its basis in float16)
  np.testing.assert_allclose(
    updates[jnp.float16], want, rtol=1e-2, atol=1e-2 * np.max(np.abs(want))
  )
