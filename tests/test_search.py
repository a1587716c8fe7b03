"""`Trainer.hyperparameter_search` on a tiny BERT: best of n trials, HF's defaults, pruning, checks before training."""

import json

import optuna
import pytest
from conftest import sentiment_dataset, tiny_bert

from finch import Trainer, TrainingArguments
from finch.errors import ConfigError, UnknownArgumentError
from finch.search.study import default_compute_objective, default_hp_space

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tokenizer):
    return sentiment_dataset(tokenizer, rows=32), sentiment_dataset(tokenizer, rows=16, seed=1)


def make_trainer(data, tokenizer, output_dir, model_init=lambda: tiny_bert(), **overrides):
    settings = {"eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps", "save_steps": 2, "max_steps": 4,
                "per_device_train_batch_size": 8, "disable_tqdm": True, "use_cpu": True, "logging_steps": 100,
                **overrides}
    args = TrainingArguments(output_dir=str(output_dir), **settings)
    return Trainer(model_init=model_init, args=args, train_dataset=data[0], eval_dataset=data[1],
                   processing_class=tokenizer)


def lr_space(trial):
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)}


def test_custom_space_returns_the_best_of_n_trials(tmp_path, data, tokenizer):
    trainer = make_trainer(data, tokenizer, tmp_path / "out")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    best = trainer.hyperparameter_search(hp_space=lr_space, n_trials=3, storage=url, study_name="s")
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    winner = min(trials, key=lambda t: t.value)
    assert best.run_id == str(winner.number) and best.objective == winner.value
    assert best.hyperparameters == winner.params and set(best.hyperparameters) == {"learning_rate"}
    assert best.run_summary == str(tmp_path / "out" / f"run-{winner.number}")
    for trial in trials:  # each trial trained in its own folder, with its own learning rate
        folder = tmp_path / "out" / f"run-{trial.number}"
        saved = json.loads((folder / "checkpoint-4" / "training_args.json").read_text())
        assert saved["learning_rate"] == trial.params["learning_rate"]
        state = json.loads((folder / "checkpoint-4" / "trainer_state.json").read_text())
        assert state["is_hyper_param_search"] and state["trial_params"] == trial.params
        eval_losses = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
        assert trial.value == eval_losses[-1]  # HF's objective: the last evaluation's
        # reported at the training examples seen (steps 2 and 4 of batch 8): comparable across batch sizes
        assert trial.intermediate_values == {16: eval_losses[0], 32: eval_losses[1]}
    assert trainer.args.output_dir == str(tmp_path / "out")  # the trainer's own arguments are back


def test_default_space_and_objective(tmp_path, data, tokenizer):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):
        params = default_hp_space(study.ask())
        assert 1e-6 <= params["learning_rate"] <= 1e-4 and 1 <= params["num_train_epochs"] <= 5
        assert 1 <= params["seed"] <= 40 and params["per_device_train_batch_size"] in (4, 8, 16, 32, 64)
    timing = {"eval_runtime": 1.5, "eval_samples_per_second": 9.0, "eval_steps_per_second": 3.0, "epoch": 2.0}
    assert default_compute_objective({"eval_loss": 0.25, **timing}) == 0.25
    assert default_compute_objective({"eval_loss": 0.25, "eval_accuracy": 0.5, "eval_f1": 0.25, **timing}) == 0.75

    def accuracy(prediction):
        logits, labels = prediction
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}

    trainer = make_trainer(data, tokenizer, tmp_path / "out", eval_strategy="no", save_strategy="no", max_steps=2)
    trainer.compute_metrics = accuracy
    best = trainer.hyperparameter_search(n_trials=1, direction="maximize")  # HF's space, in memory as HF's
    assert set(best.hyperparameters) == {"learning_rate", "num_train_epochs", "seed", "per_device_train_batch_size"}
    evaluation = [json.loads(line) for line in (tmp_path / "out" / "run-0" / "log.jsonl").read_text().splitlines()]
    assert best.objective == [e["eval_accuracy"] for e in evaluation if "eval_accuracy" in e][-1]


@pytest.mark.slow
def test_pruning_stops_a_bad_trial_and_removes_its_checkpoints(tmp_path, data, tokenizer):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="p", storage=url)
    for learning_rate in (1e-3, 2e-3, 1e-3, 30.0):  # the last one is absurd: its loss explodes at once
        study.enqueue_trial({"learning_rate": learning_rate})
    trainer = make_trainer(data, tokenizer, tmp_path / "out", max_steps=6, eval_steps=2, save_steps=1)
    told = []

    class Told:
        def on_train_end(self, args, state, control, **kwargs):
            told.append(state.global_step)

    trainer.add_callback(Told())
    def space(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 100.0, log=True)}

    trainer.hyperparameter_search(hp_space=space, n_trials=4, storage=url, study_name="p", load_if_exists=True,
                                  pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    trials = optuna.load_study(study_name="p", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    assert list(trials[3].intermediate_values) == [16]  # stopped at its first evaluation (step 2 of batch 8)
    assert told == [6, 6, 6, 2]  # the loop ended as usual: callbacks were told
    pruned = tmp_path / "out" / "run-3"
    assert pruned.is_dir() and not list(pruned.glob("checkpoint-*"))
    assert list((tmp_path / "out" / "run-0").glob("checkpoint-*"))


def test_trials_of_other_batch_sizes_are_compared_at_equal_training_examples(tmp_path, data, tokenizer):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="b", storage=url)
    for batch, learning_rate in ((8, 1e-3), (8, 1e-3), (16, 30.0)):  # the last diverges, with twice the batch
        study.enqueue_trial({"per_device_train_batch_size": batch, "learning_rate": learning_rate})
    trainer = make_trainer(data, tokenizer, tmp_path / "out", max_steps=-1, num_train_epochs=3, eval_strategy="epoch",
                           save_strategy="no")

    def space(trial):
        return {"per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [8, 16]),
                "learning_rate": trial.suggest_float("learning_rate", 1e-4, 100.0, log=True)}

    trainer.hyperparameter_search(hp_space=space, n_trials=3, storage=url, study_name="b", load_if_exists=True,
                                  pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    trials = optuna.load_study(study_name="b", storage=url).trials
    assert list(trials[0].intermediate_values) == [32, 64, 96]  # 32 rows: one epoch is 4 steps of 8
    # its first epoch (2 steps of 16) is compared with theirs, and pruned there: by optimizer steps (HF's) nothing
    # else would have a value at its step 2, and it would have trained on
    assert trials[2].state == optuna.trial.TrialState.PRUNED and list(trials[2].intermediate_values) == [32]


def test_model_init_may_take_the_trial(tmp_path, data, tokenizer):
    seen = []

    def model_init(trial=None):  # Trainer() builds one model without a trial (HF passes None)
        if trial is None:
            return tiny_bert()
        seen.append(trial.params.get("dropout"))
        return tiny_bert(dropout=trial.params["dropout"])

    def space(trial):
        return {"learning_rate": 1e-3, "dropout": trial.suggest_categorical("dropout", [0.0, 0.2])}

    trainer = make_trainer(data, tokenizer, tmp_path / "out", model_init=model_init, max_steps=2, eval_steps=2)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    best = trainer.hyperparameter_search(hp_space=space, n_trials=2, storage=url, study_name="m")
    trials = optuna.load_study(study_name="m", storage=url).trials
    assert seen == [t.params["dropout"] for t in trials]  # one fresh model per trial, built from its parameters
    assert set(best.hyperparameters) == {"dropout"}


@pytest.mark.parametrize("kwargs, message", [
    ({"n_jobs": 2}, "n_jobs=2: trials in threads would share one trainer"),
    ({"backend": "ray"}, "finch searches with Optuna only"),
    ({"direction": "down"}, "use 'minimize' or 'maximize'"),
    ({"hp_space": lambda trial: {"learning_rat": trial.suggest_float("learning_rat", 1e-5, 1e-3)}},
     "'learning_rat' (did you mean 'learning_rate'"),
    ({"hp_space": lambda trial: {"per_device_train_batch_size": trial.suggest_float("b", 0.5, 0.7)}},
     "per_device_train_batch_size=0."),
    ({"storage": "postgresql://finch@127.0.0.1:1/nowhere"}, "cannot open the database"),
    ({"storage": "sqlite:////no/such/folder/s.db"}, "folder /no/such/folder does not exist"),
    ({"storage": "postgresql://u:pa@ss@127.0.0.1/db"}, "percent-encode"),  # was a host 'ss@127.0.0.1' in the error
])
def test_mistakes_are_config_errors_before_training(tmp_path, data, tokenizer, kwargs, message):
    trainer = make_trainer(data, tokenizer, tmp_path / "out")
    with pytest.raises(ConfigError) as error:
        trainer.hyperparameter_search(n_trials=1, **kwargs)
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_other_mistakes(tmp_path, data, tokenizer):
    trainer = make_trainer(data, tokenizer, tmp_path / "out")
    with pytest.raises(UnknownArgumentError, match="unknown option"):
        trainer.hyperparameter_search(n_trials=1, n_trails=3)
    no_init = Trainer(model=tiny_bert(), args=trainer.args, train_dataset=data[0], eval_dataset=data[1])
    with pytest.raises(ConfigError, match="model_init"):
        no_init.hyperparameter_search(n_trials=1)
    trainer.hyperparameter_search(hp_space=lr_space, n_trials=1)  # an in-memory study: run-0 is its folder
    with pytest.raises(ConfigError, match="holds trial folders of another search"):
        trainer.hyperparameter_search(hp_space=lr_space, n_trials=1)


def init_with_trial(trial=None):  # HuggingFace's documented form: the trial, or None for the first model
    return tiny_bert()


@pytest.mark.parametrize("kwargs, model_init, message", [
    ({"n_trials": 0}, None, "n_trials=0: the number of trials this call runs, a whole number of at least 1"),
    ({"n_trials": -1}, None, "n_trials=-1: the number"),
    ({"n_trials": 1.5}, None, "n_trials=1.5: the number"),
    ({"hp_space": {"learning_rate": [1e-4, 1e-3]}}, None, "hp_space is a dict; it is a function of the trial"),
    ({"hp_space": lambda trial: {"output_dir": trial.suggest_categorical("output_dir", ["a", "b"])}}, None,
     "hp_space: output_dir cannot be searched: these say where and how the search runs"),
    ({"hp_space": lambda trial: {"num_train_epochs": trial.suggest_int("num_train_epochs", 1, 3)}}, None,
     "the space searches num_train_epochs, but max_steps=4 fixes every trial's length"),
    ({"hp_space": lambda trial: {"learning_rat": trial.suggest_float("learning_rat", 1e-5, 1e-3)}}, init_with_trial,
     "hp_space searches 'learning_rat' (did you mean 'learning_rate'?): not TrainingArguments fields"),
])
def test_poor_inputs_get_messages_that_name_them_before_training(tmp_path, data, tokenizer, kwargs, model_init,
                                                                 message):
    trainer = make_trainer(data, tokenizer, tmp_path / "out", **({"model_init": model_init} if model_init else {}))
    with pytest.raises(ConfigError) as error:
        trainer.hyperparameter_search(**{"n_trials": 1, "hp_space": lr_space, **kwargs})
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_an_objective_that_is_not_a_number_names_compute_objective(tmp_path, data, tokenizer, caplog):
    trainer = make_trainer(data, tokenizer, tmp_path / "out", max_steps=2, eval_steps=2)
    with pytest.raises(ConfigError, match=r"compute_objective \(.*<lambda>\) returned 'high' \(str\), not one number: "
                                          r"it turns the evaluation metrics \(.*eval_loss.*\) into the objective"):
        trainer.hyperparameter_search(hp_space=lr_space, n_trials=1, compute_objective=lambda metrics: "high")
    trainer = make_trainer(data, tokenizer, tmp_path / "nan", max_steps=2, eval_steps=2)
    with pytest.raises(RuntimeError, match="no trial of study"):
        trainer.hyperparameter_search(hp_space=lr_space, n_trials=1, compute_objective=lambda m: float("nan"))
    assert "compute_objective (tests" in caplog.text or "compute_objective (test_search" in caplog.text
    assert "returned nan for the metrics" in caplog.text
