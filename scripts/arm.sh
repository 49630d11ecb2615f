#!/bin/bash
# One experiment arm over seeds, resumable: scripts/arm.sh OUT.jsonl ARM CONFIG [seeds_in_process args]
# Appends the arm's per-seed rows ({"arm": ARM, ...}) to OUT.jsonl with scripts/seeds_in_process.py
# (SEEDS seeds, default 3); an arm that already has SEEDS rows in OUT is skipped.
set -e
out=$1; arm=$2; config=$3; shift 3
seeds=${SEEDS:-3}
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$(dirname "$out")"
have=$(grep -c "\"arm\": \"$arm\"" "$out" 2>/dev/null || true)
if [ "${have:-0}" -ge "$seeds" ]; then echo "skip $arm ($have rows in $out)"; exit 0; fi
first=${have:-0}
echo "$arm: seeds $first..$((seeds - 1)) of $config $*"
PYTHONPATH="$root" JAX_PLATFORMS=cpu python "$root/scripts/seeds_in_process.py" --config "$config" \
  --arm "$arm" --seeds $((seeds - first)) --first_seed "$first" --out "$out" "$@"
