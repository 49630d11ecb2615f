r"""GPT-2 with Pre-CRMSNorm (Jiang et al., NeurIPS 2023) on the embedded Python-stdlib bytes.

  python -m normjax.train --config configs/gpt2_crmsnorm.py --workdir /tmp/gpt2_crmsnorm

``configs/gpt2_layernorm.py`` (byte-level GPT-2, width 128, depth 2, 4 heads, context 128,
AdamW, 1000 steps of batch 16) with CRMSNorm: the residual stream stores d-1 = 127 coordinates
of an implicitly zero-mean 128-vector, the embeddings/``proj``/``fc2`` write 127 outputs, the
``qkv``/``fc1`` readers and the tied head read 127, and each norm is
x' / sqrt((sum x'^2 + (sum x')^2)/128 + eps) (``normjax/norms/crmsnorm.py``). A trained Pre-LN
GPT-2 converts to this architecture exactly (``normjax.models.conversions.convert(...,
to='crmsnorm')``, which unties the head); trained from scratch it is the Pre-LN function class
with one fewer coordinate per writer.

Measured (jax 0.10.2, 2-core CPU shared with other jobs, load average ~6; one run): validation
loss 1.8530 nats/byte, 401 s wall; gpt2_layernorm.py at the same settings: 1.6601, and the
training loss trailed Pre-LN's from the first steps (step 200: 2.24 vs 2.07). Same function
class, different optimisation problem: AdamW moves each of the d-1 stored coordinates of a
writer independently, so the implicit d-th coordinate -sum(x') moves by the sum of all their
steps, and the tied head reads only the stored coordinates (in the full d-dimensional view its
d-th column is pinned to 0 while the embedding's is not). The exact equivalence is for
converting a trained Pre-LN model (``normjax.models.conversions``, tested).

Paper scale: ``:data=tokens,path=DIR`` as gpt2_layernorm.py.
"""
from normjax.config_args import parse_arg, trainer_defaults


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", path="")
  c = trainer_defaults(total_steps=1000, batch_size=16, eval_batch_size=64)
  c.data = dict(name=arg.data, seq_len=128, eval_windows=2048)
  c.model = dict(name="gpt2", norm="crmsnorm", norm_kwargs={}, placement="pre",
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
  return c
