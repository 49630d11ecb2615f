r"""Step time of the scanned transformer stack against the unrolled one (``model.scan_layers``).

  python scripts/bench_scan_layers.py [--depths 4,12] [--repeats 5] [--steps 3]

A byte-level GPT-2 (width 256, 4 heads, context 256, batch 8, AdamW: the shape of
``scripts/bench_vs_torch.py``) at each depth, unrolled and scanned, from the same weights
(``stack_layout.to_scanned``), both steps jitted with the state donated and timed alternately
in one process: median over repeats of the mean of ``--steps`` steps, and the ratio
scanned / unrolled. Compile time (first call) is printed beside; the compile-time table of
GPT-2 small is ``scripts/bench_memory.py --tables compile``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax

from normjax import data as nj_data
from normjax import run, stack_layout
from normjax.config_args import sibling_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHAPE = {"width": 256, "num_heads": 4}


def setup_for(depth: int, scan: bool):
  config = sibling_config(str(CONFIGS / "x.py"), "gpt2_layernorm", None)
  config.model.update(SHAPE, depth=depth, scan_layers=scan)
  config.data.seq_len, config.batch_size = 256, 8
  return run.build(config, validate=False), config


def timed(step, state, batch, steps: int):
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return state, (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depths", default="4,12")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  print(
    "| depth | unrolled ms/step | scanned ms/step | scanned / unrolled | "
    "first call unrolled s | first call scanned s |"
  )
  print("|---|---|---|---|---|---|")
  for depth in map(int, args.depths.split(",")):
    (unrolled, config), (scanned, _) = setup_for(depth, False), setup_for(depth, True)
    batch = next(nj_data.train_iterator(config.data, global_batch_size=8, seed=0))
    state_u = jax.jit(unrolled.init_state)(jax.random.key(0))
    abstract_s = jax.eval_shape(scanned.init_state, jax.random.key(0))
    state_s = {
      **state_u,
      "params": stack_layout.to_scanned(state_u["params"]),
      "model_state": stack_layout.to_scanned(state_u["model_state"]),
      "opt_state": stack_layout.match_layout_all(state_u["opt_state"], abstract_s["opt_state"]),
    }
    state_s = jax.tree.map(lambda x: x.copy(), state_s)  # no buffer shared under donation
    steps, first, states = {}, {}, {"u": state_u, "s": state_s}
    for key, setup in (("u", unrolled), ("s", scanned)):
      steps[key] = jax.jit(setup.train_step, donate_argnums=(0,))
      states[key], first[key] = timed(steps[key], states[key], batch, 1)
    times = {"u": [], "s": []}
    for r in range(args.repeats):
      for key in ("u", "s") if r % 2 == 0 else ("s", "u"):
        states[key], t = timed(steps[key], states[key], batch, args.steps)
        times[key].append(t)
    mu, ms = statistics.median(times["u"]), statistics.median(times["s"])
    print(
      f"| {depth} | {mu * 1e3:.1f} | {ms * 1e3:.1f} | {ms / mu:.3f} | {first['u']:.1f} | "
      f"{first['s']:.1f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
