"""`finch train`'s job: the token limit it chooses when none is given, and what it says about it."""

import json
import re

from test_cli import FAST, write_csv
from transformers import BertConfig, BertForSequenceClassification

from finch.cli.commands import main


def rows_with_a_few_long_ones():
    words = ["good", "bad", "great", "awful"]
    short = [(" ".join(words[(i + j) % 4] for j in range(5)), "pos" if i % 2 else "neg") for i in range(36)]
    long = [(" ".join(words[(i + j) % 4] for j in range(150)), "pos" if i % 2 else "neg") for i in range(4)]
    return short + long


def test_default_limit_keeps_every_example_whole_up_to_the_models_maximum(tmp_path, tokenizer, capsys):
    model = tmp_path / "model-256"
    BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, max_position_embeddings=256)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    train = write_csv(tmp_path / "t.csv", rows_with_a_few_long_ones())
    assert main(["train", "--model", str(model), "--train", train, "--output-dir", str(tmp_path / "o"),
                 "--max-steps", "1", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "tokens: limit 256 (the model's maximum); the longest training example has 152 tokens; no training " \
           "example is cut" in printed
    assert json.loads((tmp_path / "o" / "model" / "finch.json").read_text())["max_length"] is None


def test_default_limit_is_capped_by_the_model_and_says_what_it_cuts(tmp_path, tiny_model_dir, capsys):
    train = write_csv(tmp_path / "t.csv", rows_with_a_few_long_ones())
    assert main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"),
                 "--max-steps", "1", *FAST]) == 0
    printed = capsys.readouterr().out
    # 4 long rows of 40; which of them the 10% held out for validation takes is the seeded split's choice
    assert re.search(r"tokens: limit 64 \(the model's maximum\); the longest training example has 64 tokens; [1-4] of "
                     r"36 training examples reach it and are cut", printed), printed


def test_max_length_flag_wins_and_is_recorded(tmp_path, tiny_model_dir, capsys):
    train = write_csv(tmp_path / "t.csv", rows_with_a_few_long_ones())
    assert main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"),
                 "--max-steps", "1", "--max-length", "16", *FAST]) == 0
    assert "tokens: limit 16 (--max-length)" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "model" / "finch.json").read_text())["max_length"] == 16
