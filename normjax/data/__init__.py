"""Data for normjax: TFDS data sources (array_record) read through grain.

``config.data`` (an ``ml_collections.ConfigDict``) selects a dataset by ``name``:

===========  ==============================================================
``digits``   scikit-learn's 8x8 digits, built into the data_dir on first use;
             train 1438 / test 359 images, 10 classes (``builders.py``).
``pystdlib`` byte-level text (vocab 256) of this interpreter's standard
             library, built on first use, split by file (``builders.py``).
``tokens``   nanoGPT ``train.bin`` / ``val.bin`` uint16 files in ``path``.
``masked_digits`` the digits with a random square hole (``hole_size``, default 4),
             task 'inpainting' (``masked_digits.py``).
``spd_digits`` one 5x5 covariance descriptor per digit (``regularization``, default
             1e-3; ``spectral_power``, default 1), for SPDNet (``spd_digits.py``).
``digits_reconstruct`` the ``digits`` batches for the task 'classify_and_reconstruct'
             (lambda-weighted CE + reconstruction; ``digits_reconstruct.py``).
other        a TFDS image-classification dataset prepared (array_record) in
             the data_dir: ``cifar10``, ``imagenet2012``, ...
===========  ==============================================================

Keys read from ``config.data`` (a key set to None counts as unset):
``name``; ``data_dir`` (default ``$NORMJAX_DATA_DIR``, else
``$XDG_CACHE_HOME/normjax/tensorflow_datasets`` or
``~/.cache/normjax/tensorflow_datasets``); ``train_split``, ``eval_split``
(TFDS slicing allowed, e.g. ``'train[:90%]'``; token files: file stems);
``num_workers`` (grain worker processes, default 0 = in-process);
LM: ``seq_len`` (default 128), ``eval_windows`` (cap on eval windows, spread
evenly over the eval stream; default all); tokens: ``path``, ``vocab_size``
(default: ``meta.json``'s, else 50304, nanoGPT's padded GPT-2 vocabulary); TFDS images:
``image_size`` (default: native size for <= 64 px images, else 224),
``augment`` (default True); digits and TFDS images: ``classes`` (a tuple of labels kept
and relabelled 0.. in that order, ``class_subset.py``). Any other key, or a key that does
not apply to the chosen dataset, is a ValueError.

Batches are dicts of numpy arrays: classification ``image`` float32
(b, H, W, C), ``label`` int32 (b,); LM ``inputs``, ``targets`` int32 (b, T)
with ``targets[:, t] = inputs[:, t + 1]`` within the stream; eval batches add
``mask`` float32 (b,). ``b = global_batch_size // process_count``. Sharding,
shuffling and iterator state: ``pipeline.py``. Image preprocessing:
``sources.py``, ``augment.py``.

Example::

  info = data.get_info(config.data)
  it = data.train_iterator(config.data, global_batch_size=128, seed=0,
                           process_index=jax.process_index(),
                           process_count=jax.process_count())
  batch = next(it)
  ckpt_args = grain.checkpoint.CheckpointSave(it)  # item of an orbax checkpoint
"""

from __future__ import annotations

import functools
import os
import pathlib

import grain

from normjax.data import (
  class_subset,
  digits_reconstruct,
  masked_digits,
  pipeline,
  sources,
  spd_digits,
)
from normjax.data.sources import DataInfo, default_data_dir
from normjax.registry import Registry

__all__ = [
  "DataInfo",
  "DATASETS",
  "get_info",
  "train_iterator",
  "eval_iterator",
  "data_dir",
  "default_data_dir",
]

# Loaders by name: fn(options: dict, data_dir: Path) -> sources.Loaded. Names not
# registered here are read as TFDS image-classification datasets.
DATASETS = Registry("dataset", "data.name")
DATASETS.register("digits", sources.load_digits)
DATASETS.register("pystdlib", sources.load_pystdlib)
DATASETS.register("tokens", sources.load_tokens)
DATASETS.register("masked_digits", masked_digits.load_masked_digits)
DATASETS.register("spd_digits", spd_digits.load_spd_digits)
DATASETS.register("digits_reconstruct", digits_reconstruct.load_digits_reconstruct)

_COMMON_KEYS = ("name", "data_dir", "train_split", "eval_split", "num_workers")
_LM_KEYS = ("seq_len", "eval_windows")
KEYS = {
  "digits": _COMMON_KEYS + ("classes",),
  "pystdlib": _COMMON_KEYS + _LM_KEYS,
  "tokens": ("name", "train_split", "eval_split", "num_workers", "path", "vocab_size") + _LM_KEYS,
  "tfds": _COMMON_KEYS + ("image_size", "augment", "classes"),
  "masked_digits": _COMMON_KEYS + ("hole_size",),
  "spd_digits": _COMMON_KEYS + ("regularization", "spectral_power"),
  "digits_reconstruct": _COMMON_KEYS,
}
ALL_KEYS = frozenset(k for keys in KEYS.values() for k in keys)
# Keys a dataset accepts only with the value it has anyway.
_FIXED = {"digits": {"image_size": 8}, "pystdlib": {"vocab_size": 256}}


def _positive_int(key, value, minimum=1):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"config key data.{key}={value!r}: must be an integer >= {minimum}")


_CHECKS = {
  "seq_len": _positive_int,
  "eval_windows": _positive_int,
  "image_size": _positive_int,
  "hole_size": _positive_int,
  "vocab_size": _positive_int,
  "num_workers": lambda k, v: _positive_int(k, v, minimum=0),
  "classes": class_subset.check_classes,
}


def _options(cfg) -> dict:
  """Validated, None-free options of ``config.data`` as a plain dict."""
  raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  name = raw.get("name")
  if not isinstance(name, str) or not name:
    raise ValueError(
      f"config key data.name={name!r}: must name a dataset: "
      f"{', '.join(DATASETS.names())} or a TFDS image dataset (cifar10, ...)"
    )
  kind = name if name in DATASETS else "tfds"
  valid = KEYS.get(kind, _COMMON_KEYS)
  opts = {}
  for key, value in raw.items():
    if key not in ALL_KEYS:
      raise ValueError(
        f"config key data.{key}={value!r}: unknown data option; "
        f"data.name={name!r} accepts {', '.join(valid)}"
      )
    if value is None:
      continue
    if key not in valid:
      if _FIXED.get(kind, {}).get(key) == value:
        continue
      raise ValueError(
        f"config key data.{key}={value!r} does not apply to data.name={name!r}"
        f", which accepts {', '.join(valid)}"
      )
    if key in _CHECKS:
      _CHECKS[key](key, value)
    if key == "augment" and not isinstance(value, bool):
      raise ValueError(f"config key data.augment={value!r}: must be True or False")
    opts[key] = tuple(value) if key == "classes" else value
  return opts


def data_dir(cfg) -> pathlib.Path:
  """``cfg.data_dir`` if set, else ``default_data_dir()``."""
  given = cfg.get("data_dir")
  return pathlib.Path(os.fspath(given)).expanduser() if given else default_data_dir()


@functools.lru_cache(maxsize=8)
def _load_cached(frozen_options: tuple, directory: str) -> sources.Loaded:
  opts = dict(frozen_options)
  loader = DATASETS.get(opts["name"]) if opts["name"] in DATASETS else sources.load_tfds_images
  if "classes" in opts:
    whole = _load_cached(
      tuple(sorted((k, v) for k, v in opts.items() if k != "classes")), directory
    )
    return class_subset.filter_classes(whole, opts["classes"])
  return loader(opts, pathlib.Path(directory))


def _load(cfg) -> tuple[sources.Loaded, dict]:
  opts = _options(cfg)
  load_opts = {k: v for k, v in opts.items() if k not in ("num_workers", "data_dir")}
  return _load_cached(tuple(sorted(load_opts.items())), os.fspath(data_dir(cfg))), opts


def get_info(cfg) -> DataInfo:
  """Shapes, sizes and baselines of the dataset ``cfg`` names (builds it if embedded)."""
  return _load(cfg)[0].info


def train_iterator(
  cfg, *, global_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
  """Endless, seeded, per-epoch reshuffled iterator over this process's rows.

  Each call to ``next`` gives this process's ``global_batch_size //
  process_count`` rows of the next global batch. ``get_state()`` /
  ``set_state()`` and ``grain.checkpoint.CheckpointSave/Restore`` (orbax) resume it.
  """
  loaded, opts = _load(cfg)
  return pipeline.train_iterator(
    loaded.train_batches,
    loaded.info.num_train,
    global_batch_size=global_batch_size,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    num_uniforms=loaded.num_uniforms,
    num_workers=opts.get("num_workers", 0),
  )


def eval_iterator(
  cfg, *, global_batch_size: int, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
  """One exact pass over the eval split; padding rows have ``mask`` 0."""
  loaded, opts = _load(cfg)
  return pipeline.eval_iterator(
    loaded.eval_batches,
    loaded.info.num_eval,
    global_batch_size=global_batch_size,
    process_index=process_index,
    process_count=process_count,
    num_workers=opts.get("num_workers", 0),
  )


def split_arrays(cfg, split_name: str):
  """Every real example of split ``split_name`` as ``(images, labels)`` NumPy arrays (in the
  split's order; for the commands that hold a whole split in memory: continual, federated)."""
  import ml_collections
  import numpy as np

  cfg = ml_collections.ConfigDict(dict(cfg))
  cfg.eval_split = split_name
  images, labels = [], []
  for batch in eval_iterator(cfg, global_batch_size=256):
    real = batch["mask"] > 0
    images.append(batch["image"][real])
    labels.append(batch["label"][real])
  return np.concatenate(images), np.concatenate(labels)
