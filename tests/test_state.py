"""Model-state plumbing: pure-dict split/merge and auxiliary losses recorded by layers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from normjax import run
from normjax.state import AuxLoss, ModelDef, split


class WithAux(nnx.Module):
  records_aux_loss = True  # it records an AuxLoss itself

  def __init__(self, rngs):
    self.lin = nnx.Linear(3, 2, rngs=rngs)

  def __call__(self, x):
    y = self.lin(x)
    self.penalty = AuxLoss(0.5 * jnp.mean(y**2))
    return y


def test_aux_loss_is_added_to_the_loss_and_kept_out_of_state():
  setup = run.from_model(WithAux, optax.sgd(0.0), task="classification")
  step = setup.train_step
  state = jax.jit(setup.init_state)(jax.random.key(0))
  batch = {"image": jax.random.normal(jax.random.key(1), (4, 3)), "label": jnp.array([0, 1, 1, 0])}
  new_state, metrics = jax.jit(step)(state, batch)
  p = state["params"]["lin"]
  logits = batch["image"] @ p["kernel"] + p["bias"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  np.testing.assert_allclose(metrics["aux_loss"], 0.5 * np.mean(logits**2), rtol=1e-6)
  np.testing.assert_allclose(metrics["loss"], ce, rtol=1e-6)
  assert new_state["model_state"] == {}


def test_split_merge_round_trip_keeps_rng_keys():
  class Drop(nnx.Module):
    def __init__(self, rngs):
      self.drop = nnx.Dropout(0.5, rngs=rngs)

  model = Drop(nnx.Rngs(0, dropout=3))
  params, rest = split(model)
  assert rest["drop"]["rngs"]["key"].dtype == jnp.uint32
  rebuilt = ModelDef.create(Drop).merge(params, rest, train=True)
  np.testing.assert_array_equal(
    jax.random.key_data(rebuilt.drop.rngs.key.value), jax.random.key_data(model.drop.rngs.key.value)
  )
