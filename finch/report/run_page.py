"""The HTML run report: one self-contained page (`report.html`) that says how a run went.

It is built from the files a run leaves in its output folder, so it can be made again at any time
(`finch report OUTPUT_DIR`): `log.jsonl` (loss, learning rate, throughput, evaluations), `metrics.json` (the final
metrics of `finch train`), `training_args.json`, `finch_config.yaml` (the data and model of `finch train`),
`model/config.json` (class names), the newest checkpoint's `trainer_state.json` (best metric) and
`eval_examples.jsonl` (the final evaluation example by example, see `finch.report.eval_examples`: confusion matrix,
per-class precision/recall/F1, predicted vs true, the highest-loss examples). Each is optional; the page shows what
there is. Plots are inline SVG drawn with matplotlib (`pip install
'finch[report]'`; without it the page has tables only), so the page needs no network and no other file.

Reading only: the report never changes the run's files, and a failure to write it is no reason to fail the run
(`finch.report.write.try_write_report` turns it into a warning, for the end of `finch train`).
"""

from __future__ import annotations

import datetime
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from finch.errors import ConfigError
from finch.report import markup
from finch.report.eval_examples import FILE as EVAL_EXAMPLES
from finch.report.eval_examples import EvalExamples
from finch.runs import folders
from finch.runs.files import write_text

logger = logging.getLogger("finch")

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
    notes: list[str] = field(default_factory=list)  # files left out (damaged, or not what their name says), and why

    @classmethod
    def read(cls, folder: str | Path) -> RunFiles:
        """Read `folder`'s run files. Raises `ConfigError` when it holds none of them."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder; give the output folder of a run (finch train's "
                              f"--output-dir, the Trainer's output_dir)")
        if (folder / "config.json").is_file() and not (folder / "log.jsonl").exists() and \
                (folder.parent / "log.jsonl").is_file():
            raise ConfigError(f"{folder} is a model (or checkpoint) folder of the run in {folder.parent}, not the "
                              f"run's output folder; its report: finch report {folder.parent}")
        notes: list[str] = []
        files = cls(folder, log=_last_run(_read_jsonl(folder / "log.jsonl", notes)),
                    metrics=_read_json(folder / "metrics.json", notes),
                    arguments=_read_json(folder / "training_args.json", notes), state=_newest_state(folder, notes),
                    notes=notes)
        files.options = _read_yaml(folder / "finch_config.yaml", notes)
        model_config = _read_json(folder / "model" / "config.json", notes)
        id2label = model_config.get("id2label") or {}
        if model_config.get("problem_type") != "regression":  # a regression head's one output has no class
            files.class_names = [str(id2label[key]) for key in sorted(id2label, key=int)]
        if not (files.log or files.metrics or files.arguments):
            raise ConfigError(f"{folder} holds no finch run: no log.jsonl, metrics.json or training_args.json; give "
                              f"the output folder of a run")
        return files


def write_run_report(output_dir: str | Path, out: str | Path | None = None, predictions: Any = None,
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
    files = RunFiles.read(output_dir)
    path = Path(out) if out is not None else files.folder / markup.REPORT
    if predictions is not None:
        examples = EvalExamples.from_predictions(predictions[0], predictions[1], files.class_names,
                                                 None if texts is None else texts.__getitem__)
    else:
        try:
            examples = EvalExamples.read(files.folder / EVAL_EXAMPLES)
        except ValueError as error:
            examples = None
            _note(files.notes, f"{error}: the per-example sections are left out. Delete the file, or run "
                               f"`finch eval` for the metrics, to be rid of this note")
    write_text(path, render(files, examples))
    return path


def render(files: RunFiles, examples: EvalExamples | None = None) -> str:
    """The report's HTML."""
    training = [e for e in files.log if "loss" in e]
    evaluations = [e for e in files.log if any(k.startswith("eval_") for k in e)]
    summary = next((e for e in reversed(files.log) if "train_runtime" in e), {})
    final = files.metrics or (_without_timing(evaluations[-1]) if evaluations else {})
    plots = markup.Plots()
    sections = [_overview(files, summary, final)]
    if files.notes:
        sections.append(markup.section("Left out", "".join(f"<p class='note'>{html.escape(note)}</p>"
                                                           for note in files.notes)))
    if final:
        sections.append(markup.section("Final metrics", markup.table(final.items())))
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
        sections.append(markup.section("Curves", "".join(curves) + plots.note()))
    data = _data_description(files)
    if data:
        sections.append(markup.section("Data and model", markup.table(data)))
    if examples is not None:
        sections.extend(_example_sections(examples, plots))
    if training or evaluations:
        sections.append(markup.section("Log", _log_table(files.log), collapsed=True))
    if files.arguments:
        sections.append(markup.section("Arguments", markup.table(sorted(files.arguments.items())), collapsed=True))
    title = f"finch run report: {files.arguments.get('run_name') or files.folder.name}"
    return markup.PAGE.format(title=html.escape(title), body="\n".join(sections),
                       generated=html.escape(datetime.datetime.now().isoformat(timespec="seconds")))


# ---- reading ---------------------------------------------------------------------------------------------------------
def _note(notes: list[str] | None, text: str) -> None:
    """Say what the report leaves out and why: in the page (a note) and as a warning (None: a file read again)."""
    if notes is not None:
        logger.warning("report: %s", text)
        notes.append(text)


def _read_json(path: Path, notes: list[str] | None = None) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError): show the rest
        _note(notes, f"{path} is damaged ({error}); the report leaves it out")
        return {}
    if not isinstance(value, dict):
        _note(notes, f"{path} holds a JSON {type(value).__name__}, not an object; the report leaves it out")
        return {}
    return value


def _read_yaml(path: Path, notes: list[str]) -> dict[str, Any]:
    """The run's finch_config.yaml (the options `finch train` ran with), safely: no tag of Python's is built."""
    if not path.exists():
        return {}
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError) as error:  # ValueError: not UTF-8
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _note(notes, f"{path} is not readable YAML ({first}); the report leaves the options it records out")
        return {}
    if value is not None and not isinstance(value, dict):
        _note(notes, f"{path} holds a YAML {type(value).__name__}, not the options `finch train` writes; left out")
        return {}
    return value or {}


LOG_KEYS = ("loss", "learning_rate", "grad_norm", "epoch", "train_runtime")  # at least one is in every log entry


def _read_jsonl(path: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The entries of a training log; lines that are damaged or are not log entries are left out, with a note."""
    if not path.exists():
        return []
    entries, damaged, foreign, total = [], 0, 0, 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # damaged bytes: lines skipped
        if not line.strip():
            continue
        total += 1
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut by a crash: the rest is still worth showing
            damaged += 1
            continue
        if _is_log_entry(entry):
            entries.append(entry)
        else:
            foreign += 1
    if total and not entries:
        _note(notes, f"{path} holds no training log entries (none of its {total} line(s) has a step with a loss, "
                     f"learning rate, epoch or evaluation: is it another file, such as predictions?); the curves and "
                     f"the log are left out. finch train writes the run's log there")
    elif damaged or foreign:
        _note(notes, f"{path}: {damaged + foreign} of its {total} lines are left out ({damaged} not readable JSON, "
                     f"{foreign} not log entries); the curves show the other {len(entries)}")
    return entries


def _is_log_entry(entry: Any) -> bool:
    """A line the Trainer logged: a step, and a loss, learning rate, epoch or evaluation (no prediction's columns)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
        return False
    if any(key.startswith("predicted_") for key in entry):
        return False
    return any(key in LOG_KEYS or key.startswith("eval_") for key in entry)


def _last_run(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of the last run in a log that several fresh runs appended to (its step starts again lower)."""
    start = 0
    for index in range(1, len(entries)):
        if entries[index]["step"] < entries[index - 1]["step"]:
            start = index
    return entries[start:]


def _newest_state(folder: Path, notes: list[str]) -> dict[str, Any]:
    """The newest checkpoint's `trainer_state.json` (checkpoints in step order, as `finch.runs.folders` names them)."""
    states = [path / "trainer_state.json" for path in folders.checkpoints(folder)]
    return next((_read_json(path, notes) for path in reversed(states) if path.is_file()), {})


def _series(entries: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(e["step"], float(e[key])) for e in entries if isinstance(e.get(key), (int, float))]
    return [step for step, _ in points], [value for _, value in points]


def _without_timing(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if not k.endswith(TIMING)}


# ---- sections --------------------------------------------------------------------------------------------------------
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
        facts.append(("epochs", markup.number(epoch)))
    for key, name in (("train_runtime", "training time (s)"), ("train_loss", "mean training loss"),
                      ("train_samples_per_second", "training samples per second")):
        if key in summary:
            facts.append((name, summary[key]))
    if state.get("best_metric") is not None:
        facts.append((f"best {args.get('metric_for_best_model') or 'metric'}",
                      f"{markup.number(state['best_metric'])} at step {state.get('best_global_step')}"))
    if final:
        main = next((k for k in ("eval_accuracy", "eval_f1", "eval_loss") if k in final), None)
        if main:
            facts.append((f"final {main}", final[main]))
    return markup.section("Run", markup.table([(k, v) for k, v in facts if v not in ("", None)]))


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


# ---- the final evaluation, example by example (finch.report.eval_examples) -------------------------------------------
def _example_sections(examples: EvalExamples, plots: markup.Plots) -> list[str]:
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


def _confusion_section(examples: EvalExamples, plots: markup.Plots) -> str:
    matrix, names = examples.confusion(), examples.class_names
    header = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(f"<tr><th>{html.escape(names[i])}</th>" + "".join(f"<td>{c}</td>" for c in matrix[i]) + "</tr>"
                   for i in range(len(names)))
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    table = (f"<p>{matrix.sum()} examples, accuracy {markup.number(accuracy)}; rows: true class, columns: "
             f"predicted.</p><table class='matrix'><tr><th></th>{header}</tr>{rows}</table>")
    return markup.section("Confusion matrix", table + plots.matrix(matrix, names))


def _per_class_section(examples: EvalExamples) -> str:
    header = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{markup.number(p)}</td><td>{markup.number(r)}</td>"
                   f"<td>{markup.number(f)}</td><td>{support}</td></tr>"
                   for name, p, r, f, support in examples.per_class())
    what = "a label is predicted when its logit is above 0" if examples.kind == "multilabel" else \
        "support: the examples of the class"
    return markup.section("Per-class precision, recall and F1",
                    f"<p>On the final evaluation; {what}.</p><table class='per-class'>{header}{rows}</table>")


def _regression_section(examples: EvalExamples, plots: markup.Plots) -> str:
    truth, predicted = examples.labels.astype(float), examples.predicted.astype(float)
    error = float(np.mean((predicted - truth) ** 2)) if len(truth) else float("nan")
    pearson = float(np.corrcoef(truth, predicted)[0, 1]) if len(truth) > 1 and truth.std() and predicted.std() \
        else float("nan")
    text = f"<p>{len(truth)} examples; mean squared error {markup.number(error)}, Pearson {markup.number(pearson)}.</p>"
    return markup.section("Predicted vs true", text + plots.scatter(truth, predicted))


def _hardest_section(examples: EvalExamples) -> str:
    rows = []
    for rank, row in enumerate(examples.hardest(), 1):
        text = examples.texts.get(row)
        if isinstance(text, dict):
            text = "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(str(v))}" for k, v in text.items())
        else:
            text = html.escape(str(text)) if text is not None else "<i>(text not recorded)</i>"
        rows.append(f"<tr><td>{rank}</td><td>{row}</td><td>{markup.number(float(examples.losses[row]))}</td>"
                    f"<td>{html.escape(examples.shown_label(examples.labels[row]))}</td>"
                    f"<td>{html.escape(examples.shown_label(examples.predicted[row]))}</td><td>{text}</td></tr>")
    header = "<tr><th>#</th><th>row</th><th>loss</th><th>true</th><th>predicted</th><th>text</th></tr>"
    note = "<p>Row: the example's position in the evaluation set; the loss is the model's, per example.</p>"
    return markup.section("Evaluation examples with the highest loss",
                    f"{note}<div class='scroll'><table class='hardest'>{header}{''.join(rows)}</table></div>")


def _log_table(entries: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for e in entries for k in e if k not in ("step", "epoch")))
    header = "".join(f"<th>{html.escape(k)}</th>" for k in ["step", "epoch", *keys])
    rows = "".join("<tr>" + "".join(f"<td>{markup.cell(e.get(k))}</td>" for k in ["step", "epoch", *keys]) + "</tr>"
                   for e in entries)
    return f"<div class='scroll'><table class='log'><tr>{header}</tr>{rows}</table></div>"
