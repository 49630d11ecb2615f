"""``masked_digits``: the embedded 8x8 digits with a random square hole, for inpainting.

Images are scikit-learn's digits (the ``digits`` TFDS builder, same train/test split) as
float32 in [0, 1] (x / 16, not standardized: the inpainting model outputs (tanh + 1) / 2).
Each example gets one ``hole_size`` x ``hole_size`` square hole (default 4: a quarter of
the image) at a uniformly random position inside the image, given as a float32 mask
(1 = hole). Deterministic:

* train: the position comes from the pipeline's augmentation uniforms (2 per example),
  which are a function of the run seed and the global batch index, so holes move from epoch
  to epoch but a resumed run sees the same holes;
* eval: the position of example i is fixed, from ``np.random.default_rng(EVAL_SEED)``
  drawn once over the whole split.

Batches: ``{'image': (b, 8, 8, 1) float32, 'hole': (b, 8, 8, 1) float32, 'label': (b,)
int32}`` (the label is unused by the task, kept for analysis). Task: 'inpainting'
(``normjax.tasks.inpainting``). Option: ``data.hole_size`` (1..8).
"""

from __future__ import annotations

import pathlib

import numpy as np

from normjax.data import builders, sources

EVAL_SEED = 20200207  # the eval holes; any fixed value
DEFAULT_HOLE_SIZE = 4
IMAGE_SIZE = 8


def hole_masks(size: int, hole: int, u: np.ndarray) -> np.ndarray:
  """(b, size, size, 1) float32 masks with one hole x hole square at positions from u (b, 2)."""
  top = np.minimum((u[:, 0] * (size - hole + 1)).astype(np.int64), size - hole)
  left = np.minimum((u[:, 1] * (size - hole + 1)).astype(np.int64), size - hole)
  rows, cols = np.arange(size), np.arange(size)
  inside_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + hole)
  inside_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + hole)
  return (inside_rows[:, :, None] & inside_cols[:, None, :]).astype(np.float32)[..., None]


class MaskedDigitBatches:
  """Example indices (+ uniforms in training) -> image, hole and label batch."""

  def __init__(self, images: sources.ArrayImages, *, hole_size: int, train: bool):
    self.read, self.hole_size, self.train = images, hole_size, train
    self.eval_uniforms = (
      None if train else np.random.default_rng(EVAL_SEED).random((len(images.labels), 2))
    )

  def __call__(self, indices, uniforms=None):
    images, labels = self.read(indices)
    u = uniforms if self.train else self.eval_uniforms[indices]
    return {
      "image": images.astype(np.float32) / 16.0,
      "hole": hole_masks(IMAGE_SIZE, self.hole_size, u),
      "label": labels.astype(np.int32),
    }


def load_masked_digits(opts: dict, data_dir: pathlib.Path) -> sources.Loaded:
  """The ``DATASETS`` loader for ``masked_digits`` (options: splits, ``hole_size``)."""
  hole_size = opts.get("hole_size", DEFAULT_HOLE_SIZE)
  if (
    isinstance(hole_size, bool)
    or not isinstance(hole_size, int)
    or not (1 <= hole_size <= IMAGE_SIZE)
  ):
    raise ValueError(
      f"config key data.hole_size={hole_size!r}: must be an integer in "
      f"[1, {IMAGE_SIZE}] (the side of the square hole in the 8x8 image)"
    )
  builder = builders.prepared_builder("digits", data_dir)
  train_split, eval_split = opts.get("train_split") or "train", opts.get("eval_split") or "test"
  for key, split in (("train_split", train_split), ("eval_split", eval_split)):
    sources._check_split(key, split, builder.info.splits)  # pylint: disable=protected-access
  arrays = {
    split: sources.read_all_images(builder.as_data_source(split=split))
    for split in {train_split, eval_split}
  }
  train = MaskedDigitBatches(arrays[train_split], hole_size=hole_size, train=True)
  evaluation = MaskedDigitBatches(arrays[eval_split], hole_size=hole_size, train=False)
  info = sources.DataInfo(
    name="masked_digits",
    task="inpainting",
    num_classes=None,
    image_shape=(IMAGE_SIZE, IMAGE_SIZE, 1),
    vocab_size=None,
    seq_len=None,
    num_train=len(arrays[train_split].labels),
    num_eval=len(arrays[eval_split].labels),
    unigram_entropy=None,
    eval_split=eval_split,
    train_split=train_split,
  )
  return sources.Loaded(info, train, evaluation, num_uniforms=2)
