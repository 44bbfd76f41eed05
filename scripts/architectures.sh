#!/usr/bin/env bash
# The architecture table and quality/speed plot: every student architecture trained on the same teacher
# pass, then measured side by side with the teacher in one bench run (ratios from that same run).
#
#   bash scripts/architectures.sh [WORKDIR]        (default: runs/minilm-msmarco, after `vocabert run`)
#
# Writes WORKDIR/architectures/<name>/ (model folders) and WORKDIR/architectures/bench.{md,json},
# pareto.png. Extra arguments after WORKDIR go to every `vocabert train` (e.g. --epochs 5).
# The default student is also trained on isolated entry vectors (`embed --entry-vectors isolated`: each
# entry through the teacher alone, as Model2Vec does), in WORKDIR/architectures/isolated-store, a work
# directory that shares WORKDIR's corpus, vocabulary and teacher pass (links: it only reads them).
set -euo pipefail
source "$(dirname "$0")/common.sh"
workdir=${1:-runs/minilm-msmarco}
shift || true
out="$workdir/architectures"
declare -A variants=(
  [weighted_mean]="--arch weighted_mean --tune-entries 0"
  [context_specials]="--arch context_pool --attention-heads 1 --attention-rank 0 --tune-entries 0"
  [context_attention]="--arch context_pool --attention-heads 1 --attention-rank 32 --tune-entries 0"
  [context_attention_tuned]="--arch context_pool --attention-heads 1 --attention-rank 32"
  [context_heads4]="--arch context_pool --attention-heads 4 --attention-rank 16"
  [context_heads8]=""
  [context_heads8_window]="--window 4"
  [context_heads12]="--attention-heads 12 --attention-rank 5"
)
mkdir -p "$out"
# The default student (eight heads) is WORKDIR's own model: copied, `vocabert train` finds it current (its key
# is its settings and inputs, not its folder) and retrains only if WORKDIR's model was trained otherwise.
[ -e "$out/context_heads8" ] || cp -r "$workdir/model" "$out/context_heads8"
models=()
for name in weighted_mean context_specials context_attention context_attention_tuned context_heads4 \
  context_heads8 context_heads8_window context_heads12; do
  # shellcheck disable=SC2086
  vocabert train --workdir "$workdir" --no-progress ${variants[$name]} --model-out "$out/$name" "$@"
  models+=(--model "$out/$name")
done
isolated="$out/isolated-store"
mkdir -p "$isolated"
for stage in corpus vocab teacher; do
  [ -e "$isolated/$stage" ] || ln -s "$(realpath "$workdir/$stage")" "$isolated/$stage"
done
vocabert embed --workdir "$isolated" --no-progress --entry-vectors isolated \
  --teacher-share "$(teacher_share "$workdir")"
vocabert train --workdir "$isolated" --no-progress --model-out "$out/isolated_vectors_tuned" "$@"
models+=(--model "$out/isolated_vectors_tuned")
vocabert bench --workdir "$workdir" --no-progress --no-peers "${models[@]}" --out "$out"
