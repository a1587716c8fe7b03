"""finch against HF Trainer (tutorial flags and tuned flags) and a hand-tuned PyTorch loop, on one fine-tune.

Runs `benchmarks/mrpc.py`'s four implementations side by side (each in its own subprocess of this one) and
prints train seconds, samples/s, evaluate() seconds, peak RSS, dev accuracy and F1, and finch's ratios.

Usage (from the repo root):
    python benchmarks/vs_hf.py                          # full MRPC, 3 epochs, batch 8, seed 42
    python benchmarks/vs_hf.py --batch-size 32          # the batch-32 comparison
    python benchmarks/vs_hf.py --quick                  # 400 rows, 1 epoch: a minute or two
"""

from __future__ import annotations

from pathlib import Path

import mrpc


def main() -> None:
    p = mrpc.parser((__doc__ or "").splitlines()[0], list(mrpc.IMPLS))
    p.set_defaults(seeds=[42], out=Path("benchmarks/results/vs_hf.jsonl"))
    p.add_argument("--quick", action="store_true", help="400 training rows, 1 epoch")
    a = p.parse_args()
    if a.quick:
        a.subset, a.epochs = a.subset or 400, 1
    mrpc.run(a)


if __name__ == "__main__":
    main()
