"""Datasets by name: where they live, how they are read, what a batch holds.

Each loader returns a ``Loaded``: the ``DataInfo`` plus two batch makers
(example indices [+ augmentation uniforms] -> dict of numpy arrays) that the
grain pipelines in ``pipeline.py`` call once per batch.

Image batches: ``{'image': float32 (b, H, W, C), 'label': int32 (b,)}``.
* digits: read into memory once; ``image = (x / 16 - m) / s`` with ``m``, ``s``
  the scalar mean and standard deviation of ``x / 16`` over all train pixels
  (so train images have mean 0 and variance 1); no augmentation.
* any TFDS image-classification dataset (``supervised_keys`` = (image, label)),
  read with ``tfds`` data sources (array_record). A split of small images that
  decodes to at most ``IN_MEMORY_MAX_BYTES`` (cifar10: 150 MB) is decoded once
  into memory (each process holds all of it; cifar10 takes seconds), anything
  else is read and decoded batch by batch (use ``num_workers``). Images whose
  stored shape is fixed and at most 64 px ("small", e.g. cifar10) keep their
  size unless ``image_size`` is set (then a bilinear resize follows); train
  augmentation ``pad_crop_flip``. Larger or variable-size images (imagenet2012)
  become ``image_size`` (default 224) squares: train ``random_resized_crop``,
  eval ``resize_center_crop``. Normalization: RGB with the ImageNet channel
  mean/std of ``x / 255``, other channel counts to [-1, 1]
  (mean = std = 0.5).

LM batches: ``{'inputs': int32 (b, T), 'targets': int32 (b, T)}`` (``tokens.py``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from normjax.data import augment, builders, tokens
from normjax.data.pipeline import MakeBatch

SMALL_IMAGE_MAX = 64
IN_MEMORY_MAX_BYTES = 2**31  # small-image splits up to this size are decoded once, kept in RAM
DEFAULT_LARGE_IMAGE_SIZE = 224
PYSTDLIB_VOCAB_SIZE = 256


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What a model and a trainer need to know about a dataset.

  Attributes:
    name: ``config.data.name``.
    task: 'classification' or 'lm'.
    num_classes: classes (classification), else None.
    image_shape: (H, W, C) of a preprocessed image (classification), else None.
    vocab_size: token vocabulary (lm), else None.
    seq_len: tokens per example (lm), else None.
    num_train: train examples (lm: windows per epoch).
    num_eval: eval examples (lm: eval windows, after ``eval_windows``).
    unigram_entropy: lm only: cross-entropy in nats/token of the eval targets
      under the add-one-smoothed train unigram model (``tokens.py``), the loss
      to beat; None for classification.
    eval_split: the split evaluated on.
    train_split: the split trained on.
  """

  name: str
  task: str
  num_classes: int | None
  image_shape: tuple[int, int, int] | None
  vocab_size: int | None
  seq_len: int | None
  num_train: int
  num_eval: int
  unigram_entropy: float | None
  eval_split: str
  train_split: str


@dataclasses.dataclass(frozen=True)
class Loaded:
  info: DataInfo
  train_batches: MakeBatch
  eval_batches: MakeBatch
  num_uniforms: int  # augmentation uniforms per training example


def default_data_dir() -> pathlib.Path:
  """``$NORMJAX_DATA_DIR``, else ``$XDG_CACHE_HOME`` (or ~/.cache) /normjax/tensorflow_datasets."""
  if os.environ.get("NORMJAX_DATA_DIR"):
    return pathlib.Path(os.environ["NORMJAX_DATA_DIR"]).expanduser()
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return pathlib.Path(cache, "normjax", "tensorflow_datasets").expanduser()


# ---------------------------------------------------------------- image batches


class ArrayImages:
  """In-memory images (N, H, W, C) uint8 and labels (N,)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __call__(self, indices):
    return self.images[indices], self.labels[indices]


class RecordImages:
  """Images and labels read from a tfds data source, decoded by tfds (PIL/OpenCV)."""

  def __init__(self, source, image_key: str, label_key: str):
    self.source, self.image_key, self.label_key = source, image_key, label_key
    self.channels = source.dataset_info.features[image_key].shape[-1]

  def _fix_channels(self, image: np.ndarray) -> np.ndarray:
    """Grayscale -> RGB and RGBA -> RGB, for files whose mode differs from the feature's."""
    image = image[..., None] if image.ndim == 2 else image
    if image.shape[-1] == 1 and self.channels == 3:
      return np.repeat(image, 3, axis=-1)
    return image[..., : self.channels] if image.shape[-1] > self.channels else image

  def __call__(self, indices):
    records = self.source.__getitems__([int(i) for i in indices])
    return (
      [self._fix_channels(r[self.image_key]) for r in records],
      np.array([r[self.label_key] for r in records], np.int64),
    )


class ImageBatches:
  """Indices (+ uniforms) -> normalized, optionally augmented image batch."""

  def __init__(
    self,
    read,
    *,
    size: int,
    small: bool,
    native: tuple | None,
    train: bool,
    augment_images: bool,
    mean,
    std,
    scale: float,
  ):
    self.read, self.size, self.small, self.native = read, size, small, native
    self.augment = train and augment_images
    self.mean, self.std, self.scale = mean, std, scale

  @property
  def num_uniforms(self) -> int:
    if not self.augment:
      return 0
    return augment.PAD_CROP_FLIP_UNIFORMS if self.small else augment.RRC_UNIFORMS

  def __call__(self, indices, uniforms=None):
    images, labels = self.read(indices)
    if self.small:
      images = np.stack(images) if isinstance(images, list) else images
      if self.augment:
        images = augment.pad_crop_flip(images, uniforms)
      if self.size != self.native[0] or self.size != self.native[1]:
        images = np.stack([augment.resize(im, self.size) for im in images])
    elif self.augment:
      images = np.stack(
        [augment.random_resized_crop(im, u, self.size) for im, u in zip(images, uniforms)]
      )
    else:
      images = np.stack([augment.resize_center_crop(im, self.size) for im in images])
    return {
      "image": augment.normalize(images, self.mean, self.std, self.scale),
      "label": labels.astype(np.int32),
    }


def read_all_images(
  source, image_key: str = "image", label_key: str = "label", chunk: int = 1024
) -> ArrayImages:
  """Decodes a whole split into memory (chunks in threads: PIL decodes outside the GIL)."""
  read = RecordImages(source, image_key, label_key)
  chunks = [range(lo, min(lo + chunk, len(source))) for lo in range(0, len(source), chunk)]
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    parts = list(pool.map(read, chunks))
  return ArrayImages(
    np.stack([im for images, _ in parts for im in images]),
    np.concatenate([labels for _, labels in parts]),
  )


def _split_name(split: str) -> str:
  return split.split("[", 1)[0]


def _check_split(key: str, split: str, available) -> None:
  if _split_name(split) not in available:
    raise ValueError(
      f"config key data.{key}={split!r}: no such split; "
      f"available: {', '.join(sorted(available))} (TFDS slicing such as "
      f"'train[:90%]' is allowed)"
    )


def load_digits(opts: dict, data_dir: pathlib.Path) -> Loaded:
  builder = builders.prepared_builder("digits", data_dir)
  train_split, eval_split = opts.get("train_split") or "train", opts.get("eval_split") or "test"
  for key, split in (("train_split", train_split), ("eval_split", eval_split)):
    _check_split(key, split, builder.info.splits)
  arrays = {
    split: read_all_images(builder.as_data_source(split=split))
    for split in {"train", train_split, eval_split}
  }
  pixels = arrays["train"].images / 16.0
  mean, std = float(pixels.mean()), float(pixels.std())
  makers = {}
  for split, train in ((train_split, True), (eval_split, False)):
    makers[split, train] = ImageBatches(
      arrays[split],
      size=8,
      small=True,
      native=(8, 8),
      train=train,
      augment_images=False,
      mean=mean,
      std=std,
      scale=16.0,
    )
  info = DataInfo(
    name="digits",
    task="classification",
    num_classes=10,
    image_shape=(8, 8, 1),
    vocab_size=None,
    seq_len=None,
    num_train=len(makers[train_split, True].read.labels),
    num_eval=len(makers[eval_split, False].read.labels),
    unigram_entropy=None,
    eval_split=eval_split,
    train_split=train_split,
  )
  return Loaded(info, makers[train_split, True], makers[eval_split, False], 0)


# ---------------------------------------------------------------- TFDS images


def _tfds_prepare_message(name: str, data_dir: pathlib.Path, looked_at) -> str:
  return (
    f"TFDS dataset {name!r} (config.data.name) is not prepared in data_dir {data_dir} "
    f"(looked for {looked_at}). Prepare it once, as array_record files:\n"
    f"  pip install tensorflow-cpu  # tfds needs TensorFlow to BUILD most datasets\n"
    f"  tfds build {name} --data_dir={data_dir} --file_format=array_record\n"
    f"(imagenet2012 needs its tar files in {data_dir}/downloads/manual first: "
    f"https://www.tensorflow.org/datasets/catalog/imagenet2012). Or point "
    f"config.data.data_dir or $NORMJAX_DATA_DIR at a TFDS data_dir that already holds it."
  )


def tfds_builder(name: str, data_dir: pathlib.Path) -> tfds.core.DatasetBuilder:
  """The prepared array_record builder for ``name``, or an error saying how to prepare it."""
  try:
    builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  except tfds.core.DatasetNotFoundError:
    raise FileNotFoundError(
      f"config.data.name={name!r}: not an embedded dataset (digits, pystdlib, tokens), "
      f"not a TFDS dataset, and not found in data_dir {data_dir}. "
      + _tfds_prepare_message(name, data_dir, data_dir / name)
    ) from None
  if not builder.is_prepared():
    raise FileNotFoundError(_tfds_prepare_message(name, data_dir, builder.data_path))
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise FileNotFoundError(
      f"TFDS dataset {name!r} in {builder.data_path} is stored as "
      f"{builder.info.file_format.value}, but normjax reads array_record (random access, no "
      f"TensorFlow). Convert it once:\n  tfds convert_format --dataset_version_dir="
      f"{builder.data_path} --out_file_format=array_record\nor rebuild it with\n"
      f"  tfds build {name} --data_dir={data_dir} --file_format=array_record"
    )
  return builder


def load_tfds_images(opts: dict, data_dir: pathlib.Path) -> Loaded:
  name = opts["name"]
  builder = tfds_builder(name, data_dir)
  info = builder.info
  keys = info.supervised_keys
  if not keys or len(keys) != 2 or not isinstance(info.features[keys[0]], tfds.features.Image):
    raise ValueError(
      f"config key data.name={name!r}: not an image-classification dataset "
      f"(its supervised_keys are {keys!r}, expected (image, label))"
    )
  image_key, label_key = keys
  splits = info.splits
  train_split = opts.get("train_split") or "train"
  eval_split = opts.get("eval_split") or ("test" if "test" in splits else "validation")
  for key, split in (("train_split", train_split), ("eval_split", eval_split)):
    _check_split(key, split, splits)
  height, width, channels = info.features[image_key].shape
  small = height is not None and width is not None and max(height, width) <= SMALL_IMAGE_MAX
  size = opts.get("image_size") or (max(height, width) if small else DEFAULT_LARGE_IMAGE_SIZE)
  mean, std = (
    (augment.IMAGENET_MEAN, augment.IMAGENET_STD)
    if channels == 3
    else ((0.5,) * channels, (0.5,) * channels)
  )
  augment_images = opts.get("augment", True)
  makers = {}
  for split, train in ((train_split, True), (eval_split, False)):
    source = builder.as_data_source(split=split)
    if small and len(source) * height * width * channels <= IN_MEMORY_MAX_BYTES:
      read = read_all_images(source, image_key, label_key)
    else:
      read = RecordImages(source, image_key, label_key)
    makers[train] = (
      len(source),
      ImageBatches(
        read,
        size=size,
        small=small,
        native=(height, width),
        train=train,
        augment_images=augment_images,
        mean=mean,
        std=std,
        scale=255.0,
      ),
    )
  data_info = DataInfo(
    name=name,
    task="classification",
    num_classes=info.features[label_key].num_classes,
    image_shape=(size, size, channels),
    vocab_size=None,
    seq_len=None,
    num_train=makers[True][0],
    num_eval=makers[False][0],
    unigram_entropy=None,
    eval_split=eval_split,
    train_split=train_split,
  )
  return Loaded(data_info, makers[True][1], makers[False][1], makers[True][1].num_uniforms)


# ---------------------------------------------------------------- language modelling


def _lm_loaded(name, train_stream, eval_stream, opts, vocab_size, train_split, eval_split):
  seq_len = opts.get("seq_len") or 128
  for split, stream in ((train_split, train_stream), (eval_split, eval_stream)):
    if len(stream) < seq_len + 1:
      raise ValueError(
        f"config key data.seq_len={seq_len}: split {split!r} of {name!r} has "
        f"only {len(stream)} tokens, fewer than seq_len + 1"
      )
  train = tokens.Windows(train_stream, seq_len)
  starts = tokens.eval_window_starts(len(eval_stream), seq_len, opts.get("eval_windows"))
  evaluation = tokens.Windows(eval_stream, seq_len, starts)
  entropy = tokens.unigram_cross_entropy(
    tokens.token_counts(train_stream, vocab_size), tokens.target_counts(evaluation, vocab_size)
  )
  info = DataInfo(
    name=name,
    task="lm",
    num_classes=None,
    image_shape=None,
    vocab_size=vocab_size,
    seq_len=seq_len,
    num_train=len(train),
    num_eval=len(evaluation),
    unigram_entropy=entropy,
    eval_split=eval_split,
    train_split=train_split,
  )
  return Loaded(info, train, evaluation, 0)


def pystdlib_stream(builder, split: str) -> np.ndarray:
  """The split's files concatenated in path order, as uint8 bytes."""
  source = builder.as_data_source(split=split)
  records = sorted(source.__getitems__(list(range(len(source)))), key=lambda r: r["path"])
  return np.frombuffer(b"".join(r["text"] for r in records), np.uint8)


def load_pystdlib(opts: dict, data_dir: pathlib.Path) -> Loaded:
  builder = builders.prepared_builder("pystdlib", data_dir)
  train_split = opts.get("train_split") or "train"
  eval_split = opts.get("eval_split") or "validation"
  for key, split in (("train_split", train_split), ("eval_split", eval_split)):
    _check_split(key, split, builder.info.splits)
  return _lm_loaded(
    "pystdlib",
    pystdlib_stream(builder, train_split),
    pystdlib_stream(builder, eval_split),
    opts,
    PYSTDLIB_VOCAB_SIZE,
    train_split,
    eval_split,
  )


def load_tokens(opts: dict, data_dir: pathlib.Path) -> Loaded:
  del data_dir
  if not opts.get("path"):
    raise ValueError(
      "config key data.path is required for data.name='tokens': the "
      "directory holding nanoGPT's train.bin and val.bin. " + tokens.PREPARE_HINT
    )
  train_split = opts.get("train_split") or "train"
  eval_split = opts.get("eval_split") or "val"
  return _lm_loaded(
    "tokens",
    tokens.open_token_split(opts["path"], train_split),
    tokens.open_token_split(opts["path"], eval_split),
    opts,
    opts.get("vocab_size")
    or tokens.token_meta(opts["path"]).get("vocab_size")
    or tokens.NANOGPT_VOCAB_SIZE,
    train_split,
    eval_split,
  )
