"""Language-model data: fixed-length windows over a token stream.

A split is one 1-D token stream (pystdlib: the split's files concatenated in
path order, vocabulary = the 256 byte values; ``tokens``: a nanoGPT
``{split}.bin`` file of little-endian uint16 ids, memory-mapped). A ``meta.json``
beside the files (written by ``python -m normjax.tools.prepare_text``) may say
``"dtype": "uint32"`` (little-endian uint32 ids, for vocabularies over 65536) and
give the ``vocab_size``; without it the files are nanoGPT's uint16. Window ``k``
starts at ``k T`` (T = seq_len) and holds ``T + 1`` tokens:
``inputs = w[:-1]``, ``targets = w[1:]``; there are ``(len - 1) // T`` of them,
so every token but the first is a target exactly once per epoch.

``unigram_cross_entropy`` is the baseline printed next to a language model's
eval loss: the cross-entropy in nats per token of the eval targets under the
add-one-smoothed unigram distribution of the train stream,
``-sum_v q(v) log((c_v + 1) / (N + V))`` with ``c`` the train counts (N their
sum, V the vocabulary size) and ``q`` the eval targets' empirical distribution.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

NANOGPT_VOCAB_SIZE = 50304  # GPT-2's 50257 BPE ids padded to a multiple of 64, as nanoGPT does
COUNT_CAP = 2**26  # train tokens counted for the unigram baseline (in 64 spread chunks)
_COUNT_CHUNKS = 64

META_FILE = "meta.json"  # the sidecar of normjax.tools.prepare_text
TOKEN_DTYPES = {"uint16": "<u2", "uint32": "<u4"}
PREPARE_HINT = (
  "Write them with python -m normjax.tools.prepare_text --tokenizer TOKENIZER --out DIR "
  "FILES..., or with nanoGPT's prepare scripts (https://github.com/karpathy/nanoGPT): "
  "`python data/openwebtext/prepare.py` (GPT-2 BPE, ~17 GB) or "
  "`python data/shakespeare/prepare.py` (GPT-2 BPE, 1 MB), then set "
  "config.data.path=<nanoGPT>/data/<dataset>. Each file is a flat array of "
  "little-endian uint16 token ids (np.array(ids, np.uint16).tofile(path))."
)


class TokenFile:
  """A uint16 (or uint32) token file, memory-mapped on first use (pickles as its path)."""

  def __init__(self, path: str | os.PathLike, dtype: str = "uint16"):
    self.path = pathlib.Path(path)
    self.dtype = TOKEN_DTYPES[dtype]
    width = np.dtype(self.dtype).itemsize
    size = self.path.stat().st_size
    if size % width:
      raise ValueError(f"{self.path}: {size} bytes is not a whole number of {dtype} tokens")
    self._len = size // width
    self._array = None

  def __len__(self) -> int:
    return self._len

  @property
  def array(self) -> np.ndarray:
    if self._array is None:
      self._array = np.memmap(self.path, dtype=self.dtype, mode="r")
    return self._array

  def __getitem__(self, index):
    return self.array[index]

  def __getstate__(self):
    return {"path": self.path, "dtype": self.dtype, "_len": self._len, "_array": None}


def token_meta(path: str | os.PathLike) -> dict:
  """``{path}/meta.json`` (``prepare_text``'s sidecar) as a dict; ``{}`` when absent."""
  file = pathlib.Path(path).expanduser() / META_FILE
  if not file.is_file():
    return {}
  with open(file) as f:
    meta = json.load(f)
  dtype = meta.get("dtype", "uint16")
  if dtype not in TOKEN_DTYPES:
    raise ValueError(f"{file}: dtype {dtype!r} is not one of {', '.join(TOKEN_DTYPES)}")
  return meta


def open_token_split(path: str | os.PathLike, split: str) -> TokenFile:
  """``{path}/{split}.bin``, or a FileNotFoundError that says how to make it."""
  file = pathlib.Path(path).expanduser() / f"{split}.bin"
  if not file.is_file():
    raise FileNotFoundError(
      f"token file {file} not found (config.data.path={os.fspath(path)!r}, split "
      f"{split!r}). {PREPARE_HINT}"
    )
  return TokenFile(file, token_meta(path).get("dtype", "uint16"))


def num_windows(stream_length: int, seq_len: int) -> int:
  return max((stream_length - 1) // seq_len, 0)


def eval_window_starts(stream_length: int, seq_len: int, max_windows: int | None) -> np.ndarray:
  """Starts of the eval windows: all, or ``max_windows`` of them spread evenly."""
  n = num_windows(stream_length, seq_len)
  k = n if max_windows is None else min(max_windows, n)
  return (np.arange(k, dtype=np.int64) * n // max(k, 1)) * seq_len


class Windows:
  """Example index -> ``{'inputs', 'targets'}`` int32 windows of a token stream.

  Args:
    stream: 1-D array-like of token ids (numpy array or ``TokenFile``).
    seq_len: T.
    starts: window start offsets per example index; None means ``index * T``.
  """

  def __init__(self, stream, seq_len: int, starts: np.ndarray | None = None):
    self.stream = stream
    self.seq_len = seq_len
    self.starts = starts
    self._offsets = np.arange(seq_len + 1)

  def __len__(self) -> int:
    if self.starts is not None:
      return len(self.starts)
    return num_windows(len(self.stream), self.seq_len)

  def __call__(self, indices: np.ndarray, uniforms=None) -> dict[str, np.ndarray]:
    del uniforms
    indices = np.asarray(indices, np.int64)
    starts = indices * self.seq_len if self.starts is None else self.starts[indices]
    window = np.asarray(self.stream[starts[:, None] + self._offsets]).astype(np.int32)
    return {"inputs": window[:, :-1], "targets": window[:, 1:]}


def _spread_chunks(length: int, cap: int) -> list[tuple[int, int]]:
  if length <= cap:
    return [(0, length)]
  size = cap // _COUNT_CHUNKS
  return [(s, s + size) for s in np.linspace(0, length - size, _COUNT_CHUNKS).astype(np.int64)]


def token_counts(stream, vocab_size: int, cap: int = COUNT_CAP) -> np.ndarray:
  """Unigram counts of the stream (of at most ``cap`` tokens in spread chunks if longer)."""
  counts = np.zeros(vocab_size, np.int64)
  for lo, hi in _spread_chunks(len(stream), cap):
    for s in range(lo, hi, 2**24):
      chunk = np.asarray(stream[s : min(s + 2**24, hi)])
      _check_ids(chunk, vocab_size)
      counts += np.bincount(chunk, minlength=vocab_size)
  return counts


def target_counts(windows: Windows, vocab_size: int, chunk: int = 4096) -> np.ndarray:
  counts = np.zeros(vocab_size, np.int64)
  for lo in range(0, len(windows), chunk):
    targets = windows(np.arange(lo, min(lo + chunk, len(windows))))["targets"]
    _check_ids(targets, vocab_size)
    counts += np.bincount(targets.ravel(), minlength=vocab_size)
  return counts


def _check_ids(ids: np.ndarray, vocab_size: int):
  if ids.size and int(ids.max()) >= vocab_size:
    raise ValueError(
      f"config key data.vocab_size={vocab_size}: the data holds token id {int(ids.max())}; "
      f"vocab_size must exceed every id (nanoGPT's GPT-2 files need >= 50257, "
      f"default {NANOGPT_VOCAB_SIZE})"
    )


def unigram_cross_entropy(train_counts: np.ndarray, eval_counts: np.ndarray) -> float:
  """Nats per token of eval targets under the add-one-smoothed train unigram model."""
  log_p = np.log(train_counts + 1.0) - np.log(train_counts.sum() + len(train_counts))
  q = eval_counts / max(eval_counts.sum(), 1)
  return float(-(q * log_p).sum())
