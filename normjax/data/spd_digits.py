"""``spd_digits``: one 5x5 covariance descriptor per embedded digit image, for SPDNet.

Region covariance descriptors (Tuzel, Porikli, Meer, ECCV 2006) of scikit-learn's 8x8 digits (the
``digits`` TFDS builder, same train/test split): for each image, the covariance over its 64
pixels of the per-pixel features

    f = (row / 7, col / 7, I, |dI/dx|, |dI/dy|),   I = pixel / 16 in [0, 1],

the derivatives by central differences (one-sided at the border, ``np.gradient``), population
covariance C (divided by 64). These descriptors are well conditioned by nature (condition
numbers: median 8, at most 200; smallest eigenvalue >= 8e-4), so a ridge alone does not make
them ill conditioned. ``spectral_power`` p (default 1) stretches each spectrum,
C <- U diag(lam^p) U^T / mean(lam)^(p - 1) (the same eigenvectors, so no information is lost;
the scale stays comparable), then ``regularization`` * I is added:

* well conditioned (default): p = 1, ridge 1e-3;
* ill conditioned (``configs/spdnet_gbwbn.py:cond=ill``): p = 3, ridge 1e-7: condition numbers
  median ~5e2, up to ~3e6, smallest eigenvalues down to ~2e-7.

The row / col block is the same for every image before stretching; the class information is
in how intensity and gradients co-vary with position.

Batches: ``{'image': (b, 5, 5) float64 SPD, 'label': (b,) int32}`` (float32 on device unless
``JAX_ENABLE_X64``). Every descriptor is checked to be SPD when the dataset is built. Task:
'classification' (``DataInfo.image_shape`` = (5, 5): image_size is the matrix size).
"""

from __future__ import annotations

import pathlib

import numpy as np

from normjax.data import builders, sources

DEFAULT_REGULARIZATION = 1e-3
NUM_FEATURES = 5


def pixel_features(images: np.ndarray) -> np.ndarray:
  """(N, 64, 5) features of (N, 8, 8) images with values 0..16."""
  intensity = images.astype(np.float64) / 16.0
  n, h, w = intensity.shape
  rows, cols = np.meshgrid(np.arange(h) / (h - 1), np.arange(w) / (w - 1), indexing="ij")
  dy, dx = np.gradient(intensity, axis=(1, 2))
  feats = np.stack(
    [
      np.broadcast_to(rows, intensity.shape),
      np.broadcast_to(cols, intensity.shape),
      intensity,
      np.abs(dx),
      np.abs(dy),
    ],
    axis=-1,
  )
  return feats.reshape(n, h * w, NUM_FEATURES)


def covariance_descriptors(
  images: np.ndarray, regularization: float, spectral_power: float = 1.0
) -> np.ndarray:
  """(N, 5, 5) SPD descriptors (see the module docstring)."""
  feats = pixel_features(images)
  centred = feats - feats.mean(1, keepdims=True)
  cov = np.einsum("npi,npj->nij", centred, centred) / feats.shape[1]
  if spectral_power != 1:
    lam, u = np.linalg.eigh(cov)
    lam = np.maximum(lam, 0.0)
    scale = lam.mean(-1, keepdims=True) ** (spectral_power - 1)
    cov = np.einsum("nij,nj,nkj->nik", u, lam**spectral_power / scale, u)
  cov = cov + regularization * np.eye(NUM_FEATURES)
  smallest = np.linalg.eigvalsh(cov).min(axis=1)
  if not np.all(smallest > 0):
    bad = int(np.argmin(smallest))
    raise ValueError(
      f"config key data.regularization={regularization!r}: descriptor {bad} is not positive "
      f"definite (smallest eigenvalue {smallest[bad]:.3g}); use a larger ridge"
    )
  return cov


class DescriptorBatches:
  def __init__(self, descriptors: np.ndarray, labels: np.ndarray):
    self.descriptors, self.labels = descriptors, labels

  def __call__(self, indices, uniforms=None):
    del uniforms
    return {"image": self.descriptors[indices], "label": self.labels[indices].astype(np.int32)}


def load_spd_digits(opts: dict, data_dir: pathlib.Path) -> sources.Loaded:
  """The ``DATASETS`` loader for ``spd_digits`` (options: splits, ``regularization``,
  ``spectral_power``)."""
  regularization = opts.get("regularization", DEFAULT_REGULARIZATION)
  power = opts.get("spectral_power", 1.0)
  if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0.1 <= power <= 10:
    raise ValueError(
      f"config key data.spectral_power={power!r}: must be a number in [0.1, 10] (the exponent "
      f"applied to every descriptor's eigenvalues; 1 = the raw covariance)"
    )
  if (
    isinstance(regularization, bool)
    or not isinstance(regularization, (int, float))
    or not (regularization > 0)
  ):
    raise ValueError(
      f"config key data.regularization={regularization!r}: must be a number > 0 (the ridge "
      f"added to every covariance descriptor)"
    )
  builder = builders.prepared_builder("digits", data_dir)
  train_split, eval_split = opts.get("train_split") or "train", opts.get("eval_split") or "test"
  for key, split in (("train_split", train_split), ("eval_split", eval_split)):
    sources._check_split(key, split, builder.info.splits)  # pylint: disable=protected-access
  makers = {}
  for split in {train_split, eval_split}:
    arrays = sources.read_all_images(builder.as_data_source(split=split))
    descriptors = covariance_descriptors(arrays.images[..., 0], float(regularization), float(power))
    makers[split] = DescriptorBatches(descriptors, arrays.labels)
  info = sources.DataInfo(
    name="spd_digits",
    task="classification",
    num_classes=10,
    image_shape=(NUM_FEATURES, NUM_FEATURES),
    vocab_size=None,
    seq_len=None,
    num_train=len(makers[train_split].labels),
    num_eval=len(makers[eval_split].labels),
    unigram_entropy=None,
    eval_split=eval_split,
    train_split=train_split,
  )
  return sources.Loaded(info, makers[train_split], makers[eval_split], num_uniforms=0)
