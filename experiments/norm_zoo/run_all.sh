#!/bin/bash
# Every registered norm on each task, 3 seeds (resumable: a task already probed is not probed
# again, and norms with their seeds are skipped). One task: python scripts/norm_zoo.py TASK.
# Step times again, on an idle machine: python scripts/norm_zoo.py TASK --mode time --rounds 9
set -e
cd "$(dirname "$0")/../.."
for task in ${TASKS:-vit resnet_batch2 resnet gpt2}; do
  zoo="env JAX_PLATFORMS=cpu PYTHONPATH=. python scripts/norm_zoo.py $task"
  if [ -f experiments/norm_zoo/${task}_step.json ]; then
    $zoo --mode train && $zoo --mode report
  else
    $zoo
  fi
done
