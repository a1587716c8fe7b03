"""The `finch` command.

    finch train                                   # the demo: packaged all-MiniLM-L6-v2 on BBC News
    finch train --train FILE [--validation FILE] [--model NAME] [--config run.yaml] [key=value ...] [--flags]
    finch eval --model DIR --data FILE            # metrics of a saved model on labelled data
    finch predict --model DIR --data FILE --out FILE.csv|.jsonl   # streams: any size, constant memory
    finch verify-resume [the train options] [--steps N]   # exit 0: stop + resume gives the same weights
    finch search [the train options] [--trials N] [--storage URL] [--study-name NAME] [--space FILE] [--no-prune]
    finch search --show [--output-dir DIR | --storage URL --study-name NAME]   # the trials and the best parameters
    finch report OUTPUT_DIR [--out FILE.html]     # the HTML report of a run (curves, metrics) or of a search

Exit codes: 0 done; 1 training stopped (NaN/Inf losses) or a checkpoint could not be written; 2 a mistake in the
flags, config or data, reported before any model is loaded, without a traceback; 75 preempted (SIGTERM, SIGINT,
SIGUSR1) after saving a checkpoint: run the same command with `--resume auto` to go on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import os
import sys
import traceback
import types
import typing
from pathlib import Path
from typing import Any

from finch.args import FIELD_GROUPS, PYTHON_ONLY, SCRIPTS_ONLY, TrainingArguments
from finch.distributed.launch import Outcome, report, reporting
from finch.errors import UserError, mask_secrets

EXIT_USAGE = 2  # bad flags, config or data: nothing was trained
EXIT_FAILED = 1  # training stopped (NaN/Inf losses) or a checkpoint could not be written


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code says how it ended (see the module docstring)."""
    from finch.errors import NonFiniteLossError
    from finch.runs.checkpoint import CheckpointError
    from finch.training.preemption import TrainingPreempted

    parser = build_parser()
    options = parser.parse_args(argv)
    if options.command is None:
        parser.print_help()
        return EXIT_USAGE
    name = f"finch {options.command}"
    try:
        return _ended(Outcome(options.run({**vars(options), "argv": list(sys.argv[1:] if argv is None else argv)}),
                              "failure"))
    except UserError as error:  # finch's own checks found a mistake: the message says the fix
        return _ended(Outcome(EXIT_USAGE, "mistake", f"{name}: error: {mask_secrets(error)}"))
    except (NonFiniteLossError, CheckpointError) as error:  # training stopped on NaNs, or a save failed
        return _ended(Outcome(EXIT_FAILED, "failure", f"{name}: {mask_secrets(error)}"))
    except TrainingPreempted as stopped:  # (a SystemExit: it ends the process with its code, 75)
        _ended(Outcome(stopped.code, "preempted"))
        raise
    except Exception as error:  # noqa: BLE001 (anything else is a bug: show everything, blame no one but finch)
        if reporting() and _lost_contact(error):  # this rank's peers ended: their own messages say why
            cause = mask_secrets(str(error)).splitlines()[0][:160]
            return _ended(Outcome(EXIT_FAILED, "peer", f"{name}: process {os.environ['RANK']} stopped: another "
                                                       f"process of this run ended ({cause})"))
        trace = mask_secrets(traceback.format_exc())  # a URL in the traceback keeps its password hidden
        return _ended(Outcome(EXIT_FAILED, "failure", f"{trace}{name}: this is a bug in finch or a library under it, "
                                                      f"not a mistake in your flags or data; please report it with "
                                                      f"the traceback above"))


def _ended(outcome: Outcome) -> int:
    """Say how the command ended (to the launcher, under `finch ... --nproc-per-node`, which says it once)."""
    if reporting():
        report(outcome)
    elif outcome.message:
        print(outcome.message, file=sys.stderr)
    return outcome.code


def _lost_contact(error: BaseException) -> bool:
    """Whether `error` is a collective or store failing because another process of the group is gone."""
    import torch.distributed as dist

    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and any(
        sign in str(error) for sign in ("Connection closed by peer", "Connection reset by peer", "Broken pipe")))


class HintingParser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too) with the fix added to two of its errors: a negative number in
    scientific notation, which argparse reads as a flag, and a flag it does not know (the closest ones it does)."""

    def error(self, message: str) -> typing.NoReturn:
        if message.endswith("expected one argument"):
            message += " (a negative value takes '=': --learning-rate=-1e-5)"
        elif message.startswith("unrecognized arguments:"):
            known = {flag for parser in self._parsers() for flag in parser._option_string_actions}
            close = {guess for word in message.split(":", 1)[1].split() if word.startswith("--")
                     for guess in difflib.get_close_matches(word.split("=")[0], known, n=2, cutoff=0.75)}
            if close:
                message += f"; did you mean {' or '.join(sorted(close))}?"
        super().error(message)

    def _parsers(self) -> list[argparse.ArgumentParser]:
        """This parser and its subcommands' (an unknown flag after a subcommand is reported by the top parser)."""
        found: list[argparse.ArgumentParser] = [self]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += list(action.choices.values())
        return found


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `--learning-rat` must be an error, not a guess at `--learning-rate`
    parser = HintingParser(prog="finch", description="Fine-tune pretrained transformers.", allow_abbrev=False)
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser("train", help="fine-tune a classifier (no arguments: the BBC News demo)",
                                argument_default=argparse.SUPPRESS, allow_abbrev=False,
                                usage="finch train [--train FILE] [--validation FILE] [--model NAME_OR_FOLDER] "
                                      "[--config FILE] [options] [KEY=VALUE ...]")
    train.set_defaults(run=run_train)
    train.add_argument("--print-config", action="store_true", help="print the resolved options and exit")
    add_launch_options(train)
    add_job_options(train)
    verify = commands.add_parser("verify-resume", argument_default=argparse.SUPPRESS, allow_abbrev=False,
                                 usage="finch verify-resume [the options of finch train] [--steps N]",
                                 help="check that stopping and resuming this job gives the same weights, bit for bit")
    verify.set_defaults(run=run_verify_resume)
    verify.add_argument("--steps", type=int, default=8, help="optimizer steps to run (default 8; stop at half)")
    add_job_options(verify)
    search = commands.add_parser("search", argument_default=argparse.SUPPRESS, allow_abbrev=False,
                                 usage="finch search [the options of finch train] [--trials N] [--storage URL] "
                                       "[--study-name NAME] [--space FILE] [--no-prune] [--show]",
                                 help="search hyperparameters with Optuna; the best model lands in DIR/best-model")
    search.set_defaults(run=run_search)
    study = search.add_argument_group("search")
    study.add_argument("--trials", type=_positive_int, default=20,
                       help="trials in the study, all workers together (default 20); re-running continues to N")
    study.add_argument("--storage", help="the study's database URL, e.g. postgresql://user:pw@host/db, shared by "
                                         "workers on several machines (default: sqlite:///<output-dir>/search.db)")
    study.add_argument("--study-name", help="the study's name in the storage (default: the output folder's name)")
    study.add_argument("--space", help="YAML file: field: [choices] or {low, high, log, step} (default: "
                                       "HuggingFace's: learning rate, epochs, seed, batch size)")
    study.add_argument("--no-prune", dest="prune", action="store_false", default=True,
                       help="train every trial to its end (default: a median pruner stops poor trials at evaluations)")
    study.add_argument("--heartbeat-interval", type=_positive_int, default=20,
                       help="seconds between a running trial's heartbeats; a trial silent for 3 of them is retried")
    study.add_argument("--show", action="store_true", help="print the study's trials and best parameters, and exit")
    add_launch_options(search)
    add_job_options(search)
    for name, run, text in (("eval", run_eval, "metrics of a saved model on labelled data"),
                            ("predict", run_predict, "label every row of a file with a saved model (streams)")):
        command = commands.add_parser(name, help=text, allow_abbrev=False)
        command.set_defaults(run=run)
        command.add_argument("--model", required=True, help="folder of a saved model (finch train's DIR/model)")
        command.add_argument("--data", required=True, help="the rows: .csv, .tsv, .jsonl, .parquet")
        command.add_argument("--text-columns", nargs="+", help="default: as at training, else inferred")
        command.add_argument("--batch-size", type=_positive_int, default=64, help="rows per forward pass (default: 64)")
        command.add_argument("--encoding", help="text encoding of --data (default: utf-8; a BOM is honoured)")
        if name == "eval":
            command.add_argument("--label-column", help="default: as at training, else inferred")
            command.add_argument("--out", help="metrics JSON (default: <model>/eval_<data name>.json; for a "
                                                "checkpoint, beside it: <run>/eval_<data name>_checkpoint-<step>.json)")
        else:
            command.add_argument("--out", required=True, help="predictions: .csv or .jsonl")
        command.add_argument("--overwrite", action="store_true",
                             help="replace an existing --out that finch did not write as this command's output "
                                  "(never a file of a run or model folder)")
    report = commands.add_parser("report", help="a self-contained HTML page of a run (curves, metrics, arguments) "
                                 "or of a search (trials, objective by trial, parameter importance)",
                                 allow_abbrev=False)
    report.set_defaults(run=run_report)
    report.add_argument("output_dir", help="the run's output folder (finch train's or finch search's --output-dir)")
    report.add_argument("--out", help="the HTML file (default: OUTPUT_DIR/report.html)")
    report.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out that is not a finch report (never a file of a run or model "
                             "folder)")
    return parser


def add_launch_options(parser: argparse.ArgumentParser) -> None:
    """torchrun's flags: `finch train --nproc-per-node N` relaunches itself as N processes (docs/distributed.md)."""
    launch = parser.add_argument_group("several processes (through torchrun; see docs/distributed.md)")
    launch.add_argument("--nproc-per-node", type=_positive_int, help="processes on this machine, one per GPU (or "
                                                                      "CPU share); relaunches through torchrun")
    launch.add_argument("--nnodes", type=_positive_int, help="machines in the run (default 1)")
    launch.add_argument("--node-rank", type=int, help="this machine's index, 0 to nnodes-1 (default 0)")
    launch.add_argument("--rdzv-endpoint", help="HOST:PORT where the machines meet (node 0's address)")
    launch.add_argument("--rdzv-id", help="the job's id, the same on every machine and new for each job (e.g. "
                                          "$SLURM_JOB_ID): a restart resumes only this job's checkpoints")
    launch.add_argument("--rdzv-timeout", type=_positive_int, metavar="SECONDS",
                        help="with --nnodes: how long the machines wait for each other before giving up "
                             "(default 600)")
    launch.add_argument("--max-restarts", type=int, help="restart every process this many times after a failure; "
                                                         "each restart resumes from the newest whole checkpoint "
                                                         "this launch saved")


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """Model, data, config and TrainingArguments flags shared by `train` and `verify-resume`."""
    data = parser.add_argument_group("model and data")
    data.add_argument("--model", help="model name on the hub or local folder (default: packaged all-MiniLM-L6-v2)")
    data.add_argument("--train", help="training data: .csv .tsv .jsonl .json .parquet, a saved or GLUE-style folder, "
                                      "or a hub name such as glue/mrpc (default: the BBC News demo)")
    data.add_argument("--validation", help="validation data (default: the source's validation split, else 10%% of "
                                           "--train, stratified)")
    data.add_argument("--text-columns", nargs="+", help="text column, or two for sentence pairs (default: inferred)")
    data.add_argument("--label-column", help="label column (default: inferred)")
    data.add_argument("--max-length", type=_positive_int, help="tokens kept per example (default: the model's maximum, "
                                                                "so no example is cut that it could read whole; "
                                                                "the demo: 128)")
    data.add_argument("--encoding", help="text encoding of the data files (default: utf-8; a BOM is honoured)")
    data.add_argument("--metric", help="metric that picks the best model (default: f1_macro for classification, "
                                       "f1_micro multi-label, pearson regression; none of them depends on the order "
                                       "of the label names)")
    data.add_argument("--positive-label", metavar="NAME",
                      help="two classes: the class whose F1 is eval_f1 and picks the best model (default: f1 is "
                           "the F1 of the label sorted second, and f1_macro picks)")
    data.add_argument("--freeze", help="train less: base (head only), embeddings, or N (embeddings + first N layers)")
    data.add_argument("--strict", action="store_true", help="treat data warnings as errors")
    data.add_argument("--resume", help="'auto' for the newest checkpoint in --output-dir, or a checkpoint folder")
    data.add_argument("--config", help="YAML file of options (flags and key=value override it)")
    data.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="option overrides, e.g. learning_rate=3e-5")
    add_training_flags(parser)


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainingArguments field, grouped, each with its help and the default `finch train` uses."""
    from finch.cli.job import CLI_DEFAULTS, DEMO_DEFAULTS

    hints = typing.get_type_hints(TrainingArguments)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item in dataclasses.fields(TrainingArguments):
        group_name = FIELD_GROUPS.get(item.name, "other")
        if group_name == SCRIPTS_ONLY or item.name in PYTHON_ONLY:  # do_train...: finch train has its own (--resume)
            continue
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(f"training arguments: {group_name}")
        group, flag, kind = groups[group_name], "--" + item.name.replace("_", "-"), _base_type(hints[item.name])
        default = CLI_DEFAULTS.get(item.name, item.default)
        shown = "" if item.name == "hub_token" else f" (default: {_shown(default)}" + (
            f"; the demo: {_shown(DEMO_DEFAULTS[item.name])})" if item.name in DEMO_DEFAULTS else ")")
        text = (item.metadata.get("help", "") + shown).replace("%", "%%")
        if kind is bool:
            group.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction, help=text)
        elif kind is list:
            group.add_argument(flag, dest=item.name, nargs="+", help=text)
        elif kind is dict:
            group.add_argument(flag, dest=item.name, type=_json_object, metavar="JSON", help=text)
        else:
            group.add_argument(flag, dest=item.name, type=kind, metavar=item.name.upper(), help=text)


def _shown(value: Any) -> str:
    return "unset" if value is None else str(value)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}); write an object like '{{\"num_cycles\": 2}}'") \
            from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object; write one like '{{\"num_cycles\": 2}}'")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _base_type(hint: Any) -> type:
    """`float | None` -> float; `str | list[str]` -> list; `bool | None` -> bool."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    options = [typing.get_origin(o) or o for o in (typing.get_args(hint) if union else (hint,)) if o is not type(None)]
    for preferred in (bool, list, dict, float, int):
        if preferred in options:
            return preferred
    return str


def run_train(flags: dict[str, Any]) -> int:
    """Resolve options, check the data, fine-tune, evaluate, save; print the metrics and where things are.
    With `--nproc-per-node`, check the options, then relaunch as that many processes through torchrun."""
    from finch.cli import config as config_files
    from finch.cli.job import plan_resume_early, resolve_options, training_arguments
    from finch.distributed.runtime import Launch
    from finch.distributed.torchrun import check_launch_flags_need_processes, launched_by_torchrun, relaunch
    from finch.runs.files import check_no_earlier_outputs, check_output_dir, run_lock

    check_launch_flags_need_processes(flags)
    options = resolve_options(flags)
    if flags.get("print_config"):
        training_arguments(options)  # validated, so what is printed would run
        print(config_files.dump(options))
        return 0
    fresh = not (options.get("resume") or options.get("overwrite_output_dir") or Launch.from_environment().restarted)
    if flags.get("nproc_per_node") and not launched_by_torchrun():
        if fresh:
            check_no_earlier_outputs(options["output_dir"])  # said once, here, not once per process
        checked = training_arguments(options)  # a mistake in the flags shows once, here, not once per process
        check_output_dir(checked.output_dir)  # and the folder and the resume, before any process starts
        plan_resume_early(checked, options.get("resume"))
        return relaunch(flags["argv"], flags, "train")
    # one run at a time per output folder, held by the process that writes it, from this check to the last file
    writer = int(os.environ.get("RANK", "0")) == 0
    with run_lock(options["output_dir"]) if writer else contextlib.nullcontext():
        if fresh:
            check_no_earlier_outputs(options["output_dir"])  # before the data is read; a restart continues its run
        return _train_job(options)


def _train_job(options: dict[str, Any]) -> int:
    from finch.cli import config as config_files
    from finch.cli.job import prepare
    from finch.report.write import try_write_report
    from finch.runs.files import write_text

    print(f"options:\n{_indent(config_files.dump(options))}", flush=True)
    job = prepare(options)  # every check that needs no weights: nothing is written before it passes
    trainer = job.build(job.args)
    writes = trainer.is_world_process_zero()  # one writer per file when there are several processes
    output = Path(job.args.output_dir)
    if writes:
        output.mkdir(parents=True, exist_ok=True)
        write_text(output / "finch_config.yaml", config_files.dump(options) + "\n")
    resume = options.get("resume")  # after a torchrun restart (--max-restarts), train() resumes by itself
    trainer.train(resume_from_checkpoint=True if resume == "auto" else resume)
    metrics = trainer.evaluate(reuse_unchanged=True)  # the last evaluation's, when it scored these very weights
    model_dir = output / "model"
    trainer.save_model(str(model_dir))
    if writes or (job.args.save_on_each_node and trainer.is_local_process_zero()):
        job.card.write(model_dir)  # beside each copy of the model
    if not writes:
        return 0
    write_text(output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    # an observer: a failure is a warning, never the run's end; the final evaluation's examples go with it
    report = try_write_report(output, job.eval_examples)
    print("\nfinal metrics on the validation set")
    _print_metrics(metrics)
    if job.collapse is not None and job.collapse.warning():
        print(f"warning: {job.collapse.warning()}", flush=True)
    print(f"model:  {model_dir}  (transformers.pipeline('text-classification', model='{model_dir}'))")
    print(f"logs:   {output / 'log.jsonl'}")
    if report is not None:
        print(f"report: {report}")
    return 0


def run_verify_resume(flags: dict[str, Any]) -> int:
    """Exit 0 when a stopped-and-resumed run of this job equals the unbroken one, 1 when it does not."""
    from finch.cli.job import prepare, resolve_options
    from finch.cli.verify import verify_resume

    job = prepare(resolve_options(flags))
    report = verify_resume(job.build, job.args, steps=flags["steps"])
    print(report)
    return 0 if report.identical else EXIT_FAILED


def run_search(flags: dict[str, Any]) -> int:
    """Search hyperparameters on the job's data (see `finch.cli.search`); print the best trial and the model."""
    from finch.cli.job import prepare, resolve_options, training_arguments
    from finch.cli.search import check_not_a_training_run, check_search_inputs, search_job, show_study
    from finch.distributed.torchrun import check_launch_flags_need_processes, launched_by_torchrun, relaunch
    from finch.errors import ConfigError
    from finch.report.search_page import try_write_search_report

    check_launch_flags_need_processes(flags)
    options = resolve_options(flags)
    if flags.get("show"):
        print(show_study(options["output_dir"], flags.get("storage"), flags.get("study_name")))
        return 0
    if options.get("resume"):
        raise ConfigError("finch search resumes by itself: re-run the same command (a killed worker's trial is "
                          "retried from its last checkpoint); drop --resume")
    check_not_a_training_run(options["output_dir"])
    # the space file and the storage URL before the data is read and tokenized (minutes for a big file), and once
    check_search_inputs(training_arguments(options), flags.get("space"), flags.get("storage"))
    if flags.get("nproc_per_node") and not launched_by_torchrun():  # each trial trains on N processes
        return relaunch(flags["argv"], flags, "search")
    job = prepare(options)  # every check that needs no weights: nothing is written before it passes
    study = search_job(job, options, flags["trials"], flags.get("storage"), flags.get("study_name"),
                       flags.get("space"), flags["prune"], flags["heartbeat_interval"])
    if study is None:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    print()
    print(show_study(options["output_dir"], flags.get("storage"), study.study_name))
    report = try_write_search_report(options["output_dir"], flags.get("storage"), study.study_name)
    if report is not None:
        print(f"report: {report}")
    completed = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
    if not completed:
        print(f"finch search: no trial of study {study.study_name} completed", file=sys.stderr)
        return EXIT_FAILED
    return 0


def run_eval(flags: dict[str, Any]) -> int:
    """Evaluate a saved model on a labelled file; print the metrics and save them as JSON."""
    from finch.cli.predict import evaluate_file

    metrics, description, out = evaluate_file(flags["model"], flags["data"], flags.get("out"),
                                              flags.get("text_columns"), flags.get("label_column"),
                                              flags["batch_size"], flags.get("encoding") or "utf-8",
                                              overwrite=flags.get("overwrite", False))
    print(description)
    _print_metrics(metrics)
    print(f"saved:  {out}")
    return 0


def run_predict(flags: dict[str, Any]) -> int:
    from finch.cli.predict import predict_file

    rows = predict_file(flags["model"], flags["data"], flags["out"], flags.get("text_columns"), flags["batch_size"],
                        encoding=flags.get("encoding") or "utf-8", overwrite=flags.get("overwrite", False))
    print(f"{rows:,} predictions written to {flags['out']}")
    return 0


def run_report(flags: dict[str, Any]) -> int:
    """Write the HTML report of a run's output folder and print where it is."""
    from finch.report.write import write_report
    from finch.runs.files import check_not_another_runs_report, check_output_file

    if flags.get("out"):
        check_output_file(flags["out"], suffixes=(".html", ".htm"), command="report",
                          overwrite=flags.get("overwrite", False))
        check_not_another_runs_report(flags["out"], flags["output_dir"])
    print(f"report: {write_report(flags['output_dir'], flags.get('out'))}")
    return 0


def _print_metrics(metrics: dict[str, Any]) -> None:
    for key, value in metrics.items():
        print(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
