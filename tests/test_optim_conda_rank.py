"""Conda on rank-deficient momentum: float32 rounding noise in the rotated coordinates
outside the momentum's range is amplified by the Adam normalisation (official behaviour);
``singular_value_rtol`` treats those coordinates as exact zeros."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normjax.optim import conda
from tests.test_optim_conda import CondaReference

KW = dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, scale=1.0, update_proj_gap=3)


def low_rank(rows, cols, rank, seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, cols))


GRADIENTS = {
  "rank1_ones": np.ones((2, 3)),
  "rank2_wide": low_rank(6, 8, 2, 0),
  "rank3_tall": low_rank(10, 6, 3, 1),
}


def relative_error(tx, grad, steps=6, lr=1e-2):
  """|change of W (float32 normjax) - change (float64 reference)| / |change (reference)|
  after ``steps`` steps with a constant gradient (refreshes at counts 0 and 3)."""
  w0 = np.random.default_rng(2).normal(size=grad.shape)
  reference = CondaReference(lambda t: lr, conda_names={"w"}, **KW)
  w_ref = w0.T  # torch layout
  params = {"w": jnp.asarray(w0, jnp.float32)}
  state, update = tx.init(params), jax.jit(tx.update)
  for _ in range(steps):
    updates, state = update({"w": jnp.asarray(grad, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    w_ref = reference.step("w", w_ref, grad.T)
  want = w_ref.T - w0
  got = np.asarray(params["w"], np.float64) - w0
  return np.linalg.norm(got - want) / np.linalg.norm(want)


@pytest.mark.parametrize("name", GRADIENTS)
def test_rank_deficient_momentum_amplifies_noise_and_the_threshold_removes_it(name):
  official = relative_error(conda(1e-2, **KW), GRADIENTS[name])
  thresholded = relative_error(conda(1e-2, singular_value_rtol=1e-5, **KW), GRADIENTS[name])
  assert official > 1e-2, official  # O(1e-9) noise -> percent-level errors of the step
  assert thresholded < 1e-4, thresholded  # float32 rounding of the parameters (~1e-5)


def test_threshold_changes_nothing_on_full_rank_momentum():
  rng = np.random.default_rng(3)
  params = {
    "a": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
    "b": jnp.asarray(rng.normal(size=(7, 4)), jnp.float32),
  }
  txs = [conda(1e-2, **KW), conda(1e-2, singular_value_rtol=1e-5, **KW)]
  states = [tx.init(params) for tx in txs]
  for _ in range(5):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    out = [jax.jit(tx.update)(grads, s, params) for tx, s in zip(txs, states)]
    states = [o[1] for o in out]
    for a, b in zip(jax.tree.leaves(out[0][0]), jax.tree.leaves(out[1][0])):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_a_direction_leaving_the_null_space_counts_before_the_next_refresh():
  """Rank-1 gradient at the refresh (count 0), then full-rank gradients with the basis
  kept (T = 100): the threshold judges each step's rotated momentum, so the new
  directions are updated at once and the run matches the float64 reference."""
  rng = np.random.default_rng(4)
  grads = [np.ones((4, 6))] + [rng.normal(size=(4, 6)) for _ in range(4)]
  kw = dict(KW, update_proj_gap=100)
  tx = conda(1e-2, singular_value_rtol=1e-5, **kw)
  reference = CondaReference(lambda t: 1e-2, conda_names={"w"}, **kw)
  w0 = rng.normal(size=(4, 6))
  params, w_ref = {"w": jnp.asarray(w0, jnp.float32)}, w0.T
  state = tx.init(params)
  for g in grads:
    updates, state = jax.jit(tx.update)({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    w_ref = reference.step("w", w_ref, g.T)
  want, got = w_ref.T - w0, np.asarray(params["w"], np.float64) - w0
  assert np.linalg.norm(got - want) < 1e-4 * np.linalg.norm(want)


@pytest.mark.parametrize("rtol,close", [(None, False), (1e-5, True)])
def test_inject_hyperparams_on_the_rank_one_gradient(rtol, close):
  """optax's contrib check: the same optimizer with and without inject_hyperparams, one
  step on all-ones gradients; two compilations give different noise, amplified."""
  params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
  kw = dict(learning_rate=1e-2, singular_value_rtol=rtol)
  plain = conda(**kw)
  injected = optax.inject_hyperparams(conda, static_args=("update_proj_gap",))(**kw)
  u_plain, _ = jax.jit(plain.update)(grads, plain.init(params), params)
  u_injected, _ = jax.jit(injected.update)(grads, injected.init(params), params)
  gap = float(jnp.max(jnp.abs(u_plain[0] - u_injected[0])))
  assert (gap < 1e-6) == close, gap  # updates ~7e-3: 1.5e-3 apart when off, 5e-8 when on
