r"""GPT-2 + Q-GaLore (VITA-Group/Q-GaLore, arXiv 2407.08296) and its ablation arms.

  python -m normjax.train --config configs/gpt2_qgalore.py --workdir /tmp/gpt2_qgalore
  python -m normjax.train --config configs/gpt2_qgalore.py:optimizer=adamw --workdir /tmp/qg_adamw
  # GaLore, optax's side / the official side; + INT4 projector; + adaptive gap; INT8 weights
  ...:proj_bits=0,lazy=none,weights=float,side=optax   ...:proj_bits=0,lazy=none,weights=float
  ...:lazy=none,weights=float   ...:lazy=signed,weights=float   ...:lazy=abs,weights=float
  ...:weights=rtn   ...:weights=sr

The model, data and schedule of ``configs/gpt2_adamw.py`` (byte-level GPT-2, width 128,
depth 2, 1000 steps of batch 16, warmup 100, cosine to 0.1x, clipping 1.0), with the
official LLaMA-60M recipe's optimizer settings (``scripts/pretrain_c4/llama_60m.sh``):
``normjax.optim.q_galore`` on the attention and MLP kernels (qkv, attention output, fc1,
fc2: the official q/k/v/o/up/down/gate target modules), Adam (0.9, 0.95) in the low-rank
space, ``scale`` 0.25, no weight decay (decay after the step, as official, if set),
embeddings, norms and biases on Adam at the same learning rate. Arguments:

* ``optimizer``: 'q_galore' or 'adamw' (AdamW (0.9, 0.95), wd 0, lr 1e-2: gpt2_adamw's
  tuned lr; the Q-GaLore recipe has no decay, so neither has this baseline).
* ``side``: 'official' (compress the smaller dimension) or 'optax'.
* ``proj_bits``: 4 (official; stored one code per byte unless ``pack``), 0: float projector.
* ``lazy``: 'signed' (official adaptive gap), 'abs' (|cos|), 'none' (fixed gap).
* ``weights``: 'sr' (INT8 weights of the kernels, stochastic rounding; official), 'rtn'
  (round to nearest), 'float'.
* ``rank`` 32, ``gap`` 50: a quarter of the width; the official gap 200 is 2% of its 10k
  steps and would give this run 5 SVDs, so the FIFO of 5 cosines would first be full at
  the 6th SVD (step 1000), the run's end; 50 gives 20 refreshes and a first possible
  doubling at step 250.
* ``lr``: the peak learning rate of the Q-GaLore arms (2e-2; a short sweep is in the
  experiment).

Measured (200 steps, gap 10, 3 seeds): eval loss 2.384 ± 0.022 nats/byte for this default,
2.415 ± 0.034 for float GaLore on the official side; the INT8 weights take 616 kB against
1.78 MB in float32. Details and the eight arms in experiments/q_galore/README.md.

Paper scale: ``:data=tokens,path=DIR`` (GPT-2 small on a token corpus), rank 128 (set
``rank=``), the official gap 200 (``gap=200``), lr 0.015 (``lr=0.015``).
"""

from ml_collections.config_dict import placeholder

from normjax.config_args import base_arg, check_choice, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(
    arg,
    optimizer="q_galore",
    side="official",
    proj_bits=4,
    pack=False,
    lazy="signed",
    weights="sr",
    rank=32,
    gap=50,
    lr=2e-2,
    data="pystdlib",
    path="",
  )
  check_choice(arg, "optimizer", ("q_galore", "adamw"))
  check_choice(arg, "side", ("official", "optax"))
  check_choice(arg, "lazy", ("signed", "abs", "none"))
  check_choice(arg, "weights", ("sr", "rtn", "float"))
  c = sibling_config(__file__, "gpt2_adamw", base_arg(arg, ("data", "path")))
  c.weight_quant = dict(
    bits=placeholder(int), group_size=256, rounding="stochastic", mask="attention_mlp_kernels"
  )
  if arg.optimizer == "adamw":
    c.optimizer = dict(
      name="adamw", learning_rate=1e-2, weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8
    )
    return c
  c.optimizer = dict(
    name="q_galore",
    learning_rate=arg.lr,
    weight_decay=0.0,
    b1=0.9,
    b2=0.95,
    eps=1e-8,
    rank=arg.rank,
    update_proj_gap=arg.gap,
    scale=0.25,
    galore_mask="attention_mlp_kernels",
    side=arg.side,
    proj_bits=arg.proj_bits or placeholder(int),
    proj_group_size=256,
    proj_pack=arg.pack,
    lazy_cosine=placeholder(str) if arg.lazy == "none" else arg.lazy,
    cos_threshold=0.4,
    gamma_proj=2.0,
    queue_size=5,
    decay_after_step=True,
  )
  if arg.weights != "float":
    c.weight_quant.update(bits=8, rounding="stochastic" if arg.weights == "sr" else "nearest")
  return c
