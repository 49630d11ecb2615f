r"""Multi-domain federated learning on the digits: FedAvg, FedBN and normalizer-free FedWon.

  python -m normjax.tools.federated --config configs/fed_digits.py:arm=fedwon \
      --workdir DIR [--seeds 3]

The setting of FedWon (Zhuang & Lyu, ICLR 2024, arXiv 2306.05879) and FedBN (Li et al., ICLR
2021, arXiv 2102.07623, med-air/FedBN): each client holds one domain, the domains differ in
their feature statistics, and a batch-statistics norm shared by all clients has to serve
them all. A command, not a trainer task, for the same reason as ``normjax.tools.continual``:
the state is one model per client and a round is many local steps then an aggregation.

* **Domains** (``federated.domains``; ``normjax.data.corruptions.DOMAINS``): client c holds
  the c-th of ``len(domains)`` disjoint random shards of the digits' train split (a
  permutation fixed by the seed; ``federated.examples_per_client`` keeps the first n of each
  shard) with corruption c applied to its normalized images: original, inverted (-z),
  rotated (a quarter turn), noisy (z + 0.5 N(0, 1), the noise fixed per image), blurred
  (Gaussian, sigma 1 px). The test split is evaluated under every domain.
* **Local training**: every round each client runs ``local_steps`` steps (or
  ``round(local_epochs * shard / batch)`` when ``federated.local_epochs`` is set) of the
  config's own train step (``normjax.run.Setup.train_step``: its model, norm, optimizer,
  AGC, and its schedule stretched over all ``rounds x local_steps`` steps) on batches of
  ``batch_size`` from its shard, a fresh permutation per local epoch (a function of seed,
  client and epoch: resume is exact). The clients are one pytree
  with a leading client axis, trained by ``jax.vmap`` of that step inside one jitted round
  (a ``lax.scan`` over the local steps); with several devices the client axis is sharded over
  the largest number of them that divides the number of clients.
* **Aggregation** (``federated.algorithm``) after each round, weighted by shard size
  (FedAvg, McMahan et al. 2017):
  - ``fedavg``: every parameter and every model-state leaf (BatchNorm running statistics
    too, as averaging PyTorch state dicts does) is replaced by the clients' weighted mean;
  - ``fedbn``: the same except the norm layers' parameters and statistics (leaves under a
    module whose name contains ``norm``, ``normjax.optim.labels.is_norm_param``) stay local.
  FedWon is ``fedavg`` on a model without any normalization layer: ``model.name='nf_resnet'``
  (Scaled WS convs) with adaptive gradient clipping (``configs/fed_digits.py:arm=fedwon``).
  Optimizer state (e.g. momentum) stays with each client and is never averaged (the
  official FedBN code keeps one optimizer per client across rounds).
* **Evaluation** every ``federated.eval_every`` rounds and at the end: client c's model (after
  aggregation; all clients hold the same model under fedavg) in eval mode on the test split
  under domain c; ``mean_accuracy`` is the mean over domains.

Outputs in ``--workdir`` (``seed_<s>/`` per seed when ``--seeds`` > 1): ``config.json``,
``metrics.jsonl`` (per round: mean local loss; per evaluation: accuracy per domain),
``results.json``, orbax checkpoints of the client states every ``checkpoint_every`` rounds (a
run resumes from its latest), and with several seeds ``summary.json`` (mean and s.e.).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from normjax import cli, run
from normjax import data as nj_data
from normjax.config_schema import check_keys
from normjax.data.corruptions import DOMAINS
from normjax.optim.labels import is_norm_param

ALGORITHMS = ("fedavg", "fedbn")


# ----------------------------------------------------------------------------- data
def domain_images(name: str, images: np.ndarray, seed_words: list[int]) -> np.ndarray:
  return DOMAINS[name](images, np.random.default_rng(seed_words)).astype(np.float32)


class Clients:
  """Each client's shard (domain applied), the test split under each domain, the batches."""

  def __init__(self, config, seed: int):
    fed = config.federated
    info = nj_data.get_info(config.data)
    if info.task != "classification":
      raise ValueError(f"config key data.name={config.data.name!r}: needs classification data")
    images, labels = nj_data.split_arrays(config.data, info.train_split)
    test_images, test_labels = nj_data.split_arrays(config.data, info.eval_split)
    self.domains = tuple(fed.domains)
    order = np.random.default_rng([seed, 0]).permutation(len(labels))
    shards = np.array_split(order, len(self.domains))
    if fed.get("examples_per_client"):
      shards = [s[: int(fed.examples_per_client)] for s in shards]
    self.batch_size = int(config.batch_size)
    small = [len(s) for s in shards if len(s) < self.batch_size]
    if small:
      raise ValueError(
        f"config key batch_size={self.batch_size}: larger than a client's shard ({min(small)})"
      )
    size = min(len(s) for s in shards)  # equal shards keep the client axis rectangular
    self.shards = [s[:size] for s in shards]
    self.images = np.stack(
      [
        domain_images(d, images[s], [seed, 1, c])
        for c, (d, s) in enumerate(zip(self.domains, self.shards))
      ]
    )
    self.labels = np.stack([labels[s] for s in self.shards]).astype(np.int32)
    self.test_images = np.stack(
      [domain_images(d, test_images, [0, 2, c]) for c, d in enumerate(self.domains)]
    )
    self.test_labels = np.broadcast_to(test_labels.astype(np.int32), self.test_images.shape[:2])
    self.seed = seed
    self.shard_size = size
    epochs = fed.get("local_epochs")
    self.local_steps = (
      max(1, round(float(epochs) * size / self.batch_size)) if epochs else int(fed.local_steps)
    )

  @property
  def num_clients(self) -> int:
    return len(self.domains)

  def round_batches(self, round_index: int) -> dict:
    """``{'image': (C, local_steps, B, ...), 'label': ...}`` of round ``round_index`` (0-based)."""
    per_epoch = self.shard_size // self.batch_size
    first = round_index * self.local_steps
    index = np.empty((self.num_clients, self.local_steps, self.batch_size), np.int64)
    for c in range(self.num_clients):
      for j, g in enumerate(range(first, first + self.local_steps)):
        epoch, pos = divmod(g, per_epoch)
        perm = np.random.default_rng([self.seed, 3, c, epoch]).permutation(self.shard_size)
        index[c, j] = perm[pos * self.batch_size : (pos + 1) * self.batch_size]
    rows = np.arange(self.num_clients)[:, None, None]
    return {"image": self.images[rows, index], "label": self.labels[rows, index]}


# ----------------------------------------------------------------------------- the algorithm
def local_mask(tree, algorithm: str):
  """True for the leaves that stay on their client (FedBN: the norm layers)."""
  keep = algorithm == "fedbn"
  return jax.tree_util.tree_map_with_path(lambda p, x: keep and is_norm_param(p), tree)


def aggregate(clients: dict, weights: jax.Array, algorithm: str) -> dict:
  """Replace shared leaves of ``params`` and ``model_state`` by the clients' weighted mean."""

  def average(tree):
    def leaf(x, local):
      if local:
        return x
      w = weights.reshape((-1,) + (1,) * (x.ndim - 1)).astype(jnp.float32)
      mean = jnp.sum(w * x.astype(jnp.float32), axis=0)
      return jnp.broadcast_to(mean.astype(x.dtype), x.shape)

    return jax.tree.map(leaf, tree, local_mask(tree, algorithm))

  return {
    **clients,
    "params": average(clients["params"]),
    "model_state": average(clients["model_state"]),
  }


def make_round(setup, algorithm: str, weights: np.ndarray, sharding=None):
  """The jitted round: local steps on every client (vmap), then the aggregation; the new
  client states keep ``sharding`` (the client axis over devices) when given."""
  step = jax.vmap(setup.train_step)
  weights = jnp.asarray(weights / weights.sum(), jnp.float32)

  def one_round(clients, batches):
    def body(clients, batch):
      clients, metrics = step(clients, batch)
      return clients, metrics["loss"]

    steps_first = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), batches)
    clients, losses = jax.lax.scan(body, clients, steps_first)
    clients = aggregate(clients, weights, algorithm)
    if sharding is not None:
      clients = jax.lax.with_sharding_constraint(clients, sharding)
    return clients, jnp.mean(losses)

  return jax.jit(one_round, donate_argnums=0)


def make_evaluate(setup):
  def accuracy(clients, images, labels):
    batch = {"image": images, "label": labels, "mask": jnp.ones(labels.shape, jnp.float32)}
    sums = jax.vmap(setup.eval_step)(clients, batch)
    return sums[setup.task.metric] / sums["count"]

  return jax.jit(accuracy)


def client_sharding(num_clients: int):
  """A NamedSharding of the client axis over the largest device count dividing it, or None."""
  n = max(d for d in range(1, jax.device_count() + 1) if num_clients % d == 0)
  if n == 1:
    return None
  mesh = jax.make_mesh(
    (n,), ("clients",), devices=jax.devices()[:n], axis_types=(jax.sharding.AxisType.Auto,)
  )
  return NamedSharding(mesh, P("clients"))


def check_federated(config):
  check_keys(config)
  fed = config.get("federated")
  if fed is None:
    raise ValueError("config key federated=None: a federated config needs a federated section")
  if fed.algorithm not in ALGORITHMS:
    raise ValueError(
      f"config key federated.algorithm={fed.algorithm!r}: one of {', '.join(ALGORITHMS)}"
    )
  unknown = [d for d in fed.domains if d not in DOMAINS]
  if unknown or not fed.domains:
    raise ValueError(
      f"config key federated.domains={tuple(fed.domains)}: each one of {', '.join(DOMAINS)}"
    )


# ----------------------------------------------------------------------------- the run
def _write(path: str, row: dict):
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")


def run_federated(
  config, workdir: str, *, seed: int | None = None, stop_after: int | None = None, cache=None
) -> dict:
  """Runs (or resumes) one seed in ``workdir``; returns its results.

  ``stop_after``: stop after this many rounds (checkpointed), as a preemption would.
  ``cache``: a dict reused across the seeds of one config (set-up and compiled functions).
  """
  seed = int(config.seed if seed is None else seed)
  cache = {} if cache is None else cache
  fed = config.federated
  check_federated(config)
  clients_data = Clients(config, seed)
  if "setup" not in cache:  # the schedule spans every local step of the run
    steps = int(fed.rounds) * clients_data.local_steps
    cache["setup"] = run.build(config, validate=False, total_steps=steps)
  setup = cache["setup"]
  num = clients_data.num_clients
  weights = np.full((num,), float(clients_data.shard_size))
  sharding = client_sharding(num)
  if "round" not in cache:
    cache["round"] = make_round(setup, fed.algorithm, weights, sharding)
    cache["evaluate"] = make_evaluate(setup)
  put = lambda tree: jax.device_put(tree, sharding)  # None: the default device

  one = jax.jit(setup.init_state)(jax.random.key(seed))  # the server's initial model
  clients = put(jax.tree.map(lambda x: jnp.broadcast_to(x, (num, *x.shape)), one))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  manager = ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")),
    options=ocp.CheckpointManagerOptions(max_to_keep=int(config.keep_checkpoints), create=True),
  )
  start = 0
  if manager.latest_step() is not None:
    start = int(manager.latest_step())
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), clients
    )
    clients = manager.restore(start, args=ocp.args.StandardRestore(abstract))
    print(f"resumed {workdir} at round {start}", flush=True)

  rounds = int(fed.rounds)
  test_images, test_labels = put(clients_data.test_images), put(clients_data.test_labels)

  def evaluation(round_number: int) -> dict:
    acc = np.asarray(cache["evaluate"](clients, test_images, test_labels), np.float64)
    row = {f"accuracy/{d}": float(a) for d, a in zip(clients_data.domains, acc)}
    row["mean_accuracy"] = float(acc.mean())
    _write(metrics_path, {"round": round_number, **row})
    return row

  for r in range(start + 1, rounds + 1):
    batches = put(clients_data.round_batches(r - 1))
    clients, loss = cache["round"](clients, batches)
    loss = float(loss)
    _write(metrics_path, {"round": r, "loss": loss})
    if not np.isfinite(loss):
      raise FloatingPointError(f"non-finite loss {loss} in round {r}")
    if r % int(fed.eval_every) == 0 and r != rounds:
      evaluation(r)
    if r % int(config.checkpoint_every) == 0 or r == rounds or r == stop_after:
      manager.save(r, args=ocp.args.StandardSave(clients), force=True)
    if stop_after is not None and r >= stop_after:
      manager.wait_until_finished()
      manager.close()
      return {"stopped_at_round": r, "clients": clients}
  manager.wait_until_finished()
  manager.close()
  results = {
    **evaluation(rounds),
    "rounds": rounds,
    "local_steps": clients_data.local_steps,
    "examples_per_client": clients_data.shard_size,
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return {**results, "clients": clients}


def run_seeds(config, workdir: str, seeds: int) -> dict:
  """``seeds`` runs (config.seed, config.seed + 1, ...); mean and s.e. of every accuracy."""
  cache: dict[str, Any] = {}
  rows = []
  for i in range(seeds):
    seed = int(config.seed) + i
    out = workdir if seeds == 1 else os.path.join(workdir, f"seed_{seed}")
    result = run_federated(config, out, seed=seed, cache=cache)
    rows.append({"seed": seed, **{k: v for k, v in result.items() if k != "clients"}})
    print(f"seed {seed}: mean accuracy {rows[-1]['mean_accuracy']:.4f}", flush=True)
  summary: dict[str, Any] = {"runs": rows}
  summary.update(cli.mean_and_se(rows, [k for k in rows[0] if "accuracy" in k]))
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main():
  cli.seeds_command("normjax.tools.federated", run_seeds, lambda s: [k for k in s if k != "runs"])


if __name__ == "__main__":
  main()
