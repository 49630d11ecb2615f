"""``data.classes``: train and evaluate on a subset of an image dataset's classes.

``classes=(5, 6, 7, 8, 9)`` keeps the examples of those labels in both splits and relabels them
``0 .. len(classes) - 1`` in the order given (so ``DataInfo.num_classes = len(classes)`` and a
model gets that many logits); everything else (normalisation statistics, which are those of the
whole train split, augmentation) is unchanged. For datasets read into memory: the embedded
digits and small TFDS image datasets (cifar10). GCR's transfer experiment trains on digits
0-4 and probes frozen features on 5-9 (``normjax.tools.linear_probe``).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from normjax.data.sources import ArrayImages, Loaded


def check_classes(key: str, value) -> None:
  if (
    not isinstance(value, (tuple, list))
    or not value
    or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value)
    or len(set(value)) != len(value)
  ):
    raise ValueError(
      f"config key data.{key}={value!r}: must be a non-empty tuple of distinct class labels >= 0"
    )


def _subset(batches, classes: tuple):
  read = batches.read
  if not isinstance(read, ArrayImages):
    raise ValueError(
      f"config key data.classes={classes!r}: class subsets need a dataset read into memory "
      f"(digits, small TFDS image datasets); this one is read record by record"
    )
  keep = np.isin(read.labels, classes)
  relabel = np.full(int(max(read.labels.max(), max(classes))) + 1, -1, np.int64)
  relabel[list(classes)] = np.arange(len(classes))
  subset = copy.copy(batches)
  subset.read = ArrayImages(read.images[keep], relabel[read.labels[keep]])
  return subset


def filter_classes(loaded: Loaded, classes) -> Loaded:
  """``loaded`` restricted to ``classes`` (relabelled by their position in ``classes``)."""
  classes = tuple(int(c) for c in classes)
  num_classes = loaded.info.num_classes
  outside = [c for c in classes if num_classes is not None and c >= num_classes]
  if outside:
    raise ValueError(
      f"config key data.classes={classes!r}: labels {outside} are not classes of "
      f"data.name={loaded.info.name!r} (0 .. {num_classes - 1})"
    )
  train, evaluation = _subset(loaded.train_batches, classes), _subset(loaded.eval_batches, classes)
  info = dataclasses.replace(
    loaded.info,
    num_classes=len(classes),
    num_train=len(train.read.labels),
    num_eval=len(evaluation.read.labels),
  )
  return dataclasses.replace(loaded, info=info, train_batches=train, eval_batches=evaluation)
