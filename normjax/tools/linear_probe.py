r"""Transfer by linear probe: frozen features of held-out classes, a logistic regression on them.

  python -m normjax.train --config configs/resnet_gcr.py --workdir /tmp/resnet_gcr
  python -m normjax.tools.linear_probe --workdir /tmp/resnet_gcr [--classes 5,6,7,8,9] \
      [--C 1.0] [--batch_size 256]

GCR's transfer protocol (Wang, Li, Zhang, ICCV 2023, arXiv 2308.01547: linear probing of the
frozen backbone on other datasets) in miniature: the run in ``--workdir`` was trained on a
class subset (``config.data.classes``, e.g. digits 0-4); its eval-mode model (latest
checkpoint, ``normjax.checkpoint.load_run``) maps the images of the held-out classes
(``--classes``, default: every class of the dataset not in ``data.classes``) to the pooled
features that enter its head (the head is replaced by the identity: the class token or the
global average pool, before any normalisation a cosine or Grassmann head applies). A
multinomial logistic regression (scikit-learn, L-BFGS, inverse regularisation ``--C``) is
fitted on the standardised features of the held-out classes' train split and scored on their
eval split. Prints the run's own eval accuracy (trained classes) and the probe's accuracy.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from flax import nnx

from normjax import cli, run
from normjax import data as nj_data
from normjax.checkpoint import load_run, read_config
from normjax.tasks import TASKS


class Identity(nnx.Module):
  def __call__(self, x):
    return x


def feature_model(model: nnx.Module) -> nnx.Module:
  """``model`` with its ``head`` replaced by the identity: images -> pooled features."""
  if not hasattr(model, "head"):
    raise ValueError(
      f"linear_probe: model {type(model).__name__} has no 'head' (an image classifier with "
      f"model.head: vit, resnet)"
    )
  model.head = Identity()
  return model


def split_features(forward, data_config, split: str, batch_size: int):
  """``(features, labels)`` of every real example of ``split`` (one exact pass, in order)."""
  cfg = ml_collections.ConfigDict(data_config.to_dict())
  cfg.eval_split = split
  feats, labels = [], []
  for batch in nj_data.eval_iterator(cfg, global_batch_size=batch_size):
    real = batch["mask"] > 0
    feats.append(np.asarray(forward(batch["image"]), np.float64)[real])
    labels.append(batch["label"][real])
  return np.concatenate(feats), np.concatenate(labels)


def probe_classes(config, classes=None) -> tuple[int, ...]:
  """``classes``, else the dataset's classes that the run did not train on."""
  if classes:
    return tuple(int(c) for c in classes)
  trained = config.data.get("classes")
  if not trained:
    raise ValueError(
      "linear_probe: the run trained on every class (no config.data.classes); give --classes"
    )
  whole = ml_collections.ConfigDict({k: v for k, v in config.data.items() if k != "classes"})
  held_out = tuple(c for c in range(nj_data.get_info(whole).num_classes) if c not in trained)
  if not held_out:
    raise ValueError("linear_probe: no held-out classes; give --classes")
  return held_out


def check_C(C) -> None:
  if not C > 0:
    raise ValueError(f"linear_probe --C={C!r}: must be > 0")


def fit_probe(train, test, C: float = 1.0, seed: int = 0) -> float:
  """Test accuracy of a logistic regression fitted on standardised train features."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler

  check_C(C)
  scaler = StandardScaler().fit(train[0])
  clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
  clf.fit(scaler.transform(train[0]), train[1])
  return float(clf.score(scaler.transform(test[0]), test[1]))


def probe_model(model, data_config, classes, *, C: float = 1.0, batch_size: int = 256) -> dict:
  """The probe of an eval-mode ``model`` on ``classes`` of ``data_config``'s dataset."""
  graph, state = nnx.split(feature_model(model))
  forward = jax.jit(lambda state, x: nnx.merge(graph, state)(x))
  cfg = ml_collections.ConfigDict(data_config.to_dict())
  cfg.classes = tuple(classes)
  info = nj_data.get_info(cfg)
  train = split_features(lambda x: forward(state, x), cfg, info.train_split, batch_size)
  test = split_features(lambda x: forward(state, x), cfg, info.eval_split, batch_size)
  return {
    "probe_classes": list(classes),
    "probe_accuracy": fit_probe(train, test, C),
    "probe_num_train": len(train[1]),
    "probe_num_test": len(test[1]),
    "feature_dim": int(train[0].shape[1]),
  }


def evaluate(workdir: str, classes=None, *, C: float = 1.0, batch_size: int = 256) -> dict:
  """The run's own eval metrics and the linear probe on the held-out classes."""
  check_C(C)
  config = read_config(workdir)
  held_out = probe_classes(config, classes)
  _, model = load_run(workdir, config=config)
  task = TASKS.get(model.task)
  own = run.evaluate(run.model_sums(model, task), config.data, batch_size=batch_size, task=task)
  result = {"train_classes": list(config.data.get("classes") or []), **own}
  return {**result, **probe_model(model, config.data, held_out, C=C, batch_size=batch_size)}


# ----------------------------------------------------------------------------- command line
def main():
  """The command (flags are defined here, so importing this module defines none)."""
  from absl import app, flags, logging

  workdir = flags.DEFINE_string("workdir", None, "Workdir of a finished normjax.train run.")
  classes = flags.DEFINE_list("classes", [], "Held-out classes (default: those not trained).")
  C = flags.DEFINE_float("C", 1.0, "Inverse L2 regularisation of the logistic regression.")
  batch_size = flags.DEFINE_integer("batch_size", 256, "Feature-extraction batch size.")
  verbose = cli.define_verbose_flag()

  def run_command(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax's info lines

    def body():
      if not workdir.value:
        raise ValueError("--workdir is required (a finished normjax.train run)")
      chosen = [int(c) for c in classes.value]
      r = evaluate(workdir.value, chosen, C=C.value, batch_size=batch_size.value)
      print(
        f"trained classes {r['train_classes']}: eval accuracy {r.get('eval_accuracy', 0):.4f}; "
        f"linear probe on classes {r['probe_classes']} ({r['probe_num_train']} train / "
        f"{r['probe_num_test']} test images, {r['feature_dim']}-d features, C={C.value:g}): "
        f"accuracy {r['probe_accuracy']:.4f}"
      )

    cli.guarded("normjax.tools.linear_probe", body, verbose_flag=verbose.value)

  app.run(run_command)


if __name__ == "__main__":
  main()
