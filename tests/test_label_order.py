"""Which label is "1" is an accident of the file: `finch train` keeps the same model, epoch for epoch, when the label
names are swapped. And the CLI's defaults yield to the user's flags instead of refusing them."""

import csv
import json

import pytest

from finch.cli.commands import main
from finch.cli.job import resolve_options, yield_defaults

QUICK = ["--no-bf16", "--disable-tqdm", "--report-to", "none"]


def mrpc_rows(path, rows, swap=False):
    """The first `rows` lines of a GLUE MRPC TSV as they are (bare quotes and all), Quality 0 <-> 1 if `swap`."""
    lines = path.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    kept = [lines[0]]
    for line in lines[1:rows + 1]:
        quality, rest = line.split("\t", 1)
        kept.append(f"{1 - int(quality) if swap else int(quality)}\t{rest}")
    return "".join(kept)


def train_and_predict(folder, model_dir, mrpc, swap):
    """Train on 160 MRPC rows for 3 epochs (validation: 64 dev rows); the metrics, kept checkpoint, predictions."""
    folder.mkdir()
    train, dev = folder / "train.tsv", folder / "dev.tsv"
    train.write_text(mrpc_rows(mrpc / "train.tsv", 160, swap), encoding="utf-8")
    dev.write_text(mrpc_rows(mrpc / "dev.tsv", 64, swap), encoding="utf-8")
    out = folder / "run"
    assert main(["train", "--model", model_dir, "--train", str(train), "--validation", str(dev), "--output-dir",
                 str(out), "--num-train-epochs", "3", "--learning-rate", "2e-4", "--per-device-train-batch-size", "16",
                 "--max-length", "48", "--seed", "3", "--save-total-limit", "3", *QUICK]) == 0
    states = sorted(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    state = json.loads(states[-1].read_text())
    assert main(["predict", "--model", str(out / "model"), "--data", str(dev), "--out", str(folder / "p.csv")]) == 0
    with open(folder / "p.csv", newline="") as file:
        predicted = [(row["predicted_label"], row["predicted_prob_0"], row["predicted_prob_1"])
                     for row in csv.DictReader(file)]
    metrics = json.loads((out / "metrics.json").read_text())
    evaluations = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval_loss" in e]
    return metrics, state["best_model_checkpoint"].rsplit("/", 1)[-1], predicted, evaluations


@pytest.mark.slow
def test_swapping_the_label_names_keeps_the_same_model(tmp_path, model_dir, mrpc_dir, one_thread, capsys):
    original = train_and_predict(tmp_path / "original", model_dir, mrpc_dir, swap=False)
    header = capsys.readouterr().out
    assert "best model: the highest eval_f1_macro (the default for two classes: it does not depend on which " \
           "label is listed second" in header
    assert "head: the new classification head starts from the class means of 160 training rows" in header
    swapped = train_and_predict(tmp_path / "swapped", model_dir, mrpc_dir, swap=True)
    (metrics, kept, predicted, evaluations), (metrics2, kept2, predicted2, evaluations2) = original, swapped
    assert len({label for label, *_ in predicted}) == 2, evaluations  # it learned: not one class for every row
    assert [e["eval_accuracy"] for e in evaluations] == [e["eval_accuracy"] for e in evaluations2]
    assert metrics["eval_accuracy"] == metrics2["eval_accuracy"]
    assert metrics["eval_f1_macro"] == metrics2["eval_f1_macro"]
    assert kept == kept2
    # row by row the same class, with the same probability: the swapped model is the original, its classes swapped
    # (up to float rounding: the two classes' sums run in another order, a few 1e-4 after 30 steps)
    assert [label for label, *_ in predicted] == [{"0": "1", "1": "0"}[label] for label, *_ in predicted2]
    assert [float(p0) for _, p0, _ in predicted] == pytest.approx([float(p1) for *_, p1 in predicted2], abs=5e-3)


def write_pairs(path, labels):
    words = ["good", "bad", "great", "awful", "nice", "poor"]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        for i, label in enumerate(labels):
            writer.writerow([" ".join(words[(i * 7 + j) % 6] for j in range(3 + i % 4)), label])
    return str(path)


def test_positive_label_makes_f1_that_class_and_picks_by_it(tmp_path, tiny_model_dir, capsys):
    data = write_pairs(tmp_path / "d.csv", ["yes", "no", "no", "no"] * 8)
    assert main(["train", "--model", tiny_model_dir, "--train", data, "--validation", data, "--output-dir",
                 str(tmp_path / "a"), "--max-steps", "2", "--positive-label", "no", *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "best model: the highest eval_f1 (--positive-label no; f1 is the F1 of class 'no')" in printed
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    # labels sort as no, yes: without --positive-label f1 would be the F1 of "yes"
    assert metrics["eval_f1"] != metrics["eval_f1_macro"] or metrics["eval_accuracy"] in (0.0, 1.0)
    # the model remembers: `finch eval` reports the F1 of the same class
    assert main(["eval", "--model", str(tmp_path / "a" / "model"), "--data", data, "--out",
                 str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["eval_f1"] == pytest.approx(metrics["eval_f1"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--positive-label", "maybe"], "--positive-label maybe: not a label of this data; its labels are no, yes"),
])
def test_positive_label_mistakes_are_said_before_the_model_loads(tmp_path, tiny_model_dir, capsys, flags, message):
    data = write_pairs(tmp_path / "d.csv", ["yes", "no"] * 8)
    assert main(["train", "--model", tiny_model_dir, "--train", data, "--output-dir", str(tmp_path / "a"),
                 *flags, *QUICK]) == 2
    assert message in capsys.readouterr().err


def test_positive_label_on_three_classes_is_refused(tmp_path, tiny_model_dir, capsys):
    data = write_pairs(tmp_path / "d.csv", ["a", "b", "c"] * 8)
    assert main(["train", "--model", tiny_model_dir, "--train", data, "--output-dir", str(tmp_path / "a"),
                 "--positive-label", "a", *QUICK]) == 2
    assert "--positive-label a: a positive class applies to two-class data" in capsys.readouterr().err


def test_eval_strategy_no_turns_off_the_best_model_with_one_line(tmp_path, tiny_model_dir, capsys):
    data = write_pairs(tmp_path / "d.csv", ["yes", "no"] * 8)
    out = tmp_path / "a"
    assert main(["train", "--model", tiny_model_dir, "--train", data, "--output-dir", str(out), "--max-steps", "2",
                 "--eval-strategy", "no", *QUICK]) == 0
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if line.startswith("defaults:")]
    assert notes == [("defaults: load_best_model_at_end off (the CLI's default, not yours): --eval-strategy no "
                      "evaluates nothing to pick the best model by; the model is the last one trained and no 'best' "
                      "checkpoint is kept")]
    assert "best model: none chosen (--eval-strategy no)" in printed
    args = json.loads((out / "training_args.json").read_text())
    assert args["load_best_model_at_end"] is False
    states = [json.loads(p.read_text()) for p in out.glob("checkpoint-*/trainer_state.json")]
    assert states and all(state["best_model_checkpoint"] is None for state in states)


def test_two_choices_of_the_user_still_conflict(tmp_path, tiny_model_dir, capsys):
    data = write_pairs(tmp_path / "d.csv", ["yes", "no"] * 8)
    assert main(["train", "--model", tiny_model_dir, "--train", data, "--output-dir", str(tmp_path / "a"),
                 "--eval-strategy", "no", "--load-best-model-at-end", *QUICK]) == 2
    assert "load_best_model_at_end=True needs evaluation" in capsys.readouterr().err


@pytest.mark.parametrize(("chosen", "expected", "note"), [
    ({"eval_strategy": "no"}, {"load_best_model_at_end": False}, "--eval-strategy no evaluates nothing"),
    ({"save_strategy": "no"}, {"load_best_model_at_end": False}, "--save-strategy no saves no checkpoint"),
    ({"eval_strategy": "steps"}, {"eval_steps": 500, "save_strategy": "steps", "save_steps": 500},
     "eval_steps 500, HF's"),
    ({"eval_steps": 50}, {"eval_strategy": "steps", "save_strategy": "steps", "save_steps": 50},
     "eval_strategy steps, not the CLI's 'epoch': --eval-steps was given"),
    ({"save_strategy": "steps", "save_steps": 30}, {"eval_strategy": "steps", "eval_steps": 30},
     "eval_strategy steps every 30 steps as --save-strategy"),
    ({"eval_strategy": "steps", "eval_steps": 20, "save_strategy": "epoch"}, {"load_best_model_at_end": False},
     "evaluations and checkpoints do not coincide"),
    ({"eval_strategy": "steps", "eval_steps": 20, "save_steps": 30}, {"load_best_model_at_end": False},
     "not every checkpoint has an evaluation"),
])
def test_each_cli_default_yields_to_a_flag_that_contradicts_it(chosen, expected, note):
    from finch.cli.job import CLI_DEFAULTS, training_arguments

    defaults, notes = yield_defaults(CLI_DEFAULTS, chosen)
    resolved = {**defaults, **chosen}
    assert {key: resolved[key] for key in expected} == expected
    assert any(note in line for line in notes), notes
    training_arguments({**resolved, "output_dir": "x"})  # and TrainingArguments accepts the result


def test_defaults_that_agree_with_the_flags_are_left_alone_silently():
    from finch.cli.job import CLI_DEFAULTS

    for chosen in ({}, {"eval_strategy": "epoch"}, {"save_strategy": "best"}, {"load_best_model_at_end": False},
                   {"eval_strategy": "steps", "eval_steps": 10, "save_strategy": "steps", "save_steps": 20}):
        defaults, notes = yield_defaults(CLI_DEFAULTS, chosen)
        assert notes == [] and defaults == CLI_DEFAULTS, chosen


def test_resolve_options_prints_the_note(capsys):
    options = resolve_options({"train": "x.csv", "eval_strategy": "no"})
    assert options["load_best_model_at_end"] is False
    assert capsys.readouterr().out.startswith("defaults: load_best_model_at_end off")


def test_print_config_shows_the_yielded_default_as_a_yaml_comment(capsys):
    import yaml

    assert main(["train", "--train", "x.csv", "--eval-strategy", "no", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# defaults: load_best_model_at_end off")
    assert yaml.safe_load(printed)["load_best_model_at_end"] is False


def test_the_held_out_validation_rows_do_not_depend_on_the_label_names(tmp_path):
    """Without --validation, 10% is held out stratified: the same rows whichever label is "1"."""
    from finch.data.columns import load_splits

    labels = ["yes" if (i * 37) % 100 < 67 else "no" for i in range(300)]
    held_out = []
    for name, names in (("a", {"yes": "yes", "no": "no"}), ("b", {"yes": "no", "no": "yes"})):
        path = tmp_path / f"{name}.csv"
        path.write_text("text,label\n" + "".join(f"row {i} good,{names[label]}\n" for i, label in enumerate(labels)))
        splits = load_splits(str(path), None, None, None, seed=3)
        rows = [f"{row['text']}|{splits.task.label_names[row['label']]}" for row in splits.validation]
        held_out.append([row if name == "a" else row.replace("|yes", "|x").replace("|no", "|yes").replace("|x", "|no")
                         for row in rows])
        assert len(splits.validation) == 30 and len(splits.train) == 270
    assert held_out[0] == held_out[1]
    assert sum(row.endswith("|yes") for row in held_out[0]) == 20  # stratified: 67% of 30


def test_the_header_says_lowest_for_a_loss(tmp_path, tiny_model_dir, capsys):
    data = write_pairs(tmp_path / "d.csv", ["yes", "no"] * 8)
    assert main(["train", "--model", tiny_model_dir, "--train", data, "--output-dir", str(tmp_path / "a"),
                 "--max-steps", "1", "--metric", "loss", *QUICK]) == 0
    assert "best model: the lowest eval_loss (--metric)" in capsys.readouterr().out
