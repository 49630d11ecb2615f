r"""GPT-2 with Pre-RMSNorm (Zhang & Sennrich 2019; Jiang et al., NeurIPS 2023) on stdlib bytes.

  python -m normjax.train --config configs/gpt2_rmsnorm.py --workdir /tmp/gpt2_rmsnorm
  python -m normjax.train --config configs/gpt2_rmsnorm.py:zero_mean=True  # Pre-LN-equivalent

``configs/gpt2_layernorm.py`` (byte-level GPT-2, width 128, depth 2, 4 heads, context 128,
AdamW, 1000 steps of batch 16) with RMSNorm (scale only, eps 1e-6) instead of LayerNorm.
``zero_mean=True`` adds the zero-mean reparameterisation of every residual-stream writer
(``zero_mean_writers``; Jiang et al.): the stream is then zero-mean, RMSNorm(x) = LayerNorm(x)
without the LN bias, and a Pre-LN model converts to it exactly
(``normjax.models.conversions``, tested in ``tests/test_crmsnorm_conversions.py``).

Measured (jax 0.10.2, 2-core CPU shared with other jobs, load average ~6; one run): validation
loss 1.6627 nats/byte, 289 s wall; gpt2_layernorm.py at the same settings: 1.6601.

Paper scale: ``:data=tokens,path=DIR`` as gpt2_layernorm.py.
"""
from normjax.config_args import parse_arg, trainer_defaults


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", path="", zero_mean=False)
  c = trainer_defaults(total_steps=1000, batch_size=16, eval_batch_size=64)
  c.data = dict(name=arg.data, seq_len=128, eval_windows=2048)
  c.model = dict(name="gpt2", norm="rmsnorm", norm_kwargs={}, placement="pre",
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
  c.model.zero_mean_writers = arg.zero_mean
  return c
