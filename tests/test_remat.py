"""``model.remat``: every policy gives the unrematerialised loss, gradients and state updates
(normjax.models.remat), with norms whose state changes in the forward or the backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normjax import data as nj_data
from normjax import run
from normjax.models import remat as remat_lib
from tests import trainer_utils as tu

CASES = [
  ("gpt2_layernorm", "gpt2"),
  ("vit_powernorm", "vit"),  # GradStat through custom_vjp, running statistics
  ("resnet_batchnorm", "resnet"),  # BatchNorm running statistics
]


def grads_of(name, model, remat, batch_size=16):
  config = tu.apply(
    tu.load_config(name), tu.overrides(model, 3, batch_size=batch_size, **{"model.remat": remat})
  )
  setup = run.build(config)
  batch = jax.tree.map(
    jnp.asarray,
    next(nj_data.train_iterator(config.data, global_batch_size=batch_size, seed=0)),
  )
  state = jax.jit(setup.init_state)(jax.random.key(0))
  step = jax.jit(setup.train_step)
  for _ in range(2):  # past the zero-initialised head: nonzero gradients everywhere
    state = step(state, batch)[0]
  grads, model_state, sums = jax.jit(setup.gradients)(state["params"], state["model_state"], batch)
  return grads, model_state, sums, setup


@pytest.mark.parametrize("name,model", CASES)
def test_every_policy_gives_the_same_loss_gradients_and_state(name, model):
  base_grads, base_state, base_sums, _ = grads_of(name, model, "none")
  for remat in ("block", "dots_saveable", "dots_with_no_batch_dims_saveable"):
    grads, state, sums, setup = grads_of(name, model, remat)
    assert setup.make.keywords["remat"] == remat
    np.testing.assert_allclose(sums["loss"], base_sums["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7, err_msg=remat)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(base_state)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=remat)


def test_remat_recomputes_in_the_backward_pass():
  """The rematerialised block really is recomputed: its jaxpr holds a checkpoint op."""
  config = tu.apply(
    tu.load_config("gpt2_layernorm"), tu.overrides("gpt2", 2, **{"model.remat": "block"})
  )
  setup = run.build(config)
  batch = next(nj_data.train_iterator(config.data, global_batch_size=8, seed=0))
  state = jax.eval_shape(setup.init_state, jax.random.key(0))
  jaxpr = str(jax.make_jaxpr(setup.train_step)(state, batch))
  assert "checkpoint" in jaxpr or "remat" in jaxpr
  with pytest.raises(ValueError, match="remat='everything'"):
    remat_lib.check("everything")
