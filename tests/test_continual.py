"""The continual-learning command: stream, reservoir buffer, ER-ACE mask, task ends, metrics,
config checks, and a resumed stream that continues exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normjax.tools import continual
from tests import trainer_utils as tu


def test_reservoir_is_mammoths_given_the_same_draws():
  size, n = 5, 23
  rng = np.random.default_rng(0)
  images = rng.normal(size=(n, 2, 2, 1)).astype(np.float32)
  labels = np.arange(n, dtype=np.int32)
  buffer = {
    "image": jnp.zeros((size, 2, 2, 1)),
    "label": jnp.full((size,), -1, jnp.int32),
    "seen": jnp.zeros((), jnp.int32),
  }
  key = jax.random.key(3)
  expected_labels, seen = -np.ones(size, np.int64), 0
  for lo in range(0, n, 4):  # batches of 4 (the last one smaller)
    key, sub = jax.random.split(key)
    batch = slice(lo, min(lo + 4, n))
    draws = jax.random.split(sub, len(labels[batch]))
    for i, label in enumerate(labels[batch]):  # mammoth utils/buffer.py reservoir()
      if seen < size:
        expected_labels[seen] = label
      else:
        j = int(jax.random.randint(draws[i], (), 0, seen + 1))
        if j < size:
          expected_labels[j] = label
      seen += 1
    buffer = continual.reservoir_add(buffer, jnp.asarray(images[batch]), labels[batch], sub)
  np.testing.assert_array_equal(np.asarray(buffer["label"]), expected_labels)
  assert int(buffer["seen"]) == n
  np.testing.assert_array_equal(np.asarray(buffer["image"]), images[expected_labels])


def test_replay_sample_takes_distinct_filled_slots():
  buffer = {"image": jnp.arange(8.0)[:, None], "label": jnp.arange(8), "seen": jnp.asarray(5)}
  for seed in range(20):
    _, labels = continual.replay_sample(buffer, 4, jax.random.key(seed))
    labels = np.asarray(labels)
    assert len(set(labels)) == 4 and labels.max() < 5


def test_ace_mask_follows_the_official_rule():
  seen = jnp.zeros(10, bool).at[jnp.arange(5)].set(True)  # classes 0..4 seen
  present = jnp.zeros(10, bool).at[jnp.asarray([4])].set(True)
  # present classes, and every class from the largest seen one (4) on
  np.testing.assert_array_equal(continual.ace_mask(seen, present), np.arange(10) >= 4)
  everything = jnp.ones(10, bool)
  last = jnp.zeros(10, bool).at[jnp.asarray([8])].set(True)
  # the largest seen class is the last one: only the present classes
  np.testing.assert_array_equal(continual.ace_mask(everything, last), np.asarray(last))


def test_end_task_increments_every_seen_tasks_leaf():
  state = {"blocks": {0: {"norm": {"seen_tasks": jnp.asarray(1), "count": jnp.asarray(7)}}}}
  out = continual.end_task(state)
  assert int(out["blocks"][0]["norm"]["seen_tasks"]) == 2
  assert int(out["blocks"][0]["norm"]["count"]) == 7


def test_forgetting_is_the_drop_from_the_best_earlier_accuracy():
  acc = np.full((3, 3), np.nan)
  acc[0, 0] = 0.9
  acc[1, :2] = [0.7, 0.8]
  acc[2, :3] = [0.6, 0.5, 0.9]
  assert continual.forgetting(acc, 0) == 0.0
  assert continual.forgetting(acc, 2) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.5)) / 2)


def test_stream_sees_each_training_image_once_task_by_task():
  config = tu.load_config("continual_adab2n")
  stream = continual.make_stream(config, seed=1)
  steps = stream.schedule()
  index = np.concatenate([i for _, i in steps])
  assert sorted(index.tolist()) == list(range(len(stream.train_labels)))
  tasks = [t for t, _ in steps]
  assert tasks == sorted(tasks) and len(steps) == stream.total_steps
  for task, i in steps:
    assert np.all(stream.train_labels[i] // 2 == task) and len(i) <= 10
  assert not np.array_equal(continual.make_stream(config, seed=2).order(), stream.order())


@pytest.mark.parametrize(
  "arg,key,value,match",
  [
    ("", "continual.method", "der", "config key continual.method='der'"),
    ("", "continual.buffer_size", 5, "config key continual.buffer_size=5: must be >= "),
    ("", "model.norm_kwargs.num_tasks", 4, "config key model.norm_kwargs.num_tasks=4"),
    ("", "continual.num_tasks", 0, "config key continual.num_tasks=0"),
  ],
)
def test_bad_continual_configs_fail_naming_the_key(arg, key, value, match):
  config = tu.apply(tu.load_config("continual_adab2n", arg), {key: value})
  with pytest.raises(ValueError, match=match):
    continual.check_continual(config)


def test_config_arguments_are_checked():
  with pytest.raises(ValueError, match="config argument norm='rmsnorm'"):
    tu.load_config("continual_adab2n", "norm=rmsnorm")
  config = tu.load_config("continual_adab2n", "norm=batchnorm,buffer=200,method=er")
  assert config.continual.buffer_size == 200 and config.model.norm_kwargs.momentum == 0.9


def test_a_resumed_stream_continues_exactly(tmp_path):
  config = tu.load_config("continual_adab2n")
  config.checkpoint_every = 1000
  cache = {}
  straight = continual.run_stream(config, str(tmp_path / "straight"), seed=0, cache=cache)
  stopped = continual.run_stream(
    config, str(tmp_path / "resumed"), seed=0, stop_after=45, cache=cache
  )
  assert stopped["stopped_at_step"] == 45
  resumed = continual.run_stream(config, str(tmp_path / "resumed"), seed=0, cache=cache)
  for a, b in zip(tu.leaves(straight["state"]), tu.leaves(resumed["state"])):
    np.testing.assert_array_equal(a, b)
  assert straight["average_accuracy"] == resumed["average_accuracy"]
  assert straight["steps"] == 147
  state = straight["state"]
  counts = [
    int(x) for x in jax.tree.leaves(state["model_state"]) if np.asarray(x).dtype == np.int32
  ]
  assert sorted(set(counts)) == [5, 147]  # seen_tasks after 5 task ends; 147 training calls
  assert int(state["buffer"]["seen"]) == 1438
  acc = np.asarray(state["accuracy"])
  assert np.all(np.isfinite(acc[np.tril_indices(5)])) and np.all(
    np.isnan(acc[np.triu_indices(5, 1)])
  )
  assert 0.3 < straight["average_accuracy"] <= 1.0


def test_the_command_fails_with_one_line_naming_the_key(tmp_path):
  args = [
    "-m",
    "normjax.tools.continual",
    "--config",
    str(tu.ROOT / "configs" / "continual_adab2n.py"),
    "--config.continual.buffer_size=5",
    "--workdir",
    str(tmp_path),
  ]
  import sys

  result = tu.run_cli([sys.executable, *args], tu.env(), timeout=300)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("normjax.tools.continual: config key continual.buffer_size=5")
