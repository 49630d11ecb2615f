r"""A grid of training runs from a sweep config: run them, emit them, summarise them.

  python -m normjax.tools.sweep --config configs/sweeps/gpt2_lr.py --workdir /tmp/sweep_adamw
  python -m normjax.tools.sweep --config configs/sweeps/gpt2_lr.py:optimizer=conda --mode emit
  python -m normjax.tools.sweep --config configs/sweeps/gpt2_lr.py --index 3  # an array job
  python -m normjax.tools.sweep --config configs/sweeps/gpt2_lr.py --mode summarize

A sweep config (``configs/sweeps/*.py``, ``get_config(arg) -> ConfigDict``) has:
  * ``base``: the training config file, relative to the sweep config's folder (or absolute),
    and ``base_arg``: its config argument (``''`` for none);
  * ``grid``: nested like the training config, a list of values at each swept key, e.g.
    ``{'optimizer': {'learning_rate': [1e-3, 3e-3]}, 'seed': [0, 1]}``; the runs are the
    Cartesian product (axes in ConfigDict's sorted key order, the last one fastest), each
    one ``python -m normjax.train --config BASE --config.optimizer.learning_rate=0.001 ...``;
    an axis named ``seed`` is repetition: the summary averages over it;
  * ``fixed``: overrides shared by every run, nested the same way (optional);
  * ``metric`` (a key of the final evaluation, e.g. ``eval_loss``) and ``goal``
    (``'min'`` | ``'max'``).

Modes: ``run`` executes the runs one after another in subprocesses (``--index`` picks
one run, e.g. a cluster array-job index), skipping runs that finished (their
``final.json`` exists) or diverged (a run stopped half-way resumes from its checkpoint,
as ``normjax.train`` always does). A run's state is the trainer's own ``status.json``
(``normjax.metrics_io``): ``diverged`` (non-finite loss) and ``failed`` (any other
error, retried next time) are recorded without stopping the sweep; a process that died
before it could write its status is recorded as ``failed`` with its exit code. Then it
summarises. ``--launcher local --parallel N`` runs up to N at once, each on its own
devices (``--gpus_per_run``); ``--launcher slurm`` submits them as one SLURM array job
through submitit (``--slurm_partition``, ``--slurm_time_min``, ``--gpus_per_run``, or the
sweep config's ``slurm = {partition, time_min, gpus_per_run}``; ``--nowait`` returns after
submission) with the same bookkeeping: each run's ``status.json`` says queued, running,
finished, diverged or failed (``normjax.tools.launchers``). TPU pods: ``--mode emit`` gives
one command per run; run each on every worker of a slice with
``gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd normjax && CMD"``.
``emit`` prints one command line per run for a scheduler.
``summarize`` reads what is there. The summary is ``summary.md`` (a table, best row
marked), ``summary.json`` and ``summary.png`` (metric against the first numeric axis, one
line per combination of the other axes, seed spread as error bars) in the sweep workdir;
each run lives in ``<workdir>/<axis=value,...>/`` with its ``train.log``.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import statistics
import sys

from absl import app, flags
from ml_collections import config_flags

from normjax import cli
from normjax.metrics_io import STATUS_FILE  # the trainer's status.json
from normjax.tools import launchers


def _plain(value):
  value = value.to_dict() if hasattr(value, "to_dict") else value
  return list(value) if isinstance(value, tuple) else value


def flatten(tree, prefix: str = "") -> dict:
  """``{'a': {'b': v}}`` -> ``{'a.b': v}`` (mappings are walked, anything else is a leaf)."""
  out = {}
  for key, value in _plain(tree).items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = _plain(value)
  return out


def expand(sweep) -> list[dict]:
  """The runs of ``sweep.grid`` in order: ``[{dotted.key: value}, ...]``."""
  grid = flatten(sweep.grid)
  if not grid:
    raise ValueError("sweep config grid is empty")
  for key, values in grid.items():
    if not isinstance(values, list) or not values:
      raise ValueError(f"sweep config grid[{key!r}] must be a non-empty list, got {values!r}")
  return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def _format(value) -> str:
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_format(v) for v in value) + ",)"
  return repr(value) if isinstance(value, str) else str(value)


def run_name(values: dict) -> str:
  """``learning_rate=0.003,seed=1``: last key components, or full keys where they clash."""
  short = [k.rsplit(".", 1)[-1] for k in values]
  keys = [s if short.count(s) == 1 else k for s, k in zip(short, values)]
  return ",".join(f"{k}={_format(v).strip(chr(39))}" for k, v in zip(keys, values.values()))


def base_path(sweep, sweep_file: str) -> str:
  path = os.path.join(os.path.dirname(os.path.abspath(sweep_file)), sweep.base)
  if not os.path.exists(path):
    raise ValueError(f"sweep config base={sweep.base!r}: no such file {path}")
  return os.path.relpath(path) if not os.path.isabs(sweep.base) else path


def command(sweep, sweep_file: str, values: dict, workdir: str, python=sys.executable):
  config = base_path(sweep, sweep_file)
  if sweep.get("base_arg"):
    config += ":" + sweep.base_arg
  overrides = {**flatten(sweep.get("fixed") or {}), **values}
  return [
    python,
    "-m",
    "normjax.train",
    "--config",
    config,
    "--workdir",
    workdir,
    *(f"--config.{k}={_format(v)}" for k, v in overrides.items()),
  ]


def read_result(rundir: str, metric: str) -> dict:
  """``{'status': 'done'|'diverged'|'failed'|'running'|'preempted'|'pending', 'value', ...}``
  from the run's ``final.json``, else its ``status.json``."""
  path = os.path.join(rundir, "final.json")
  if os.path.exists(path):
    with open(path) as f:
      final = json.load(f)
    if metric not in final:
      raise ValueError(
        f"sweep config metric={metric!r} is not in {path}; "
        f"it has {sorted(k for k in final if k != 'step')}"
      )
    return {"status": "done", "value": final[metric], "step": final["step"]}
  status_path = os.path.join(rundir, STATUS_FILE)
  if os.path.exists(status_path):
    with open(status_path) as f:
      return {"value": None, **json.load(f)}
  return {"status": "pending", "value": None}


def summarize(sweep, runs: list[dict], results: list[dict]) -> dict:
  """Rows averaged over the ``seed`` axis, the best row, and a markdown table."""
  keys = [k for k in runs[0] if k.rsplit(".", 1)[-1] != "seed"]
  groups: dict = {}
  for values, result in zip(runs, results):
    groups.setdefault(tuple(_format(values[k]) for k in keys), []).append((values, result))
  rows = []
  for members in groups.values():
    done = [r["value"] for _, r in members if r["status"] == "done"]
    statuses = sorted({r["status"] for _, r in members})
    rows.append(
      {
        **{k: members[0][0][k] for k in keys},
        "n": len(done),
        "runs": len(members),
        "mean": statistics.fmean(done) if done else None,
        "std": statistics.stdev(done) if len(done) > 1 else None,
        "status": ",".join(statuses),
      }
    )
  scored = [r for r in rows if r["mean"] is not None and r["n"] == r["runs"]]
  pick = min if sweep.goal == "min" else max
  best = pick(scored, key=lambda r: r["mean"]) if scored else None
  header = [*keys, sweep.metric, "runs", "status"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    value = "" if r["mean"] is None else f"{r['mean']:.4f}"
    if r["std"] is not None:
      value += f" ± {r['std']:.4f}"
    if r is best:
      value = f"**{value}** (best)"
    cells = [_format(r[k]) for k in keys] + [value, f"{r['n']}/{r['runs']}", r["status"]]
    lines.append("| " + " | ".join(cells) + " |")
  return {
    "metric": sweep.metric,
    "goal": sweep.goal,
    "axes": keys,
    "rows": rows,
    "best": best,
    "table": "\n".join(lines),
  }


def plot(summary: dict, path: str) -> bool:
  """``metric`` against the first numeric axis; False when no axis is numeric."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  axes = summary["axes"]
  x_key = next((k for k in axes if all(numeric(r[k]) for r in summary["rows"])), None)
  if x_key is None:
    return False
  others = [k for k in axes if k != x_key]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  lines: dict = {}
  for r in summary["rows"]:
    if r["mean"] is not None:
      lines.setdefault(tuple(_format(r[k]) for k in others), []).append(r)
  for label, rows in lines.items():
    rows.sort(key=lambda r: r[x_key])
    ax.errorbar(
      [r[x_key] for r in rows],
      [r["mean"] for r in rows],
      yerr=[r["std"] or 0.0 for r in rows],
      marker="o",
      capsize=3,
      label=",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, label)) or None,
    )
  xs = [r[x_key] for r in summary["rows"]]
  if xs and min(xs) > 0 and max(xs) >= 10 * min(xs):
    ax.set_xscale("log")
  ax.set_xlabel(x_key)
  ax.set_ylabel(summary["metric"])
  if others:
    ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def write_summary(sweep, runs, workdir) -> dict:
  results = [read_result(os.path.join(workdir, run_name(v)), sweep.metric) for v in runs]
  summary = summarize(sweep, runs, results)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(summary["table"] + "\n")
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({k: v for k, v in summary.items() if k != "table"}, f, indent=2)
  plot(summary, os.path.join(workdir, "summary.png"))
  return summary


def define_flags():
  """The command-line flags (defined on demand: ``normjax.train`` owns ``--config`` too)."""
  global _CONFIG, _WORKDIR, _MODE, _INDEX, _VERBOSE, _LAUNCHER, _PARALLEL, _GPUS
  global _PARTITION, _TIME, _CLUSTER, _WAIT
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file (configs/sweeps/).")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (default workdirs/sweeps/NAME).")
  _MODE = flags.DEFINE_enum("mode", "run", ["run", "emit", "summarize"], "What to do.")
  _INDEX = flags.DEFINE_integer("index", None, "Run only this run (0-based) in --mode run.")
  _LAUNCHER = flags.DEFINE_enum(
    "launcher", "local", ["local", "slurm"], "Where runs execute (normjax.tools.launchers)."
  )
  _PARALLEL = flags.DEFINE_integer(
    "parallel", 1, "Runs at once (local), array parallelism (slurm)."
  )
  _GPUS = flags.DEFINE_integer(
    "gpus_per_run", None, "GPUs per run (default: sweep config slurm.gpus_per_run, else 0)."
  )
  _PARTITION = flags.DEFINE_string(
    "slurm_partition", None, "SLURM partition (default: sweep config slurm.partition)."
  )
  _TIME = flags.DEFINE_integer(
    "slurm_time_min",
    None,
    "SLURM time limit per run, minutes (default: sweep config slurm.time_min, else 60).",
  )
  _CLUSTER = flags.DEFINE_enum(
    "slurm_cluster",
    "slurm",
    ["slurm", "local", "debug"],
    "submitit executor: 'local' runs the array job here.",
  )
  _WAIT = flags.DEFINE_bool("wait", True, "Wait for submitted jobs, then summarise.")
  _VERBOSE = cli.define_verbose_flag()


def main(argv):
  del argv
  cli.guarded("normjax.tools.sweep", _main, verbose_flag=_VERBOSE.value)


def _main():
  sweep = _CONFIG.value
  if sweep is None:
    raise app.UsageError("--config is required, e.g. --config configs/sweeps/gpt2_lr.py")
  sweep_file = config_flags.get_config_filename(flags.FLAGS["config"])
  if sweep.get("goal") not in ("min", "max"):
    raise ValueError(f"config key goal={sweep.get('goal')!r}: use 'min' or 'max'")
  name = os.path.splitext(os.path.basename(sweep_file))[0]
  workdir = _WORKDIR.value or os.path.join("workdirs", "sweeps", name)
  runs = expand(sweep)
  commands = [command(sweep, sweep_file, v, os.path.join(workdir, run_name(v))) for v in runs]
  if _MODE.value == "emit":
    for cmd in commands:
      print(shlex.join(["python", *cmd[1:]]))
    return
  if _MODE.value == "run":
    chosen = range(len(runs)) if _INDEX.value is None else [_INDEX.value]
    pending = []
    for i in chosen:
      if not 0 <= i < len(runs):
        raise ValueError(f"--index {i} out of range (0..{len(runs) - 1})")
      rundir = os.path.join(workdir, run_name(runs[i]))
      status = read_result(rundir, sweep.metric)["status"]
      if status in ("done", "diverged"):  # a diverged run would diverge again: same seed
        print(f"[{i + 1}/{len(runs)}] {run_name(runs[i])}: {status} already", flush=True)
        continue
      pending.append(launchers.Run(i, run_name(runs[i]), tuple(commands[i]), rundir))

    def report(run, what):
      line = f"[{run.index + 1}/{len(runs)}] {run.name}: "
      if what != "ended":
        return print(line + f"{what} ({run.rundir}/train.log)", flush=True)
      result = read_result(run.rundir, sweep.metric)
      tail = (
        f"{sweep.metric}={result['value']:.4f}"
        if result["value"] is not None
        else result.get("message", "")
      )
      print(line + f"{result['status']}: {tail}", flush=True)

    slurm = sweep.get("slurm") or {}
    gpus = _GPUS.value if _GPUS.value is not None else int(slurm.get("gpus_per_run", 0))
    if _LAUNCHER.value == "local":
      launchers.run_local(pending, parallel=_PARALLEL.value, gpus_per_run=gpus, report=report)
    elif pending:
      launchers.run_slurm(
        pending,
        os.path.join(workdir, "slurm"),
        cluster=_CLUSTER.value,
        partition=_PARTITION.value or slurm.get("partition"),
        time_min=_TIME.value or int(slurm.get("time_min", 60)),
        gpus_per_run=gpus,
        parallel=_PARALLEL.value,
        wait=_WAIT.value,
        report=report,
      )
      if not _WAIT.value:
        return print(
          f"submitted {len(pending)} runs; when they end: python -m "
          f"normjax.tools.sweep --config {sweep_file} --workdir {workdir} "
          f"--mode summarize"
        )
  summary = write_summary(sweep, runs, workdir)
  print(summary["table"])
  print(f"summary: {os.path.join(workdir, 'summary.md')}, summary.png, summary.json")


if __name__ == "__main__":
  define_flags()
  app.run(main)
