"""WideNet through the trainer: 8-device data parallel and FSDP equal one device, checkpoint
resume is bitwise, remat, individual PowerNorms under shared weights, KV-cache decoding."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax import data as nj_data
from normjax import run, sharding, train
from normjax.tools import sample
from tests import trainer_utils as tu

VIT = {
  **tu.TINY["vit"],
  "model.depth": 3,
  "model.mlp_dim": 128,  # expert kernels (4, 32, 128) reach sharding.FSDP_MIN_SIZE
  "eval_batch_size": 128,
}


def tiny(name="vit_widenet", arg=None, steps=3, **extra):
  return tu.apply(tu.load_config(name, arg), {**tu.overrides("vit", steps), **VIT, **extra})


def one_device_params(config):
  """The trainer's steps on a single device (no mesh): init key and data order as it does."""
  setup = run.build(config, validate=False)
  state = jax.jit(setup.init_state)(jax.random.key(config.seed))
  step = jax.jit(setup.train_step)
  batches = nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=0)
  for _ in range(setup.total_steps):
    state, metrics = step(state, next(batches))
  assert metrics["aux_loss"] > 0
  return state


def test_data_parallel_and_fsdp_equal_one_device(tmp_path):
  assert jax.device_count() == 8
  config = tiny()
  expected = one_device_params(config)
  setup = run.build(config)
  abstract = jax.eval_shape(setup.init_state, jax.random.key(0))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  specs = sharding.state_sharding(abstract, mesh, "fsdp")["params"]
  experts = specs["transformer"]["blocks"][0]["mlp"]["experts"]
  assert "fsdp" in tuple(experts["fc1_kernel"].spec)  # the shared experts really are split
  assert 1 not in specs["transformer"]["blocks"] or "attn" not in specs["transformer"]["blocks"][1]
  for tag, extra in [("dp", {}), ("fsdp", {"mesh.data": 2, "mesh.fsdp": 4, "sharding": "fsdp"})]:
    train.train_and_evaluate(tu.apply(tiny(), extra), str(tmp_path / tag))
    got = tu.restore_state(tmp_path / tag)
    for part in ("params", "model_state"):
      for x, y in zip(tu.leaves(expected[part]), tu.leaves(got[part])):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5, err_msg=f"{tag} {part}")


def test_checkpoint_resume_is_bitwise(tmp_path):
  config = tiny(steps=4, checkpoint_every=2, keep_checkpoints=3)
  train.train_and_evaluate(config, str(tmp_path))
  expected = tu.leaves(tu.restore_state(tmp_path))
  assert tu.checkpoint_steps(tmp_path) == [2, 4]
  shutil.rmtree(tmp_path / "checkpoints" / "4")  # as if stopped after step 2
  train.train_and_evaluate(tiny(steps=4, checkpoint_every=2, keep_checkpoints=3), str(tmp_path))
  got = tu.leaves(tu.restore_state(tmp_path))
  assert all(np.array_equal(x, y) for x, y in zip(expected, got))


def gradients(config):
  setup = run.build(config, validate=False)
  batch = jax.tree.map(
    jnp.asarray, next(nj_data.train_iterator(config.data, global_batch_size=16, seed=0))
  )
  state = jax.jit(setup.init_state)(jax.random.key(0))
  head = state["params"]["head"]  # zero-initialised: give it values, so every gradient is live
  head["kernel"] = jax.random.normal(jax.random.key(1), head["kernel"].shape) * 0.1
  return jax.jit(setup.gradients)(state["params"], state["model_state"], batch)


def test_remat_gives_the_same_gradients_with_sharing_and_moe():
  grads, _, sums = gradients(tiny())
  remat_grads, _, remat_sums = gradients(tiny(**{"model.remat": "block"}))
  np.testing.assert_allclose(remat_sums["loss"], sums["loss"], rtol=1e-6)
  np.testing.assert_allclose(remat_sums["aux_loss"], sums["aux_loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_shared_weights_with_individual_powernorms_trains():
  config = tiny(arg="arm=shared_weights,norm=powernorm")
  _, model_state, sums = gradients(config)
  blocks = model_state["transformer"]["blocks"]
  stats = [blocks[i]["attn_norm"]["ema_gz"] for i in range(3)]
  assert np.isfinite(sums["loss"])
  assert not np.allclose(stats[0], stats[1])  # each block's backward statistic is its own


@pytest.mark.parametrize("arm", ["widenet", "widenet_shared_ln"])
def test_kv_cache_decoding_equals_recomputation(arm):
  config = tu.apply(
    tu.load_config("gpt2_widenet", f"arm={arm}"),
    {**tu.TINY["gpt2"], "model.depth": 3, "model.moe.share_router": arm == "widenet"},
  )
  setup = run.build(config, validate=False)
  model = setup.make(rngs=nnx.Rngs(0))
  assert len(model.init_cache(2, 8)) == 3  # one cache per application of the shared block
  prompts = [[5, 6, 7], [8, 9]]
  cached = sample.generate(model, prompts, max_new_tokens=4, use_cache=True)
  recomputed = sample.generate(model, prompts, max_new_tokens=4, use_cache=False)
  np.testing.assert_array_equal(cached, recomputed)
