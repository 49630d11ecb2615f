"""The files of a local Hugging Face checkpoint: where they are, and reading/writing tensors.

A checkpoint is found from any of (``resolve``):

* a directory holding ``config.json`` (what ``save_pretrained`` writes, or a hub snapshot);
* a hub cache repository directory ``.../models--org--name`` (the snapshot ``refs/main``
  names, or its only snapshot);
* a repository id ``org/name`` that is not a local path: looked up, never downloaded, in the
  hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``).

Weights are ``model.safetensors``, or the shards listed in ``model.safetensors.index.json``
(``{"weight_map": {tensor name: file}}``). They are read with ``safetensors``' numpy API;
bfloat16 tensors, which numpy cannot represent, are read from the file's own header (8-byte
little-endian header length, a JSON header with each tensor's dtype, shape and byte offsets,
then the raw little-endian data) and widened to float32 with ``ml_dtypes`` (a JAX dependency).
A ``pytorch_model.bin`` alone is a torch pickle and is refused: normjax reads checkpoints
without torch.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np

INSTALL_HINT = "pip install 'normjax[hf]' (or pip install safetensors tokenizers)"
SAFETENSORS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


def require(module: str, purpose: str):
  """``import module``, or an ImportError that says what needs it and how to install it."""
  import importlib

  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"{purpose} needs the optional package {module!r}: {INSTALL_HINT}") from e


def hub_cache() -> pathlib.Path:
  """The hub cache directory, found the way ``huggingface_hub`` finds it (no import)."""
  if os.environ.get("HF_HUB_CACHE"):
    return pathlib.Path(os.environ["HF_HUB_CACHE"]).expanduser()
  home = os.environ.get("HF_HOME") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
  )
  return pathlib.Path(home).expanduser() / "hub"


def _snapshot(repo: pathlib.Path) -> pathlib.Path:
  snapshots = repo / "snapshots"
  ref = repo / "refs" / "main"
  if ref.is_file():
    chosen = snapshots / ref.read_text().strip()
    if chosen.is_dir():
      return chosen
  found = sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
  if len(found) == 1:
    return found[0]
  if not found:
    raise FileNotFoundError(f"{repo}: a hub cache repository without snapshots")
  raise FileNotFoundError(
    f"{repo} holds {len(found)} snapshots ({', '.join(p.name for p in found)}) and no "
    f"refs/main: pass the snapshot directory itself"
  )


def resolve(path: str | os.PathLike) -> pathlib.Path:
  """The directory holding the checkpoint's ``config.json`` (see the module docstring)."""
  given = pathlib.Path(os.fspath(path)).expanduser()
  if given.is_dir():
    if (given / "config.json").is_file():
      return given
    if (given / "snapshots").is_dir():
      return resolve(_snapshot(given))
    raise FileNotFoundError(
      f"{given}: no config.json here; expected a Hugging Face model directory "
      f"(save_pretrained output), a hub snapshot or a models--org--name cache directory"
    )
  text = os.fspath(path)
  if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
    repo = hub_cache() / ("models--" + text.replace("/", "--"))
    if repo.is_dir():
      return resolve(repo)
    raise FileNotFoundError(
      f"{text!r} is neither a directory nor in the hub cache ({repo} does not exist); normjax "
      f"never downloads: fetch it once with huggingface_hub (huggingface-cli download {text}) "
      f"or pass the directory"
    )
  raise FileNotFoundError(f"{given}: no such directory")


def read_config(path) -> dict:
  """The checkpoint's ``config.json`` as a dict."""
  with open(resolve(path) / "config.json") as f:
    return json.load(f)


def weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
  if (directory / SAFETENSORS).is_file():
    return [directory / SAFETENSORS]
  if (directory / SHARD_INDEX).is_file():
    with open(directory / SHARD_INDEX) as f:
      weight_map = json.load(f)["weight_map"]
    return [directory / name for name in sorted(set(weight_map.values()))]
  if any((directory / name).exists() for name in ("pytorch_model.bin", "tf_model.h5")):
    raise FileNotFoundError(
      f"{directory} holds no safetensors weights, only a torch/TF pickle, which normjax does not "
      f"read (it needs torch to unpickle); convert it once where torch is installed: "
      f"GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(NEW_DIR)"
    )
  raise FileNotFoundError(f"{directory}: no {SAFETENSORS} and no {SHARD_INDEX}")


def _read_raw(file: pathlib.Path, name: str) -> np.ndarray:
  """One tensor read from the safetensors header and bytes (for dtypes numpy lacks)."""
  import ml_dtypes

  with open(file, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    entry = json.loads(f.read(size))[name]
    if entry["dtype"] != "BF16":
      raise TypeError(f"{file}: tensor {name} has dtype {entry['dtype']}, which is not supported")
    start, end = entry["data_offsets"]
    f.seek(8 + size + start)
    data = np.frombuffer(f.read(end - start), dtype=np.dtype(ml_dtypes.bfloat16).newbyteorder("<"))
  return data.reshape(entry["shape"]).astype(np.float32)


def read_tensors(path) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint at ``path``, as numpy arrays (bfloat16 widened)."""
  safetensors = require("safetensors", "reading a Hugging Face checkpoint")
  tensors = {}
  for file in weight_files(resolve(path)):
    with safetensors.safe_open(os.fspath(file), framework="numpy") as f:
      for name in f.keys():
        try:
          tensors[name] = f.get_tensor(name)
        except TypeError:  # bfloat16: numpy has no such dtype
          tensors[name] = _read_raw(file, name)
  return tensors


def write_checkpoint(out_dir, config: dict, tensors: dict[str, np.ndarray]) -> pathlib.Path:
  """Writes ``config.json`` and ``model.safetensors`` (format metadata 'pt', which
  ``transformers`` expects) into ``out_dir``."""
  numpy_api = require("safetensors.numpy", "writing a Hugging Face checkpoint")
  out = pathlib.Path(os.fspath(out_dir)).expanduser()
  out.mkdir(parents=True, exist_ok=True)
  arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  numpy_api.save_file(arrays, os.fspath(out / SAFETENSORS), metadata={"format": "pt"})
  with open(out / "config.json", "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  return out
