"""The plasticity command: task transformations, the effective learning rate, NaP's constant
kernel norm over a task sequence, config checks."""

import numpy as np
import pytest

from normjax.config_args import sibling_config
from normjax.tools import plasticity


def tiny(arg="", **p):
  c = sibling_config("configs/plasticity_digits.py", "plasticity_digits", arg or None)
  c.model.width = 8
  c.log_every = 5
  c.plasticity.update(num_tasks=2, steps_per_task=5, **p)
  return c


@pytest.mark.parametrize("shift", ["permute_pixels", "shuffle_labels"])
def test_tasks_are_fixed_permutations_and_task_zero_is_the_data(shift):
  seq = plasticity.TaskSequence(tiny(shift=shift), seed=3)
  images, labels = seq.images[:50], seq.labels[:50]
  same_images, same_labels = seq.apply(0, images, labels)
  np.testing.assert_array_equal(same_images, images)
  np.testing.assert_array_equal(same_labels, labels)
  moved_images, moved_labels = seq.apply(1, images, labels)
  perm = seq.permutation(1)
  assert sorted(perm.tolist()) == list(range(len(perm))) and (perm != np.arange(len(perm))).any()
  if shift == "shuffle_labels":
    np.testing.assert_array_equal(moved_images, images)
    np.testing.assert_array_equal(moved_labels, perm[labels])
  else:
    flat = images.reshape(50, -1)
    np.testing.assert_array_equal(moved_images.reshape(50, -1), flat[:, perm])
    np.testing.assert_array_equal(moved_labels, labels)
  again = plasticity.TaskSequence(tiny(shift=shift), seed=3)
  np.testing.assert_array_equal(again.batch(1, 7)["image"], seq.batch(1, 7)["image"])


def test_random_labels_are_fixed_per_task_and_example():
  seq = plasticity.TaskSequence(tiny(shift="random_labels", examples=300), seed=3)
  assert len(seq.labels) == 300
  full = seq.random_labels(1, 0, 300)
  images, labels = seq.apply(1, seq.images, seq.labels)
  np.testing.assert_array_equal(images, seq.images)
  np.testing.assert_array_equal(labels, full)
  order = np.random.default_rng([3, 6, 1, 0]).permutation(300)  # task 1's first epoch
  np.testing.assert_array_equal(seq.batch(1, 2)["label"], full[order[128:192]])
  assert (seq.random_labels(0, 0, 300) != seq.labels).any()  # task 0 is random too
  assert (seq.random_labels(2, 0, 300) != full).any()


def _rows(workdir):
  with open(f"{workdir}/metrics.jsonl") as f:
    return [__import__("json").loads(line) for line in f]


@pytest.mark.parametrize("opt", ["adam", "nap"])
def test_sequence_runs_and_nap_keeps_the_kernel_norm(opt, tmp_path):
  results = plasticity.run_sequence(tiny(f"opt={opt},lr=0.01"), str(tmp_path))
  assert len(results["train_accuracy"]) == 2 and 0 <= results["train_accuracy"][1] <= 1
  rows = [r for r in _rows(tmp_path) if "weight_norm" in r]
  assert [r["step"] for r in rows] == [5, 10]
  norms = [r["weight_norm"] for r in rows]
  if opt == "nap":  # projected back to the initial norm after every step
    np.testing.assert_allclose(norms[0], norms[1], rtol=1e-6)
  else:
    assert abs(norms[0] - norms[1]) > 1e-4 * norms[0]
  assert all(0 < r["effective_lr"] < 1 for r in rows)


def test_bad_shift_fails_naming_the_key(tmp_path):
  with pytest.raises(ValueError, match="config key plasticity.shift='rotate': one of"):
    plasticity.run_sequence(tiny(shift="rotate"), str(tmp_path))
