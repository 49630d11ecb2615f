r"""Per-seed rows of ``--seeds`` runs of the federated / plasticity / continual commands, as
JSON lines for an experiment folder (the ``summary.json`` each command writes holds them).

  python scripts/collect_runs.py --out experiments/fedwon/results.jsonl \
      fedavg_b32=/tmp/fedexp/fedavg_b32 fedwon_b2=/tmp/fedexp/fedwon_b2 ...

Each ``NAME=DIR`` adds the rows of ``DIR/summary.json`` with ``"arm": NAME``; list-valued
fields (per-task accuracies) are kept.
"""

from __future__ import annotations

import argparse
import json
import os


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("runs", nargs="+", help="NAME=DIR")
  args = parser.parse_args()
  rows = []
  for item in args.runs:
    name, _, directory = item.partition("=")
    with open(os.path.join(directory, "summary.json")) as f:
      summary = json.load(f)
    rows += [{"arm": name, **row} for row in summary["runs"]]
  with open(args.out, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
  main()
