r"""Online class-incremental learning with replay: a task stream, a reservoir buffer, ER / ER-ACE.

  python -m normjax.tools.continual --config configs/continual_adab2n.py[:ARG] \
      --workdir DIR [--seeds 10]

Why a command and not a trainer task: the trainer's step is "one batch in, one update out" over
an i.i.d. iterator. A continual run adds a replay buffer that lives in the jitted state, a task
schedule that changes what a step does (no replay in task 0, the ER-ACE mask), task ids
reaching the norms, task-boundary events (``end_task``) and an evaluation matrix after every
task. Folding that into ``normjax.train`` would put branches for one family of experiments
into the one trainer; here it is one file built on the same pieces: ``normjax.run.build``
(model, optimizer, config checks), ``normjax.state`` (merge/split, aux losses), orbax.

Protocol (mammoth, as used by lvyilin/AdaB2N; reference/next-methods.md §1):

* Split-digits: the embedded digits' train split in ``continual.num_tasks`` tasks of
  consecutive classes (task of label y = y // classes_per_task; 5 tasks of 2 classes). Online:
  each training image is seen once, in a seeded random order within its task, in stream
  batches of ``batch_size`` (the last batch of a task is smaller, as mammoth's DataLoader).
* Reservoir buffer of ``continual.buffer_size`` images in the jitted state (mammoth
  ``utils/buffer.py``: item number k >= size replaces slot j ~ U{0..k} if j < size); replay
  minibatch of ``continual.replay_batch_size`` drawn uniformly without replacement from the
  filled slots. Stream examples enter the buffer after the update.
* ``continual.method='er'`` (Chaudhry et al. 2019): cross-entropy on the concatenated stream +
  replay batch, replay once the buffer holds a full minibatch (mammoth replays as soon as it is
  non-empty, with a smaller minibatch; with replay minibatch <= stream batch the two agree).
  ``'er_ace'`` (Caccia et al. 2022; official ``models/er_ace_ada.py``): from task 1 on,
  CE(stream logits masked to the classes present in the stream batch and, while the largest
  class seen so far is not the last class, every class from it on) + CE(replay); task 0 is
  plain CE. One forward over the concatenated batch either way, so batch-statistics norms see
  stream and replay examples together; the model gets their task ids (``task_ids=``, used by
  AdaB²N, ignored by other norms) and the norms' auxiliary losses (``AuxLoss``) are added.
* At each task end every ``seen_tasks`` state leaf (AdaB²N's T) is incremented, then the
  model is evaluated on the test images of the classes seen so far:
  - ``accuracy[t, j]``: eval-mode (running statistics) class-IL accuracy on task j's test
    images after task t; average accuracy (mammoth: the mean over seen tasks) and forgetting
    (mean over j < t of max_{t' < t} accuracy[t', j] - accuracy[t, j]);
  - ``train_stat_accuracy`` (after the last task): all test images in one batch normalized with
    their own batch statistics (training mode, no task ids, state discarded): minus the
    eval-mode accuracy on them, a direct measurement of the running statistics' recency bias;
  - ``mean_gap`` / ``var_gap`` per norm layer with running statistics: RMS over channels of
    (running mean - mu_all) / sigma_all and of log(running var / sigma2_all), where mu_all,
    sigma2_all are the statistics of that norm's eval-mode input over ALL training images of
    the tasks seen so far (models with ``norm_inputs``, as ``normjax.models.cnn``).

State (one pytree, jitted, checkpointed with orbax at every task end and every
``checkpoint_every`` steps): the train state of ``normjax.run.Setup`` plus the buffer
(``image``, ``label``, ``seen``), the PRNG key data, ``seen_classes`` and the evaluation matrices.
The stream is a function of (seed, step), so a resumed run continues exactly.

Writes ``config.json``, ``metrics.jsonl`` (loss per ``log_every`` steps, evaluation per task),
``results.json`` per seed (in ``DIR/seed_<s>/`` when ``--seeds`` > 1) and ``summary.json``
(mean and standard error over seeds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from normjax import cli, run
from normjax import data as nj_data
from normjax.config_schema import check_keys
from normjax.optim.labels import path_names
from normjax.state import pop_aux_loss, split

METHODS = ("er", "er_ace")


# ----------------------------------------------------------------------------- set-up
@dataclasses.dataclass(frozen=True)
class Stream:
  """The task stream and test sets: arrays in memory, batches by (seed, step)."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_tasks: int
  classes_per_task: int
  batch_size: int
  seed: int

  def task_of(self, labels):
    return labels // self.classes_per_task

  @property
  def task_sizes(self) -> list[int]:
    return [int(np.sum(self.task_of(self.train_labels) == t)) for t in range(self.num_tasks)]

  def batches_per_task(self) -> list[int]:
    return [math.ceil(n / self.batch_size) for n in self.task_sizes]

  @property
  def total_steps(self) -> int:
    return sum(self.batches_per_task())

  def order(self) -> np.ndarray:
    """Train indices in stream order: task by task, a seeded permutation within each."""
    rng = np.random.default_rng([self.seed, 20231016])
    parts = []
    for t in range(self.num_tasks):
      index = np.flatnonzero(self.task_of(self.train_labels) == t)
      parts.append(index[rng.permutation(len(index))])
    return np.concatenate(parts)

  def schedule(self) -> list[tuple[int, np.ndarray]]:
    """(task, train indices) of each step, in order."""
    order, steps, start = self.order(), [], 0
    for t, n in enumerate(self.task_sizes):
      for lo in range(0, n, self.batch_size):
        steps.append((t, order[start + lo : start + min(lo + self.batch_size, n)]))
      start += n
    return steps


def make_stream(config, seed: int) -> Stream:
  info = nj_data.get_info(config.data)
  cont = config.continual
  if info.task != "classification":
    raise ValueError(f"config key data.name={config.data.name!r}: needs classification data")
  if info.num_classes % cont.num_tasks:
    raise ValueError(
      f"config key continual.num_tasks={cont.num_tasks}: must divide the "
      f"{info.num_classes} classes of data.name={config.data.name!r}"
    )
  train = nj_data.split_arrays(config.data, info.train_split)
  test = nj_data.split_arrays(config.data, info.eval_split)
  return Stream(
    *train,
    *test,
    num_tasks=int(cont.num_tasks),
    classes_per_task=info.num_classes // int(cont.num_tasks),
    batch_size=int(config.batch_size),
    seed=int(seed),
  )


def check_continual(config):
  """Types and ranges (``config_schema``), then what depends on several keys."""
  check_keys(config)
  cont = config.get("continual")
  if cont is None:
    raise ValueError("config key continual=None: a continual config needs a continual section")
  if cont.method not in METHODS:
    raise ValueError(f"config key continual.method={cont.method!r}: one of {', '.join(METHODS)}")
  if cont.buffer_size < cont.replay_batch_size:
    raise ValueError(
      f"config key continual.buffer_size={cont.buffer_size}: must be >= "
      f"continual.replay_batch_size={cont.replay_batch_size}"
    )
  if config.model.get("norm") == "adab2n":
    tasks = (config.model.get("norm_kwargs") or {}).get("num_tasks", 1)
    if tasks != cont.num_tasks:
      raise ValueError(
        f"config key model.norm_kwargs.num_tasks={tasks}: must equal "
        f"continual.num_tasks={cont.num_tasks} (one task logit per task)"
      )


# ----------------------------------------------------------------------------- state
def init_state(setup, stream: Stream, config, key) -> dict:
  init_key, run_key = jax.random.split(key)
  buffer_size = int(config.continual.buffer_size)
  image_shape = stream.train_images.shape[1:]
  num_classes = stream.num_tasks * stream.classes_per_task
  return {
    **setup.init_state(init_key),
    "buffer": {
      "image": jnp.zeros((buffer_size, *image_shape), jnp.float32),
      "label": jnp.zeros((buffer_size,), jnp.int32),
      "seen": jnp.zeros((), jnp.int32),
    },
    "key": jax.random.key_data(run_key),
    "seen_classes": jnp.zeros((num_classes,), bool),
    "accuracy": jnp.full((stream.num_tasks, stream.num_tasks), jnp.nan, jnp.float32),
    "train_stat_accuracy": jnp.full((stream.num_tasks,), jnp.nan, jnp.float32),
    "eval_accuracy_seen": jnp.full((stream.num_tasks,), jnp.nan, jnp.float32),
  }


def reservoir_add(buffer: dict, images, labels, key) -> dict:
  """Mammoth's reservoir update, one example after the other."""
  size = buffer["label"].shape[0]
  image, label, seen = buffer["image"], buffer["label"], buffer["seen"]
  keys = jax.random.split(key, images.shape[0])
  for i in range(images.shape[0]):
    j = jax.random.randint(keys[i], (), 0, seen + 1)
    slot = jnp.where(seen < size, seen, jnp.where(j < size, j, size))  # size = dropped
    image = image.at[slot].set(images[i], mode="drop")
    label = label.at[slot].set(labels[i], mode="drop")
    seen = seen + 1
  return {"image": image, "label": label, "seen": seen}


def replay_sample(buffer: dict, size: int, key):
  """``size`` distinct filled slots, uniformly (mammoth ``get_data``)."""
  slots = buffer["label"].shape[0]
  filled = (jnp.arange(slots) < buffer["seen"]).astype(jnp.float32)
  index = jax.random.choice(key, slots, (size,), replace=False, p=filled / jnp.sum(filled))
  return buffer["image"][index], buffer["label"][index]


def ace_mask(seen_classes, present):
  """ER-ACE's logit mask of the stream examples (official ``er_ace_ada.py``)."""
  num_classes = seen_classes.shape[0]
  classes = jnp.arange(num_classes)
  max_seen = jnp.max(jnp.where(seen_classes, classes, -1))
  return present | ((classes >= max_seen) & (max_seen < num_classes - 1))


def make_step(setup, config, stream: Stream, *, replay: bool, ace: bool):
  """The jitted update for one stream batch (``replay``: with a replay minibatch; ``ace``:
  the ER-ACE loss)."""
  replay_size = int(config.continual.replay_batch_size)
  cpt = stream.classes_per_task
  model_def, tx = setup.model_def, setup.tx

  def step(state, images, labels):
    key = jax.random.wrap_key_data(state["key"])
    key, k_replay, k_reservoir = jax.random.split(key, 3)
    num_classes = state["seen_classes"].shape[0]
    present = jnp.zeros((num_classes,), bool).at[labels].set(True)
    seen_classes = state["seen_classes"] | present
    n_stream = images.shape[0]
    if replay:
      buf_images, buf_labels = replay_sample(state["buffer"], replay_size, k_replay)
      inputs = jnp.concatenate([images, buf_images])
      targets = jnp.concatenate([labels, buf_labels])
    else:
      inputs, targets = images, labels

    def loss_fn(params):
      model = model_def.merge(params, state["model_state"], train=True)
      logits = model(inputs, task_ids=targets // cpt)
      aux = pop_aux_loss(model)
      ce = optax.softmax_cross_entropy_with_integer_labels
      if replay and ace:
        mask = ace_mask(seen_classes, present)
        stream_logits = jnp.where(mask, logits[:n_stream], jnp.finfo(logits.dtype).min)
        task_loss = (
          ce(stream_logits, labels).mean() + ce(logits[n_stream:], targets[n_stream:]).mean()
        )
      else:
        task_loss = ce(logits, targets).mean()
      return task_loss + aux, (split(model)[1], task_loss, aux)

    (loss, (model_state, task_loss, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"]
    )
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
      **state,
      "step": state["step"] + 1,
      "params": optax.apply_updates(state["params"], updates),
      "model_state": model_state,
      "opt_state": opt_state,
      "buffer": reservoir_add(state["buffer"], images, labels, k_reservoir),
      "key": jax.random.key_data(key),
      "seen_classes": seen_classes,
    }
    return new_state, {"loss": loss, "task_loss": task_loss, "aux_loss": aux}

  return jax.jit(step, donate_argnums=(0,))


def end_task(model_state: dict) -> dict:
  """Every ``seen_tasks`` leaf (AdaB²N's T) + 1: the official ``end_task`` of each layer."""
  return jax.tree_util.tree_map_with_path(
    lambda p, x: x + 1 if path_names(p)[-1] == "seen_tasks" else x, model_state
  )


# ----------------------------------------------------------------------------- evaluation
def _running_stats(model) -> list:
  """(mean, var) of each block's norm that keeps running statistics, else None."""
  out = []
  for block in getattr(model, "blocks", ()):
    norm = getattr(block, "norm", None)
    mean, var = getattr(norm, "mean", None), getattr(norm, "var", None)
    out.append(None if mean is None or var is None else (mean[...], var[...]))
  return out


def make_evaluator(setup):
  """Jitted probes, shape-stable across tasks: inputs are padded to the whole split and the
  padding masked, so each compiles once per run."""
  model_def = setup.model_def

  @jax.jit
  def predictions(params, model_state, images):
    return jnp.argmax(model_def.merge(params, model_state, train=False)(images), -1)

  @jax.jit
  def train_stat_predictions(params, model_state, images):
    return jnp.argmax(model_def.merge(params, model_state, train=True)(images), -1)

  @jax.jit
  def gaps(params, model_state, images, keep):
    model = model_def.merge(params, model_state, train=False)
    if not hasattr(model, "norm_inputs"):
      return []
    out = []
    for z, stats in zip(model.norm_inputs(images), _running_stats(model)):
      if stats is None:
        continue
      w = jnp.broadcast_to(keep[:, None, None], z.shape[:-1]).reshape(-1, 1).astype(jnp.float32)
      z = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
      mu = jnp.sum(w * z, 0) / jnp.sum(w)
      var = jnp.sum(w * jnp.square(z - mu), 0) / jnp.sum(w)
      rm, rv = stats
      mean_gap = jnp.sqrt(jnp.mean(jnp.square(rm - mu) / (var + 1e-5)))
      var_gap = jnp.sqrt(jnp.mean(jnp.square(jnp.log((rv + 1e-5) / (var + 1e-5)))))
      out.append((mean_gap, var_gap))
    return out

  return predictions, train_stat_predictions, gaps


def evaluate_task(state, stream: Stream, task: int, evaluator) -> tuple[dict, dict]:
  """Evaluation after ``task``: (state updates, metrics). The training-statistics accuracy
  (one batch of all seen test images, its own statistics) is measured after the last task."""
  predictions, train_stat_predictions, gaps = evaluator
  seen = stream.task_of(stream.test_labels) <= task
  labels = stream.test_labels[seen]
  eval_pred = np.asarray(
    jax.device_get(predictions(state["params"], state["model_state"], stream.test_images))
  )[seen]
  per_task = [
    float(np.mean(eval_pred[stream.task_of(labels) == j] == labels[stream.task_of(labels) == j]))
    for j in range(task + 1)
  ]
  accuracy = np.array(state["accuracy"])
  accuracy[task, : task + 1] = per_task
  eval_seen = np.array(state["eval_accuracy_seen"])
  eval_seen[task] = float(np.mean(eval_pred == labels))
  train_stat = np.array(state["train_stat_accuracy"])
  if task == stream.num_tasks - 1:
    train_pred = train_stat_predictions(state["params"], state["model_state"], stream.test_images)
    train_stat[task] = float(np.mean(np.asarray(jax.device_get(train_pred)) == stream.test_labels))
  train_seen = stream.task_of(stream.train_labels) <= task
  layer_gaps = jax.device_get(
    gaps(state["params"], state["model_state"], stream.train_images, jnp.asarray(train_seen))
  )
  metrics = {
    "task": task,
    "average_accuracy": float(np.mean(per_task)),
    "eval_accuracy": float(eval_seen[task]),
    "forgetting": forgetting(accuracy, task),
    **({"train_stat_accuracy": float(train_stat[task])} if np.isfinite(train_stat[task]) else {}),
    **{f"mean_gap_{i}": float(m) for i, (m, _) in enumerate(layer_gaps)},
    **{f"var_gap_{i}": float(v) for i, (_, v) in enumerate(layer_gaps)},
  }
  updates = {
    "accuracy": jnp.asarray(accuracy),
    "train_stat_accuracy": jnp.asarray(train_stat),
    "eval_accuracy_seen": jnp.asarray(eval_seen),
  }
  return updates, metrics


def forgetting(accuracy: np.ndarray, task: int) -> float:
  """Mean over j < task of max_{t < task} accuracy[t, j] - accuracy[task, j] (0 at task 0)."""
  if task == 0:
    return 0.0
  best = np.nanmax(accuracy[:task, :task], axis=0)  # row t holds tasks j <= t
  return float(np.mean(best - accuracy[task, :task]))


# ----------------------------------------------------------------------------- the run
def _manager(workdir: str, keep: int):
  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")),
    options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
  )


def _write(path: str, row: dict):
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")


def run_stream(
  config,
  workdir: str,
  *,
  seed: int | None = None,
  stop_after: int | None = None,
  cache: dict | None = None,
) -> dict:
  """Runs (or resumes) one seed's stream in ``workdir``; returns its results.

  ``stop_after``: stop after this many steps (checkpointed), as a preemption would.
  ``cache``: a dict reused across seeds of one config (set-up, compiled steps, data).
  """
  seed = int(config.seed if seed is None else seed)
  cache = {} if cache is None else cache
  if "setup" not in cache:
    check_continual(config)
    cache["setup"] = run.build(config, validate=False)
    cache["evaluator"] = make_evaluator(cache["setup"])
    cache["steps"] = {}
  setup = cache["setup"]
  stream = make_stream(config, seed)
  ace = config.continual.method == "er_ace"
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  metrics_path = os.path.join(workdir, "metrics.jsonl")

  state = jax.jit(lambda k: init_state(setup, stream, config, k))(jax.random.key(seed))
  manager = _manager(workdir, int(config.keep_checkpoints))
  start = 0
  if manager.latest_step() is not None:
    start = int(manager.latest_step())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    state = manager.restore(start, args=ocp.args.StandardRestore(abstract))
    print(f"resumed {workdir} at step {start}", flush=True)

  schedule = stream.schedule()
  task_ends = set(np.cumsum(stream.batches_per_task()).tolist())
  replay_size = int(config.continual.replay_batch_size)
  streamed = np.cumsum([0] + [len(index) for _, index in schedule])  # examples before each step
  for step in range(start + 1, len(schedule) + 1):
    task, index = schedule[step - 1]
    stored = min(int(streamed[step - 1]), int(config.continual.buffer_size))
    replay = task > 0 if ace else stored >= replay_size
    key = (replay, ace, len(index))
    if key not in cache["steps"]:
      cache["steps"][key] = make_step(setup, config, stream, replay=replay, ace=ace)
    images = jnp.asarray(stream.train_images[index])
    labels = jnp.asarray(stream.train_labels[index], jnp.int32)
    state, metrics = cache["steps"][key](state, images, labels)
    if step % int(config.log_every) == 0:
      _write(metrics_path, {"step": step, **{k: float(v) for k, v in metrics.items()}})
    if not np.isfinite(float(metrics["loss"])):
      raise FloatingPointError(f"non-finite loss {float(metrics['loss'])} at step {step}")
    if step in task_ends:
      state = {**state, "model_state": end_task(state["model_state"])}
      updates, row = evaluate_task(state, stream, task, cache["evaluator"])
      state = {**state, **updates}
      _write(metrics_path, {"step": step, **row})
    if step in task_ends or step % int(config.checkpoint_every) == 0 or step == stop_after:
      manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if stop_after is not None and step >= stop_after:
      manager.wait_until_finished()
      manager.close()
      return {"stopped_at_step": step, "state": state}
  manager.wait_until_finished()
  manager.close()
  final_row = evaluate_task(state, stream, stream.num_tasks - 1, cache["evaluator"])[1]
  results = summarize(state, stream)
  results.update({k: v for k, v in final_row.items() if "_gap_" in k})
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return {**results, "state": state}


def summarize(state, stream: Stream) -> dict:
  accuracy = np.asarray(state["accuracy"], np.float64)
  last = stream.num_tasks - 1
  return {
    "average_accuracy": float(np.mean(accuracy[last])),
    "final_accuracy": float(np.asarray(state["eval_accuracy_seen"])[last]),
    "train_stat_accuracy": float(np.asarray(state["train_stat_accuracy"])[last]),
    "forgetting": forgetting(accuracy, last),
    "accuracy_matrix": accuracy.tolist(),
    "steps": int(state["step"]),
  }


def run_seeds(config, workdir: str, seeds: int) -> dict:
  """``seeds`` runs (config.seed, config.seed + 1, ...); returns mean and s.e. per metric."""
  cache: dict[str, Any] = {}
  rows = []
  for i in range(seeds):
    seed = int(config.seed) + i
    out = workdir if seeds == 1 else os.path.join(workdir, f"seed_{seed}")
    result = run_stream(config, out, seed=seed, cache=cache)
    rows.append({k: v for k, v in result.items() if k not in ("state", "accuracy_matrix")})
    print(
      f"seed {seed}: average accuracy {rows[-1]['average_accuracy']:.4f}, final accuracy "
      f"{rows[-1]['final_accuracy']:.4f}, forgetting {rows[-1]['forgetting']:.4f}",
      flush=True,
    )
  summary = {"seeds": [int(config.seed) + i for i in range(seeds)], "runs": rows}
  keys = ("average_accuracy", "final_accuracy", "train_stat_accuracy", "forgetting")
  summary.update(cli.mean_and_se(rows, keys))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main():
  cli.seeds_command(
    "normjax.tools.continual",
    run_seeds,
    lambda s: ("average_accuracy", "final_accuracy", "forgetting"),
  )


if __name__ == "__main__":
  main()
