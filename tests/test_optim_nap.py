"""Normalize-and-Project: chosen norms stay at their initial value; reference in float64."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normjax.optim import OPTIMIZERS, nap, normalize_and_project
from tests import optim_harness as harness


def make_problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {
    "dense": {
      "kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
      "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
    },
    "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
    "norm": {"scale": jnp.ones((5,), jnp.float32)},
  }
  x = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
  image = jnp.asarray(rng.normal(size=(32, 18)), jnp.float32)

  def loss(p):  # pulls every weight away from its initial norm
    y = x @ p["dense"]["kernel"] + p["dense"]["bias"]
    z = image @ p["conv"]["kernel"].reshape(18, 4)
    return jnp.mean(jnp.square(y * p["norm"]["scale"] - 3.0)) + jnp.mean(jnp.square(z - 5.0))

  return params, loss


def train(tx, params, loss, steps=200):
  @jax.jit
  def run(params):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(body, (params, tx.init(params)), length=steps)[0][0]

  return run(params)


def rel_change(a, b, axes=None):
  na = np.linalg.norm(np.asarray(a, np.float64).reshape(-1, a.shape[-1]), axis=axes)
  nb = np.linalg.norm(np.asarray(b, np.float64).reshape(-1, b.shape[-1]), axis=axes)
  return np.max(np.abs(na - nb) / nb)


@pytest.mark.parametrize("base", [optax.adam(0.05), optax.sgd(0.05, momentum=0.9)])
def test_norms_fixed_to_1e6(base):
  params, loss = make_problem()
  tx = optax.chain(base, normalize_and_project())
  final = train(tx, params, loss)
  for name in ("dense", "conv"):  # default mask: ndim >= 2 outside norm layers
    assert rel_change(final[name]["kernel"], params[name]["kernel"]) < 1e-6, name
  # the same run without NaP moves the norms, and NaP leaves the other leaves alone
  free = train(base, params, loss)
  assert rel_change(free["dense"]["kernel"], params["dense"]["kernel"]) > 1e-2
  assert rel_change(final["dense"]["bias"], params["dense"]["bias"]) > 1e-2
  assert rel_change(final["norm"]["scale"], params["norm"]["scale"]) > 1e-2


def test_per_channel_norms_fixed():
  params, loss = make_problem(1)
  final = train(
    optax.chain(optax.adam(0.05), normalize_and_project(per_channel=True)), params, loss
  )
  for name in ("dense", "conv"):
    assert rel_change(final[name]["kernel"], params[name]["kernel"], axes=0) < 1e-6, name


def test_update_matches_float64_formula():
  rng = np.random.default_rng(2)
  p0 = rng.normal(size=(4, 3))
  p, u = p0 * 1.3, rng.normal(size=(4, 3)) * 0.1
  tx = normalize_and_project(mask=None)
  state = tx.init({"w": jnp.asarray(p0, jnp.float32)})
  out, _ = tx.update({"w": jnp.asarray(u, jnp.float32)}, state, {"w": jnp.asarray(p, jnp.float32)})
  want = (p + u) * np.linalg.norm(p0) / np.linalg.norm(p + u) - p
  np.testing.assert_allclose(out["w"], want, rtol=1e-5, atol=1e-6)
  # per channel (last axis)
  tx = normalize_and_project(mask=None, per_channel=True)
  state = tx.init({"w": jnp.asarray(p0, jnp.float32)})
  out, _ = tx.update({"w": jnp.asarray(u, jnp.float32)}, state, {"w": jnp.asarray(p, jnp.float32)})
  want = (p + u) * np.linalg.norm(p0, axis=0) / np.linalg.norm(p + u, axis=0) - p
  np.testing.assert_allclose(out["w"], want, rtol=1e-5, atol=1e-6)


def test_zero_initialised_leaf_is_not_frozen():
  params = {"w": jnp.zeros((3, 2))}
  tx = normalize_and_project()
  updates = {"w": jnp.ones((3, 2))}
  out, _ = tx.update(updates, tx.init(params), params)
  np.testing.assert_array_equal(out["w"], updates["w"])


def test_mask_by_label_name_and_params_required():
  params, _ = make_problem()
  tx = normalize_and_project(mask="norm_affine")
  updates = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), params)
  out, _ = tx.update(updates, tx.init(params), params)
  np.testing.assert_array_equal(out["dense"]["kernel"], updates["dense"]["kernel"])
  assert (
    abs(
      float(jnp.linalg.norm(params["norm"]["scale"] + out["norm"]["scale"]))
      - float(jnp.linalg.norm(params["norm"]["scale"]))
    )
    < 1e-5
  )
  with pytest.raises(ValueError, match="needs params"):
    normalize_and_project(mask=None).update(updates, tx.init(params))


@pytest.mark.parametrize(
  "base,kwargs", [("adamw", dict(b1=0.8)), ("adamp", dict(delta=0.2)), ("sgd", dict(momentum=0.9))]
)
def test_registered_nap_wraps_any_optimizer(base, kwargs):
  module = importlib.import_module("normjax.optim._nap")
  assert OPTIMIZERS.get("nap") is module.nap
  params, loss = make_problem(3)
  tx = OPTIMIZERS.get("nap")(0.05, base=base, weight_decay=0.01, **kwargs)
  final = train(tx, params, loss, steps=50)
  assert rel_change(final["dense"]["kernel"], params["dense"]["kernel"]) < 1e-6
  with pytest.raises(ValueError, match="base"):
    nap(0.1, base=optax.adam(0.1), b1=0.5)
  with pytest.raises(KeyError, match="known"):
    nap(0.1, base="no_such_optimizer")


def nap_adam(learning_rate, b1=0.9):
  return nap(learning_rate, base=optax.adam(learning_rate, b1=b1))


def test_harness():
  harness.check_extra_args_and_no_recompile(nap(1e-2, base="adamp"))
  params = {"w": jnp.arange(6.0).reshape(2, 3) - 1.0, "b": jnp.ones((3,))}
  grads = {"w": jnp.ones((2, 3)), "b": -jnp.ones((3,))}
  harness.check_inject_hyperparams(nap_adam, dict(learning_rate=0.1, b1=0.8), params, grads)
  for dtype in ("bfloat16", "float32"):
    harness.check_preserve_dtype(nap(1e-2, base="adamw"), dtype)
    harness.check_multisteps(nap(1e-2, base="adamw"), dtype)
