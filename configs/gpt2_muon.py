r"""GPT-2 + Muon (optax.contrib.muon) on the attention/MLP kernels, AdamW elsewhere.

  python -m normjax.train --config configs/gpt2_muon.py --workdir /tmp/gpt2_muon
  python -m normjax.sweep --config configs/sweeps/gpt2_lr.py:optimizer=muon  # its lr sweep

``configs/gpt2_adamw.py`` (byte-level GPT-2, width 128, depth 2, 1000 steps of batch 16,
warmup 100, cosine to 0.1x, clipping 1.0) with the Muon baseline of the Conda repository
(``conda_torch/muon_moonlight.py``, Moonlight's form): ``optimizer.labels='muon_groups'``
sends the attention and MLP kernels to ``optax.contrib.muon`` with ``consistent_rms=0.2``
(update = 0.2 * sqrt(max(fan_in, fan_out)) * NS5(Nesterov momentum), so its RMS matches
AdamW's and the same peak learning rate serves both groups), beta 0.95, 5 Newton-Schulz
steps, and decoupled weight decay 0.1; the embeddings (tied head), norms and biases get
the AdamW baseline unchanged (betas (0.9, 0.95), decay on matrices only).

Measured (``python -m normjax.sweep --config configs/sweeps/gpt2_lr.py:optimizer=muon``;
jax 0.10.2, 2-core CPU, one seed per point), final validation loss in nats/byte:

  ==========  ======  ======  ==========  ======  ======
  peak lr     3e-3    6e-3    **1e-2**    2e-2    3e-2
  val loss    1.4750  1.3946  **1.3745**  1.3850  1.4351
  ==========  ======  ======  ==========  ======  ======

against 1.6264 for the tuned AdamW (gpt2_adamw.py, also best at 1e-2) and 1.5933 for
Conda (gpt2_conda.py, best at 5e-2). Seeds 0-2 at the best lrs (``lrs=1e-2,seeds=3``):
Muon 1.3692 ± 0.0056, AdamW 1.6300 ± 0.0053, Conda 1.5886 ± 0.0048: Muon wins by 0.22-0.26
nats/byte at this size and length (width 128, 2 layers, 1000 steps), with train losses in
step (1.19 vs 1.52 at step 1000), so it is the optimization, not the evaluation. The
Conda paper reports Conda ahead of Muon at GPT-2 124M+ scale; this small run does not
reproduce that ordering. See experiments/gpt2_optimizers/.

Paper scale: ``:data=tokens,path=DIR`` (the Conda repository's GPT-2 small Muon run: lr 6e-4,
wd 0.1).
"""
from normjax.config_args import base_arg, parse_arg, sibling_config

SWEPT_LEARNING_RATE = 1e-2  # configs/sweeps/gpt2_lr.py:optimizer=muon, see above


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", path="")
  c = sibling_config(__file__, "gpt2_adamw", base_arg(arg, ("data", "path")))
  adamw = {k: c.optimizer[k] for k in ("b1", "b2", "eps")}
  c.optimizer.update(
      learning_rate=SWEPT_LEARNING_RATE, labels="muon_groups",
      groups={"muon": dict(name="muon", beta=0.95, ns_steps=5, nesterov=True,
                           consistent_rms=0.2),
              "adamw": dict(name="adamw", **adamw)})
  for k in adamw:
    del c.optimizer[k]
  if arg.data == "tokens":
    c.optimizer.learning_rate = 6e-4
  return c
