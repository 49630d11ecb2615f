r"""LayerNorm removal by fine-tuning (Heimersheim 2024; Baroni et al. 2025) of a GPT-2 run.

  python -m normjax.train --config configs/gpt2_layernorm.py          # -> workdirs/gpt2_layernorm
  python -m normjax.train --config configs/gpt2_ln_removal.py         # -> workdirs/gpt2_ln_removal
  python -m normjax.train --config configs/gpt2_ln_removal.py:remove=False \
      --workdir workdirs/gpt2_ln_finetune                             # control: LN kept
  python -m normjax.tools.ln_removal workdirs/gpt2_ln_removal --control workdirs/gpt2_ln_finetune

Fine-tunes the GPT-2 that ``configs/gpt2_layernorm.py`` trained (``init=`` its workdir; model and
data keys are read from that config file, so the parameters match) with every LayerNorm
replaced by a FakeLN (``normjax/norms/fakeln.py``): each tracks its average std while live and
is frozen on the official schedule, block by block: MLP-input norms from step ``start`` every
2 steps, then the attention input's Q/K path every 2 steps, then its V path every 3 steps,
then the final norm (``removal_schedule``; for depth 2 and start 20: steps 20, 22 | 24, 26 |
28, 31 | 34). The schedule lives in the modules' own step counters, so resuming works.
Optimizer shaped as the official GPT-2-small fine-tune (6e-4 with 25 warmup steps, cosine to
3e-4, wd 0.01, clip 1.0, 300 steps): AdamW at 1/5 of the pretraining LR (6e-4 here), cosine to
half of it.
``aux=W`` adds the residual-std auxiliary loss at the final norm with weight W (official
``*_aux`` configs: 0.1). ``remove=False`` is the control: the same fine-tuning with LayerNorm.
``python -m normjax.tools.ln_removal`` then prints the eval loss before removal (the pretrained
run), after removal, after folding every FakeLN away (a GPT-2 with no normalization), and the
control.

A Hugging Face GPT-2 instead (``normjax.interop.hf``; model shape, tied head and epsilon from
its config.json, ``init_from = {'hf': DIR}``, a fresh optimizer):

  python -m normjax.train --config configs/gpt2_ln_removal.py:hf=DIR --workdir /tmp/noln
  python -m normjax.train --config configs/gpt2_ln_removal.py:hf=DIR,data=tokens,path=OWT
  python -m normjax.tools.hf export --workdir /tmp/noln --out /tmp/noln_hf   # LN-free export

A byte-level checkpoint (vocab 256) fine-tunes on the embedded pystdlib corpus; a real one
(GPT-2 small) on a corpus tokenized by its tokenizer (``normjax.tools.prepare_text``), with the
official GPT-2-small fine-tune: AdamW 6e-4 cosine to 3e-4, 25 warmup steps, wd 0.01, clip
1.0, 300 steps of 2^19 tokens (batch 512 x 1024), ``aux=0.1`` for the ``*_aux`` variant (EOT
id from the checkpoint left out of its target); README "Real GPT-2 checkpoints" lists the
paper's figures.

Measured: eval loss 1.6252 nats/byte after removal, 1.6074 for the LN-kept control (+0.018;
one run each); details in experiments/ln_removal/README.md.
"""

import importlib.util
import os

from normjax.config_args import parse_arg

BASE = "gpt2_layernorm.py"


def _base_config(arg: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), BASE)
  spec = importlib.util.spec_from_file_location("gpt2_layernorm_base", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg=None):
  arg = parse_arg(
    arg,
    init="workdirs/gpt2_layernorm",
    remove=True,
    start=20,
    aux=0.0,
    steps=300,
    data="pystdlib",
    path="",
    hf="",
  )
  c = _base_config(f"data={arg.data},path={arg.path}" if arg.path else f"data={arg.data}")
  c.init_from = dict(workdir=arg.init, step=None)
  c.total_steps = arg.steps
  c.optimizer.update(learning_rate=c.optimizer.learning_rate / 5, weight_decay=0.01)
  c.schedule.update(warmup_steps=25, final_fraction=0.5)
  c.grad_clip_norm = 1.0
  c.eval_every, c.checkpoint_every, c.log_every = 50, 100, 10
  if arg.remove:
    c.model.norm = "fakeln"
    c.model.norm_kwargs = dict(
      c.model.norm_kwargs,
      removal_start=arg.start,
      gap_mlp=2,
      gap_qk=2,
      gap_v=3,
      momentum=0.9,
      aux_loss_weight=arg.aux,
      epsilon=1e-5,
    )
  if arg.hf:
    from normjax.interop import hf

    hf.configure_finetune(c, arg.hf)  # shape, epsilon and init_from from the checkpoint
    c.optimizer.learning_rate = 6e-4  # the official GPT-2-small fine-tune's peak LR
    if arg.data == "tokens":  # official: 2^19 tokens per step; EOT left out of the aux target
      c.batch_size = 2**19 // c.data.seq_len
      eos = hf.token_ids(arg.hf).get("eos_token_id")
      if arg.remove and arg.aux > 0 and isinstance(eos, int):
        c.model.norm_kwargs.eot_token = eos
  return c
