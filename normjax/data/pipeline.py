"""grain pipelines: endless shuffled training batches, exact padded eval batches.

Both pipelines are ``grain.MapDataset.range(...)`` over GLOBAL batch indices,
mapped to this process's rows of that global batch, then turned into a
``grain.DatasetIterator`` (background prefetch thread; optional worker
processes). Its state is the index of the next batch, so ``get_state`` /
``set_state`` and grain's orbax handler resume a run exactly.

Training order. The example stream is epoch after epoch of
``np.random.default_rng([seed, epoch]).permutation(num_examples)``; global batch
``j`` is stream positions ``[j G, (j + 1) G)`` (G = global batch size, so a
batch may straddle two epochs) and process ``p`` of ``P`` takes the contiguous
rows ``[p G / P, (p + 1) G / P)``. The global batch, and the augmentation of each
of its rows, are therefore the same for any process count. (Shuffling is
vectorized per epoch rather than grain's per-element ``MapDataset.shuffle``,
whose index cipher costs ~40 us per element: 5 ms per batch of 128, slower than a
small model's training step.)

Augmentation randomness: ``np.random.default_rng([seed, 1, j]).random((G, k))``
for global batch ``j``; row ``r`` of the batch gets row ``r`` of it.

Eval: examples ``0..n-1`` in order, padded with zero rows to a multiple of G;
the ``mask`` entry is 1.0 on real rows and 0.0 on padding (as big_vision pads
its eval batches), so ``sum(mask) == n`` over all processes.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

import grain
import numpy as np
from absl import flags

# (indices, uniforms or None) -> dict of numpy arrays with leading batch axis.
MakeBatch = Callable[[np.ndarray, np.ndarray | None], dict[str, np.ndarray]]

_AUGMENT_STREAM = 1


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if not isinstance(global_batch_size, (int, np.integer)) or global_batch_size < 1:
    raise ValueError(f"global_batch_size={global_batch_size!r}: must be a positive integer")
  if not isinstance(process_count, (int, np.integer)) or process_count < 1:
    raise ValueError(f"process_count={process_count!r}: must be a positive integer")
  if global_batch_size % process_count:
    raise ValueError(
      f"global_batch_size={global_batch_size} is not divisible by process_count="
      f"{process_count}: every process must get the same number of rows; use a "
      f"multiple of {process_count}"
    )
  return global_batch_size // process_count


def _check_process(process_index: int, process_count: int):
  if not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index={process_index!r}: must be in [0, process_count={process_count})"
    )


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one training epoch (read-only, cached)."""
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm = perm.astype(np.int32 if num_examples < 2**31 else np.int64)
  perm.setflags(write=False)
  return perm


class _TrainBatch:
  """Global batch index -> this process's training rows (picklable for workers)."""

  def __init__(
    self,
    make_batch: MakeBatch,
    num_examples: int,
    *,
    global_batch_size: int,
    process_index: int,
    local_size: int,
    seed: int,
    num_uniforms: int,
  ):
    self.make_batch = make_batch
    self.num_examples = num_examples
    self.global_batch_size = global_batch_size
    self.rows = process_index * local_size + np.arange(local_size)
    self.seed = seed
    self.num_uniforms = num_uniforms

  def indices(self, batch_index: int) -> np.ndarray:
    positions = batch_index * self.global_batch_size + self.rows
    epochs, offsets = np.divmod(positions, self.num_examples)
    out = np.empty(len(positions), np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = epoch_permutation(self.num_examples, self.seed, int(epoch))[offsets[sel]]
    return out

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    uniforms = None
    if self.num_uniforms:
      rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, batch_index])
      uniforms = rng.random((self.global_batch_size, self.num_uniforms))[self.rows]
    return self.make_batch(self.indices(batch_index), uniforms)


class _EvalBatch:
  """Global batch index -> this process's eval rows, zero-padded, with ``mask``."""

  def __init__(
    self,
    make_batch: MakeBatch,
    num_examples: int,
    *,
    global_batch_size: int,
    process_index: int,
    local_size: int,
  ):
    self.make_batch = make_batch
    self.num_examples = num_examples
    self.global_batch_size = global_batch_size
    self.rows = process_index * local_size + np.arange(local_size)

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    positions = batch_index * self.global_batch_size + self.rows
    real = positions < self.num_examples
    # Padding rows read example 0 (always valid), then are zeroed.
    batch = self.make_batch(np.where(real, positions, 0), None)
    for key, value in batch.items():
      batch[key] = np.where(
        real.reshape((-1,) + (1,) * (value.ndim - 1)), value, np.zeros((), value.dtype)
      )
    batch["mask"] = real.astype(np.float32)
    return batch


def _iterator(ds: grain.MapDataset, num_workers: int) -> grain.DatasetIterator:
  # One background thread builds the next batches while the accelerator runs.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  if num_workers:
    # grain's worker start-up reads its absl flags; outside an absl app (a
    # notebook, pytest) they are unparsed and reading them raises, so take the
    # defaults. An absl app that parses flags later still can.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)


def train_iterator(
  make_batch: MakeBatch,
  num_examples: int,
  *,
  global_batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  num_uniforms: int = 0,
  num_workers: int = 0,
) -> grain.DatasetIterator:
  """Endless iterator over this process's share of shuffled global batches."""
  local = local_batch_size(global_batch_size, process_count)
  _check_process(process_index, process_count)
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r}: must be a non-negative integer")
  fn = _TrainBatch(
    make_batch,
    num_examples,
    global_batch_size=global_batch_size,
    process_index=process_index,
    local_size=local,
    seed=int(seed),
    num_uniforms=num_uniforms,
  )
  return _iterator(grain.MapDataset.range(sys.maxsize).map(fn), num_workers)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return -(-num_examples // global_batch_size)


def eval_iterator(
  make_batch: MakeBatch,
  num_examples: int,
  *,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  num_workers: int = 0,
) -> grain.DatasetIterator:
  """One exact pass over ``num_examples`` in order, last batch padded and masked."""
  local = local_batch_size(global_batch_size, process_count)
  _check_process(process_index, process_count)
  fn = _EvalBatch(
    make_batch,
    num_examples,
    global_batch_size=global_batch_size,
    process_index=process_index,
    local_size=local,
  )
  ds = grain.MapDataset.range(num_eval_batches(num_examples, global_batch_size)).map(fn)
  return _iterator(ds, num_workers)
