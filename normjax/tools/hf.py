r"""Hugging Face GPT-2 export of a normjax run.

  python -m normjax.tools.hf export --workdir W --out DIR [--step N]
  python -c "from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('DIR')"

Writes the run's eval-mode GPT-2 (``checkpoint.load_run``) with ``normjax.interop.hf.save_gpt2``:
a Pre-LN model as it is; a LayerNorm-removal run (every FakeLN frozen) as the LN-free layout of
the released models (LayerNorm epsilon 1e12, weights x 1e6 / sigma; the module docstring of
``normjax.interop.hf``). A run initialised from a Hugging Face checkpoint (``init_from.hf``)
keeps that checkpoint's token ids and tokenizer files. Models HF GPT-2 cannot express (other
norms, Peri/Post placement, CRMSNorm's compressed stream) are refused with the reason.

Afterwards the directory is read back with ``load_gpt2`` and the largest absolute logit
difference from the run's model on a fixed batch is printed (and returned).
"""

from __future__ import annotations

import numpy as np

COMMANDS = ("export",)


def export_run(workdir: str, out: str, step: int | None = None) -> dict:
  """Exports the run in ``workdir`` to ``out``; returns what was written and the check."""
  from normjax.checkpoint import load_run
  from normjax.interop import hf

  config, model = load_run(workdir, step)
  source = (config.get("init_from") or {}).get("hf")
  extra = hf.token_ids(source) if source else {}
  hf.save_gpt2(model, out, extra_config=extra, tokenizer_from=source)
  written = hf.read_config(out)
  back = hf.load_gpt2(out)
  vocab, positions = written["vocab_size"], written["n_positions"]
  tokens = np.random.default_rng(0).integers(0, vocab, (2, min(64, positions))).astype(np.int32)
  difference = float(np.abs(np.asarray(back(tokens)) - np.asarray(model(tokens))).max())
  return {
    "out": out,
    "layer_norm_epsilon": written["layer_norm_epsilon"],
    "ln_free": written["layer_norm_epsilon"] == hf.LN_FREE_EPSILON,
    "n_layer": written["n_layer"],
    "n_embd": written["n_embd"],
    "vocab_size": vocab,
    "reimport_max_abs_logit_difference": difference,
  }


def main():
  from absl import app, flags, logging

  from normjax import cli

  workdir = flags.DEFINE_string("workdir", None, "The normjax GPT-2 run to export.")
  out = flags.DEFINE_string("out", None, "Output directory (config.json, model.safetensors).")
  step = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  verbose = cli.define_verbose_flag()

  def run_command(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS or not (workdir.value and out.value):
      raise app.UsageError("usage: python -m normjax.tools.hf export --workdir W --out DIR")
    logging.set_verbosity(logging.WARNING)

    def body():
      r = export_run(workdir.value, out.value, step.value)
      kind = "LN-free (LayerNorm eps 1e12)" if r["ln_free"] else "Pre-LN"
      print(
        f"wrote {r['out']}: {kind} GPT-2, {r['n_layer']} layers, width {r['n_embd']}, vocab "
        f"{r['vocab_size']}; read back, its logits differ from the run's by at most "
        f"{r['reimport_max_abs_logit_difference']:.3g}"
      )

    cli.guarded("normjax.tools.hf", body, verbose_flag=verbose.value)

  app.run(run_command)


if __name__ == "__main__":
  main()
