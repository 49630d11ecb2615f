r"""GPT-2 + Muon (optax.contrib.muon) on the attention/MLP kernels, AdamW elsewhere.

  python -m normjax.train --config configs/gpt2_muon.py --workdir /tmp/gpt2_muon
  python -m normjax.tools.sweep --config configs/sweeps/gpt2_lr.py:optimizer=muon  # its lr sweep

``configs/gpt2_adamw.py`` (byte-level GPT-2, width 128, depth 2, 1000 steps of batch 16,
warmup 100, cosine to 0.1x, clipping 1.0) with the Muon baseline of the Conda repository
(``conda_torch/muon_moonlight.py``, Moonlight's form): ``optimizer.labels='muon_groups'``
sends the attention and MLP kernels to ``optax.contrib.muon`` with ``consistent_rms=0.2``
(update = 0.2 * sqrt(max(fan_in, fan_out)) * NS5(Nesterov momentum), so its RMS matches
AdamW's and the same peak learning rate serves both groups), beta 0.95, 5 Newton-Schulz
steps, and decoupled weight decay 0.1; the embeddings (tied head), norms and biases get
the AdamW baseline unchanged (betas (0.9, 0.95), decay on matrices only). The peak learning
rate (1e-2) is the best of a sweep.

Measured: val loss 1.3692 ± 0.0056 nats/byte at lr 1e-2 (seeds 0-2; AdamW 1.6300, Conda
1.5886); details in experiments/gpt2_optimizers/README.md.

Paper scale: ``:data=tokens,path=DIR`` (the Conda repository's GPT-2 small Muon run: lr 6e-4,
wd 0.1).
"""

from normjax.config_args import base_arg, parse_arg, sibling_config

SWEPT_LEARNING_RATE = 1e-2  # the best of its sweep (experiments/gpt2_optimizers)


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", path="")
  c = sibling_config(__file__, "gpt2_adamw", base_arg(arg, ("data", "path")))
  adamw = {k: c.optimizer[k] for k in ("b1", "b2", "eps")}
  c.optimizer.update(
    learning_rate=SWEPT_LEARNING_RATE,
    labels="muon_groups",
    groups={
      "muon": dict(name="muon", beta=0.95, ns_steps=5, nesterov=True, consistent_rms=0.2),
      "adamw": dict(name="adamw", **adamw),
    },
  )
  for k in adamw:
    del c.optimizer[k]
  if arg.data == "tokens":
    c.optimizer.learning_rate = 6e-4
  return c
