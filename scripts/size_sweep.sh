#!/usr/bin/env bash
# Vocabulary size sweep: the same corpus and teacher pass, vocabularies of several budgets (and the
# default budget with an int8 store), each mined, embedded and trained with the default settings, then
# measured side by side with the teacher in one bench run (fidelity, STS-B, DL19, size, load time, speed).
#
#   bash scripts/size_sweep.sh [WORKDIR]        (default: runs/minilm-msmarco, after `vocabert run`)
#
# Writes WORKDIR/sizes/<name>/ (one work directory per point: corpus and teacher pass copied from WORKDIR,
# so the expensive teacher pass runs once) and WORKDIR/sizes/bench.{md,json}, pareto.png.
# Budgets above the number of candidates that pass the mining thresholds give all of them.
set -euo pipefail
source "$(dirname "$0")/common.sh"
workdir=${1:-runs/minilm-msmarco}
out="$workdir/sizes"
share=$(teacher_share "$workdir")  # the pass copied into every point
models=()
point() {  # name, then `vocabert mine` / `vocabert embed` options
  local name=$1 budget=$2 dtype=$3 dir="$out/$1"
  mkdir -p "$dir"
  for stage in corpus teacher; do  # copies, not links: a stage may rewrite its files in place
    [ -e "$dir/$stage" ] || cp -a "$workdir/$stage" "$dir/$stage"
  done
  vocabert mine --workdir "$dir" --no-progress --budget "$budget"
  vocabert embed --workdir "$dir" --no-progress --dtype "$dtype" --teacher-share "$share"
  vocabert train --workdir "$dir" --no-progress
  models+=(--model "$dir/model")
}
for budget in 25000 50000 100000 200000 400000; do
  point "b$budget" "$budget" float16
done
point b100000-int8 100000 int8
vocabert bench --workdir "$workdir" --no-progress --no-peers "${models[@]}" --out "$out"
