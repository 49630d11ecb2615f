"""The federated command: client shards and domains, FedAvg / FedBN aggregation against a
hand-written loop of per-client steps, sharded clients, exact resume, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normjax import run
from normjax.config_args import sibling_config
from normjax.data import corruptions
from normjax.tools import federated

DOMAINS = ("original", "inverted", "rotated", "noisy")


def tiny(arm="fedbn", **fed):
  c = sibling_config("configs/fed_digits.py", "fed_digits", f"arm={arm},batch=4,rounds=2")
  c.model.width = 8
  c.federated.update(
    domains=DOMAINS, local_epochs=None, local_steps=2, examples_per_client=12, eval_every=1
  )
  c.federated.update(fed)
  return c


@pytest.fixture(scope="module")
def clients():
  return federated.Clients(tiny(), seed=0)


def test_shards_are_disjoint_and_carry_their_domain(clients):
  c = tiny()
  images, labels = federated.nj_data.split_arrays(c.data, "train")
  flat = np.concatenate(clients.shards)
  assert len(set(flat.tolist())) == len(flat) == 4 * 12
  for k, (domain, shard) in enumerate(zip(DOMAINS, clients.shards)):
    expected = corruptions.DOMAINS[domain](images[shard], np.random.default_rng([0, 1, k]))
    np.testing.assert_array_equal(clients.images[k], expected)
    np.testing.assert_array_equal(clients.labels[k], labels[shard])
  np.testing.assert_array_equal(clients.images[1], -images[clients.shards[1]])
  unturned = np.rot90(clients.images[2], k=-1, axes=(1, 2))  # a quarter turn back
  np.testing.assert_array_equal(unturned, images[clients.shards[2]])


def test_round_batches_are_epochs_of_each_shard_and_deterministic(clients):
  # 12 examples, batch 4: 3 batches per epoch; rounds 0 and 1 hold local steps 0-1 and 2-3
  first, second = clients.round_batches(0), clients.round_batches(1)
  np.testing.assert_array_equal(first["image"], clients.round_batches(0)["image"])
  for k in range(4):
    seen = np.concatenate([first["label"][k].ravel(), second["label"][k, 0]])
    np.testing.assert_array_equal(np.sort(seen), np.sort(clients.labels[k]))


def _tree():
  return {
    "params": {
      "conv": {"kernel": jnp.arange(6.0).reshape(3, 2)},
      "norm": {"scale": jnp.arange(3.0)[:, None]},
    },
    "model_state": {"block": {"norm": {"mean": jnp.asarray([[1.0], [2.0], [6.0]])}}},
    "opt_state": {"momentum": jnp.arange(3.0)},
    "step": jnp.asarray([4, 4, 4]),
  }


@pytest.mark.parametrize("algorithm", ["fedavg", "fedbn"])
def test_aggregate_is_the_weighted_mean_of_the_shared_leaves(algorithm):
  tree, w = _tree(), np.asarray([0.5, 0.25, 0.25])
  out = federated.aggregate(tree, jnp.asarray(w), algorithm)
  kernel = np.asarray(tree["params"]["conv"]["kernel"], np.float64)
  np.testing.assert_allclose(out["params"]["conv"]["kernel"], np.broadcast_to(w @ kernel, (3, 2)))
  for group, leaf in (("params", ("norm", "scale")), ("model_state", ("block", "norm", "mean"))):
    got, x = out[group], tree[group]
    for k in leaf:
      got, x = got[k], x[k]
    expected = x if algorithm == "fedbn" else np.broadcast_to(w @ np.asarray(x), x.shape)
    np.testing.assert_allclose(got, expected)
  np.testing.assert_array_equal(out["opt_state"]["momentum"], tree["opt_state"]["momentum"])
  np.testing.assert_array_equal(out["step"], tree["step"])


@pytest.fixture(scope="module")
def fedbn_round():
  config = tiny()
  data = federated.Clients(config, seed=0)
  setup = run.build(config, validate=False, total_steps=4)
  one = jax.jit(setup.init_state)(jax.random.key(0))
  stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (4, *x.shape)), one)
  return setup, data, one, stacked


def test_round_equals_a_loop_of_per_client_steps_then_fedbn_averaging(fedbn_round):
  setup, data, one, stacked = fedbn_round
  batches = data.round_batches(0)
  got, loss = federated.make_round(setup, "fedbn", np.ones(4))(
    jax.tree.map(jnp.copy, stacked), batches
  )
  step = jax.jit(setup.train_step)
  trained, losses = [], []
  for k in range(4):
    state = one
    for j in range(2):
      state, metrics = step(
        state, {"image": batches["image"][k, j], "label": batches["label"][k, j]}
      )
      losses.append(float(metrics["loss"]))
    trained.append(state)
  np.testing.assert_allclose(float(loss), np.mean(losses), rtol=1e-5)
  paths = jax.tree_util.tree_flatten_with_path(got["params"])[0]
  norm_leaves = 0
  for (path, leaf), *per_client in zip(paths, *(jax.tree.leaves(t["params"]) for t in trained)):
    per_client = np.stack(per_client).astype(np.float64)
    if federated.is_norm_param(path):
      norm_leaves += 1
      np.testing.assert_allclose(leaf, per_client, rtol=1e-5, atol=1e-6)
    else:
      np.testing.assert_allclose(
        leaf, np.broadcast_to(per_client.mean(0), leaf.shape), rtol=1e-5, atol=1e-6
      )
  assert norm_leaves > 0
  mean = jax.tree.leaves(got["model_state"])[0]
  np.testing.assert_allclose(
    mean, np.stack([jax.tree.leaves(t["model_state"])[0] for t in trained]), rtol=1e-5, atol=1e-6
  )


def test_sharded_clients_equal_one_device(fedbn_round):
  setup, data, _, stacked = fedbn_round
  assert jax.device_count() == 8
  sharding = federated.client_sharding(4)
  assert sharding is not None and sharding.mesh.size == 4
  batches = data.round_batches(0)
  plain, _ = federated.make_round(setup, "fedavg", np.ones(4))(
    jax.tree.map(jnp.copy, stacked), batches
  )
  sharded_round = federated.make_round(setup, "fedavg", np.ones(4), sharding)
  sharded, _ = sharded_round(jax.device_put(stacked, sharding), jax.device_put(batches, sharding))
  assert jax.tree.leaves(sharded["params"])[0].sharding.spec[0] == "clients"
  for a, b in zip(jax.tree.leaves(plain["params"]), jax.tree.leaves(sharded["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resumed_run_continues_exactly(tmp_path):
  config = tiny("fedavg", rounds=3)
  config.checkpoint_every = 1
  cache = {}  # one set-up and one compilation for the three calls
  full = federated.run_federated(config, str(tmp_path / "full"), cache=cache)
  federated.run_federated(config, str(tmp_path / "cut"), stop_after=1, cache=cache)
  resumed = federated.run_federated(config, str(tmp_path / "cut"), cache=cache)
  assert resumed["mean_accuracy"] == full["mean_accuracy"]
  for a, b in zip(jax.tree.leaves(full["clients"]), jax.tree.leaves(resumed["clients"])):
    np.testing.assert_array_equal(a, b)
  assert set(full) >= {f"accuracy/{d}" for d in DOMAINS}


@pytest.mark.parametrize(
  "change, message",
  [
    ({"algorithm": "fedprox"}, "federated.algorithm='fedprox': one of fedavg, fedbn"),
    ({"domains": ("original", "sepia")}, "federated.domains"),
    ({"rounds": 0}, "federated.rounds=0"),
  ],
)
def test_bad_federated_keys_fail_naming_the_key(change, message, tmp_path):
  with pytest.raises(ValueError, match="config key " + message.replace("(", r"\(")):
    federated.run_federated(tiny(**change), str(tmp_path))


def test_batch_larger_than_a_shard_fails(tmp_path):
  config = tiny(examples_per_client=3)
  with pytest.raises(ValueError, match="config key batch_size=4: larger than a client's shard"):
    federated.run_federated(config, str(tmp_path))
