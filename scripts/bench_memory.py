r"""Per-device memory of the compiled training step, from ``--dry_run`` (normjax.plan).

  python scripts/bench_memory.py --corpus DIR [--tables remat,xl,compile,compile_view]

``remat``: GPT-2 small (124M, context 1024) at batch 8 x 1024 on one device, AdamW, one row
per ``model.remat`` policy: XLA's temporaries (activations, gradients, workspace) and the
peak estimate, and FLOPs per step (recomputation shows up as extra FLOPs), each as a ratio
to ``remat='none'`` in the same run.
``xl``: GPT-2 XL (1.56B with the padded 50304 vocabulary) with AdamW under FSDP on 8, 64
and 256 virtual CPU devices, batch 1 x 1024 per device, without and with ``remat='block'``.
``compile``: GPT-2 small's step at depth 12 / 24 / 48, unrolled and ``model.scan_layers``:
seconds to trace + lower and to compile (XLA:CPU), and the ratios; ``compile_view``: the same
with LAMB, a per-tensor optimizer that the scanned model runs through the unrolled view.

Each row is a fresh ``python -m normjax.train ... --dry_run`` process (the device count is
fixed when jax starts). ``DIR`` holds nanoGPT-style ``train.bin`` / ``val.bin``; the dry run
reads one batch of it for shapes, so random tokens serve. The figures are XLA:CPU's
compile: on a GPU/TPU the fusions, layouts and collectives differ (XLA:CPU lowers the FSDP
gradient reduce-scatter as an all-reduce of the full gradient, which inflates temporaries).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"batch_size": 8, "eval_batch_size": 8}
XL = {"model.width": 1600, "model.depth": 48, "model.num_heads": 25}


def dry_run(corpus: str, devices: int, overrides: dict) -> dict:
  args = [
    sys.executable,
    "-m",
    "normjax.train",
    "--config",
    f"{ROOT / 'configs' / 'gpt2_layernorm.py'}:data=tokens,path={corpus}",
    "--dry_run",
    *(f"--config.{k}={v}" for k, v in overrides.items()),
  ]
  env = dict(
    os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
  )
  start = time.perf_counter()
  out = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(out.stderr[-2000:])
  text = out.stdout
  gib = lambda label: float(re.search(rf"{label}\s+([\d.]+) GiB", text).group(1))
  return {
    "params": gib("parameters"),
    "opt": gib("optimizer state"),
    "temp": gib("temporaries"),
    "peak": gib(r"peak \(estimate\)"),
    "flops": float(re.search(r"FLOPs per step\s+([\d.e+]+)", text).group(1)),
    "collectives": re.search(r"collectives per step (.*)", text).group(1),
    "seconds": time.perf_counter() - start,
    "trace": float(re.search(r"trace \+ lower ([\d.]+) s", text).group(1)),
    "compile": float(re.search(r"XLA compile ([\d.]+) s", text).group(1)),
  }


def remat_table(corpus: str):
  print("| remat | temporaries GiB | peak GiB | peak / none | FLOPs per step | FLOPs / none |")
  print("|---|---|---|---|---|---|")
  base = None
  for policy in ("none", "block", "dots_saveable", "dots_with_no_batch_dims_saveable"):
    r = dry_run(corpus, 1, {**SMALL, "model.remat": policy})
    base = base or r
    print(
      f"| {policy} | {r['temp']:.3f} | {r['peak']:.3f} | {r['peak'] / base['peak']:.3f} | "
      f"{r['flops']:.3e} | {r['flops'] / base['flops']:.3f} |",
      flush=True,
    )


def xl_table(corpus: str):
  print(
    "| devices | remat | params GiB | opt state GiB | temporaries GiB | peak GiB | "
    "FLOPs per step | collectives | compile s |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for devices in (8, 64, 256):
    for policy in ("none", "block"):
      r = dry_run(
        corpus,
        devices,
        {
          **XL,
          "batch_size": devices,
          "eval_batch_size": devices,
          "mesh.data": 1,
          "mesh.fsdp": devices,
          "sharding": "fsdp",
          "model.remat": policy,
        },
      )
      print(
        f"| {devices} | {policy} | {r['params']:.3f} | {r['opt']:.3f} | {r['temp']:.3f} | "
        f"{r['peak']:.3f} | {r['flops']:.3e} | {r['collectives']} | {r['seconds']:.0f} |",
        flush=True,
      )


def compile_table(corpus: str):
  """GPT-2 small's train step (AdamW, batch 8 x 1024, one device) at depth 12 / 24 / 48,
  unrolled and scanned (``model.scan_layers``): seconds to trace + lower and to compile."""
  print(
    "| depth | unrolled trace s | unrolled compile s | scanned trace s | scanned compile s | "
    "compile scanned / unrolled | total scanned / unrolled |"
  )
  print("|---|---|---|---|---|---|---|")
  for depth in (12, 24, 48):
    u, s = (
      dry_run(corpus, 1, {**SMALL, "model.depth": depth, "model.scan_layers": scan})
      for scan in (False, True)
    )
    print(
      f"| {depth} | {u['trace']:.1f} | {u['compile']:.1f} | {s['trace']:.1f} | "
      f"{s['compile']:.1f} | {s['compile'] / u['compile']:.2f} | "
      f"{(s['trace'] + s['compile']) / (u['trace'] + u['compile']):.2f} |",
      flush=True,
    )


def compile_view_table(corpus: str):
  """The same with LAMB (per-tensor trust ratios): scanned runs it through
  ``layer_stack.unrolled_view``, per-layer slices of the stacked leaves."""
  print("| depth | optimizer | unrolled total s | scanned total s | scanned / unrolled |")
  print("|---|---|---|---|---|")
  for depth in (12, 48):
    u, s = (
      dry_run(
        corpus,
        1,
        {**SMALL, "model.depth": depth, "model.scan_layers": scan, "optimizer.name": "lamb"},
      )
      for scan in (False, True)
    )
    tu, ts = u["trace"] + u["compile"], s["trace"] + s["compile"]
    print(f"| {depth} | lamb | {tu:.1f} | {ts:.1f} | {ts / tu:.2f} |", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--corpus", required=True, help="dir with train.bin and val.bin")
  parser.add_argument("--tables", default="remat,xl")
  args = parser.parse_args()
  for table in args.tables.split(","):
    {
      "remat": remat_table,
      "xl": xl_table,
      "compile": compile_table,
      "compile_view": compile_view_table,
    }[table](args.corpus)
    print()


if __name__ == "__main__":
  main()
