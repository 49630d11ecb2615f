r"""GPT-2 with PowerNorm (Shen et al., ICML 2020) on the embedded Python-stdlib bytes.

  python -m normjax.train --config configs/gpt2_powernorm.py --workdir /tmp/gpt2_powernorm

``configs/gpt2_layernorm.py`` (byte-level GPT-2, width 128, depth 2, 4 heads, context 128,
AdamW, 1000 steps of batch 16) with every LayerNorm replaced by PowerNorm
(``normjax/norms/powernorm.py``): GroupScaling with groups = heads (official NormSelect), batch
quadratic mean over all B*T tokens, running statistic after warmup, approximate backward
(alpha_fwd = alpha_bkw = 0.9). PowerNorm's default warmup (10000) is longer than this run; as
the official fairseq scripts pass the LR warmup (--warmup-updates), the config sets
``warmup_steps`` = ``schedule.warmup_steps``. (The paper uses PN in the encoder of a
translation model and keeps LN in the decoder; a causal LM normalized over the batch lets a
token's normalization see other positions' statistics, as in their decoder ablation.)

Measured (jax 0.10.2, 2-core CPU shared with other jobs, load average ~7.5; one run):
validation loss 1.6593 nats/byte, 402 s wall; gpt2_layernorm.py at the same settings: 1.6601.

Paper scale: ``:data=tokens,path=DIR`` as gpt2_layernorm.py.
"""
from normjax.config_args import parse_arg, trainer_defaults


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", path="")
  c = trainer_defaults(total_steps=1000, batch_size=16, eval_batch_size=64)
  c.data = dict(name=arg.data, seq_len=128, eval_windows=2048)
  c.model = dict(name="gpt2", norm="powernorm", norm_kwargs={}, placement="pre",
                 width=128, depth=2, num_heads=4, mlp_ratio=4, dropout=0.0)
  c.optimizer = dict(name="adamw", learning_rate=3e-3, weight_decay=0.1, b1=0.9, b2=0.95)
  c.schedule.update(warmup_steps=100, final_fraction=0.1)
  if arg.data == "tokens":
    if not arg.path:
      raise ValueError("config argument path is required with data=tokens "
                       "(a directory holding train.bin and val.bin)")
    c.data = dict(name="tokens", path=arg.path, seq_len=1024, vocab_size=50304,
                  eval_windows=4096)
    c.model.update(width=768, depth=12, num_heads=12)
    c.total_steps, c.batch_size, c.eval_batch_size = 600_000, 480, 64
    c.optimizer.update(learning_rate=6e-4, weight_decay=0.1)
    c.schedule.update(warmup_steps=2000)
    c.eval_every, c.checkpoint_every = 2000, 2000
  c.model.norm_kwargs = dict(groups=c.model.num_heads, warmup_steps=c.schedule.warmup_steps,
                             alpha_fwd=0.9, alpha_bkw=0.9, epsilon=1e-5)
  return c
