r"""Every registered norm on one task, same budget, several seeds: experiments/norm_zoo/.

  python scripts/norm_zoo.py vit                    # probe + time + train (3 seeds) + report
  python scripts/norm_zoo.py resnet_batch2 --mode train --seeds 3 --only batchnorm,groupnorm
  python scripts/norm_zoo.py gpt2 --mode report

Tasks (``TASKS``): ``vit`` (ViT on digits, the LayerNorm config's budget), ``gpt2`` (GPT-2 on
the stdlib bytes, 300 of the LayerNorm config's 1000 steps), ``resnet`` (ResNet on digits,
batch 128, 300 of 1000 steps) and ``resnet_batch2`` (batch 2, 4000 steps at lr 0.1 * 2/32, the
micro-batch setting of experiments/baselines). Each norm is the task's config with only
``model.norm`` changed (default ``norm_kwargs``); the budget is the same for every norm.

Modes (``all`` runs them in this order; each reads what the earlier ones wrote):

* ``probe``: every name in ``normjax.norms.NORMS`` is built into the task's model, initialised
  and trained one step; a norm applies when that works and the loss is finite, otherwise the
  error (the model's or the norm's own message) is its reason. Nothing is excluded by hand.
* ``time``: re-times the norms an earlier probe found applying (``all`` and ``probe`` time
  right after probing): their jitted train steps on one fixed batch, interleaved (``--rounds``
  rounds of ``--steps`` steps each, norms in turn), the median ms per step and its ratio to
  the task's baseline norm (LayerNorm / BatchNorm) measured in the same rounds; the 1-minute
  load average is recorded beside them.
* ``train``: ``--seeds`` seeds of each applying norm with ``seeds_in_process.SeedRunner``
  (fresh init and data order per seed; a non-finite loss is a divergence), appended to
  ``<task>.jsonl``; a norm that already has the seeds is skipped, so the mode resumes.
* ``report``: ``<task>.md`` (per norm: metric mean ± s.e., divergences, step-time ratio; the
  norms that do not apply, with their reasons) and ``<task>.png``.

Files: ``experiments/norm_zoo/<task>.jsonl`` (rows), ``<task>_step.json`` (probe and timing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from seed_table import summary  # noqa: E402
from seeds_in_process import SeedRunner, load  # noqa: E402

from normjax import data as nj_data  # noqa: E402
from normjax import run  # noqa: E402
from normjax.norms import NORMS  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(_ROOT, "experiments", "norm_zoo")
BATCH2 = ["batch_size=2", "total_steps=4000", "optimizer.learning_rate=0.00625"]
TASKS = {
  "vit": dict(config="configs/vit_layernorm.py", set=[], baseline="layernorm"),
  "gpt2": dict(config="configs/gpt2_layernorm.py", set=["total_steps=300"], baseline="layernorm"),
  "resnet": dict(
    config="configs/resnet_batchnorm.py", set=["total_steps=300"], baseline="batchnorm"
  ),
  "resnet_batch2": dict(config="configs/resnet_batchnorm.py", set=BATCH2, baseline="batchnorm"),
}
METRICS = {"gpt2": ("eval_loss", "val loss (nats/byte)")}
DEFAULT_METRIC = ("eval_accuracy", "test accuracy")


def task_config(task: str, norm: str):
  spec = TASKS[task]
  return load(f"{os.path.join(_ROOT, spec['config'])}:norm={norm}", spec["set"])


def first_batch(config):
  return next(nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=0))


def sees_later_tokens(setup, state, batch, *, train: bool) -> bool:
  """Whether the logits at positions < T-1 change when only the last token changes."""
  params = setup.storage.decode(state["params"])

  def logits(tokens):
    return setup.model_def.merge(params, state["model_state"], train=train)(tokens)

  tokens = batch["inputs"]
  changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % setup.info.vocab_size)
  a, b = logits(tokens)[:, :-1], logits(changed)[:, :-1]
  return bool(jnp.max(jnp.abs(a - b)) > 1e-5 * (1.0 + jnp.max(jnp.abs(a))))


def compiled_step(config):
  """(jitted train step, initial state, one batch, notes) of ``config``; raises where it cannot
  run. For a language model, a norm whose eval-mode output sees later tokens is refused (its
  validation loss would read the future); one whose training-mode output does is noted."""
  setup = run.build(config, validate=True)
  step = jax.jit(setup.train_step)
  state = jax.jit(setup.init_state)(jax.random.key(0))
  batch = first_batch(config)
  notes = {}
  if "targets" in batch:
    batch = jax.tree.map(jnp.asarray, batch)
    if sees_later_tokens(setup, state, batch, train=False):
      raise ValueError("not causal: in eval mode its statistics over positions see later tokens")
    if sees_later_tokens(setup, state, batch, train=True):
      notes["note"] = "training-mode statistics include later tokens of the batch"
  state, metrics = step(state, batch)
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"non-finite loss {loss} after one step")
  return step, state, batch, notes


def probe_and_time(task: str, rounds: int, steps: int, applies: dict | None = None) -> dict:
  """Probes every registered norm (or, given ``applies`` from an earlier probe, compiles only
  the norms that applied there) and times the applying norms' steps, interleaved."""
  norms, compiled = {}, {}
  for name in NORMS.names() if applies is None else list(applies):
    if applies is not None and not applies[name]["applies"]:
      norms[name] = dict(applies[name])
      continue
    try:
      *compiled[name], notes = compiled_step(task_config(task, name))
      norms[name] = {"applies": True, **notes}
    except Exception as e:  # the reason a norm does not apply is whatever stops it
      reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
      norms[name] = {"applies": False, "reason": reason[:300]}
    print(name, norms[name], flush=True)
  times = {name: [] for name in compiled}
  for _ in range(rounds):
    for name, (step, state, batch) in compiled.items():
      jax.block_until_ready(step(state, batch))
      start = time.perf_counter()
      out = state
      for _ in range(steps):
        out, _ = step(out, batch)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / steps * 1e3)
  base = TASKS[task]["baseline"]
  for name, ms in times.items():
    norms[name]["step_ms"] = round(statistics.median(ms), 3)
  for name in times:
    norms[name]["step_ratio"] = round(norms[name]["step_ms"] / norms[base]["step_ms"], 3)
  return {
    "task": task,
    "baseline": base,
    "rounds": rounds,
    "steps": steps,
    "load_average_1min": round(os.getloadavg()[0], 2),
    "jax": jax.__version__,
    "norms": norms,
  }


def read_rows(path: str) -> dict[str, list[dict]]:
  arms: dict[str, list[dict]] = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in filter(str.strip, f):
        row = json.loads(line)
        arms.setdefault(row["arm"], []).append(row)
  return arms


def train(task: str, applying: list[str], seeds: int, out: str):
  for name in applying:
    have = len(read_rows(out).get(name, []))
    if have >= seeds:
      continue
    config = task_config(task, name)
    runner = SeedRunner(config)
    for seed in range(have, seeds):
      row = {"arm": name, "task": task, "set": TASKS[task]["set"], "seed": seed, **runner(seed)}
      print(json.dumps(row), flush=True)
      with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


def report(task: str, step_info: dict, rows_path: str, md: str, png: str):
  metric, label = METRICS.get(task, DEFAULT_METRIC)
  arms = read_rows(rows_path)
  norms = step_info["norms"]
  order = sorted(arms, key=lambda a: (a != step_info["baseline"], a))
  lines = [
    f"| norm | seeds | {label} | diverged | step time / {step_info['baseline']} |",
    "|---|---|---|---|---|",
  ]
  for arm in order:
    rows = arms[arm]
    diverged = sum(r.get("diverged_at_step") is not None for r in rows)
    ratio = norms.get(arm, {}).get("step_ratio")
    cell = summary(rows, metric, 4).split(" (")[0]
    lines.append(f"| {arm} | {len(rows)} | {cell} | {diverged} | {ratio:.2f} |")
  skipped = [(n, v["reason"]) for n, v in norms.items() if not v["applies"]]
  if skipped:
    lines += ["", "Registered norms that do not apply to this task (the probe's error):", ""]
    lines += [f"- `{n}`: {reason}" for n, reason in skipped]
  lines += [
    "",
    f"Step times: median of {step_info['rounds']} interleaved rounds of {step_info['steps']}"
    f" steps, jax {step_info['jax']}, 1-min load average {step_info['load_average_1min']}.",
  ]
  with open(md, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax, bx) = plt.subplots(1, 2, figsize=(0.5 * len(order) + 6, 3.8), width_ratios=[2, 1])
  for i, arm in enumerate(order):
    values = [r[metric] for r in arms[arm] if r.get("diverged_at_step") is None and metric in r]
    if values:
      se = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0
      ax.bar(i, np.mean(values), yerr=se, capsize=2, color=f"C{i % 10}")
      ax.plot([i] * len(values), values, "k.", ms=3)
    else:
      ax.text(i, 0, "x", ha="center", color="red")
    bx.barh(i, norms.get(arm, {}).get("step_ratio", np.nan), color=f"C{i % 10}")
  finite = [r[metric] for a in order for r in arms[a] if metric in r and np.isfinite(r[metric])]
  lo, hi = min(finite), max(finite)
  ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
  ax.set_xticks(range(len(order)), order, rotation=40, ha="right", fontsize=7)
  ax.set_ylabel(label)
  bx.set_yticks(range(len(order)), order, fontsize=7)
  bx.axvline(1.0, color="k", lw=0.8)
  bx.set_xlabel(f"train step time / {step_info['baseline']}")
  fig.suptitle(f"norm zoo: {task} ({', '.join(TASKS[task]['set']) or 'config budget'})")
  fig.tight_layout()
  fig.savefig(png, dpi=110)
  print(f"wrote {md}, {png}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("task", choices=sorted(TASKS))
  parser.add_argument("--mode", choices=("all", "probe", "time", "train", "report"), default="all")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--only", default="", help="comma-separated norms to train (default all)")
  parser.add_argument("--out_dir", default=OUT_DIR)
  args = parser.parse_args()
  os.makedirs(args.out_dir, exist_ok=True)
  stem = os.path.join(args.out_dir, args.task)
  step_path = f"{stem}_step.json"
  if args.mode in ("time", "train", "report") and not os.path.exists(step_path):
    parser.error(f"--mode {args.mode}: no {step_path}; probe the task first (--mode probe)")
  if args.mode in ("all", "probe", "time"):
    earlier = None
    if args.mode == "time":
      with open(step_path) as f:
        earlier = json.load(f)["norms"]
    info = probe_and_time(args.task, args.rounds, args.steps, earlier)
    with open(step_path, "w") as f:
      json.dump(info, f, indent=1)
  with open(step_path) as f:
    info = json.load(f)
  if args.mode in ("all", "train"):
    applying = [n for n, v in info["norms"].items() if v["applies"]]
    wanted = [n for n in args.only.split(",") if n] or applying
    refused = [n for n in wanted if n not in applying]
    if refused:
      parser.error(f"--only {','.join(refused)}: not applying to {args.task}; applying: "
                   f"{', '.join(applying)}")  # fmt: skip
    train(args.task, [n for n in applying if n in wanted], args.seeds, f"{stem}.jsonl")
  if args.mode in ("all", "report"):
    report(args.task, info, f"{stem}.jsonl", f"{stem}.md", f"{stem}.png")


if __name__ == "__main__":
  main()
