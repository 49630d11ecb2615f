"""``digits_reconstruct``: the embedded digits (the ``digits`` dataset's batches, splits and
standardization) for the task 'classify_and_reconstruct' (``normjax.tasks``), where a
lambda-conditioned model both classifies and reconstructs each image
(``normjax.models.lambda_hypernet``, the MIP experiment)."""

from __future__ import annotations

import dataclasses
import pathlib

from normjax.data import sources


def load_digits_reconstruct(opts: dict, data_dir: pathlib.Path) -> sources.Loaded:
  """The ``DATASETS`` loader: ``sources.load_digits`` with the task renamed."""
  loaded = sources.load_digits(opts, data_dir)
  info = dataclasses.replace(
    loaded.info, name="digits_reconstruct", task="classify_and_reconstruct"
  )
  return dataclasses.replace(loaded, info=info)
