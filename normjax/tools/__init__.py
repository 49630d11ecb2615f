"""Commands built on the trainer, each ``python -m normjax.tools.<name>``:

* ``sweep``: a grid of training runs, run here, emitted for a scheduler, summarised;
* ``ln_removal``: the before/after report of a LayerNorm-removal run;
* ``alpha_bn_eval``: test-time alpha-BN of a trained BatchNorm model on corrupted images;
* ``hf``: ``export`` a GPT-2 run as a Hugging Face checkpoint (LN-free runs included);
* ``convert``: a Hugging Face GPT-2 as an exactly equivalent Pre-RMSNorm / CRMSNorm run;
* ``prepare_text``: text files to nanoGPT ``train.bin`` / ``val.bin`` with a local tokenizer;
* ``sample``: text from a run or a Hugging Face GPT-2 (jitted KV-cache decoding);
* ``linear_probe``: transfer of a run's frozen features to held-out classes (GCR's protocol);
* ``continual``: online class-incremental learning with a replay buffer (ER / ER-ACE), the
  home of AdaB²N's experiment (its own loop: a task stream is not the trainer's i.i.d. step);
* ``federated``: multi-domain federated learning (FedAvg, FedBN, normalizer-free FedWon);
* ``plasticity``: loss of plasticity over a task sequence, with and without NaP;
* ``hypernet_eval``: a MIP hypernetwork's losses over its conditioning grid;
* ``report``: ``experiments/README.md`` regenerated from every folder's ``summary.json``.

The report tools load runs through ``normjax.checkpoint.load_run`` and evaluate through
``normjax.run.evaluate``, the trainer's own set-up and eval loop.
"""

from __future__ import annotations

import runpy
import sys


def run_moved(old: str, new: str):
  """Runs command ``new`` for the old path ``python -m old``, saying where it moved."""
  print(f"{old} moved to {new}: use python -m {new} (this path still works)", file=sys.stderr)
  runpy.run_module(new, run_name="__main__", alter_sys=True)
