"""The HTML run report: one self-contained page (`report.html`) that says how a run went.

It is built from the files a run leaves in its output folder, so it can be made again at any time
(`finch report OUTPUT_DIR`): `log.jsonl` (loss, learning rate, throughput, evaluations), `metrics.json` (the final
metrics of `finch train`), `training_args.json`, `finch_config.yaml` (the data and model of `finch train`),
`model/config.json` (class names), the newest checkpoint's `trainer_state.json` (best metric) and
`eval_examples.jsonl` (the final evaluation example by example, see `finch.eval_examples`: confusion matrix,
per-class precision/recall/F1, predicted vs true, the highest-loss examples). Each is optional; the page shows what
there is. Plots are inline SVG drawn with matplotlib (`pip install
'finch[report]'`; without it the page has tables only), so the page needs no network and no other file.

Reading only: the report never changes the run's files, and a failure to write it is no reason to fail the run
(`try_write_report` turns it into a warning, for the end of `finch train`).
"""

from __future__ import annotations

import datetime
import html
import importlib.util
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from finch.errors import ConfigError
from finch.eval_examples import FILE as EVAL_EXAMPLES
from finch.eval_examples import EvalExamples
from finch.outputs import write_text

logger = logging.getLogger("finch")

REPORT = "report.html"
# per-evaluation bookkeeping, not quality: left out of the metric plots (shown in the throughput plot instead)
TIMING = ("runtime", "samples_per_second", "steps_per_second")


@dataclass
class RunFiles:
    """What a run's output folder holds (each part empty when its file is missing)."""

    folder: Path
    log: list[dict[str, Any]] = field(default_factory=list)  # this run's log.jsonl lines
    metrics: dict[str, Any] = field(default_factory=dict)
    arguments: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, folder: str | Path) -> RunFiles:
        """Read `folder`'s run files. Raises `ConfigError` when it holds none of them."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder; give the output folder of a run (finch train's "
                              f"--output-dir, the Trainer's output_dir)")
        files = cls(folder, log=_last_run(_read_jsonl(folder / "log.jsonl")), metrics=_read_json(folder / "metrics.json"),
                    arguments=_read_json(folder / "training_args.json"), state=_newest_state(folder))
        config_path = folder / "finch_config.yaml"
        if config_path.exists():
            files.options = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        model_config = _read_json(folder / "model" / "config.json")
        id2label = model_config.get("id2label") or {}
        if model_config.get("problem_type") != "regression":  # a regression head's one output has no class
            files.class_names = [str(id2label[key]) for key in sorted(id2label, key=int)]
        if not (files.log or files.metrics or files.arguments):
            raise ConfigError(f"{folder} holds no finch run: no log.jsonl, metrics.json or training_args.json; give "
                              f"the output folder of a run")
        return files


def write_report(output_dir: str | Path, out: str | Path | None = None, predictions: Any = None,
                 texts: Any = None) -> Path:
    """Write the HTML report of the run in `output_dir`; returns its path.

    Args:
        output_dir: the run's output folder.
        out: where to write it (default `<output_dir>/report.html`).
        predictions: optional `(predictions, label_ids, ...)` of the evaluation set, e.g.
            `trainer.predict(eval_dataset)`: adds the confusion matrix and per-class table (classification), the
            predicted-vs-true plot (regression) and the highest-loss examples. Default: the folder's
            `eval_examples.jsonl` (written by `finch train`), if any.
        texts: the evaluation set's texts in its order (strings, or dicts of columns), shown with the highest-loss
            examples.

    Raises:
        ConfigError: `output_dir` is not a run's output folder.
    """
    from finch.search_report import is_search_folder, write_search_report  # here: it imports this module

    if is_search_folder(output_dir):  # a `finch search` folder: the search's report (finch/search_report.py)
        return write_search_report(output_dir, out)
    files = RunFiles.read(output_dir)
    path = Path(out) if out is not None else files.folder / REPORT
    if predictions is not None:
        examples = EvalExamples.from_predictions(predictions[0], predictions[1], files.class_names,
                                                 None if texts is None else texts.__getitem__)
    else:
        examples = EvalExamples.read(files.folder / EVAL_EXAMPLES)
    write_text(path, render(files, examples))
    return path


def try_write_report(output_dir: str | Path,
                     examples: Callable[[], EvalExamples | None] | None = None) -> Path | None:
    """`write_report(output_dir)`, with any failure turned into one warning (the end of a run must not fail).
    `examples()`: the final evaluation's, written first to `<output_dir>/eval_examples.jsonl` for the report."""
    try:
        found = examples() if examples is not None else None
        if found is not None:
            found.write(Path(output_dir) / EVAL_EXAMPLES)
        return write_report(output_dir)
    except Exception as error:  # noqa: BLE001 (observers never stop training: DESIGN invariant 14)
        logger.warning("the HTML report of %s could not be written (%s: %s); make it later with "
                       "`finch report %s`", output_dir, type(error).__name__, error, output_dir)
        return None


def render(files: RunFiles, examples: EvalExamples | None = None) -> str:
    """The report's HTML."""
    training = [e for e in files.log if "loss" in e]
    evaluations = [e for e in files.log if any(k.startswith("eval_") for k in e)]
    summary = next((e for e in reversed(files.log) if "train_runtime" in e), {})
    final = files.metrics or (_without_timing(evaluations[-1]) if evaluations else {})
    plots = _Plots()
    sections = [_overview(files, summary, final)]
    if final:
        sections.append(_section("Final metrics", _table(final.items())))
    curves = []
    if training:
        loss = {"training loss": _series(training, "loss")}
        if any("eval_loss" in e for e in evaluations):
            loss["evaluation loss"] = _series(evaluations, "eval_loss")
        curves.append(plots.lines("Loss", loss))
        if any("learning_rate" in e for e in training):
            curves.append(plots.lines("Learning rate", {"learning rate": _series(training, "learning_rate")}))
    metric_names = sorted({k for e in evaluations for k in e if k.startswith("eval_") and k != "eval_loss"
                           and not k.endswith(TIMING) and isinstance(e[k], (int, float))})
    if metric_names:
        curves.append(plots.lines("Evaluation metrics",
                                  {name[5:]: _series(evaluations, name) for name in metric_names}))
    throughput = {name.replace("_", " "): _series(training, name) for name in ("samples_per_second",
                                                                              "tokens_per_second")
                  if any(name in e for e in training)}
    if throughput:
        curves.append(plots.lines("Throughput (per second)", throughput))
    if curves:
        sections.append(_section("Curves", "".join(curves) + plots.note()))
    data = _data_description(files)
    if data:
        sections.append(_section("Data and model", _table(data)))
    if examples is not None:
        sections.extend(_example_sections(examples, plots))
    if training or evaluations:
        sections.append(_section("Log", _log_table(files.log), collapsed=True))
    if files.arguments:
        sections.append(_section("Arguments", _table(sorted(files.arguments.items())), collapsed=True))
    title = f"finch run report: {files.arguments.get('run_name') or files.folder.name}"
    return PAGE.format(title=html.escape(title), body="\n".join(sections),
                       generated=html.escape(datetime.datetime.now().isoformat(timespec="seconds")))


# ---- reading ----------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError): show the rest
        logger.warning("%s is damaged (%s); the report leaves it out", path, error)
        return {}
    return value if isinstance(value, dict) else {}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # damaged bytes: lines skipped
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut by a crash: the rest is still worth showing
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append(entry)
    return entries


def _last_run(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of the last run in a log that several fresh runs appended to (its step starts again lower)."""
    start = 0
    for index in range(1, len(entries)):
        if entries[index]["step"] < entries[index - 1]["step"]:
            start = index
    return entries[start:]


def _newest_state(folder: Path) -> dict[str, Any]:
    states = [path for path in folder.glob("checkpoint-*/trainer_state.json") if path.parent.name[11:].isdigit()]
    if not states:
        return {}
    return _read_json(max(states, key=lambda path: int(path.parent.name[11:])))


def _series(entries: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(e["step"], float(e[key])) for e in entries if isinstance(e.get(key), (int, float))]
    return [step for step, _ in points], [value for _, value in points]


def _without_timing(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if not k.endswith(TIMING)}


# ---- sections ---------------------------------------------------------------------------------------------------------
def _overview(files: RunFiles, summary: dict[str, Any], final: dict[str, Any]) -> str:
    args, state = files.arguments, files.state
    last_step = max((e["step"] for e in files.log), default=state.get("global_step"))
    model_config = _read_json(files.folder / "model" / "config.json")
    facts = [("output folder", str(files.folder)),
             ("model", files.options.get("model") or ", ".join(model_config.get("architectures") or []))]
    if last_step is not None:
        planned = state.get("max_steps") or args.get("max_steps")
        facts.append(("steps", f"{last_step}" + (f" of {planned}" if planned and planned > 0 else "")))
    epoch = max((e.get("epoch", 0) for e in files.log), default=None)
    if epoch:
        facts.append(("epochs", _number(epoch)))
    for key, name in (("train_runtime", "training time (s)"), ("train_loss", "mean training loss"),
                      ("train_samples_per_second", "training samples per second")):
        if key in summary:
            facts.append((name, summary[key]))
    if state.get("best_metric") is not None:
        facts.append((f"best {args.get('metric_for_best_model') or 'metric'}",
                      f"{_number(state['best_metric'])} at step {state.get('best_global_step')}"))
    if final:
        main = next((k for k in ("eval_accuracy", "eval_f1", "eval_loss") if k in final), None)
        if main:
            facts.append((f"final {main}", final[main]))
    return _section("Run", _table([(k, v) for k, v in facts if v not in ("", None)]))


def _data_description(files: RunFiles) -> list[tuple[str, Any]]:
    options = files.options
    rows: list[tuple[str, Any]] = [(name.replace("_", " "), options[name]) for name in
                                   ("train", "validation", "text_columns", "label_column", "max_length", "freeze")
                                   if options.get(name) is not None]
    if files.class_names:
        rows.append(("classes", ", ".join(files.class_names)))
    args = files.arguments
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "seed"):
        if name in args:
            rows.append((name.replace("_", " "), args[name]))
    return rows


# ---- the final evaluation, example by example (finch.eval_examples) ---------------------------------------------------
def _example_sections(examples: EvalExamples, plots: _Plots) -> list[str]:
    """Classification: confusion matrix and per-class table; multi-label: the per-class table; regression: predicted vs
    true. Then the examples with the highest loss."""
    sections = []
    if examples.kind == "classification":
        sections.append(_confusion_section(examples, plots))
    if examples.kind in ("classification", "multilabel"):
        sections.append(_per_class_section(examples))
    if examples.kind == "regression":
        sections.append(_regression_section(examples, plots))
    sections.append(_hardest_section(examples))
    return sections


def _confusion_section(examples: EvalExamples, plots: _Plots) -> str:
    matrix, names = examples.confusion(), examples.class_names
    header = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(f"<tr><th>{html.escape(names[i])}</th>" + "".join(f"<td>{c}</td>" for c in matrix[i]) + "</tr>"
                   for i in range(len(names)))
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    table = (f"<p>{matrix.sum()} examples, accuracy {_number(accuracy)}; rows: true class, columns: predicted.</p>"
             f"<table class='matrix'><tr><th></th>{header}</tr>{rows}</table>")
    return _section("Confusion matrix", table + plots.matrix(matrix, names))


def _per_class_section(examples: EvalExamples) -> str:
    header = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{_number(p)}</td><td>{_number(r)}</td><td>{_number(f)}</td>"
                   f"<td>{support}</td></tr>" for name, p, r, f, support in examples.per_class())
    what = "a label is predicted when its logit is above 0" if examples.kind == "multilabel" else \
        "support: the examples of the class"
    return _section("Per-class precision, recall and F1",
                    f"<p>On the final evaluation; {what}.</p><table class='per-class'>{header}{rows}</table>")


def _regression_section(examples: EvalExamples, plots: _Plots) -> str:
    truth, predicted = examples.labels.astype(float), examples.predicted.astype(float)
    error = float(np.mean((predicted - truth) ** 2)) if len(truth) else float("nan")
    pearson = float(np.corrcoef(truth, predicted)[0, 1]) if len(truth) > 1 and truth.std() and predicted.std() \
        else float("nan")
    text = f"<p>{len(truth)} examples; mean squared error {_number(error)}, Pearson {_number(pearson)}.</p>"
    return _section("Predicted vs true", text + plots.scatter(truth, predicted))


def _hardest_section(examples: EvalExamples) -> str:
    rows = []
    for rank, row in enumerate(examples.hardest(), 1):
        text = examples.texts.get(row)
        if isinstance(text, dict):
            text = "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(str(v))}" for k, v in text.items())
        else:
            text = html.escape(str(text)) if text is not None else "<i>(text not recorded)</i>"
        rows.append(f"<tr><td>{rank}</td><td>{row}</td><td>{_number(float(examples.losses[row]))}</td>"
                    f"<td>{html.escape(examples.shown_label(examples.labels[row]))}</td>"
                    f"<td>{html.escape(examples.shown_label(examples.predicted[row]))}</td><td>{text}</td></tr>")
    header = "<tr><th>#</th><th>row</th><th>loss</th><th>true</th><th>predicted</th><th>text</th></tr>"
    note = "<p>Row: the example's position in the evaluation set; the loss is the model's, per example.</p>"
    return _section("Evaluation examples with the highest loss",
                    f"{note}<div class='scroll'><table class='hardest'>{header}{''.join(rows)}</table></div>")


def _log_table(entries: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for e in entries for k in e if k not in ("step", "epoch")))
    header = "".join(f"<th>{html.escape(k)}</th>" for k in ["step", "epoch", *keys])
    rows = "".join("<tr>" + "".join(f"<td>{_cell(e.get(k))}</td>" for k in ["step", "epoch", *keys]) + "</tr>"
                   for e in entries)
    return f"<div class='scroll'><table class='log'><tr>{header}</tr>{rows}</table></div>"


def _section(title: str, body: str, collapsed: bool = False) -> str:
    if collapsed:
        return f"<details><summary><h2>{html.escape(title)}</h2></summary>{body}</details>"
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _table(rows: Any) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{_cell(value)}</td></tr>" for key, value in rows)
    return f"<table>{cells}</table>"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value))
    return html.escape(_number(value) if isinstance(value, float) else str(value))


def _number(value: float) -> str:
    """4 significant digits, no exponent for ordinary magnitudes: 0.6931, 1.25e-05, 1234."""
    return f"{value:.4g}"


# ---- plots ------------------------------------------------------------------------------------------------------------
class _Plots:
    """Inline SVG plots from matplotlib when it is installed; otherwise nothing (the tables say it all)."""

    def __init__(self) -> None:
        self.available = importlib.util.find_spec("matplotlib") is not None

    def note(self) -> str:
        return "" if self.available else ("<p class='note'>Plots need matplotlib: pip install 'finch[report]'. "
                                          "The values are in the log below.</p>")

    def lines(self, title: str, series: dict[str, tuple[list[int], list[float]]]) -> str:
        if not self.available:
            return ""
        figure, axes = self._figure()
        for label, (steps, values) in series.items():
            axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        return self._svg(figure)

    def matrix(self, matrix: np.ndarray, names: list[str]) -> str:
        if not self.available or len(names) > 30:
            return ""
        figure, axes = self._figure(size=(1.5 + 0.5 * len(names), 1.2 + 0.5 * len(names)))
        axes.imshow(matrix, cmap="Blues")
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axes.set_yticks(range(len(names)), names, fontsize=8)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black")
        return self._svg(figure)

    def scatter(self, truth: np.ndarray, predicted: np.ndarray, most: int = 2000) -> str:
        """Predicted against true values with the line where they are equal; at most `most` points (evenly spaced
        rows), so the page stays small."""
        if not self.available or not len(truth):
            return ""
        rows = np.unique(np.linspace(0, len(truth) - 1, min(most, len(truth))).astype(int))
        figure, axes = self._figure(size=(4.2, 4.0))
        axes.scatter(truth[rows], predicted[rows], s=8, alpha=0.6)
        low, high = float(min(truth.min(), predicted.min())), float(max(truth.max(), predicted.max()))
        axes.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--", label="predicted = true")
        axes.set_title("Predicted vs true" + (f" ({len(rows)} of {len(truth)})" if len(rows) < len(truth) else ""))
        axes.set_xlabel("true")
        axes.set_ylabel("predicted")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        return self._svg(figure)

    @staticmethod
    def _figure(size: tuple[float, float] = (5.2, 3.0)) -> tuple[Any, Any]:
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

        figure = Figure(figsize=size, layout="constrained")
        return figure, figure.add_subplot()

    @staticmethod
    def _svg(figure: Any) -> str:
        import matplotlib

        buffer = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text: small, searchable
            figure.savefig(buffer, format="svg")
        svg = buffer.getvalue()
        return f"<figure>{svg[svg.index('<svg'):]}</figure>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin: 1em 0 0.4em; }} summary h2 {{ display: inline; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin: 0.4em 0; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; }} th {{ background: #f5f5f5; }}
table.matrix td, table.per-class td {{ text-align: right; min-width: 3em; }}
table.hardest td:last-child {{ max-width: 40em; white-space: pre-wrap; }}
figure {{ display: inline-block; margin: 0.5em; }} figure svg {{ max-width: 100%; height: auto; }}
.scroll {{ overflow-x: auto; }} .note, footer {{ color: #666; font-size: 0.85em; }}
</style></head>
<body><h1>{title}</h1>
{body}
<footer>generated by finch on {generated}</footer>
</body></html>
"""
