#!/usr/bin/env bash
# Vocabulary-selection ablation: the same corpus, teacher pass and student (default train settings), one
# vocabulary per way of choosing it, at the same budget (100k entries), then one bench of them all.
#
#   bash scripts/ablation.sh [WORKDIR] [VARIANT...]   (default: runs/minilm-msmarco, every variant)
#
# Variants (the `vocabert mine` options that make each):
#   tokens      tokens only (every token that occurs: fewer than the budget)
#   blind       most frequent n-grams and skip-grams, no association (--score count --min-npmi -1)
#   stats       statistics: count x NPMI, N = 4, gaps 1..2 (the defaults)
#   sem         statistics' candidates ranked by the teacher's error they remove (--select semantics)
#   noskip      statistics without skip-grams (--max-gap 0)
#   n6          statistics with n-grams up to 6 tokens and gaps 1..3
#   sem-n6      semantics with n-grams up to 6 tokens and gaps 1..3
#
# Writes WORKDIR/ablation/<variant>/ (corpus and teacher pass copied from WORKDIR, so the teacher runs
# once) and WORKDIR/ablation/bench.{md,json}. Stages that are up to date are skipped, so a rerun resumes.
set -euo pipefail
source "$(dirname "$0")/common.sh"
workdir=${1:-runs/minilm-msmarco}
shift || true
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(stats sem tokens blind noskip n6 sem-n6)
out="$workdir/ablation"
share=$(teacher_share "$workdir")  # the pass copied into every variant
vocabert=${VOCABERT:-vocabert}
declare -A options=(
  [tokens]="--max-ngram 1 --max-gap 0"
  [blind]="--score count --min-npmi -1"
  [stats]=""
  [sem]="--select semantics"
  [noskip]="--max-gap 0"
  [n6]="--max-ngram 6 --max-gap 3"
  [sem-n6]="--select semantics --max-ngram 6 --max-gap 3"
)
models=()
for name in "${variants[@]}"; do
  [ -n "${options[$name]+set}" ] || { echo "unknown variant $name (known: ${!options[*]})" >&2; exit 2; }
  dir="$out/$name"
  mkdir -p "$dir"
  for stage in corpus teacher; do  # copies, not links: a stage may rewrite its files in place
    [ -e "$dir/$stage" ] || cp -a "$workdir/$stage" "$dir/$stage"
  done
  # shellcheck disable=SC2086  # the options are words
  $vocabert mine --workdir "$dir" --no-progress --budget 100000 ${options[$name]}
  $vocabert embed --workdir "$dir" --no-progress --teacher-share "$share"
  $vocabert train --workdir "$dir" --no-progress
  models+=(--model "$dir/model")
done
$vocabert bench --workdir "$workdir" --no-progress --no-peers "${models[@]}" --out "$out"
