"""Checks every normjax optimizer passes, mirroring optax/contrib/_common_test.py.

Each ``check_*`` function raises ``AssertionError`` on failure; the per-optimizer test
files parametrize them. The optimizers under test need ``params`` in ``update``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def parabola(dtype):
  init = jnp.array([-1.0, 10.0, 1.0], dtype)
  final = jnp.array([1.0, -1.0, 1.0], dtype)
  return init, final, lambda p: jnp.sum(jnp.square(p - final))


def rosenbrock(dtype):
  init = jnp.array([0.0, 0.0], dtype)
  final = jnp.array([1.0, 1.0], dtype)
  return init, final, lambda p: jnp.square(1.0 - p[0]) + 100.0 * jnp.square(p[1] - p[0] ** 2)


def matrix_parabola(dtype):
  init = jnp.zeros((2, 2), dtype)
  final = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
  return init, final, lambda p: jnp.sum(jnp.square(p - final))


def mixed_target(dtype):
  init = (jnp.zeros((3,), dtype), jnp.zeros((2, 2), dtype))
  final = (jnp.array([1.0, -1.0, 2.0], dtype), jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype))

  def loss(p):
    return jnp.sum(jnp.square(p[0] - final[0])) + jnp.sum(jnp.square(p[1] - final[1]))

  return init, final, loss


TARGETS = {
  "parabola": parabola,
  "rosenbrock": rosenbrock,
  "matrix_parabola": matrix_parabola,
  "mixed": mixed_target,
}


def check_extra_args_and_no_recompile(opt):
  """update accepts unexpected keyword arguments under jit and compiles once."""
  opt = optax.with_extra_args_support(opt)
  init, _, loss = rosenbrock(jnp.float32)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)  # runs only when jit traces (and so compiles) again
    grads = jax.grad(loss)(params)
    updates, state = opt.update(grads, state, params, unexpected_extra_arg=1)
    return optax.apply_updates(params, updates), state

  params, state = step(init, opt.init(init))
  params, state = step(params, state)
  assert len(traces) == 1, "update retraces (recompiles) on the second call"


def check_convergence(opt, target: str, steps: int = 20_000, tol: float = 3e-2):
  """Runs ``steps`` jitted updates in a scan and checks the optimum is reached."""
  init, final, loss = TARGETS[target](jnp.float32)
  state = opt.init(init)
  state = optax.tree.map_params(opt, lambda v: v, state)  # tree_map_params works

  def body(carry, _):
    params, state = carry
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, length=steps))((init, state))
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(final)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


def check_inject_hyperparams(factory, kwargs, params, grads, static_args=(), steps=3):
  """``inject_hyperparams(factory)`` gives the same updates and states as ``factory``."""
  opt = factory(**kwargs)
  opt_inject = optax.inject_hyperparams(factory, static_args=static_args)(**kwargs)
  state, state_inject = opt.init(params), opt_inject.init(params)
  update, update_inject = jax.jit(opt.update), jax.jit(opt_inject.update)
  for _ in range(steps):
    updates, state = update(grads, state, params)
    updates_inject, state_inject = update_inject(grads, state_inject, params)
    for a, b in zip(jax.tree.leaves(updates_inject), jax.tree.leaves(updates)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    params = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(state_inject.inner_state), jax.tree.leaves(state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def dtype_params(dtype):
  """A 1-D and a 2-D leaf (2-D leaves take the projection / rotation paths)."""
  return {
    "w": jnp.array([[1.0, 2.0, -0.5], [0.3, -1.2, 2.0]], dtype),
    "b": jnp.array([1.0, 2.0], dtype),
  }


def check_preserve_dtype(opt, dtype):
  """Updates have the params' dtype; every state leaf keeps its dtype across steps."""
  params = dtype_params(dtype)
  loss = lambda p: (
    jnp.sum(jnp.square(p["w"].astype(jnp.float32)))
    + jnp.sum(jnp.square(p["b"].astype(jnp.float32)) * 3.0)
  )
  state = opt.init(params)
  dtypes = [x.dtype for x in jax.tree.leaves(state)]

  @jax.jit
  def step(params, state):
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    return updates, optax.apply_updates(params, updates), state

  for _ in range(2):
    updates, params, state = step(params, state)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.dtype == p.dtype == jnp.dtype(dtype), (u.dtype, p.dtype, dtype)
    assert [x.dtype for x in jax.tree.leaves(state)] == dtypes


def check_multisteps(opt, dtype):
  """Gradient accumulation: the first of every 4 MultiSteps updates is exactly zero."""
  params = dtype_params(dtype)
  grads = jax.tree.map(lambda x: 2 * x, params)
  ms = optax.MultiSteps(opt, every_k_schedule=4)
  update = jax.jit(ms.update)
  state = ms.init(params)
  updates, state = update(grads, state, params)
  for u in jax.tree.leaves(updates):
    assert u.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(u, np.float32), 0.0)
  for _ in range(3):
    updates, state = update(grads, state, params)
  assert any(np.any(np.asarray(u, np.float32) != 0) for u in jax.tree.leaves(updates))


def check_state_stable_under_cond(opt, dtype):
  """State shapes and dtypes survive a ``lax.cond`` between old and new state."""
  params = dtype_params(dtype)
  loss = lambda p: jnp.sum(jnp.square(p["w"].astype(jnp.float32) - 1.0))

  @jax.jit
  def step(params, state, take_new):
    updates, new_state = opt.update(jax.grad(loss)(params), state, params)
    state = jax.lax.cond(take_new, lambda: new_state, lambda: state)
    return optax.apply_updates(params, updates), state

  state = opt.init(params)
  for take in (True, False, True):
    params, state = step(params, state, jnp.asarray(take))
