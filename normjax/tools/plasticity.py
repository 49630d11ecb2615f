r"""Loss of plasticity on a sequence of digits tasks, with and without Normalize-and-Project.

  python -m normjax.tools.plasticity --config configs/plasticity_digits.py[:ARG] \
      --workdir DIR [--seeds 3]

The setting of NaP (Lyle et al., NeurIPS 2024, arXiv 2407.01800; and Lyle et al. 2023,
"Understanding plasticity in neural networks", arXiv 2303.01486): one network trained on a
sequence of tasks without reset; a network that loses plasticity fits each new task worse.

* **Tasks** (``plasticity.shift``): task t is the embedded digits' train split with
  - ``permute_pixels``: a fixed random permutation of the H x W x C pixels (task 0: none), or
  - ``shuffle_labels``: a fixed random permutation of the 10 labels (task 0: none; the
    images stay, so the features must be re-mapped), or
  - ``random_labels``: a fresh uniformly random label for every image, task 0 included (the
    memorisation tasks of Lyle et al. 2023, where loss of plasticity is strongest; the test
    split gets random labels too, so its accuracy is chance by design),
  drawn from ``(seed, t)``; ``plasticity.examples`` keeps the first n training images (all by
  default; memorisation is usually run on a small subset). Each task is trained for
  ``plasticity.steps_per_task`` steps of ``batch_size`` (batches from ``(seed, t, epoch)``
  permutations, so a run is exactly repeatable; there are no checkpoints: a run takes a
  minute or two and a rerun starts over).
* **The step** is the config's own ``normjax.run.Setup.train_step`` (model, norm, optimizer
  incl. ``nap``, schedule over all tasks' steps; the optimizer state carries over tasks).
* **Measured** at each task end (eval mode): ``train_accuracy`` on the whole task's train
  split, the plasticity measure of the papers (a network that cannot fit its training data
  any more has lost plasticity), and ``test_accuracy`` on the test split under the same
  task; and every ``log_every`` steps the mean training loss and the **effective learning
  rate** of the kernels (leaves with ndim >= 2 outside norm layers): the relative update
  size ||W_{t+1} - W_t|| / ||W_t|| over all of them, which is lr / ||W||^2 times the
  gradient's size for scale-invariant weights under SGD and shrinks as ||W|| grows when
  nothing projects it, and their total norm ||W||.

Outputs in ``--workdir`` (``seed_<s>/`` per seed with ``--seeds`` > 1): ``metrics.jsonl``
(rows ``{"step", "task", "loss", "effective_lr", "weight_norm"}`` and task-end rows),
``results.json`` (per-task accuracies, their mean over the last half of the tasks minus
task 0's: the plasticity change), ``summary.json`` over seeds.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from normjax import cli, run
from normjax import data as nj_data
from normjax.config_schema import check_keys
from normjax.optim.labels import decay_mask

SHIFTS = ("permute_pixels", "shuffle_labels", "random_labels")


class TaskSequence:
  """The train and test splits and the per-task transformation."""

  def __init__(self, config, seed: int):
    info = nj_data.get_info(config.data)
    if info.task != "classification":
      raise ValueError(f"config key data.name={config.data.name!r}: needs classification data")
    self.images, self.labels = nj_data.split_arrays(config.data, info.train_split)
    if config.plasticity.get("examples"):
      n = int(config.plasticity.examples)
      self.images, self.labels = self.images[:n], self.labels[:n]
    self.test_images, self.test_labels = nj_data.split_arrays(config.data, info.eval_split)
    self.num_classes = info.num_classes
    self.shift = config.plasticity.shift
    self.seed = seed
    self.batch_size = int(config.batch_size)

  def permutation(self, task: int) -> np.ndarray:
    size = self.num_classes if self.shift == "shuffle_labels" else self.images[0].size
    if task == 0:
      return np.arange(size)
    return np.random.default_rng([self.seed, 5, task]).permutation(size)

  def random_labels(self, task: int, split: int, n: int) -> np.ndarray:
    return np.random.default_rng([self.seed, 7, task, split]).integers(0, self.num_classes, n)

  def apply(self, task: int, images: np.ndarray, labels: np.ndarray, index=None, split=0):
    """Task ``task``'s version of examples ``index`` (default: all) of a split."""
    if self.shift == "random_labels":
      n = len(self.labels) if split == 0 else len(self.test_labels)
      chosen = self.random_labels(task, split, n)
      chosen = chosen if index is None else chosen[index]
      return images, chosen.astype(np.int32)
    perm = self.permutation(task)
    if self.shift == "shuffle_labels":
      return images, perm[labels].astype(np.int32)
    flat = images.reshape(len(images), -1)[:, perm]
    return flat.reshape(images.shape), labels.astype(np.int32)

  def batch(self, task: int, step: int) -> dict:
    """Batch ``step`` (0-based) of task ``task``: epochs of seeded permutations."""
    per_epoch = len(self.labels) // self.batch_size
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([self.seed, 6, task, epoch]).permutation(len(self.labels))
    index = order[pos * self.batch_size : (pos + 1) * self.batch_size]
    images, labels = self.apply(task, self.images[index], self.labels[index], index)
    return {"image": images, "label": labels}


def check_plasticity(config):
  check_keys(config)
  p = config.get("plasticity")
  if p is None:
    raise ValueError("config key plasticity=None: a plasticity config needs a plasticity section")
  if p.shift not in SHIFTS:
    raise ValueError(f"config key plasticity.shift={p.shift!r}: one of {', '.join(SHIFTS)}")


def make_step(setup):
  """The trainer's step plus the kernels' relative update size and norm."""

  def step(state, batch):
    new_state, metrics = setup.train_step(state, batch)
    kernels = decay_mask(state["params"])
    pick = lambda tree: [x for x, k in zip(jax.tree.leaves(tree), jax.tree.leaves(kernels)) if k]
    old, new = pick(state["params"]), pick(new_state["params"])
    sq = lambda xs: sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in xs)
    moved = sq([b - a for a, b in zip(old, new)])
    metrics = {
      "loss": metrics["loss"],
      "effective_lr": jnp.sqrt(moved / sq(old)),
      "weight_norm": jnp.sqrt(sq(new)),
    }
    return new_state, metrics

  return jax.jit(step, donate_argnums=0)


def make_accuracy(setup):
  def accuracy(state, images, labels):
    batch = {"image": images, "label": labels, "mask": jnp.ones(labels.shape, jnp.float32)}
    sums = setup.eval_step(state, batch)
    return sums[setup.task.metric] / sums["count"]

  return jax.jit(accuracy)


def _write(path: str, row: dict):
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")


def run_sequence(config, workdir: str, *, seed: int | None = None, cache=None) -> dict:
  """One seed's task sequence in ``workdir``; returns its results."""
  seed = int(config.seed if seed is None else seed)
  cache = {} if cache is None else cache
  p = config.plasticity
  tasks, per_task = int(p.num_tasks), int(p.steps_per_task)
  if "setup" not in cache:
    check_plasticity(config)
    cache["setup"] = run.build(config, validate=False, total_steps=tasks * per_task)
    cache["step"] = make_step(cache["setup"])
    cache["accuracy"] = make_accuracy(cache["setup"])
  setup = cache["setup"]
  seq = TaskSequence(config, seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    os.remove(metrics_path)
  state = jax.jit(setup.init_state)(jax.random.key(seed))
  log_every = int(config.log_every)
  train_acc, test_acc = [], []
  for t in range(tasks):
    window = []
    for s in range(per_task):
      state, metrics = cache["step"](state, seq.batch(t, s))
      window.append(metrics)
      if (s + 1) % log_every == 0 or s + 1 == per_task:
        row = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
        if not np.isfinite(row["loss"]):
          raise FloatingPointError(f"non-finite loss in task {t}, step {s + 1}")
        _write(metrics_path, {"step": t * per_task + s + 1, "task": t, **row})
        window = []
    train_acc.append(float(cache["accuracy"](state, *seq.apply(t, seq.images, seq.labels))))
    test_acc.append(
      float(cache["accuracy"](state, *seq.apply(t, seq.test_images, seq.test_labels, split=1)))
    )
    _write(
      metrics_path, {"task_end": t, "train_accuracy": train_acc[-1], "test_accuracy": test_acc[-1]}
    )
  late = slice(tasks // 2, tasks)
  results = {
    "train_accuracy": train_acc,
    "test_accuracy": test_acc,
    "first_task_train_accuracy": train_acc[0],
    "late_train_accuracy": float(np.mean(train_acc[late])),
    "plasticity_change": float(np.mean(train_acc[late]) - train_acc[0]),
    "late_test_accuracy": float(np.mean(test_acc[late])),
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return results


def run_seeds(config, workdir: str, seeds: int) -> dict:
  cache: dict = {}
  rows = []
  for i in range(seeds):
    seed = int(config.seed) + i
    out = workdir if seeds == 1 else os.path.join(workdir, f"seed_{seed}")
    rows.append({"seed": seed, **run_sequence(config, out, seed=seed, cache=cache)})
    print(
      f"seed {seed}: train accuracy task 0 {rows[-1]['first_task_train_accuracy']:.4f}, "
      f"late tasks {rows[-1]['late_train_accuracy']:.4f}",
      flush=True,
    )
  keys = (
    "first_task_train_accuracy",
    "late_train_accuracy",
    "plasticity_change",
    "late_test_accuracy",
  )
  summary: dict = {"runs": rows, **cli.mean_and_se(rows, keys)}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main():
  cli.seeds_command("normjax.tools.plasticity", run_seeds, lambda s: [k for k in s if k != "runs"])


if __name__ == "__main__":
  main()
