"""Tokenized corpora: prepare_text with a BPE trained here by ``tokenizers``, the uint16/uint32
token files and their meta.json, read back by the ``tokens`` data source."""

import json
import sys

import ml_collections
import numpy as np
import pytest

from normjax import data as nj_data
from normjax.data import tokens
from normjax.tools import prepare_text
from tests import trainer_utils as tu

DOCUMENTS = [
  "def add(a, b):\n    return a + b\n",
  "The quick brown fox jumps over the lazy dog. " * 3,
  "import os\nprint(os.getcwd())\n",
  "naïve café — unicode text, 日本語 too.\n",
  "for i in range(10):\n    print(i * i)\n",
  "class Stack:\n    def __init__(self):\n        self.items = []\n",
]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  """A byte-level BPE trained on the documents, saved both ways tokenizers can save it."""
  tokenizers = pytest.importorskip("tokenizers")
  root = tmp_path_factory.mktemp("bpe")
  trained = tokenizers.ByteLevelBPETokenizer()
  trained.train_from_iterator(
    DOCUMENTS * 5, vocab_size=320, min_frequency=2, special_tokens=["<|endoftext|>"]
  )
  trained.save(str(root / "tokenizer.json"))
  (root / "files").mkdir()
  trained.save_model(str(root / "files"))  # GPT-2's vocab.json + merges.txt
  corpus = root / "corpus"
  corpus.mkdir()
  for i, text in enumerate(DOCUMENTS):
    (corpus / f"doc{i}.txt").write_text(text, encoding="utf-8")
  return root


def read_split(directory, split, dtype="<u2"):
  return np.fromfile(directory / f"{split}.bin", dtype=dtype)


def test_prepare_text_round_trips_the_documents(bpe, tmp_path):
  from normjax.interop.text import load_tokenizer

  meta = prepare_text.prepare(
    bpe / "tokenizer.json", tmp_path, [str(bpe / "corpus")], val_fraction=0.3, progress=False
  )
  tokenizer = load_tokenizer(bpe / "tokenizer.json")
  eot = tokenizer.eot
  assert eot == 0 and meta["eot_token"] == 0 and meta["dtype"] == "uint16"
  assert meta["documents"] == {"train": 4, "val": 2} and meta["vocab_size"] == 320
  texts = []
  for split in ("train", "val"):
    ids = read_split(tmp_path, split)
    assert len(ids) == meta["tokens"][split] and ids[-1] == eot
    pieces = np.split(ids, np.flatnonzero(ids == eot) + 1)[:-1]  # one per document
    assert len(pieces) == meta["documents"][split]
    texts += [tokenizer.decode(p[:-1]) for p in pieces]
  assert sorted(texts) == sorted(DOCUMENTS)
  assert json.loads((tmp_path / "meta.json").read_text())["tokens"] == meta["tokens"]


def test_gpt2_vocab_and_merges_files_tokenize_as_the_tokenizer_json(bpe):
  from normjax.interop.text import load_tokenizer

  from_json = load_tokenizer(bpe)  # the directory holding tokenizer.json
  from_files = load_tokenizer(bpe / "files" / "vocab.json")
  for text in DOCUMENTS:
    assert from_files.encode(text) == from_json.encode(text)
    assert from_files.decode(from_files.encode(text)) == text
  assert from_files.eot == from_json.eot == 0
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    load_tokenizer(bpe / "corpus")


def test_the_tokens_source_reads_uint16_and_uint32_files(bpe, tmp_path):
  common = dict(val_fraction=0.3, progress=False)
  prepare_text.prepare(bpe, tmp_path / "u16", [str(bpe / "corpus")], **common)
  prepare_text.prepare(bpe, tmp_path / "u32", [str(bpe / "corpus")], dtype="uint32", **common)
  assert (tmp_path / "u32" / "train.bin").stat().st_size == 2 * (
    tmp_path / "u16" / "train.bin"
  ).stat().st_size
  np.testing.assert_array_equal(
    read_split(tmp_path / "u32", "train", "<u4"), read_split(tmp_path / "u16", "train")
  )
  batches = []
  for kind in ("u16", "u32"):
    cfg = ml_collections.ConfigDict({"name": "tokens", "path": str(tmp_path / kind), "seq_len": 8})
    info = nj_data.get_info(cfg)
    assert info.vocab_size == 320  # meta.json's, not nanoGPT's 50304
    batches.append(next(nj_data.eval_iterator(cfg, global_batch_size=4)))
  np.testing.assert_array_equal(batches[0]["inputs"], batches[1]["inputs"])
  assert tokens.TokenFile(tmp_path / "u32" / "train.bin", "uint32").dtype == "<u4"


def test_token_dtype_and_bad_inputs(tmp_path):
  assert prepare_text.token_dtype(50257) == "uint16" and prepare_text.token_dtype(65536) == "uint16"
  assert prepare_text.token_dtype(65537) == "uint32"
  with pytest.raises(ValueError, match="more than 65536"):
    prepare_text.token_dtype(100_000, "uint16")
  with pytest.raises(ValueError, match="at least 2"):
    prepare_text.split_documents(1, 0.1, 0)
  split = prepare_text.split_documents(10, 0.0005, 2357)
  assert split.sum() == 1  # at least one val document
  (tmp_path / "meta.json").write_text('{"dtype": "int8"}')
  with pytest.raises(ValueError, match="dtype 'int8'"):
    tokens.token_meta(tmp_path)


def test_prepare_text_command_and_sampling_finds_its_tokenizer(bpe, tmp_path):
  args = [sys.executable, "-m", "normjax.tools.prepare_text", "--tokenizer", str(bpe)]
  corpus = str(bpe / "corpus")
  out = tu.run_cli(args + ["--out", str(tmp_path), "--val_fraction", "0.3", corpus], tu.env())
  assert out.returncode == 0, out.stderr
  assert "6 documents from 6 files (train 4, val 2)" in out.stdout and "uint16" in out.stdout
  assert "tokenizing" in out.stderr  # the progress bar
  from normjax.tools.sample import _run_tokenizer

  config = ml_collections.ConfigDict({"data": {"name": "tokens", "path": str(tmp_path)}})
  found = _run_tokenizer(config, 320, None)
  assert found.encode(DOCUMENTS[0]) == _run_tokenizer(config, 320, str(bpe)).encode(DOCUMENTS[0])
  bad = tu.run_cli(args + ["--out", str(tmp_path / "x"), str(tmp_path / "missing")], tu.env())
  assert bad.returncode == 1 and "no such file or directory" in bad.stderr.splitlines()[-1]
