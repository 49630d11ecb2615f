r"""GPT-2 with Peri-LN (Kim et al., ICML 2025) on the embedded Python-stdlib bytes.

  python -m normjax.train --config configs/gpt2_perinorm.py --workdir /tmp/gpt2_perinorm
  python -m normjax.train --config configs/gpt2_perinorm.py:norm=rmsnorm,embedding_norm=True

``configs/gpt2_layernorm.py`` (byte-level GPT-2, width 128, depth 2, 4 heads, context 128,
AdamW, 1000 steps of batch 16) with ``placement='peri'``: each sublayer computes
x + Norm_out(f(Norm_in(x))) (a norm on the module's input and on its output before the
residual add; nothing on the residual path), plus the final norm; ``embedding_norm=True`` adds
the optional norm on the embeddings. ``norm`` picks LayerNorm (default) or RMSNorm (then the
block is Gemma 2's).

Measured (jax 0.10.2, 2-core CPU shared with other jobs; one run each): validation loss
1.8637 nats/byte (296 s wall, load ~5), and 1.7112 with ``embedding_norm=True`` (229 s, load
~4); gpt2_layernorm.py at the same settings: 1.6601. At this size and step count Peri-LN trails
Pre-LN. A likely reason: each branch writes a unit-RMS (normalized) vector while the N(0, 0.02)
embeddings stay tiny, so the token signal is swamped at first; the embedding norm (or Gemma's
sqrt(d) embedding scale) closes most of the gap. The paper's gains are at 400M-3.2B.

Paper scale: ``:data=tokens,path=DIR`` as gpt2_layernorm.py (the paper: 400M-3.2B params).
"""
from normjax.config_args import parse_arg, trainer_defaults


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", norm="layernorm", path="", embedding_norm=False)
  c = trainer_defaults(total_steps=1000, batch_size=16, eval_batch_size=64)
  c.data = dict(name=arg.data, seq_len=128, eval_windows=2048)
  c.model = dict(name="gpt2", norm=arg.norm, norm_kwargs={}, placement="peri",
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
  c.model.embedding_norm = arg.embedding_norm
  return c
