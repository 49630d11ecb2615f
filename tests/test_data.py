"""Tests for normjax.data: builders, splits, batches, determinism, sharding, state."""

import hashlib
import os
import pathlib

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from normjax import data
from normjax.data import augment, builders, pipeline, sources, tokens


def config(**kwargs):
  return ml_collections.ConfigDict(kwargs)


# ------------------------------------------------------------------ fixtures


class FakeSmallImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """20 train / 7 test random 16x16 RGB images, 3 classes."""

  name = "fake_small_images"
  code_path = None
  VERSION = tfds.core.Version("1.0.0")
  SHAPE = (16, 16, 3)
  SIZES = {"train": 20, "test": 7}

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=self.SHAPE),
          "label": tfds.features.ClassLabel(num_classes=3),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    return {s: self._generate_examples(s) for s in self.SIZES}

  def _generate_examples(self, split):
    for i, (image, label) in enumerate(zip(*fake_images(type(self), split))):
      yield i, {"image": Image.fromarray(image), "label": label}


class FakeLargeImages(FakeSmallImages):
  """Variable-size RGB images (70..100 px), 2 classes."""

  name = "fake_large_images"
  SHAPE = (None, None, 3)
  SIZES = {"train": 6, "validation": 3}


def fake_images(cls, split):
  rng = np.random.default_rng(len(split) + len(cls.name))
  images = []
  for _ in range(cls.SIZES[split]):
    shape = cls.SHAPE if cls.SHAPE[0] else (rng.integers(70, 101), rng.integers(70, 101), 3)
    images.append(rng.integers(0, 256, shape, dtype=np.uint8))
  return images, [i % 3 for i in range(len(images))]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tfds")
  for cls in (FakeSmallImages, FakeLargeImages):
    cls(data_dir=os.fspath(directory), file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
  return directory


def take(it, n, key):
  return [next(it)[key] for _ in range(n)]


# ------------------------------------------------------------------ builders and splits


def test_digits_split_matches_sklearn(data_dir):
  from sklearn.datasets import load_digits

  digits = load_digits()
  builder = builders.prepared_builder("digits", data_dir)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 1438, "test": 359}
  for split, keep in (("train", lambda i: i % 5 != 4), ("test", lambda i: i % 5 == 4)):
    source = builder.as_data_source(split=split)
    got = {(r["image"].tobytes(), int(r["label"])) for r in source}
    want = {
      (digits.images[i].astype(np.uint8)[..., None].tobytes(), int(digits.target[i]))
      for i in range(len(digits.target))
      if keep(i)
    }
    assert got == want
  info = data.get_info(config(name="digits", data_dir=os.fspath(data_dir)))
  assert (info.num_train, info.num_eval, info.num_classes, info.image_shape) == (
    1438,
    359,
    10,
    (8, 8, 1),
  )


def test_pystdlib_split_by_file(data_dir):
  builder = builders.prepared_builder("pystdlib", data_dir)
  paths = {
    s: [r["path"].decode() for r in builder.as_data_source(split=s)]
    for s in ("train", "validation")
  }
  train, val = set(paths["train"]), set(paths["validation"])
  assert not train & val and len(val) > 10 and len(train) > 8 * len(val)
  root = pathlib.Path(builders.sysconfig.get_paths()["stdlib"])
  expected = set()
  for p in root.rglob("*.py"):
    parts = p.relative_to(root).parts
    if not {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data"} & set(
      parts[:-1]
    ):
      expected.add(p.relative_to(root).as_posix())
  assert train | val == expected
  for p in val:
    assert int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "big") % 10 == 0
  # The served stream is the split's files, in path order, byte for byte.
  stream = sources.pystdlib_stream(builder, "validation")
  assert stream.tobytes() == b"".join((root / p).read_bytes() for p in sorted(val))


def test_build_is_skipped_when_prepared(data_dir):
  builders.prepared_builder("digits", data_dir)
  stamp = os.path.getmtime(builders.prepared_builder("digits", data_dir).data_path)
  assert os.path.getmtime(builders.prepared_builder("digits", data_dir).data_path) == stamp


def test_data_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.delenv("NORMJAX_DATA_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", os.fspath(tmp_path / "xdg"))
  assert data.data_dir(config(name="digits")) == tmp_path / "xdg/normjax/tensorflow_datasets"
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert data.data_dir(config(name="digits")) == (
    pathlib.Path.home() / ".cache/normjax/tensorflow_datasets"
  )
  monkeypatch.setenv("NORMJAX_DATA_DIR", os.fspath(tmp_path / "env"))
  assert data.data_dir(config(name="digits")) == tmp_path / "env"
  assert data.data_dir(config(name="digits", data_dir=os.fspath(tmp_path / "c"))) == tmp_path / "c"


# ------------------------------------------------------------------ batches


def test_digits_batches_are_standardized_pixels(data_dir):
  from sklearn.datasets import load_digits

  digits = load_digits()
  x = digits.images.astype(np.float64) / 16
  is_test = np.arange(len(x)) % 5 == 4
  mean, std = x[~is_test].mean(), x[~is_test].std()
  cfg = config(name="digits", data_dir=os.fspath(data_dir))
  batches = list(data.eval_iterator(cfg, global_batch_size=100))
  images = np.concatenate([b["image"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert images.dtype == np.float32 and images.shape == (400, 8, 8, 1)
  assert mask.sum() == 359 and (images[mask == 0] == 0).all()
  labels = np.concatenate([b["label"] for b in batches])[mask == 1]
  got = images[mask == 1].reshape(359, 64)
  want = ((x[is_test] - mean) / std).reshape(359, 64)
  # Records come in TFDS's storage order: compare after sorting both by (label, pixels).
  order = lambda pixels, y: np.lexsort(np.c_[np.round(pixels * std * 16 + mean * 16), y].T)
  got_order, want_order = order(got, labels), order(want, digits.target[is_test])
  np.testing.assert_allclose(got[got_order], want[want_order], atol=1e-5)
  assert labels.dtype == np.int32
  assert (labels[got_order] == digits.target[is_test][want_order]).all()


def test_lm_targets_are_inputs_shifted(data_dir):
  cfg = config(name="pystdlib", seq_len=32, data_dir=os.fspath(data_dir))
  batch = next(data.train_iterator(cfg, global_batch_size=8, seed=0))
  assert batch["inputs"].shape == batch["targets"].shape == (8, 32)
  assert batch["inputs"].dtype == np.int32 and batch["targets"].max() < 256
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  info = data.get_info(cfg)
  assert (info.task, info.vocab_size, info.seq_len) == ("lm", 256, 32)


def test_tokens_windows_entropy_and_cap(tmp_path):
  rng = np.random.default_rng(0)
  train = rng.integers(0, 300, 10_001).astype(np.uint16)
  val = rng.integers(0, 50, 1_001).astype(np.uint16)  # only ids < 50: a skewed eval
  train.tofile(tmp_path / "train.bin")
  val.tofile(tmp_path / "val.bin")
  cfg = config(name="tokens", path=os.fspath(tmp_path), seq_len=10, vocab_size=512)
  info = data.get_info(cfg)
  assert (info.num_train, info.num_eval, info.vocab_size) == (1000, 100, 512)
  batches = list(data.eval_iterator(cfg, global_batch_size=64))
  inputs = np.concatenate([b["inputs"] for b in batches])[:100]
  targets = np.concatenate([b["targets"] for b in batches])[:100]
  np.testing.assert_array_equal(inputs, val[:1000].reshape(100, 10))
  np.testing.assert_array_equal(targets, val[1:1001].reshape(100, 10))
  # Independent float64 cross-entropy of the eval targets under smoothed train unigrams.
  p = (np.bincount(train, minlength=512) + 1.0) / (len(train) + 512)
  want = -np.mean(np.log(p[val[1:1001].astype(np.int64)]))
  assert info.unigram_entropy == pytest.approx(want, rel=1e-12)
  capped = config(
    name="tokens", path=os.fspath(tmp_path), seq_len=10, vocab_size=512, eval_windows=7
  )
  assert data.get_info(capped).num_eval == 7
  starts = tokens.eval_window_starts(len(val), 10, 7)
  assert len(set(starts)) == 7 and starts.max() <= 990 and np.all(starts % 10 == 0)
  with pytest.raises(ValueError, match="vocab_size=256.*token id 299"):
    data.get_info(config(name="tokens", path=os.fspath(tmp_path), seq_len=10, vocab_size=256))


def test_small_tfds_images(data_dir):
  cfg = config(name="fake_small_images", data_dir=os.fspath(data_dir))
  info = data.get_info(cfg)
  assert (info.num_train, info.num_eval, info.num_classes, info.image_shape, info.eval_split) == (
    20,
    7,
    3,
    (16, 16, 3),
    "test",
  )
  raw, labels = fake_images(FakeSmallImages, "test")
  batch = next(data.eval_iterator(cfg, global_batch_size=8))
  mean, std = np.array(augment.IMAGENET_MEAN), np.array(augment.IMAGENET_STD)
  want = (np.stack(raw) / 255 - mean) / std
  # Records come in TFDS's storage order: find each served image among the originals.
  match = [
    [j for j in range(7) if np.allclose(image, want[j], atol=1e-5)] for image in batch["image"][:7]
  ]
  assert sorted(sum(match, [])) == list(range(7))
  assert [labels[m[0]] for m in match] == list(batch["label"][:7])
  assert list(batch["mask"]) == [1] * 7 + [0] and (batch["image"][7] == 0).all()
  train = next(data.train_iterator(cfg, global_batch_size=10, seed=1))
  assert train["image"].shape == (10, 16, 16, 3) and train["image"].dtype == np.float32
  # Each augmented image is a shifted (zero-filled) and possibly flipped original.
  originals = (np.stack(fake_images(FakeSmallImages, "train")[0]) / 255 - mean) / std
  zero = -mean / std
  for image in train["image"]:
    assert any(_is_crop_of(image, o, zero) for o in originals)


def test_small_images_read_from_disk_equal_in_memory(data_dir, monkeypatch):
  cfg = config(name="fake_small_images", data_dir=os.fspath(data_dir))

  def batches():
    return take(data.train_iterator(cfg, global_batch_size=10, seed=4), 3, "image") + [
      b["image"] for b in data.eval_iterator(cfg, global_batch_size=4)
    ]

  in_memory = batches()
  assert isinstance(data._load(cfg)[0].train_batches.read, sources.ArrayImages)
  monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)
  data._load_cached.cache_clear()
  try:
    assert isinstance(data._load(cfg)[0].train_batches.read, sources.RecordImages)
    assert all((x == y).all() for x, y in zip(in_memory, batches(), strict=True))
  finally:
    data._load_cached.cache_clear()


def _is_crop_of(image, original, zero_value, pad=4):
  padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
  padded[:pad], padded[-pad:], padded[:, :pad], padded[:, -pad:] = (zero_value,) * 4
  h, w = original.shape[:2]
  for view in (padded, padded[:, ::-1]):
    for top in range(2 * pad + 1):
      for left in range(2 * pad + 1):
        if np.allclose(view[top : top + h, left : left + w], image, atol=1e-5):
          return True
  return False


def test_large_tfds_images(data_dir):
  cfg = config(name="fake_large_images", image_size=32, data_dir=os.fspath(data_dir))
  info = data.get_info(cfg)
  assert (info.image_shape, info.eval_split, info.num_train) == ((32, 32, 3), "validation", 6)
  train = next(data.train_iterator(cfg, global_batch_size=4, seed=0))
  assert train["image"].shape == (4, 32, 32, 3) and np.isfinite(train["image"]).all()
  batch = next(data.eval_iterator(cfg, global_batch_size=4))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["mask"].sum() == 3


def test_pad_crop_flip_matches_loop():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 5, 7, 2), dtype=np.uint8)
  u = rng.random((6, 3))
  got = augment.pad_crop_flip(images, u, pad=2)
  for image, row, out in zip(images, u, got):
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    top, left = int(row[0] * 5), int(row[1] * 5)
    crop = padded[top : top + 5, left : left + 7]
    np.testing.assert_array_equal(out, crop[:, ::-1] if row[2] < 0.5 else crop)


def test_random_resized_crop_boxes():
  rng = np.random.default_rng(0)
  for _ in range(200):
    h, w = rng.integers(10, 300, 2)
    left, top, right, bottom = augment.rrc_box(h, w, rng.random(augment.RRC_UNIFORMS - 1))
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    area = (right - left) * (bottom - top) / (h * w)
    assert 0.08 * 0.8 <= area <= 1.0
  # All tries fail (uniforms ~1 ask for a too-wide box): central crop, ratio clipped.
  assert augment.rrc_box(100, 400, np.full(40, 0.999)) == (133, 0, 133 + 133, 100)
  constant = np.full((50, 80, 3), 7, np.uint8)
  assert (augment.resize_center_crop(constant, 20) == 7).all()


# ------------------------------------------------------------------ order, sharding, state


def identity_batch(indices, uniforms):
  out = {"index": np.asarray(indices)}
  if uniforms is not None:
    out["u"] = uniforms
  return out


def test_epochs_are_reshuffled_permutations():
  it = pipeline.train_iterator(identity_batch, 12, global_batch_size=4, seed=5)
  stream = np.concatenate(take(it, 9, "index"))
  epochs = stream.reshape(3, 12)
  for e, epoch in enumerate(epochs):
    assert sorted(epoch) == list(range(12))
    np.testing.assert_array_equal(epoch, np.random.default_rng([5, e]).permutation(12))
  assert not (epochs[0] == epochs[1]).all()


def test_same_seed_same_batches_different_seed_different(data_dir):
  cfg = config(name="pystdlib", seq_len=16, data_dir=os.fspath(data_dir))
  a = take(data.train_iterator(cfg, global_batch_size=8, seed=0), 3, "inputs")
  b = take(data.train_iterator(cfg, global_batch_size=8, seed=0), 3, "inputs")
  c = take(data.train_iterator(cfg, global_batch_size=8, seed=1), 3, "inputs")
  assert all((x == y).all() for x, y in zip(a, b))
  assert not all((x == y).all() for x, y in zip(a, c))


@pytest.mark.parametrize("name", ["digits", "fake_small_images"])
def test_processes_split_the_same_global_batch(data_dir, name):
  cfg = config(name=name, data_dir=os.fspath(data_dir))
  whole = take(data.train_iterator(cfg, global_batch_size=8, seed=3), 4, "image")
  halves = [
    take(
      data.train_iterator(cfg, global_batch_size=8, seed=3, process_index=p, process_count=2),
      4,
      "image",
    )
    for p in range(2)
  ]
  for step in range(4):
    assert halves[0][step].shape[0] == 4
    np.testing.assert_array_equal(np.concatenate([h[step] for h in halves]), whole[step])
  with pytest.raises(ValueError, match="global_batch_size=9 is not divisible by process_count=2"):
    data.train_iterator(cfg, global_batch_size=9, seed=0, process_count=2)


def test_eval_is_exact_across_processes():
  seen, masks = [], 0
  for p in range(3):
    for batch in pipeline.eval_iterator(
      identity_batch, 10, global_batch_size=6, process_index=p, process_count=3
    ):
      seen += list(batch["index"][batch["mask"] == 1])
      masks += batch["mask"].sum()
      assert (batch["index"][batch["mask"] == 0] == 0).all()
  assert sorted(seen) == list(range(10)) and masks == 10


def test_state_round_trip(data_dir):
  cfg = config(name="digits", data_dir=os.fspath(data_dir))
  it = data.train_iterator(cfg, global_batch_size=32, seed=0)
  take(it, 50, "label")  # past an epoch boundary (1438 / 32 ~ 45)
  state = it.get_state()
  want = take(it, 3, "image")
  resumed = data.train_iterator(cfg, global_batch_size=32, seed=0)
  resumed.set_state(state)
  assert all((x == y).all() for x, y in zip(want, take(resumed, 3, "image")))


def test_orbax_checkpoint_round_trip(data_dir, tmp_path):
  cfg = config(name="fake_small_images", data_dir=os.fspath(data_dir))  # with augmentation
  it = data.train_iterator(cfg, global_batch_size=6, seed=2)
  take(it, 5, "image")
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  want = take(it, 4, "image")
  resumed = data.train_iterator(cfg, global_batch_size=6, seed=2)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.restore(
    manager.latest_step(), args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed))
  )
  assert all((x == y).all() for x, y in zip(want, take(resumed, 4, "image")))


def test_worker_processes_give_the_same_batches(data_dir):
  cfg = config(name="digits", data_dir=os.fspath(data_dir))
  want = take(data.train_iterator(cfg, global_batch_size=16, seed=0), 3, "label")
  it = data.train_iterator(
    config(name="digits", data_dir=os.fspath(data_dir), num_workers=1), global_batch_size=16, seed=0
  )
  try:
    assert all((x == y).all() for x, y in zip(want, take(it, 3, "label")))
  finally:
    it.close()


# ------------------------------------------------------------------ errors


def test_missing_datasets_say_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    data.get_info(config(name="cifar10", data_dir=os.fspath(tmp_path)))
  assert f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record" in str(error.value)
  assert os.fspath(tmp_path / "cifar10") in str(error.value)
  with pytest.raises(FileNotFoundError, match="not a TFDS dataset"):
    data.get_info(config(name="no_such_dataset_xyz", data_dir=os.fspath(tmp_path)))
  with pytest.raises(FileNotFoundError) as error:
    data.get_info(config(name="tokens", path=os.fspath(tmp_path)))
  assert os.fspath(tmp_path / "train.bin") in str(error.value)
  assert "prepare.py" in str(error.value)


def test_config_errors(data_dir):
  d = os.fspath(data_dir)
  with pytest.raises(ValueError, match="data.shuffle_buffer"):
    data.get_info(config(name="digits", data_dir=d, shuffle_buffer=10))
  with pytest.raises(ValueError, match="data.seq_len=64 does not apply to data.name='digits'"):
    data.get_info(config(name="digits", data_dir=d, seq_len=64))
  with pytest.raises(ValueError, match="data.seq_len=0"):
    data.get_info(config(name="pystdlib", data_dir=d, seq_len=0))
  with pytest.raises(ValueError, match="data.eval_split='dev'.*available: test, train"):
    data.get_info(config(name="digits", data_dir=d, eval_split="dev"))
  # None means unset; a fixed property stated correctly is accepted.
  assert (
    data.get_info(
      config(name="pystdlib", data_dir=d, vocab_size=256, image_size=None, seq_len=16)
    ).vocab_size
    == 256
  )
