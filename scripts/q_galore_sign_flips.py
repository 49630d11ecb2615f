r"""How often Q-GaLore's lazy-refresh test passes with the signed vs the absolute cosine.

  python scripts/q_galore_sign_flips.py [--seeds 5] [--refreshes 100]

A (256, 64) leaf (Flax (in, out)) gets gradients ``G_t = A B^T + noise`` with a fixed rank-8
signal (singular values 8..1) and i.i.d. N(0, 0.3^2) noise each step, so its top singular
subspace is stable and only the SVD's sign choice varies. ``normjax.optim.q_galore`` runs
with the official side, gap 1 (one SVD per step), ``queue_size`` 5, threshold 0.4, and a
gap that never grows (``lazy_cosine=None``: the FIFO is still kept), so both statistics are
read on the same refreshes: ``signed_passes`` and ``abs_passes`` (refreshes at which the
5-window mean of cos / |cos| was >= 0.4), and the fraction of negative cosines in the FIFO
at the end (sign flips). Then the two rules are run as they would train: the final gap
after ``--refreshes`` steps with ``lazy_cosine='signed'`` and ``'abs'``.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from normjax.optim import q_galore, q_galore_stats


def run(seed: int, refreshes: int, lazy):
  rng = np.random.default_rng(seed)
  a = np.linalg.qr(rng.standard_normal((256, 8)))[0] * np.arange(8, 0, -1)
  b = np.linalg.qr(rng.standard_normal((64, 8)))[0]
  params = {"w": jnp.zeros((256, 64), jnp.float32)}
  tx = q_galore(1e-3, rank=8, update_proj_gap=1, side="official", lazy_cosine=lazy)
  state, update = tx.init(params), jax.jit(tx.update)
  cosines = []
  for _ in range(refreshes):
    g = a @ b.T + 0.3 * rng.standard_normal((256, 64))
    _, state = update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    cosines.append(float(state[0].lazy["w"].cos_queue[-1]))
  return q_galore_stats(state), np.asarray(cosines[1:])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--refreshes", type=int, default=100)
  args = parser.parse_args()
  for seed in range(args.seeds):
    stats, cos = run(seed, args.refreshes, None)
    row = dict(
      seed=seed,
      refreshes=stats["svd_count"],
      windows=stats["svd_count"] - 5,
      signed_passes=stats["signed_passes"],
      abs_passes=stats["abs_passes"],
      negative_cosines=float(np.mean(cos < 0)),
      mean_cos=float(cos.mean()),
      mean_abs_cos=float(np.abs(cos).mean()),
      final_gap_signed=run(seed, args.refreshes, "signed")[0]["gaps"][0],
      final_gap_abs=run(seed, args.refreshes, "abs")[0]["gaps"][0],
    )
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
