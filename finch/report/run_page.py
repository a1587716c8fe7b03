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

    @classmethod
    def read(cls, folder: str | Path) -> RunFiles:
        """Read `folder`'s run files. Raises `ConfigError` when it holds none of them."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder; give the output folder of a run (finch train's "
                              f"--output-dir, the Trainer's output_dir)")
        files = cls(folder, log=_last_run(_read_jsonl(folder / "log.jsonl")),
                    metrics=_read_json(folder / "metrics.json"), arguments=_read_json(folder / "training_args.json"),
                    state=_newest_state(folder))
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
        examples = EvalExamples.read(files.folder / EVAL_EXAMPLES)
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
    """The newest checkpoint's `trainer_state.json` (checkpoints in step order, as `finch.runs.folders` names them)."""
    states = [path / "trainer_state.json" for path in folders.checkpoints(folder)]
    return next((_read_json(path) for path in reversed(states) if path.is_file()), {})


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
