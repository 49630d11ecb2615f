r"""The 'classify_and_reconstruct' task: a loss weight lambda trades classification against
reconstruction, for lambda-conditioned models (``normjax.models.lambda_hypernet``; MIP,
arXiv 2304.07645, reference/next-methods.md §3).

Batches (``data.name='digits_reconstruct'``) are the digits classification batches: ``image``
(B, 8, 8, 1), standardized, and ``label``. The model returns, for G lambdas (G = 1 in
training, the eval grid in evaluation), ``logits`` (G, B, classes), ``reconstruction``
(G, B, H*W*C) and ``lam`` (G,). Per example and lambda:

  loss_lambda = (1 - lambda) * CE(logits, label) + lambda * mean_pixels (reconstruction - image)^2

* loss: loss_lambda averaged over the G lambdas (in eval: the loss averaged over the grid,
  e.g. lambda in {0, 0.25, 0.5, 0.75, 1});
* metric ``accuracy``: top-1 accuracy averaged over the G lambdas.

Per-lambda values (CE, MSE, accuracy, ||theta(lambda)||): ``python -m
normjax.tools.hypernet_eval --workdir W``.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from normjax.tasks import TASKS, Task


def per_lambda(outputs: dict, batch: dict) -> dict:
  """``{'ce', 'mse', 'loss', 'correct'}``, each (G, B): the terms for every lambda and example."""
  image, label = batch["image"], batch["label"]
  target = image.reshape(image.shape[0], -1)
  logits, reconstruction = outputs["logits"], outputs["reconstruction"]
  lam = outputs["lam"][:, None]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, label[None])
  mse = jnp.mean(jnp.square(reconstruction - target.astype(reconstruction.dtype)), -1)
  correct = (jnp.argmax(logits, -1) == label[None]).astype(logits.dtype)
  return {"ce": ce, "mse": mse, "loss": (1 - lam) * ce + lam * mse, "correct": correct}


def per_example(outputs, batch):
  terms = per_lambda(outputs, batch)
  return terms["loss"].mean(0), terms["correct"].mean(0)


TASKS.register(
  "classify_and_reconstruct",
  Task(
    inputs=lambda batch: batch["image"],
    per_example=per_example,
    metric="accuracy",
    data_kwargs=lambda info: {
      "num_classes": info.num_classes,
      "image_size": info.image_shape[0],
      "in_channels": info.image_shape[-1],
    },
    summary=lambda final, info: (
      f"final {info.eval_split} (1 - lambda) CE + lambda MSE, averaged over the lambda grid: "
      f"{final['eval_loss']:.4f}; accuracy averaged over the grid {final['eval_accuracy']:.4f}"
    ),
  ),
)
