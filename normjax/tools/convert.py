r"""A Hugging Face GPT-2 (Pre-LN) as an exactly equivalent Pre-RMSNorm / Pre-CRMSNorm normjax run.

  python -m normjax.tools.convert --hf DIR --to rmsnorm --workdir W [--data_path TOKENS_DIR]
  python -m normjax.tools.sample --workdir W --prompt "..."          # the converted model

Jiang et al. (NeurIPS 2023), ``normjax.surgery.conversions``: recentre every residual writer,
fold each LayerNorm's affine into the layer that reads it (the final one into a separate
head), then RMSNorm (or, storing d - 1 coordinates of the zero-mean stream, CRMSNorm) with the
LayerNorm's epsilon computes the same logits. The conversion runs through the trainer's own
``config.init_from = {'hf': DIR}`` path (``checkpoint.restore_or_init``), and the result is
written as a trainer run at step 0: ``W/config.json`` (model shape from the checkpoint,
``norm=<to>``, ``tie_embeddings=False``, AdamW as ``configs/gpt2_layernorm.py``) and
``W/checkpoints/0`` (parameters, fresh optimizer state, data iterator), which
``normjax.checkpoint.load_run(W)`` reads back. Data: the embedded pystdlib bytes for a
vocab-256 checkpoint, else ``--data_path`` (a ``prepare_text`` directory) is required.

It prints, and writes to ``W/conversion.json``, the largest absolute logit difference between
the converted model and the imported original on a fixed batch (2 rows of random tokens,
seed 0, at most 64 positions): float32 rounding, ~1e-6 of the logits' scale.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

TARGETS = ("rmsnorm", "crmsnorm")


def trainer_config(hf_dir: str, to: str, data_path: str | None = None, zero_mean: bool = False):
  """The trainer config of the converted run (see the module docstring)."""
  from normjax.config_args import trainer_defaults
  from normjax.interop import hf

  if to not in TARGETS:
    raise ValueError(f"--to={to!r}: one of {', '.join(TARGETS)}")
  kwargs = hf.gpt2_kwargs(hf.read_config(hf_dir))
  c = trainer_defaults(total_steps=1000, batch_size=16, eval_batch_size=64)
  if data_path:
    c.data = dict(name="tokens", path=os.fspath(data_path), seq_len=1024, eval_windows=4096)
  elif kwargs["vocab_size"] == 256:
    c.data = dict(name="pystdlib", seq_len=128, eval_windows=2048)
  else:
    raise ValueError(
      f"{hf_dir}: a {kwargs['vocab_size']}-token vocabulary needs --data_path (a corpus "
      f"tokenized by its tokenizer, python -m normjax.tools.prepare_text)"
    )
  c.model = dict(name="gpt2", norm=to, norm_kwargs={}, placement="pre", dropout=0.0)
  c.model.zero_mean_writers = zero_mean
  c.optimizer = dict(name="adamw", learning_rate=6e-4, weight_decay=0.1, b1=0.9, b2=0.95)
  c.schedule.update(warmup_steps=100, final_fraction=0.1)
  hf.configure_finetune(c, hf_dir)
  return c


def fixed_batch(vocab: int, max_len: int) -> np.ndarray:
  return np.random.default_rng(0).integers(0, vocab, (2, min(64, max_len))).astype(np.int32)


def convert_run(hf_dir: str, to: str, workdir: str, data_path=None, zero_mean=False) -> dict:
  """Writes the converted run into ``workdir``; returns the comparison with the original."""
  import normjax.workdir as workdirs
  from normjax import checkpoint, run, sharding
  from normjax import data as nj_data
  from normjax.interop import hf

  config = trainer_config(hf_dir, to, data_path, zero_mean)
  if workdirs.has_checkpoints(workdir):
    raise workdirs.WorkdirError(f"{workdir} already holds a run; choose a new --workdir")
  setup = run.build(config)
  with workdirs.lock(workdir):
    mesh = sharding.make_mesh(config.get("mesh", {}))
    with jax.set_mesh(mesh):
      train_iter = nj_data.train_iterator(
        config.data, global_batch_size=config.batch_size, seed=config.seed
      )
      key = jax.random.key(config.seed)
      abstract_state = jax.eval_shape(setup.init_state, key)
      state_sharding = sharding.state_sharding(abstract_state, mesh, config.sharding)
      state = jax.jit(setup.init_state, out_shardings=state_sharding)(key)
      manager = checkpoint.make_manager(workdir, config.keep_checkpoints)
      try:
        state, _ = checkpoint.restore_or_init(
          manager, setup, state, abstract_state, state_sharding, train_iter
        )
        checkpoint.save(manager, 0, state, train_iter)
        checkpoint.wait(manager)
      finally:
        checkpoint.close(manager)
    workdirs.record_start(workdir, config, 0, {})
  converted = setup.model_def.merge(
    jax.device_get(state["params"]), jax.device_get(state["model_state"]), train=False
  )
  original = hf.load_gpt2(hf_dir)
  tokens = fixed_batch(config.model.vocab_size, config.model.max_len)
  reference = np.asarray(original(tokens))
  difference = float(np.abs(np.asarray(converted(tokens)) - reference).max())
  result = {
    "hf": os.fspath(hf_dir),
    "to": to,
    "max_abs_logit_difference": difference,
    "max_abs_logit": float(np.abs(reference).max()),
    "batch": list(tokens.shape),
  }
  with open(os.path.join(workdir, "conversion.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def main():
  from absl import app, flags, logging

  from normjax import cli

  hf_dir = flags.DEFINE_string("hf", None, "A Hugging Face GPT-2 directory (Pre-LN).")
  to = flags.DEFINE_enum("to", None, list(TARGETS), "The target norm.")
  workdir = flags.DEFINE_string("workdir", None, "Where to write the converted run.")
  data_path = flags.DEFINE_string("data_path", None, "Token corpus dir (non-byte vocabularies).")
  zero_mean = flags.DEFINE_bool("zero_mean", False, "Also recentre writers in the forward.")
  verbose = cli.define_verbose_flag()

  def run_command(argv):
    del argv
    if not (hf_dir.value and to.value and workdir.value):
      raise app.UsageError("usage: python -m normjax.tools.convert --hf DIR --to NORM --workdir W")
    logging.set_verbosity(logging.WARNING)

    def body():
      r = convert_run(hf_dir.value, to.value, workdir.value, data_path.value, zero_mean.value)
      print(
        f"converted {r['hf']} to Pre-{r['to']} in {workdir.value} (step 0); largest |logit "
        f"difference| from the original on a fixed {r['batch'][0]}x{r['batch'][1]} batch: "
        f"{r['max_abs_logit_difference']:.3g} (logits up to {r['max_abs_logit']:.3g})"
      )

    cli.guarded("normjax.tools.convert", body, verbose_flag=verbose.value)

  app.run(run_command)


if __name__ == "__main__":
  main()
