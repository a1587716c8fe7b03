import dataclasses
import json
import logging
import warnings

import pytest

from finch import TrainingArguments
from finch.errors import ConfigError, UnknownArgumentError


def test_hf_defaults_for_tutorial_fields():
    args = TrainingArguments(output_dir="out")
    assert (args.per_device_train_batch_size, args.num_train_epochs, args.learning_rate) == (8, 3.0, 5e-5)
    assert (args.eval_strategy, args.save_strategy, args.save_steps, args.logging_steps) == ("no", "steps", 500, 500)
    assert args.bf16 is None and args.fp16 is None, "precision must default to 'unset' so finch can choose"
    assert args.eval_steps == args.logging_steps


def test_positional_output_dir_and_signature():
    import inspect

    assert TrainingArguments("somewhere").output_dir == "somewhere"
    assert "per_device_train_batch_size" in inspect.signature(TrainingArguments).parameters


@pytest.mark.parametrize("old, value, field, expected", [
    ("evaluation_strategy", "epoch", "eval_strategy", "epoch"),
    ("group_by_length", True, "train_sampling_strategy", "group_by_length"),
    ("group_by_length", False, "train_sampling_strategy", "random"),
    ("warmup_ratio", 0.1, "warmup_steps", 0.1),
    ("logging_dir", "logs", "tensorboard_dir", "logs"),
    ("no_cuda", True, "use_cpu", True),
])
def test_legacy_names_map_with_one_warning(old, value, field, expected):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = TrainingArguments(output_dir="out", **{old: value})
    assert getattr(args, field) == expected
    ours = [w for w in caught if old in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, FutureWarning)


def test_legacy_alias_agreeing_with_the_current_name_is_accepted():
    with pytest.warns(FutureWarning):
        args = TrainingArguments(output_dir="o", evaluation_strategy="epoch", eval_strategy="epoch")
    assert args.eval_strategy == "epoch"


def test_legacy_alias_disagreeing_with_the_current_name_is_an_error():
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="evaluation_strategy='epoch' and "
                                                    "eval_strategy='steps', which disagree.*pass only eval_strategy"):
        TrainingArguments(output_dir="o", evaluation_strategy="epoch", eval_strategy="steps")


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", float("nan"), "learning_rate=nan: must be a finite number"),
    ("learning_rate", float("inf"), "learning_rate=inf: must be a finite number"),
    ("learning_rate", "abc", "learning_rate='abc': must be a number"),
    ("output_dir", {"a": 1}, "output_dir={'a': 1}: must be a string"),
    ("report_to", 5, "report_to=5: must be a string or a list of strings"),
    ("lr_scheduler_kwargs", 5, "lr_scheduler_kwargs=5: must be a mapping"),
    ("per_device_train_batch_size", True, "per_device_train_batch_size=True: must be an integer"),
    ("per_device_train_batch_size", 2.5, "per_device_train_batch_size=2.5: must be an integer"),
    ("seed", -1, "seed=-1 must be between 0 and 2**32 - 1"),
    ("lr_scheduler_kwargs", {"num_cycle": 2}, "lr_scheduler_kwargs ['num_cycle'] are not arguments of the 'linear'"),
])
def test_wrong_types_and_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError) as raised:
        TrainingArguments(**{"output_dir": "o", field: value})
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError), "HF code catches ValueError"


def test_strings_that_spell_numbers_and_booleans_are_converted():
    args = TrainingArguments(output_dir="o", num_train_epochs="3", learning_rate="3e-5", bf16="true",
                             per_device_train_batch_size="16", lr_scheduler_kwargs='{"num_cycles": 2}',
                             lr_scheduler_type="cosine")
    assert (args.num_train_epochs, args.learning_rate, args.bf16) == (3.0, 3e-5, True)
    assert args.per_device_train_batch_size == 16 and args.lr_scheduler_kwargs == {"num_cycles": 2}


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownArgumentError, match="unknown argument 'learning_rte'.*'learning_rate'"):
        TrainingArguments(output_dir="o", learning_rte=1e-4)


def test_every_unknown_name_is_reported_at_once():
    with pytest.raises(UnknownArgumentError, match=r"got 3 unknown arguments 'learning_rte' \(did you mean "
                                                   r"'learning_rate'\?\), 'num_epochs' .*, 'zzz_qqq'$"):
        TrainingArguments(output_dir="o", learning_rte=1e-4, num_epochs=3, seed=1, zzz_qqq=1)


def test_validation_lists_every_problem_at_once():
    with pytest.raises(ValueError) as raised:
        TrainingArguments(output_dir="o", fp16=True, bf16=True, per_device_train_batch_size=0,
                          eval_strategy="sometimes", lr_scheduler_type="zigzag", save_total_limit=0)
    message = str(raised.value)
    assert message.startswith("5 problem(s)")
    for fragment in ("fp16=True and bf16=True", "per_device_train_batch_size=0", "eval_strategy='sometimes'",
                     "lr_scheduler_type='zigzag'", "save_total_limit=0"):
        assert fragment in message


@pytest.mark.parametrize("kwargs, fragment", [
    ({"load_best_model_at_end": True}, "needs evaluation"),
    ({"load_best_model_at_end": True, "eval_strategy": "epoch", "save_strategy": "steps"}, "save_strategy =="),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 30, "save_steps": 50}, "multiple"),
    ({"eval_strategy": "steps", "eval_steps": 0}, "needs eval_steps > 0"),
])
def test_inconsistent_strategies_are_rejected(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        TrainingArguments(output_dir="o", **kwargs)


def test_best_model_defaults():
    args = TrainingArguments(output_dir="o", eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True)
    assert (args.metric_for_best_model, args.greater_is_better) == ("loss", False)
    args = TrainingArguments(output_dir="o", metric_for_best_model="accuracy")
    assert args.greater_is_better is True


def test_saved_as_json_and_loaded_back(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-4, report_to=["jsonl"], hub_token="secret")
    args.save(tmp_path / "args.json")
    text = (tmp_path / "args.json").read_text()
    assert "secret" not in text
    assert json.loads(text)["learning_rate"] == 3e-4
    loaded = TrainingArguments.load(tmp_path / "args.json")
    assert {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded) if f.name != "hub_token"} == \
           {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name != "hub_token"}


def test_fractional_steps_resolve_against_total():
    args = TrainingArguments(output_dir="o", eval_strategy="steps", eval_steps=0.25)
    assert args.resolve_steps(args.eval_steps, 100) == 25
    assert args.resolve_steps(40, 100) == 40


def test_hf_argument_parser_takes_the_flags_of_hfs_example_scripts():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", "x", "--do_train", "--do_eval", "--learning_rate", "3e-5", "--num_train_epochs", "2",
         "--per_device_train_batch_size", "4", "--eval_strategy", "epoch", "--log_level", "info", "--bf16"])
    assert isinstance(args, TrainingArguments)
    assert (args.do_train, args.do_eval, args.do_predict, args.resume_from_checkpoint) == (True, True, False, None)
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (3e-5, 2.0, 4)
    assert (args.eval_strategy, args.log_level, args.bf16, args.fp16) == ("epoch", "info", True, None)
    assert {"do_train", "do_eval", "do_predict", "resume_from_checkpoint", "log_level", "log_level_replica",
            "local_rank"} <= args.to_dict().keys()


def test_hf_argument_parser_with_a_scripts_own_dataclasses():
    from transformers import HfArgumentParser

    @dataclasses.dataclass
    class ModelArgs:
        model_name_or_path: str

    @dataclasses.dataclass
    class DataArgs:
        task_name: str | None = None
        max_seq_length: int = 128

    parser = HfArgumentParser((ModelArgs, DataArgs, TrainingArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(
        ["--model_name_or_path", "bert-base-cased", "--task_name", "mrpc", "--max_seq_length", "64",
         "--output_dir", "x", "--do_predict", "--resume_from_checkpoint", "x/checkpoint-4", "--seed", "7"])
    assert (model_args.model_name_or_path, data_args.task_name, data_args.max_seq_length) == ("bert-base-cased",
                                                                                               "mrpc", 64)
    assert (args.do_predict, args.resume_from_checkpoint, args.seed) == (True, "x/checkpoint-4", 7)


@pytest.mark.parametrize("argv, message", [
    (["--gradient_checkpointing"], r"not used by the HfArgumentParser: \['--gradient_checkpointing'\]"),
    (["--learning_rte", "1e-4"], "not used by the HfArgumentParser"),
    (["--log_level", "loud"], "log_level='loud' is not one of 'passive', 'detail', 'debug', 'info'"),
])
def test_hf_argument_parser_still_refuses_what_finch_does_not_take(argv, message):
    from transformers import HfArgumentParser

    with pytest.raises(ValueError, match=message):
        HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(["--output_dir", "x", *argv])


def test_do_eval_follows_eval_strategy_as_in_hf():
    assert TrainingArguments(output_dir="o").do_eval is False
    assert TrainingArguments(output_dir="o", eval_strategy="epoch").do_eval is True


def test_process_log_level_main_replica_and_passive(monkeypatch):
    from transformers.utils import logging as transformers_logging

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert TrainingArguments(output_dir="o", log_level="info").get_process_log_level() == logging.INFO
    assert TrainingArguments(output_dir="o").get_process_log_level() == transformers_logging.get_verbosity()
    monkeypatch.setenv("RANK", "1")  # a replica: log_level_replica, "warning" by default
    assert TrainingArguments(output_dir="o", log_level="debug").get_process_log_level() == logging.WARNING
    assert TrainingArguments(output_dir="o", log_level_replica="error").get_process_log_level() == logging.ERROR


def test_local_rank_and_parallel_mode_come_from_torchrun(monkeypatch):
    from transformers.training_args import ParallelMode

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    args = TrainingArguments(output_dir="o", local_rank=3)  # torch.distributed.launch's flag: read-only here
    assert (args.local_rank, args.world_size, args.process_index, args.parallel_mode) == (
        -1, 1, 0, ParallelMode.NOT_PARALLEL)
    assert args.should_log and args.should_save and args.n_gpu in (0, 1) and args.eval_do_concat_batches
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    args = TrainingArguments(output_dir="o")
    assert (args.local_rank, args.local_process_index, args.parallel_mode) == (1, 1, ParallelMode.DISTRIBUTED)
    assert not args.should_log and not args.should_save
    monkeypatch.setenv("LOCAL_RANK", "0")  # each machine's first process writes with save_on_each_node
    assert TrainingArguments(output_dir="o", save_on_each_node=True).should_save


def test_main_process_first_in_one_process():
    args = TrainingArguments(output_dir="o")
    ran = []
    with args.main_process_first(desc="dataset map"):
        ran.append(True)
    with args.main_process_first(local=False):
        ran.append(True)
    assert ran == [True, True]


def test_hfs_own_defaults_and_new_names_as_keyword_arguments():
    args = TrainingArguments(output_dir="o", include_num_input_tokens_seen="no", activation_checkpointing=False)
    assert args.include_num_input_tokens_seen == "no"
    with pytest.raises(ConfigError, match=r"neftune_noise_alpha=5\): finch does not support .* remove it"):
        TrainingArguments(output_dir="o", neftune_noise_alpha=5)
    assert TrainingArguments(output_dir="o", activation_checkpointing=True).activation_checkpointing is True
