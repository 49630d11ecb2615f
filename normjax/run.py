"""A config becomes objects once: data info, model factory, ModelDef, optimizer, schedule.

``build(config) -> Setup`` is the one place where a trainer config is resolved: the trainer,
every tool (``normjax.tools``), the benchmarks and the tests call it, so they all run the
same model, optimizer and step. ``Setup`` also holds the two step functions (un-jitted, so
the caller chooses donation and shardings) and ``evaluate`` averages a step's sums over the
eval split, for the trainer and the tools alike.

The train state is one pytree ``{'step', 'params', 'model_state', 'opt_state'}`` of plain
dicts (``normjax.state``): what is jitted, sharded and checkpointed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from normjax import data as nj_data
from normjax import stack_layout
from normjax.config_check import check_config, model_kwargs, training_steps
from normjax.models import MODELS, layer_stack
from normjax.models.weight_compander import wrap_factory as weight_compander_factory
from normjax.optim import WeightStorage, float_weights
from normjax.optim.build import make_optimizer, make_weight_storage
from normjax.state import ModelDef, pop_aux_loss, split, value_and_grad_with_backward_state
from normjax.tasks import TASKS, Task, loss_and_sums


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything a config resolves to; see ``build``."""

  config: Any  # the ml_collections.ConfigDict it was built from
  info: nj_data.DataInfo  # what the data determines (task, classes, vocabulary, sizes)
  task: Task
  make: Callable[..., nnx.Module]  # ``make(rngs=nnx.Rngs(seed))`` -> a fresh model
  model_def: ModelDef
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  total_steps: int
  # how state["params"] holds the weights (float, or quantized: ``config.weight_quant``);
  # the steps decode them for the forward pass and apply updates with ``storage.apply``
  storage: WeightStorage = dataclasses.field(default_factory=float_weights)

  def init_state(self, key) -> dict:
    """A freshly initialized model and optimizer state as one pytree (jit it)."""
    params, model_state = split(self.make(rngs=nnx.Rngs(key)))
    return {
      "step": jnp.zeros((), jnp.int32),
      "params": self.storage.init(params),
      "model_state": model_state,
      "opt_state": self.tx.init(params),
    }

  @property
  def grad_accum_steps(self) -> int:
    return int(self.config.get("grad_accum_steps", 1)) if self.config is not None else 1

  def gradients(self, params, model_state, batch: dict):
    """``(grads, new_model_state, sums)`` of one (micro-)batch: the mean loss's gradients,
    the model state as the forward and backward left it, and the eval sums + aux loss."""
    task, model_def = self.task, self.model_def

    def loss_fn(params, model_state):
      model = model_def.merge(params, model_state, train=True)
      loss, sums = loss_and_sums(task, model(task.inputs(batch)), batch)
      sums["aux_loss"] = pop_aux_loss(model)
      return loss + sums["aux_loss"], (split(model)[1], sums)

    (_, sums), grads, model_state = value_and_grad_with_backward_state(
      loss_fn, params, model_state, model_def.grad_stat_mask
    )
    return grads, model_state, sums

  def accumulated_gradients(self, params, model_state, batch: dict):
    """``gradients`` of the whole batch, computed over ``grad_accum_steps`` micro-batches.

    Micro-batch i holds rows i, i + k, i + 2k, ... of the batch (k = grad_accum_steps), so
    each device keeps its own rows. A ``lax.scan`` runs them in order: gradients are summed
    in float32 (or wider) and averaged, and the model state is carried from one micro-batch
    to the next, so norms with batch statistics see each micro-batch as its batch (ghost
    batches) and update their running statistics once per micro-batch, in order; the
    backward-pass statistics of PowerNorm / UN likewise (fairseq's ``--update-freq``).
    For batch-independent norms the result equals the one-batch gradient to rounding.
    """
    k = self.grad_accum_steps
    if k == 1:
      return self.gradients(params, model_state, batch)
    micro = jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch
    )
    wide = lambda p: jnp.promote_types(p.dtype, jnp.float32)
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, wide(p)), params)

    def body(carry, micro_batch):
      total, model_state = carry
      grads, model_state, sums = self.gradients(params, model_state, micro_batch)
      total = jax.tree.map(lambda t, g: t + g.astype(t.dtype), total, grads)
      return (total, model_state), sums

    (total, model_state), sums = jax.lax.scan(body, (zeros, model_state), micro)
    grads = jax.tree.map(lambda t, p: (t / k).astype(p.dtype), total, params)
    sums = {name: v.mean(0) if name == "aux_loss" else v.sum(0) for name, v in sums.items()}
    return grads, model_state, sums

  def train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
    """One optimizer update; returns the new state and this step's metrics."""
    params = self.storage.decode(state["params"])
    grads, model_state, sums = self.accumulated_gradients(params, state["model_state"], batch)
    updates, opt_state = self.tx.update(grads, state["opt_state"], params)
    new_state = {
      "step": state["step"] + 1,
      "params": self.storage.apply(state["params"], updates, state["step"]),
      "model_state": model_state,
      "opt_state": opt_state,
    }
    metric = self.task.metric
    metrics = {
      "loss": sums["loss"] / sums["count"],
      metric: sums[metric] / sums["count"],
      "grad_norm": optax.global_norm(grads),
      "learning_rate": self.schedule(state["step"]),
    }
    if self.model_def.has_aux_loss:
      metrics["aux_loss"] = sums["aux_loss"]
    return new_state, metrics

  def eval_step(self, state: dict, batch: dict) -> dict:
    """Sums ``{'loss', metric, 'count'}`` of the eval-mode model over a batch's real rows."""
    params = self.storage.decode(state["params"])
    model = self.model_def.merge(params, state["model_state"], train=False)
    return loss_and_sums(self.task, model(self.task.inputs(batch)), batch)[1]


def _is_scanned(model_def: ModelDef) -> bool:
  """Whether the model holds a scanned transformer stack (``model.scan_layers``)."""
  return stack_layout.layout(nnx.to_pure_dict(model_def.abstract_params)) == "scanned"


def build(config, *, data=None, validate: bool = True, total_steps: int | None = None) -> Setup:
  """Resolves ``config`` (a trainer config) into a ``Setup``.

  Args:
    config: the ConfigDict of a file in ``configs/``.
    data: a data config to use instead of ``config.data`` (a tool evaluating a run on other
      data); the model's data-determined arguments come from it.
    validate: run ``check_config`` (registries, ranges, device divisibility), which fails
      with a message naming the key before anything compiles. ``False`` only resolves.
    total_steps: the schedule's length, instead of the config's duration.
  """
  info = nj_data.get_info(data or config.data)
  steps = check_config(config, info) if validate else training_steps(config, info)
  steps = steps if total_steps is None else int(total_steps)
  make = functools.partial(MODELS.get(config.model.name), **model_kwargs(config.model, info))
  make = weight_compander_factory(make, config.get("weight_compander"))  # None: unchanged
  try:
    model_def = ModelDef.create(lambda rngs: make(rngs=rngs))
  except ValueError as e:  # the constructors name their argument: name the config key
    message = (
      str(e)
      .replace("model argument ", "config key model.", 1)
      .replace("norm argument ", "config key model.norm_kwargs.", 1)
    )
    raise ValueError(message) from e
  tx, schedule = make_optimizer(config, steps)
  storage = make_weight_storage(config)
  scanned = _is_scanned(model_def)
  if scanned and (config.get("weight_quant") or {}).get("bits") is not None:
    raise ValueError(
      "config key weight_quant: quantized weights are stored per layer; use "
      "model.scan_layers=False with them"
    )
  tx = layer_stack.view_for(tx, scanned=scanned, native=layer_stack.stack_safe(config))
  return Setup(config, info, TASKS.get(info.task), make, model_def, tx, schedule, steps, storage)


def from_model(
  make: Callable[..., nnx.Module],
  tx: optax.GradientTransformation,
  *,
  task: str,
  schedule: optax.Schedule | None = None,
) -> Setup:
  """A ``Setup`` for a model factory outside the configs (a user's own module, a test's):
  the same state, train step and eval step as a config's. ``make(rngs=...)`` builds it."""
  schedule = schedule or optax.constant_schedule(0.0)
  model_def = ModelDef.create(lambda rngs: make(rngs=rngs))
  tx = layer_stack.view_for(tx, scanned=_is_scanned(model_def))
  return Setup(None, None, TASKS.get(task), make, model_def, tx, schedule, 0)


def model_sums(model: nnx.Module, task: Task) -> Callable[[dict], dict]:
  """``batch -> sums`` of an NNX model as it is (e.g. a rewritten or loaded model), jitted."""
  graph, state = nnx.split(model)

  @jax.jit
  def sums(state, batch):
    return loss_and_sums(task, nnx.merge(graph, state)(task.inputs(batch)), batch)[1]

  return lambda batch: sums(state, jax.tree.map(jnp.asarray, batch))


def evaluate(
  batch_sums: Callable[[dict], dict], data_config, *, batch_size: int, task: Task
) -> dict:
  """Eval metrics over the whole eval split: ``eval_loss``, ``eval_<metric>`` and derived.

  ``batch_sums(batch)`` returns the sums of one padded eval batch (``Setup.eval_step`` on a
  state, or ``model_sums``); padding rows carry mask 0, so the averages are exact.
  """
  totals: dict = {}
  for batch in nj_data.eval_iterator(
    data_config,
    global_batch_size=batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  ):
    for k, v in jax.device_get(batch_sums(batch)).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  out = {f"eval_{k}": v / totals["count"] for k, v in totals.items() if k != "count"}
  return {**out, **task.derived(out)}
