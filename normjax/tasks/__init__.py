"""Training tasks, resolved by the data's ``DataInfo.task``: model inputs, loss, metrics.

A task is a ``Task`` registered in ``TASKS``:

* ``inputs(batch)``: what the model is called on;
* ``per_example(outputs, batch) -> (loss, metric)``: per-example loss and the task's
  headline metric (each shape (B,)); the trainer averages them over real examples
  (``batch['mask']``, exact evaluation with padded batches);
* ``metric``: the metric's name in logs (``accuracy``, ...);
* ``data_kwargs(info)``: model keyword arguments the data determines;
* ``summary(final, info)``: the line printed at the end of a run;
* ``derived(eval_metrics)``: extra eval metrics computed from the averaged ones.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np
import optax

from normjax.registry import Registry

TASKS = Registry(
  "task",
  "data.name (its task)",
  lazy_modules=("normjax.tasks.inpainting", "normjax.tasks.classify_and_reconstruct"),
)


@dataclasses.dataclass(frozen=True)
class Task:
  inputs: Callable
  per_example: Callable
  metric: str
  data_kwargs: Callable
  summary: Callable
  derived: Callable = lambda final: {}  # extra eval metrics computed from the averages


def _classification(logits, batch):
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return loss, (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)


def _language_model(logits, batch):
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(-1)
  return loss, (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32).mean(-1)


TASKS.register(
  "classification",
  Task(
    inputs=lambda batch: batch["image"],
    per_example=_classification,
    metric="accuracy",
    data_kwargs=lambda info: {
      "num_classes": info.num_classes,
      "image_size": info.image_shape[0],
      "in_channels": info.image_shape[-1],
    },
    summary=lambda final, info: (
      f"final {info.eval_split} accuracy: "
      f"{final['eval_accuracy']:.4f} (loss {final['eval_loss']:.4f})"
    ),
  ),
)

TASKS.register(
  "lm",
  Task(
    inputs=lambda batch: batch["inputs"],
    per_example=_language_model,
    metric="accuracy",
    data_kwargs=lambda info: {"vocab_size": info.vocab_size, "max_len": info.seq_len},
    summary=lambda final, info: (
      f"final {info.eval_split} loss: {final['eval_loss']:.4f} nats/token (perplexity "
      f"{np.exp(final['eval_loss']):.3f}); unigram entropy of the corpus: "
      f"{info.unigram_entropy:.4f} nats/token"
    ),
    derived=lambda final: {"eval_perplexity": float(np.exp(final["eval_loss"]))},
  ),
)


def loss_and_sums(task: Task, outputs, batch):
  """Mean loss over real examples, and the sums ``{'loss', metric, 'count'}`` for eval."""
  per_ex, metric = task.per_example(outputs, batch)
  mask = batch.get("mask")
  weight = jnp.ones_like(per_ex) if mask is None else mask.astype(jnp.float32)
  sums = {
    "loss": (per_ex * weight).sum(),
    task.metric: (metric * weight).sum(),
    "count": weight.sum(),
  }
  return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums
