#!/usr/bin/env bash
# Every study of the student in one command, on a work directory that `vocabert run` made:
#   1. the architecture table and quality/speed plot (scripts/architectures.sh: every architecture, frozen vs
#      tuned and contextual vs isolated entry vectors, on the same teacher pass, one bench run);
#   2. the learning curve over the teacher share (scripts/learning_curve.py);
#   3. what each source of text brings (scripts/learning_curve.py --leave-out).
#
#   bash scripts/students.sh [WORKDIR]        (default: runs/minilm-msmarco; hours on a 2-core CPU)
#
# Each part writes into WORKDIR (architectures/, shares/, sources/: bench.md, bench.json and plots) and skips
# what is already current, so a rerun resumes.
set -euo pipefail
workdir=${1:-runs/minilm-msmarco}
here=$(dirname "$0")
bash "$here/architectures.sh" "$workdir"
python "$here/learning_curve.py" --workdir "$workdir"
python "$here/learning_curve.py" --workdir "$workdir" --leave-out
echo "$workdir/architectures/bench.md $workdir/shares/bench.md $workdir/sources/bench.md"
