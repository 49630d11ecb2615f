"""Gradient accumulation (``config.grad_accum_steps``): one update from k micro-batches, and
what batch-statistics norms see (normjax.run.Setup.accumulated_gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normjax import data as nj_data
from normjax import run, train
from tests import trainer_utils as tu


def setup_and_batch(name, model, k, batch_size=32, **extra):
  config = tu.apply(
    tu.load_config(name), tu.overrides(model, 3, batch_size=batch_size, grad_accum_steps=k, **extra)
  )
  setup = run.build(config)
  batch = next(nj_data.train_iterator(config.data, global_batch_size=batch_size, seed=0))
  return setup, jax.tree.map(jnp.asarray, batch)


def hand_written(setup, params, model_state, batch, k):
  """k micro-steps written out: rows i::k, model state carried, gradients averaged."""
  total = None
  for i in range(k):
    micro = jax.tree.map(lambda x: x[i::k], batch)
    grads, model_state, _ = setup.gradients(params, model_state, micro)
    total = grads if total is None else jax.tree.map(jnp.add, total, grads)
  return jax.tree.map(lambda g: g / k, total), model_state


def assert_trees_close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@pytest.mark.parametrize(
  "name,model,k",
  [("resnet_batchnorm", "resnet", 2), ("vit_powernorm", "vit", 4), ("resnet_evonorm", "resnet", 2)],
)
def test_batch_statistics_norms_see_each_micro_batch_in_order(name, model, k):
  setup, batch = setup_and_batch(name, model, k)
  state = jax.jit(setup.init_state)(jax.random.key(0))
  for _ in range(2):  # from step 3 on, nonzero gradients reach the norms (zero-init head)
    state, metrics = jax.jit(setup.train_step)(state, batch)
  grads, model_state, _ = jax.jit(setup.accumulated_gradients)(
    state["params"], state["model_state"], batch
  )
  expected_grads, expected_state = jax.jit(lambda p, m, b: hand_written(setup, p, m, b, k))(
    state["params"], state["model_state"], batch
  )
  assert_trees_close(grads, expected_grads, rtol=2e-5, atol=2e-7)
  assert_trees_close(model_state, expected_state, rtol=2e-5, atol=2e-7)
  # ghost batches are not the big batch: the statistics differ from one 32-row step
  whole = jax.jit(setup.gradients)(state["params"], state["model_state"], batch)[1]
  differs = [
    not np.allclose(x, y)
    for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(model_state))
    if np.asarray(x).dtype.kind == "f"
  ]
  assert any(differs)
  assert np.isfinite(metrics["loss"])


def test_powernorm_counts_micro_steps_and_updates_its_backward_statistic():
  setup, batch = setup_and_batch("vit_powernorm", "vit", 4)
  step, new = jax.jit(setup.train_step), jax.jit(setup.init_state)(jax.random.key(0))
  for _ in range(3):  # the zero-initialised head and lr 0 at step 1 keep step 1's dL/dy at 0
    new = step(new, batch)[0]
  flat = {
    "/".join(str(k.key) for k in p): x
    for p, x in jax.tree_util.tree_flatten_with_path(new["model_state"])[0]
  }
  steps = [v for k, v in flat.items() if k.endswith("step")]
  assert steps and all(int(s) == 12 for s in steps)  # one forward per micro-batch
  assert any(np.abs(v).max() > 0 for k, v in flat.items() if k.endswith("ema_gz"))


def test_layernorm_accumulation_equals_one_big_batch(tmp_path):
  setup, batch = setup_and_batch("gpt2_layernorm", "gpt2", 4)
  state = jax.jit(setup.init_state)(jax.random.key(0))
  state = jax.jit(setup.train_step)(state, batch)[0]
  accumulated = jax.jit(setup.accumulated_gradients)(state["params"], state["model_state"], batch)[
    0
  ]
  whole = jax.jit(setup.gradients)(state["params"], state["model_state"], batch)[0]
  assert_trees_close(accumulated, whole, rtol=1e-4, atol=1e-7)
  finals = {}
  for k in (1, 4):
    config = tu.apply(
      tu.load_config("gpt2_layernorm"), tu.overrides("gpt2", 4, batch_size=32, grad_accum_steps=k)
    )
    finals[k] = train.train_and_evaluate(config, str(tmp_path / f"k{k}"))["eval_loss"]
  np.testing.assert_allclose(finals[4], finals[1], rtol=1e-5)
  one = tu.leaves(tu.restore_state(tmp_path / "k1")["params"])
  four = tu.leaves(tu.restore_state(tmp_path / "k4")["params"])
  for x, y in zip(one, four):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_accumulation_that_does_not_divide_the_device_batch_fails_before_compiling(
  monkeypatch, tmp_path
):
  config = tu.apply(
    tu.load_config("gpt2_layernorm"), tu.overrides("gpt2", 2, batch_size=32, grad_accum_steps=3)
  )
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before checking"))
  with pytest.raises(
    ValueError,
    match=r"grad_accum_steps=3: must divide the per-device batch "
    r"of 4 \(batch_size=32 over 8 devices\)",
  ):
    train.train_and_evaluate(config, str(tmp_path))
