"""Embedded datasets as TFDS builders, built offline on first use.

Both builders write array_record files into a local TFDS data_dir, so every
dataset in normjax, embedded or real, is read the same way: ``tfds`` data
source -> ``grain``. Building needs no TensorFlow and no network.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (``load_digits``;
  1797 images, 10 classes, pixel values 0..16), stored as ``uint8`` images of
  shape (8, 8, 1). Fixed split by position in sklearn's order: every fifth
  image (index % 5 == 4) is ``test`` (359 images), the rest ``train`` (1438).
* ``pystdlib``: the running interpreter's standard-library ``.py`` files
  (``sysconfig.get_paths()['stdlib']``) as raw bytes, one record per file.
  Left out: ``site-packages``/``dist-packages`` (third-party code), the test
  suites (directories named ``test``, ``tests``, ``idle_test``: 17 of 31 MB on
  CPython 3.11, with deliberately odd encodings and generated data) and
  ``pydoc_data`` (one 0.76 MB generated file of prose that would dominate
  whichever split it fell into). A file is in ``validation`` iff the first 8
  bytes of sha256 of its '/'-separated relative path, as an integer, are 0
  mod 10 (~10% of files), else in ``train``; so the split is by file and the
  same on every machine. The corpus differs between Python versions, hence the
  builder config is named after the interpreter (``cpython3_11_7``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import sys
import sysconfig

import numpy as np
import tensorflow_datasets as tfds

DIGITS_TEST_EVERY = 5  # index % 5 == 4 -> test
STDLIB_EXCLUDED_DIRS = frozenset(
  {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__"}
)
STDLIB_VALIDATION_MOD = 10
# _NO_CODE_PATH_NOTE: tfds locates a builder's source folder (``code_path``) to look
# for a download-checksums file; for a class inside a package it does so through the
# ``importlib_resources`` backport, which Python >= 3.9 installs do not have. These
# builders download nothing, so they declare no code path.


def digits_split_indices(num_examples: int) -> dict[str, np.ndarray]:
  """Positions in sklearn's digits order that form each split."""
  index = np.arange(num_examples)
  is_test = index % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1
  return {"train": index[~is_test], "test": index[is_test]}


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """scikit-learn's 8x8 digits as a TFDS dataset (see module docstring)."""

  name = "digits"
  code_path = None  # see _NO_CODE_PATH_NOTE
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description="scikit-learn load_digits: 8x8 images, values 0..16, 10 classes.",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(8, 8, 1)),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]
    return {
      split: self._generate_examples(images, digits.target, index)
      for split, index in digits_split_indices(len(images)).items()
    }

  def _generate_examples(self, images, labels, index):
    from PIL import Image  # pylint: disable=g-import-not-at-top

    for i in index:
      # A PIL image is PNG-encoded by PIL; a numpy array would need TensorFlow.
      yield (
        int(i),
        {"image": Image.fromarray(images[i, :, :, 0], mode="L"), "label": int(labels[i])},
      )


def stdlib_dir() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: pathlib.Path | None = None) -> list[str]:
  """Sorted '/'-separated paths, relative to the stdlib root, of corpus files."""
  root = root or stdlib_dir()
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS]
    rel = pathlib.Path(dirpath).relative_to(root)
    files += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
  return sorted(files)


def stdlib_split(relative_path: str) -> str:
  digest = hashlib.sha256(relative_path.encode()).digest()
  if int.from_bytes(digest[:8], "big") % STDLIB_VALIDATION_MOD == 0:
    return "validation"
  return "train"


def interpreter_tag() -> str:
  v = sys.version_info
  return f"{sys.implementation.name}{v.major}_{v.minor}_{v.micro}"


class PyStdlib(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Standard-library source files as bytes (see module docstring)."""

  name = "pystdlib"
  code_path = None  # see _NO_CODE_PATH_NOTE
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, **kwargs):
    kwargs.setdefault(
      "config",
      tfds.core.BuilderConfig(
        name=interpreter_tag(), description=f"stdlib of {sys.version.split()[0]}"
      ),
    )
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description="Python standard-library .py files, raw bytes, split by file.",
      features=tfds.features.FeaturesDict(
        {
          "path": tfds.features.Text(),
          "text": tfds.features.Text(),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    files = stdlib_files()
    by_split = {"train": [], "validation": []}
    for f in files:
      by_split[stdlib_split(f)].append(f)
    return {split: self._generate_examples(paths) for split, paths in by_split.items()}

  def _generate_examples(self, paths):
    root = stdlib_dir()
    for p in paths:
      yield p, {"path": p, "text": (root / p).read_bytes()}


EMBEDDED_BUILDERS = {"digits": Digits, "pystdlib": PyStdlib}


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepared_builder(name: str, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
  """Returns the embedded dataset ``name`` in ``data_dir``, building it first if needed.

  Concurrent callers (several processes of one run) serialise on a lock file
  beside the dataset; the first builds, the others then find it prepared.
  """
  builder_cls = EMBEDDED_BUILDERS[name]
  builder = builder_cls(data_dir=os.fspath(data_dir), file_format="array_record")
  if builder.is_prepared():
    return builder
  with _file_lock(pathlib.Path(data_dir) / f".{name}.lock"):
    builder = builder_cls(data_dir=os.fspath(data_dir), file_format="array_record")
    if not builder.is_prepared():
      builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
      )
  return builder_cls(data_dir=os.fspath(data_dir), file_format="array_record")
