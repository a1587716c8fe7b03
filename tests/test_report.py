"""The HTML run report, built from a tiny real run, read back as text and rendered by headless Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import sentiment_dataset, tiny_bert

from finch import Trainer, TrainingArguments
from finch.cli.commands import main
from finch.errors import ConfigError
from finch.report.write import try_write_report, write_report


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


def reviews(count: int, seed: int, regression: bool = False) -> list[tuple[str, object]]:
    """Texts of 3-6 words, mostly from their class's words: three classes, or a score per class for regression."""
    rng = np.random.default_rng(seed)
    words = {"pos": ["good", "great", "nice"], "neg": ["bad", "awful", "poor"], "mixed": ["okay", "fine", "meh"]}
    every = [word for group in words.values() for word in group]
    rows = []
    for index in range(count):
        label = ["pos", "neg", "mixed"][index % 3]
        text = " ".join(str(rng.choice(words[label] if rng.random() < 0.7 else every)) for _ in range(3 + index % 4))
        score = {"pos": 4.5, "neg": 1.25, "mixed": 2.75}[label] + round(float(rng.random()) / 10, 3)
        rows.append((text, score if regression else label))
    return rows


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tiny_model_dir):
    """`finch train` on a 3-class and on a regression CSV (24 validation rows each): {kind: (folder, validation)}."""
    from test_cli import write_csv

    root = tmp_path_factory.mktemp("cli-report")
    runs = {}
    for kind, header in (("classification", ("review", "sentiment")), ("regression", ("review", "score"))):
        train = write_csv(root / f"{kind}-train.csv", reviews(60, 0, kind == "regression"), header)
        validation = reviews(24, 1, kind == "regression")
        dev = write_csv(root / f"{kind}-dev.csv", validation, header)
        folder = root / kind
        assert main(["train", "--model", tiny_model_dir, "--train", train, "--validation", dev, "--output-dir",
                     str(folder), "--num-train-epochs", "2", "--no-bf16", "--disable-tqdm", "--learning-rate",
                     "1e-3", "--logging-steps", "2"]) == 0
        runs[kind] = (folder, validation)
    return runs


def examples_file(folder):
    lines = [json.loads(line) for line in (folder / "eval_examples.jsonl").read_text().splitlines()]
    return lines[0], lines[1:]


def section(page: str, title: str) -> str:
    """The HTML of the section titled `title` (up to the next section)."""
    start = page.index(f"<h2>{title}</h2>")
    return page[start:page.find("<section>", start) if "<section>" in page[start:] else len(page)]


@pytest.mark.slow
def test_classification_report_has_per_class_scores_and_the_highest_loss_examples(cli_runs):
    from sklearn.metrics import precision_recall_fscore_support

    folder, validation = cli_runs["classification"]
    head, rows = examples_file(folder)
    assert head == {"kind": "classification", "classes": ["mixed", "neg", "pos"]} and len(rows) == 24
    metrics = json.loads((folder / "metrics.json").read_text())
    # the file is the final evaluation's: its per-example losses average to the logged eval_loss
    assert np.mean([r["loss"] for r in rows]) == pytest.approx(metrics["eval_loss"], rel=1e-5)
    page = (folder / "report.html").read_text()  # written at the end of finch train, from the file
    assert "<table class='matrix'>" in section(page, "Confusion matrix")  # from the file: no predictions given
    table = section(page, "Per-class precision, recall and F1")
    cells = re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>(\d+)</td></tr>",
                       table)
    truth, predicted = [r["label"] for r in rows], [r["prediction"] for r in rows]
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=head["classes"],
                                                                     zero_division=0)
    expected = [(name, f"{p:.4g}", f"{r:.4g}", f"{f:.4g}", str(s))
                for name, p, r, f, s in zip(head["classes"], precision, recall, f1, support)]
    macro = precision_recall_fscore_support(truth, predicted, labels=head["classes"], average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(truth, predicted, labels=head["classes"], average="weighted",
                                               zero_division=0)
    expected += [(name, *(f"{v:.4g}" for v in values[:3]), "24")
                 for name, values in (("macro average", macro), ("weighted average", weighted))]
    assert cells == expected
    hardest = section(page, "Evaluation examples with the highest loss")
    shown = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>"
                       r"<td>([^<]+)</td></tr>", hardest)
    by_loss = sorted(range(24), key=lambda row: (-rows[row]["loss"], row))[:20]
    assert [int(row) for _, row, *_ in shown] == by_loss
    for _, row, loss, true, prediction, text in shown:  # each with its own text and labels from the CSV
        assert (text, true) == validation[int(row)] and prediction == rows[int(row)]["prediction"]
        assert loss == f"{rows[int(row)]['loss']:.4g}"
    assert all("text" in rows[row] for row in by_loss) and sum("text" in r for r in rows) == 20


def test_regression_report_plots_predicted_against_true(cli_runs):
    folder, validation = cli_runs["regression"]
    head, rows = examples_file(folder)
    assert head["kind"] == "regression" and len(rows) == 24
    assert [r["label"] for r in rows] == pytest.approx([score for _, score in validation])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert np.mean([r["loss"] for r in rows]) == pytest.approx(metrics["eval_loss"], rel=1e-5)
    page = (folder / "report.html").read_text()
    plot = section(page, "Predicted vs true")
    assert f"mean squared error {metrics['eval_mse']:.4g}" in plot
    markers = re.search(r'<g id="PathCollection_1">(.*?)</g>', plot, re.DOTALL).group(1)
    assert plot.count("<svg") == 1 and markers.count("<use ") == 24  # one marker per example
    assert "Confusion matrix" not in page and "Per-class" not in page
    hardest = section(page, "Evaluation examples with the highest loss")
    worst = max(range(24), key=lambda row: rows[row]["loss"])
    assert f"<td>1</td><td>{worst}</td>" in hardest and validation[worst][0] in hardest


def test_python_api_report_takes_predictions_and_texts(run, tmp_path, tokenizer):
    folder, _, predictions = run
    texts = sentiment_dataset(tokenizer, rows=48).select(range(24))["text"]
    page = write_report(folder, out=tmp_path / "api.html", predictions=predictions, texts=texts).read_text()
    hardest = section(page, "Evaluation examples with the highest loss")
    logits = np.asarray(predictions.predictions, dtype=np.float64)
    losses = np.logaddexp.reduce(logits, axis=-1) - logits[np.arange(24), predictions.label_ids]
    worst = int(np.argmax(losses))
    assert f"<td>1</td><td>{worst}</td><td>{losses[worst]:.4g}</td>" in hardest and texts[worst] in hardest
    assert "Per-class precision, recall and F1" in page
    assert not (folder / "eval_examples.jsonl").exists()  # given predictions, nothing is written beside the run


def chromium(page: Path, tmp_path: Path) -> tuple[np.ndarray, str, list[str]]:
    """`page` in headless Chromium: its screenshot (grey levels), its DOM after parsing, and its console messages.

    Console messages without DevTools: with `--enable-logging=stderr --v=0` Chromium writes each one (console.log or
    error, uncaught exceptions) to stderr as an `INFO:CONSOLE` line."""
    from PIL import Image

    screenshot = tmp_path / f"{page.stem}.png"
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
              "--v=0"]
    shot = subprocess.run([*common, f"--screenshot={screenshot}", "--window-size=1200,3000", page.as_uri()],
                          check=True, capture_output=True, text=True, timeout=120)
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120)
    console = [line for line in (shot.stderr + dom.stderr).splitlines() if ":CONSOLE" in line]
    return np.asarray(Image.open(screenshot).convert("L")), dom.stdout, console


needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="needs Debian's chromium (.ci/run installs it)")


@needs_chromium
def test_the_console_check_sees_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('boom'); missing();</script>"
                    "</body></html>")
    _, _, console = chromium(page, tmp_path)
    assert any("boom" in line for line in console) and any("Uncaught ReferenceError" in line for line in console)


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("kind", ["python", "classification", "regression"])
def test_report_renders_in_headless_chromium_without_console_errors(run, cli_runs, kind, tmp_path):
    if kind == "python":
        folder, _, predictions = run
        path = write_report(folder, out=tmp_path / "report.html", predictions=predictions)
        plots, sections = 5, ["Curves", "Confusion matrix", "Per-class precision, recall and F1"]
    else:
        path = cli_runs[kind][0] / "report.html"
        plots = 5  # loss, learning rate, metrics, throughput; the confusion matrix or predicted vs true
        sections = (["Confusion matrix", "Per-class precision, recall and F1"] if kind == "classification"
                    else ["Predicted vs true"])
    image, dom, console = chromium(path, tmp_path)
    assert console == []  # the page runs no script and logs nothing
    assert image.shape == (3000, 1200)
    ink = (image < 200).mean()  # text, lines and plots on a white page
    assert 0.01 < ink < 0.5, ink
    assert (image[:1500] < 200).mean() > 0.01 and (image[1500:] < 200).mean() > 0.005  # both halves drawn
    for title in [*sections, "Evaluation examples with the highest loss"]:
        assert f"<h2>{title}</h2>" in dom, title
    assert dom.count("<svg") == plots  # the browser parsed every plot
    assert dom.count("<table class=\"hardest\">") == 1


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression"])
def test_eval_examples_losses_scores_and_file_round_trip(kind, tmp_path):
    """Per-example losses equal torch's own loss functions, per-class scores scikit-learn's, and the file gives back
    what was written."""
    import torch
    from sklearn.metrics import precision_recall_fscore_support

    from finch.report.eval_examples import EvalExamples

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 1 if kind == "regression" else 4)).astype(np.float32)
    labels = {"classification": rng.integers(0, 4, 50), "multilabel": rng.integers(0, 2, (50, 4)).astype(np.float32),
              "regression": rng.normal(size=50).astype(np.float32)}[kind]
    examples = EvalExamples.from_predictions(logits, labels, ["a", "b", "c", "d"], lambda row: f"text {row}")
    assert examples.kind == kind
    functions = {"classification": torch.nn.functional.cross_entropy,
                 "multilabel": torch.nn.functional.binary_cross_entropy_with_logits,
                 "regression": lambda x, y, reduction: torch.nn.functional.mse_loss(x.view(-1), y, reduction=reduction)}
    expected = functions[kind](torch.tensor(logits), torch.tensor(labels), reduction="none")
    expected = expected.mean(-1) if kind == "multilabel" else expected
    assert examples.losses == pytest.approx(expected.numpy(), rel=1e-4, abs=1e-6)
    assert examples.texts == {row: f"text {row}" for row in examples.hardest()} and len(examples.texts) == 20
    if kind != "regression":
        truth = labels.astype(int) if kind == "multilabel" else labels
        predicted = (logits > 0).astype(int) if kind == "multilabel" else logits.argmax(-1)
        scores = precision_recall_fscore_support(truth, predicted, labels=None if kind == "multilabel" else range(4),
                                                 zero_division=0)
        rows = examples.per_class()
        assert np.allclose(np.array([row[1:] for row in rows[:4]], dtype=float), np.array(scores, dtype=float).T)
    examples.write(tmp_path / "examples.jsonl")
    again = EvalExamples.read(tmp_path / "examples.jsonl")
    assert again.kind == kind and again.texts == examples.texts and again.class_names == examples.class_names
    for name in ("losses", "labels", "predicted"):  # the file rounds numbers to 6 decimals
        assert np.allclose(getattr(again, name), getattr(examples, name), atol=1e-5), name



def test_the_readmes_first_command_installs_what_the_report_draws_its_curves_with():
    """`pip install -e ".[demo]" && finch train` promises a page of curves: the demo extra holds the report's."""
    import tomllib
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["report"] and set(extras["report"]) <= set(extras["demo"])
    assert 'pip install -e ".[demo]" && finch train' in (Path(__file__).parents[1] / "README.md").read_text()


def test_damaged_or_foreign_run_files_are_left_out_with_a_note_naming_them(tmp_path, capsys, caplog):
    """A damaged eval_examples.jsonl or finch_config.yaml is no KeyError or ParserError, and a damaged log.jsonl (or
    one of predictions) no silent loss of the curves: the page says what it left out, of which file, and why."""
    log = [{"step": 1, "loss": 0.9, "epoch": 0.5}, {"step": 2, "loss": 0.7, "epoch": 1.0},
           {"step": 2, "eval_loss": 0.6, "eval_accuracy": 0.75, "epoch": 1.0}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log) + "{\"step\": 3, \"lo\n[1, 2]\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"eval_loss": 0.6, "eval_accuracy": 0.75}))
    (tmp_path / "finch_config.yaml").write_text("model: tiny\ntrain: [a.csv\nseed: 3\n")
    (tmp_path / "eval_examples.jsonl").write_text(
        json.dumps({"kind": "classification", "classes": ["neg", "pos"]}) + "\n"
        + json.dumps({"row": 0, "label": "pos", "prediction": "pos", "loss": 0.1}) + "\n"
        + json.dumps({"row": 1, "label": "maybe", "prediction": "pos"}) + "\n")
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    left_out = section(page, "Left out")
    assert "log.jsonl: 2 of its 5 lines are left out (1 not readable JSON, 1 not log entries)" in left_out
    assert "finch_config.yaml is not readable YAML" in left_out
    assert "eval_examples.jsonl: line 3 is not an example finch writes" in left_out
    assert "the per-example sections are left out" in left_out and "<h2>Curves</h2>" in page
    assert "Traceback" not in capsys.readouterr().err and "eval_examples.jsonl: line 3" in caplog.text

    predictions = [{"text": "good", "predicted_label": "pos", "predicted_score": 0.9, "step": 1, "epoch": 1}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions * 3))
    page = write_report(tmp_path).read_text()
    assert "log.jsonl holds no training log entries (none of its 3 line(s)" in section(page, "Left out")
    assert "<h2>Curves</h2>" not in page and "<h2>Log</h2>" not in page


def test_report_out_replaces_only_a_report_or_with_overwrite(run, tmp_path, capsys):
    folder, _, _ = run
    page = tmp_path / "notes.html"
    page.write_text("<html><body>my own notes</body></html>")
    assert main(["report", str(folder), "--out", str(page)]) == 2
    assert "is not an earlier output of `finch report`; pass --overwrite" in capsys.readouterr().err
    assert page.read_text() == "<html><body>my own notes</body></html>"
    assert main(["report", str(folder), "--out", str(page), "--overwrite"]) == 0
    assert main(["report", str(folder), "--out", str(page)]) == 0  # its own report, written again


def test_a_report_is_never_written_into_another_runs_folder_nor_of_a_model_folder(tmp_path, capsys):
    """`finch report A --out B/report.html` replaced B's report with A's (a reader of B's folder then saw A's curves);
    `finch report RUN/model` wrote an empty report into the model folder."""
    runs = {}
    for name, loss in (("a", 0.25), ("b", 0.75)):
        runs[name] = tmp_path / name
        (runs[name] / "model").mkdir(parents=True)
        (runs[name] / "model" / "config.json").write_text("{}")
        (runs[name] / "log.jsonl").write_text(json.dumps({"step": 1, "loss": loss}) + "\n")
    assert main(["report", str(runs["b"])]) == 0
    before = (runs["b"] / "report.html").read_text()
    assert main(["report", str(runs["a"]), "--out", str(runs["b"] / "report.html")]) == 2
    assert f"is in the folder of another run or model ({runs['b']})" in capsys.readouterr().err
    assert (runs["b"] / "report.html").read_text() == before
    assert main(["report", str(runs["a"]), "--out", str(runs["a"] / "other.html")]) == 0  # its own folder: fine
    assert main(["report", str(runs["a"] / "model")]) == 2
    assert f"its report: finch report {runs['a']}" in capsys.readouterr().err
    assert not (runs["a"] / "model" / "report.html").exists()
