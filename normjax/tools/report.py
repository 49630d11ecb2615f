r"""The experiments index, generated: ``experiments/README.md`` from every folder's summary.

  python -m normjax.tools.report                      # rewrite experiments/README.md
  python -m normjax.tools.report --check              # exit 1 if the index is out of date
  python -m normjax.tools.report --experiments DIR --out FILE

Each ``experiments/<name>/`` holds a ``summary.json``::

  {"paper": "AdaB2N (Lyu et al., NeurIPS 2023)",
   "claim": "task-balanced BN statistics fix BN's recency bias in online continual learning",
   "verdict": "does not hold",           # holds | partly | does not hold | not yet judged | -
   "order": 150,                          # optional: position in the index (then by name)
   "measured": "10 seeds: avg acc AdaB2N {ada} vs BN {bn}",
   "values": {
     "ada": {"file": "seeds.jsonl", "match": {"config": "configs/x.py:norm=adab2n"},
             "metric": "eval_accuracy", "digits": 3},
     "bn": {"file": "results.json", "path": ["final", "bn", "runs"], "metric": "accuracy"},
     "lr": {"file": "best.json", "path": ["adamw", "lr"]}}}

``measured`` is a ``str.format`` template; each ``{name}`` is computed from the folder's result
files when the index is generated, so re-running an experiment and then this command updates
the index without hand edits:

* ``file`` + ``metric`` (+ ``match``): the JSON-lines rows of ``file`` whose keys equal every
  item of ``match`` (all rows without ``match``); rows with a non-null ``diverged_at_step``
  or lacking the metric count as diverged. Rendered ``mean ± s.e. (n=N)`` (s.e. = sample
  std / sqrt(N); ``(n=N, D diverged)`` when some diverged; ``±`` is omitted for N = 1).
* ``file`` + ``path``: the node of a JSON document along the list of keys: one number, or
  with ``metric`` (+ ``match``) a list of per-seed rows aggregated as above.

``digits`` (default 4) sets the decimals. A folder without ``summary.json``, a verdict outside
the list, a missing file, a row set that matches nothing, or a ``{name}`` with no value is an
error naming the folder: the index never silently drops a paper.
"""

from __future__ import annotations

import json
import math
import os
import sys

VERDICTS = ("holds", "partly", "does not hold", "not yet judged", "-")
REQUIRED = ("paper", "claim", "verdict", "measured")
_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "experiments")

HEADER = """\
# Experiments: the one home of measured results

One folder per paper claim, reproduced at small scale on the embedded data (2-core CPU,
minutes per run). Each README holds the claim, the configs, the exact commands, the measured
numbers with their caveats (jax version, machine load, number of runs), a plot and the reading.
Config docstrings keep only their launch commands, one headline line and a pointer here.

This index is generated: `python -m normjax.tools.report` reads each folder's `summary.json`
(claim, verdict, and a template whose numbers are computed from the folder's result files) and
rewrites this file; `--check` fails when it is out of date (a test runs it). Verdicts:
`holds`, `partly`, `does not hold` (at this scale, with the reason in the folder's README), or
`not yet judged` where the folder has single runs only.

| folder | paper | claim (short) | what we measured (headline) | verdict |
|---|---|---|---|---|
"""


class ReportError(ValueError):
  pass


def _rows(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _fmt(x: float, digits: int) -> str:
  return f"{x:.{digits}f}"


def seed_value(rows: list[dict], metric: str, match: dict | None, digits: int) -> str:
  """``mean ± s.e. (n=N[, D diverged])`` of ``metric`` over the rows matching ``match``."""
  chosen = [r for r in rows if all(r.get(k) == v for k, v in (match or {}).items())]
  if not chosen:
    raise ReportError(f"no row matches {match}")
  good = [
    float(r[metric])
    for r in chosen
    if r.get("diverged_at_step") is None and r.get(metric) is not None and math.isfinite(r[metric])
  ]
  diverged = len(chosen) - len(good)
  tail = f"n={len(chosen)}" + (f", {diverged} diverged" if diverged else "")
  if not good:
    return f"— ({tail})"
  mean = sum(good) / len(good)
  if len(good) == 1:
    return f"{_fmt(mean, digits)} ({tail})"
  var = sum((g - mean) ** 2 for g in good) / (len(good) - 1)
  se = math.sqrt(var / len(good))
  return f"{_fmt(mean, digits)} ± {_fmt(se, digits)} ({tail})"


def walk(document, path: list):
  """The node of a JSON document at the list of keys ``path``."""
  node = document
  for key in path:
    try:
      node = node[key]
    except (KeyError, IndexError, TypeError):
      raise ReportError(f"path {path} has no {key!r}") from None
  return node


def compute_values(folder: str, values: dict) -> dict[str, str]:
  out = {}
  for name, spec in values.items():
    path = os.path.join(folder, spec["file"])
    if not os.path.exists(path):
      raise ReportError(f"value {name!r}: {spec['file']} does not exist")
    digits = int(spec.get("digits", 4))
    try:
      if "path" in spec:
        with open(path) as f:
          node = walk(json.load(f), spec["path"])
      else:
        node = _rows(path)
      if "metric" in spec:
        if not isinstance(node, list):
          raise ReportError(f"a metric needs a list of rows, found {type(node).__name__}")
        out[name] = seed_value(node, spec["metric"], spec.get("match"), digits)
      else:
        out[name] = _fmt(float(node), digits)
    except ReportError as e:
      raise ReportError(f"value {name!r} from {spec['file']}: {e}") from None
  return out


def load_summary(folder: str) -> dict:
  name = os.path.basename(folder.rstrip("/"))
  path = os.path.join(folder, "summary.json")
  if not os.path.exists(path):
    raise ReportError(f"experiments/{name}: no summary.json")
  with open(path) as f:
    summary = json.load(f)
  missing = [k for k in REQUIRED if k not in summary]
  if missing:
    raise ReportError(f"experiments/{name}/summary.json: missing {', '.join(missing)}")
  if summary["verdict"] not in VERDICTS:
    raise ReportError(
      f"experiments/{name}/summary.json: verdict {summary['verdict']!r} is not one of "
      + ", ".join(VERDICTS)
    )
  if not os.path.exists(os.path.join(folder, "README.md")):
    raise ReportError(f"experiments/{name}: no README.md to link")
  try:
    values = compute_values(folder, summary.get("values", {}))
    summary["measured_text"] = summary["measured"].format(**values)
  except ReportError as e:
    raise ReportError(f"experiments/{name}: {e}") from None
  except KeyError as e:
    raise ReportError(f"experiments/{name}: measured names {e} but values has no such entry")
  summary["name"] = name
  return summary


def _cell(text: str) -> str:
  return " ".join(str(text).split()).replace("|", "\\|")


def render(experiments_dir: str) -> str:
  folders = sorted(
    os.path.join(experiments_dir, d)
    for d in os.listdir(experiments_dir)
    if os.path.isdir(os.path.join(experiments_dir, d)) and not d.startswith((".", "_"))
  )
  summaries = sorted(
    (load_summary(f) for f in folders), key=lambda s: (s.get("order", 1000), s["name"])
  )
  lines = [HEADER.rstrip("\n")]
  for s in summaries:
    lines.append(
      f"| [{s['name']}]({s['name']}/README.md) | {_cell(s['paper'])} | {_cell(s['claim'])} "
      f"| {_cell(s['measured_text'])} | {s['verdict']} |"
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  import argparse

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiments", default=DEFAULT_EXPERIMENTS)
  parser.add_argument("--out", default=None, help="default: <experiments>/README.md")
  parser.add_argument("--check", action="store_true", help="fail if the index is out of date")
  args = parser.parse_args(argv)
  out = args.out or os.path.join(args.experiments, "README.md")
  text = render(args.experiments)
  if args.check:
    current = open(out).read() if os.path.exists(out) else ""
    if current != text:
      print(f"{out} is out of date: run python -m normjax.tools.report", file=sys.stderr)
      return 1
    return 0
  with open(out, "w") as f:
    f.write(text)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  from normjax.cli import guarded

  sys.exit(guarded("normjax.tools.report", main))
