r"""Tokenize text files into nanoGPT-style ``train.bin`` / ``val.bin`` for ``data.name='tokens'``.

  python -m normjax.tools.prepare_text --tokenizer ~/gpt2 --out /data/mytext FILES_OR_DIRS...
      [--val_fraction 0.0005 --seed 2357 --per_line --glob '*.txt' --dtype auto]
  python -m normjax.train --config configs/gpt2_layernorm.py:data=tokens,path=/data/mytext

Each file is one document (``--per_line``: each non-empty line; directories are searched for
``--glob``). Documents are split at random (``--seed``) into train and val, a fraction
``--val_fraction`` (at least one document) for val, as nanoGPT's OpenWebText preparation does
(``train_test_split(test_size=0.0005, seed=2357)``); each document's ids are followed by the
end-of-text token (``<|endoftext|>``, GPT-2's 50256) when the tokenizer has one, as nanoGPT
appends ``enc.eot_token``. The tokenizer is a local file (``normjax.interop.text``:
tokenizer.json, or GPT-2's vocab.json + merges.txt); nothing is downloaded.

Output: ``train.bin`` and ``val.bin`` (flat little-endian uint16 ids, nanoGPT's format; uint32
when the vocabulary exceeds 65536 ids, or with ``--dtype uint32``) and ``meta.json``
(dtype, vocab_size, tokenizer, end-of-text id, documents and tokens per split), which the
``tokens`` reader uses for the dtype and the default ``data.vocab_size``.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from normjax import cli
from normjax.data.tokens import META_FILE, TOKEN_DTYPES
from normjax.interop.text import load_tokenizer

CHUNK = 64  # documents per encode_batch call


def token_dtype(vocab_size: int, requested: str = "auto") -> str:
  """'uint16' when every id fits (vocab <= 65536), else 'uint32'; a request is checked."""
  needed = "uint16" if vocab_size <= 2**16 else "uint32"
  if requested == "auto":
    return needed
  if requested not in TOKEN_DTYPES:
    raise ValueError(f"--dtype={requested!r}: one of auto, {', '.join(TOKEN_DTYPES)}")
  if requested == "uint16" and needed == "uint32":
    raise ValueError(f"--dtype=uint16: the vocabulary has {vocab_size} ids, more than 65536")
  return requested


def collect_files(inputs: list[str], glob: str = "*.txt") -> list[pathlib.Path]:
  files = []
  for item in inputs:
    p = pathlib.Path(item).expanduser()
    if p.is_dir():
      files += sorted(f for f in p.rglob(glob) if f.is_file())
    elif p.is_file():
      files.append(p)
    else:
      raise FileNotFoundError(f"{item}: no such file or directory")
  if not files:
    raise FileNotFoundError(f"no input files in {inputs} (directories searched for {glob!r})")
  return files


def read_documents(files: list[pathlib.Path], per_line: bool = False) -> list[str]:
  documents = []
  for f in files:
    text = f.read_text(encoding="utf-8", errors="replace")
    documents += [line for line in text.splitlines() if line.strip()] if per_line else [text]
  return [d for d in documents if d]


def split_documents(count: int, val_fraction: float, seed: int) -> np.ndarray:
  """A bool array, True = the document goes to val (at least one, never all)."""
  if count < 2:
    raise ValueError(
      f"{count} document(s): a train/val split needs at least 2 (more files, or --per_line)"
    )
  if not 0 < val_fraction < 1:
    raise ValueError(f"--val_fraction={val_fraction}: must be in (0, 1)")
  n_val = min(max(1, round(val_fraction * count)), count - 1)
  is_val = np.zeros(count, bool)
  is_val[np.random.default_rng(seed).permutation(count)[:n_val]] = True
  return is_val


def prepare(
  tokenizer_path,
  out_dir,
  inputs: list[str],
  *,
  val_fraction: float = 0.0005,
  seed: int = 2357,
  per_line: bool = False,
  glob: str = "*.txt",
  dtype: str = "auto",
  progress: bool = True,
) -> dict:
  """Writes ``train.bin``, ``val.bin`` and ``meta.json`` into ``out_dir``; returns the meta."""
  from tqdm import tqdm

  tokenizer = load_tokenizer(tokenizer_path)
  files = collect_files(inputs, glob)
  documents = read_documents(files, per_line)
  is_val = split_documents(len(documents), val_fraction, seed)
  kind = token_dtype(tokenizer.vocab_size, dtype)
  out = pathlib.Path(os.fspath(out_dir)).expanduser()
  out.mkdir(parents=True, exist_ok=True)
  counts = {"train": 0, "val": 0}
  bar = tqdm(total=len(documents), unit="doc", disable=not progress, desc="tokenizing")
  with open(out / "train.bin", "wb") as train, open(out / "val.bin", "wb") as val:
    for lo in range(0, len(documents), CHUNK):
      for i, ids in enumerate(tokenizer.encode_batch(documents[lo : lo + CHUNK]), lo):
        if tokenizer.eot is not None:
          ids = [*ids, tokenizer.eot]
        split = "val" if is_val[i] else "train"
        np.asarray(ids, TOKEN_DTYPES[kind]).tofile(val if is_val[i] else train)
        counts[split] += len(ids)
      bar.update(min(CHUNK, len(documents) - lo))
      bar.set_postfix(tokens=counts["train"] + counts["val"])
  bar.close()
  meta = {
    "format": "nanogpt tokens (normjax.tools.prepare_text)",
    "dtype": kind,
    "vocab_size": int(tokenizer.vocab_size),
    "tokenizer": str(pathlib.Path(tokenizer.source.split(" + ")[0]).resolve()),
    "eot_token": tokenizer.eot,
    "documents": {"train": int((~is_val).sum()), "val": int(is_val.sum())},
    "tokens": counts,
    "files": len(files),
    "val_fraction": val_fraction,
    "seed": seed,
  }
  with open(out / META_FILE, "w") as f:
    json.dump(meta, f, indent=2)
  return meta


def summary(meta: dict, out_dir) -> str:
  d, t = meta["documents"], meta["tokens"]
  return (
    f"wrote {out_dir}: {d['train'] + d['val']:,} documents from {meta['files']} files "
    f"(train {d['train']:,}, val {d['val']:,}), {t['train'] + t['val']:,} tokens "
    f"(train {t['train']:,}, val {t['val']:,}), {meta['dtype']} ids of a "
    f"{meta['vocab_size']:,}-token vocabulary"
    + (
      f", end-of-text {meta['eot_token']} after each document"
      if meta["eot_token"] is not None
      else ""
    )
  )


def main():
  from absl import app, flags

  tokenizer = flags.DEFINE_string("tokenizer", None, "tokenizer.json, or a vocab.json+merges.txt.")
  out = flags.DEFINE_string("out", None, "Output directory (train.bin, val.bin, meta.json).")
  val_fraction = flags.DEFINE_float("val_fraction", 0.0005, "Fraction of documents for val.")
  seed = flags.DEFINE_integer("seed", 2357, "Seed of the document split.")
  per_line = flags.DEFINE_bool("per_line", False, "Each non-empty line is a document.")
  glob = flags.DEFINE_string("glob", "*.txt", "Files to take from directories.")
  dtype = flags.DEFINE_enum("dtype", "auto", ["auto", "uint16", "uint32"], "Token id type.")
  verbose = cli.define_verbose_flag()

  def run_command(argv):
    if len(argv) < 2 or not tokenizer.value or not out.value:
      raise app.UsageError(
        "usage: python -m normjax.tools.prepare_text --tokenizer PATH --out DIR FILES..."
      )

    def body():
      meta = prepare(
        tokenizer.value,
        out.value,
        argv[1:],
        val_fraction=val_fraction.value,
        seed=seed.value,
        per_line=per_line.value,
        glob=glob.value,
        dtype=dtype.value,
      )
      print(summary(meta, out.value))

    cli.guarded("normjax.tools.prepare_text", body, verbose_flag=verbose.value)

  app.run(run_command)


if __name__ == "__main__":
  main()
