"""The HTML run report, built from a tiny real run, read back as text and rendered by headless Chromium."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import sentiment_dataset, tiny_bert

from finch import Trainer, TrainingArguments
from finch.cli import main
from finch.errors import ConfigError
from finch.report import try_write_report, write_report


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer):
    """A 6-step run evaluated every 2 steps with accuracy, its metrics.json, and its predictions."""
    folder = tmp_path_factory.mktemp("report") / "run"
    data = sentiment_dataset(tokenizer, rows=48)
    args = TrainingArguments(output_dir=str(folder), bf16=False, max_steps=6, logging_steps=1, eval_strategy="steps",
                             eval_steps=2, save_strategy="steps", save_steps=3, per_device_train_batch_size=8,
                             disable_tqdm=True, learning_rate=2e-3, run_name="tiny-report", seed=5,
                             metric_for_best_model="accuracy")
    evaluation = data.select(range(24))
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=data, eval_dataset=evaluation,
                      processing_class=tokenizer,
                      compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(str(folder / "model"))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder, metrics, trainer.predict(evaluation)


def test_report_holds_the_runs_numbers(run):
    folder, metrics, predictions = run
    path = write_report(folder, predictions=predictions)
    assert path == folder / "report.html"
    page = path.read_text()
    assert "finch run report: tiny-report" in page
    assert f"{metrics['eval_accuracy']:.4g}" in page and f"{metrics['eval_loss']:.4g}" in page
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    first_loss = next(entry["loss"] for entry in log if "loss" in entry)
    assert f"{first_loss:.4g}" in page  # in the log table
    for title in ("Loss", "Learning rate", "Evaluation metrics", "Throughput (per second)", "Confusion matrix"):
        assert f">{title}<" in page, title
    assert page.count("<svg") == 5 and not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # self-contained
    assert "<th>learning_rate</th><td>0.002</td>" in page and "negative, positive" in page
    confusion = re.search(r"<table class='matrix'>(.*?)</table>", page).group(1)
    counts = [int(cell) for cell in re.findall(r"<td>(\d+)</td>", confusion)]
    assert sum(counts) == 24 and len(counts) == 4
    predicted = np.asarray(predictions.predictions).argmax(-1)
    assert counts[0] + counts[3] == int((predicted == predictions.label_ids).sum())


def test_finch_report_command_and_errors(run, tmp_path, capsys):
    folder, _, _ = run
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out and "<svg" in out.read_text()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="holds no finch run"):
        write_report(tmp_path)
    assert try_write_report(tmp_path) is None  # the end of a run: a warning, never an exception


def test_report_of_appended_runs_shows_the_last(tmp_path):
    lines = [{"step": 1, "loss": 9.0}, {"step": 2, "loss": 8.0}, {"step": 1, "loss": 0.75}, {"step": 2, "loss": 0.5}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 3, "lo')
    page = write_report(tmp_path).read_text()
    assert "<td>0.75</td>" in page and "<td>9.0</td>" not in page and "<td>9</td>" not in page


def chromium_screenshot(page, screenshot) -> np.ndarray:
    """`page` rendered by headless Chromium in a 1200 x 2400 window, as grey levels (0 black, 255 white)."""
    from PIL import Image

    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={screenshot}", "--window-size=1200,2400", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(screenshot).convert("L"))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_in_headless_chromium(run, tmp_path):
    folder, _, predictions = run
    path = write_report(folder, out=tmp_path / "report.html", predictions=predictions)
    image = chromium_screenshot(path, tmp_path / "report.png")
    assert image.shape == (2400, 1200)
    ink = (image < 200).mean()  # text, lines and plots on a white page
    assert 0.01 < ink < 0.5, ink
    assert (image[:1200] < 200).mean() > 0.01  # the top half (overview, metrics, plots) is not blank
