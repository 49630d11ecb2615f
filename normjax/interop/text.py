"""Text <-> token ids: a local Hugging Face ``tokenizers`` file, or bytes for vocab-256 models.

``load_tokenizer(path)`` accepts

* a ``tokenizer.json`` file (``tokenizers.Tokenizer.from_file``), or a directory holding one
  (a ``save_pretrained`` / hub snapshot directory);
* GPT-2's ``vocab.json`` + ``merges.txt`` (the file pair, either file, or their directory):
  byte-level BPE, ``models.BPE.from_file(vocab, merges)`` with the ``ByteLevel`` pre-tokenizer
  (GPT-2's split regex, no prefix space) and decoder, which is how GPT-2's own tokenizer.json
  is built; ``<|endoftext|>`` is registered as a special token when the vocabulary has it.

``ByteTokenizer`` is the byte-level vocabulary of the embedded pystdlib corpus and of byte-level
checkpoints: ids are the UTF-8 bytes, decoding replaces invalid sequences. Nothing is
downloaded: the files must be local (README, "Real GPT-2 checkpoints", says where to put
GPT-2's).
"""

from __future__ import annotations

import os
import pathlib

from normjax.interop.hf_files import require

END_OF_TEXT = "<|endoftext|>"


class ByteTokenizer:
  """UTF-8 bytes as token ids (vocabulary 256, no end-of-text token)."""

  vocab_size = 256
  eot = None
  source = "bytes"

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class Tokenizer:
  """A ``tokenizers.Tokenizer`` with the small interface normjax's tools use."""

  def __init__(self, tokenizer, source: str):
    self.tokenizer, self.source = tokenizer, source
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    self.eot = tokenizer.token_to_id(END_OF_TEXT)

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def _bpe_files(vocab: pathlib.Path, merges: pathlib.Path) -> Tokenizer:
  tokenizers = require("tokenizers", "a GPT-2 vocab.json + merges.txt tokenizer")
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(vocab), str(merges)))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  if tokenizer.token_to_id(END_OF_TEXT) is not None:
    tokenizer.add_special_tokens([END_OF_TEXT])
  return Tokenizer(tokenizer, f"{vocab} + {merges.name}")


def find_tokenizer(path) -> pathlib.Path | tuple[pathlib.Path, pathlib.Path] | None:
  """The tokenizer file(s) ``path`` names or holds, else None."""
  p = pathlib.Path(os.fspath(path)).expanduser()
  directory = p if p.is_dir() else p.parent
  if p.is_file() and p.name not in ("vocab.json", "merges.txt"):
    return p
  if p.is_dir() and (p / "tokenizer.json").is_file():
    return p / "tokenizer.json"
  vocab, merges = directory / "vocab.json", directory / "merges.txt"
  return (vocab, merges) if vocab.is_file() and merges.is_file() else None


def load_tokenizer(path) -> Tokenizer:
  """The tokenizer at ``path`` (see the module docstring)."""
  found = find_tokenizer(path)
  if found is None:
    raise FileNotFoundError(
      f"no tokenizer at {os.fspath(path)!r}: expected a tokenizer.json, or GPT-2's vocab.json "
      f"and merges.txt (a directory holding them is fine); nothing is downloaded"
    )
  if isinstance(found, tuple):
    return _bpe_files(*found)
  tokenizers = require("tokenizers", "a tokenizer.json tokenizer")
  return Tokenizer(tokenizers.Tokenizer.from_file(str(found)), str(found))
