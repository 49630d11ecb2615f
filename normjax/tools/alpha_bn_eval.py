r"""Test-time alpha-BN on corrupted images: evaluate a trained BatchNorm ResNet three ways.

  python -m normjax.train --config configs/resnet_batchnorm.py --workdir /tmp/resnet_bn
  python -m normjax.tools.alpha_bn_eval --workdir /tmp/resnet_bn [--alphas 0,1,0.1] \
      [--batch_size 64] [--severities 1,2,3,4,5 --out rows.jsonl]

Loads the run's config (``config.json``) and latest checkpoint, rebuilds the model with every
``batchnorm`` replaced by ``alpha_bn`` (same variables, so the checkpoint loads as is;
``normjax/norms/alpha_bn.py``) and measures eval-split accuracy on clean and corrupted images
with normalization statistics

* alpha = 0: source (running) statistics -- ordinary BatchNorm evaluation;
* alpha = 1: the test batch's own statistics (unbiased variance);
* 0 < alpha < 1: the alpha-BN mix (default 0.1, 10 % test batch).

Test batches are ``--batch_size`` real examples (the last one smaller; never padded, so
padding never enters the statistics). Corruptions act on the normalized images z (pixel
mean 0, variance 1 over the training set for digits), deterministically (noise drawn from
``np.random.default_rng([seed, batch_index])``):

* ``noise``: z + 0.5 * N(0, 1) (Gaussian noise of half the training pixel std);
* ``contrast``: m + 0.3 * (z - m), m = each image's mean (70 % less contrast);
* ``blur``: Gaussian blur, sigma 1 px, kernel radius 2, reflect padding, per channel.

Blur and contrast commute with the affine map from raw pixels to z, so they equal the same
corruption on raw pixels (no clipping to the pixel range is applied). ``--severities`` repeats
the evaluation at severity levels 1..5 of each corruption (``normjax.data.corruptions.
corruption``; 3 is the default above) and prints one table per level; ``--out`` appends one
JSON row per (severity, corruption, alpha) with the run's seed.

Measured (3 trained runs, contrast severity 3): accuracy 0.28 with source statistics, 0.41
with alpha 0.1, 0.97 with test-batch ones; every severity in experiments/alpha_bn/README.md.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from normjax import cli
from normjax import data as nj_data
from normjax.checkpoint import load_run, read_config
from normjax.data.corruptions import CORRUPTIONS, corruption

DEFAULT_ALPHAS = (0.0, 1.0, 0.1)


# ----------------------------------------------------------------------------- evaluation
def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config; it must be a BatchNorm model."""
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise FileNotFoundError(
      f"--workdir {workdir!r}: no config.json; give the workdir of a "
      f"finished run of configs/resnet_batchnorm.py"
    )
  config = read_config(workdir)
  if config.model.get("norm") != "batchnorm":
    raise ValueError(
      f"--workdir {workdir!r}: its model.norm={config.model.get('norm')!r}; "
      f"alpha-BN evaluates a BatchNorm model (norm='batchnorm')"
    )
  return config


def with_alpha_bn(config, alpha: float) -> ml_collections.ConfigDict:
  """The run's config with every ``batchnorm`` an ``alpha_bn`` of weight ``alpha`` (same
  variables, so the BatchNorm checkpoint loads as is)."""
  config = ml_collections.ConfigDict(config.to_dict())
  norm_kwargs = dict(config.model.get("norm_kwargs") or {})
  config.model.norm = "alpha_bn"
  config.model.norm_kwargs = {**norm_kwargs, "alpha": float(alpha)}
  return config


def eval_batches(config, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """The eval split as (images, labels) batches of real examples only."""
  batches = []
  for batch in nj_data.eval_iterator(config.data, global_batch_size=batch_size):
    real = batch["mask"] > 0
    if real.any():
      batches.append((batch["image"][real], batch["label"][real]))
  return batches


def evaluate(
  workdir: str,
  *,
  alphas=DEFAULT_ALPHAS,
  batch_size: int = 64,
  corruptions=tuple(CORRUPTIONS),
  seed: int = 0,
  severity: int = 3,
) -> dict:
  """Accuracy ``{corruption: {alpha: accuracy}}`` of the run in ``workdir`` (corruptions at
  ``severity`` 1..5)."""
  if batch_size < 2:
    raise ValueError(f"--batch_size={batch_size}: test-batch statistics need >= 2 examples")
  unknown = [c for c in corruptions if c not in CORRUPTIONS]
  if unknown:
    raise ValueError(f"corruptions {unknown}: known: {', '.join(CORRUPTIONS)}")
  config = load_run_config(workdir)
  num_eval = nj_data.get_info(config.data).num_eval
  batches = eval_batches(config, batch_size)
  corrupted = {
    name: [
      (corruption(name, severity)(images, np.random.default_rng([seed, i])), labels)
      for i, (images, labels) in enumerate(batches)
    ]
    for name in corruptions
  }
  results = {name: {} for name in corruptions}
  for alpha in alphas:
    graph, state = nnx.split(load_run(workdir, config=with_alpha_bn(config, alpha))[1])
    logits_fn = jax.jit(lambda state, x: nnx.merge(graph, state)(x))
    for name in corruptions:
      correct = sum(
        int(jnp.sum(jnp.argmax(logits_fn(state, images), -1) == labels))
        for images, labels in corrupted[name]
      )
      results[name][float(alpha)] = correct / num_eval
  return results


def format_table(results: dict, alphas=DEFAULT_ALPHAS) -> str:
  def header(alpha):
    if alpha == 0:
      return "source stats (a=0)"
    if alpha == 1:
      return "test-batch stats (a=1)"
    return f"alpha-BN (a={alpha:g})"

  rows = [
    "| corruption | " + " | ".join(header(a) for a in alphas) + " |",
    "|---|" + "---|" * len(alphas),
  ]
  for name, by_alpha in results.items():
    rows.append(f"| {name} | " + " | ".join(f"{by_alpha[float(a)]:.4f}" for a in alphas) + " |")
  return "\n".join(rows)


# ----------------------------------------------------------------------------- command line
def main():
  """The command (flags are defined here, so importing this module defines none)."""
  from absl import app, flags, logging

  workdir = flags.DEFINE_string("workdir", None, "Workdir of a configs/resnet_batchnorm.py run.")
  alphas = flags.DEFINE_list(
    "alphas",
    [str(a) for a in DEFAULT_ALPHAS],
    "Test-batch weights to evaluate (0 = source statistics).",
  )
  batch_size = flags.DEFINE_integer("batch_size", 64, "Test batch size (statistics per batch).")
  seed = flags.DEFINE_integer("seed", 0, "Seed of the noise corruption.")
  severities = flags.DEFINE_list("severities", ["3"], "Corruption severities, 1..5.")
  out = flags.DEFINE_string("out", None, "Append one JSON row per severity, corruption, alpha.")
  verbose = cli.define_verbose_flag()

  def run_command(argv):
    del argv
    if not workdir.value:
      raise app.UsageError("--workdir is required (a finished configs/resnet_batchnorm.py run)")
    logging.set_verbosity(logging.WARNING)  # orbax's info lines

    def body():
      if not all(s in ("1", "2", "3", "4", "5") for s in severities.value):
        raise ValueError(
          f"--severities={','.join(severities.value)}: each must be one of 1, 2, 3, 4, 5"
        )
      chosen = tuple(float(a) for a in alphas.value)
      run_seed = int(load_run_config(workdir.value).get("seed", 0))
      for level in (int(s) for s in severities.value):
        results = evaluate(
          workdir.value,
          alphas=chosen,
          batch_size=batch_size.value,
          seed=seed.value,
          severity=level,
        )
        print(
          f"eval accuracy, severity {level}, test batches of {batch_size.value}, "
          f"checkpoint in {workdir.value}"
        )
        print(format_table(results, chosen))
        if out.value:
          with open(out.value, "a") as f:
            for name, by_alpha in results.items():
              for alpha, accuracy in by_alpha.items():
                row = {"workdir": workdir.value, "run_seed": run_seed, "severity": level}
                row.update(corruption=name, alpha=alpha, accuracy=accuracy)
                f.write(json.dumps(row) + "\n")

    cli.guarded("normjax.tools.alpha_bn_eval", body, verbose_flag=verbose.value)

  app.run(run_command)


if __name__ == "__main__":
  main()
