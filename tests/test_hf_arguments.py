"""HF's arguments and override points as scripts use them: HF-only names accepted or refused with the reason, more
of HF's schedules, mistakes said when the arguments are made, HfArgumentParser, model_init(trial), warmup.
"""

import pytest
from conftest import quiet_args, tiny_bert

from finch import Trainer, TrainingArguments
from finch.errors import ConfigError


# ---- warmup longer than the run ------------------------------------------------------------------------------------
def test_warmup_longer_than_the_run_is_said_once_with_both_numbers(tmp_path, toy, tokenizer, caplog):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=3, warmup_steps=500, logging_steps=1),
                      train_dataset=toy, processing_class=tokenizer)
    with caplog.at_level("WARNING", logger="finch"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "warmup_steps" in r.getMessage()]
    assert len(warnings) == 1 and "warmup_steps=500" in warnings[0] and "3 training steps" in warnings[0]
    quiet = Trainer(model=tiny_bert(), args=quiet_args(tmp_path / "short", max_steps=3, warmup_steps=2),
                    train_dataset=toy, processing_class=tokenizer)
    caplog.clear()
    with caplog.at_level("WARNING", logger="finch"):
        quiet.train()
    assert "warmup_steps" not in caplog.text


def test_model_init_that_takes_the_trial_is_called_with_none_outside_a_search(tmp_path, toy, tokenizer):
    """The tutorials' `def model_init(trial): return AutoModel...` (HF passes None when not searching)."""
    seen = []

    def model_init(trial):
        seen.append(trial)
        return tiny_bert()

    trainer = Trainer(model_init=model_init, args=TrainingArguments(output_dir=str(tmp_path), max_steps=1,
                                                                    disable_tqdm=True, bf16=False),
                      train_dataset=toy, processing_class=tokenizer)
    trainer.train()
    assert seen == [None, None] and trainer.state.global_step == 1  # built in __init__, then again for train()


def test_hf_only_argument_names_are_accepted_or_refused_with_the_reason():
    args = TrainingArguments(output_dir="o", do_train=True, do_eval=True, eval_accumulation_steps=4,
                             save_safetensors=True, logging_nan_inf_filter=False, average_tokens_across_devices=True)
    assert args.do_train is True and args.eval_accumulation_steps == 4  # readable, as scripts read them
    with pytest.raises(ConfigError, match=r"auto_find_batch_size=True\): finch does not support .* remove it"):
        TrainingArguments(output_dir="o", auto_find_batch_size=True)
    with pytest.warns(FutureWarning, match="use activation_checkpointing"):  # HF's old name, done as HF does it
        assert TrainingArguments(output_dir="o", gradient_checkpointing=True).activation_checkpointing is True
    with pytest.raises(ConfigError, match="save_safetensors=False"):
        TrainingArguments(output_dir="o", save_safetensors=False)
    with pytest.raises(TypeError, match="did you mean 'do_train'"):
        TrainingArguments(output_dir="o", do_trian=True)


@pytest.mark.parametrize("schedule, kwargs", [("inverse_sqrt", None), ("cosine_with_min_lr", {"min_lr": 1e-5}),
                                              ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}),
                                              ("warmup_stable_decay", {"num_decay_steps": 1})])
def test_more_of_hfs_schedules_train(tmp_path, toy, tokenizer, schedule, kwargs):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=3, logging_steps=1, warmup_steps=1,
                                                         lr_scheduler_type=schedule, lr_scheduler_kwargs=kwargs),
                      train_dataset=toy, processing_class=tokenizer)
    trainer.train()
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert len(rates) == 3 and max(rates) <= 1e-3


@pytest.mark.parametrize("overrides, message", [
    ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "HuggingFace's but finch does not implement it"),
    ({"lr_scheduler_type": "cosin"}, "did you mean 'cosine'"),
    ({"lr_scheduler_type": "warmup_stable_decay"}, "num_decay_steps"),
    ({"lr_scheduler_type": "cosine_with_min_lr"}, "One of min_lr or min_lr_rate"),
    ({"optim": "adafactor"}, "optim='adafactor' is HuggingFace's"),
    ({"include_for_metrics": ["input"]}, "'input' is not one of 'inputs', 'loss'"),
])
def test_schedule_and_optimizer_mistakes_are_said_when_the_arguments_are_made(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        quiet_args(tmp_path, **overrides)


def test_hf_argument_parser_builds_finchs_training_arguments_as_hfs_example_scripts_do():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser((TrainingArguments,)).parse_args_into_dataclasses(
        ["--output_dir", "o", "--num_train_epochs", "2", "--learning_rate", "1e-4", "--report_to", "none"])
    assert isinstance(args, TrainingArguments) and args.num_train_epochs == 2.0 and args.learning_rate == 1e-4
    assert args.report_to == ["none"] and args.class_weights is None
    assert args.device.type in ("cpu", "cuda") and args.should_save and isinstance(args.to_sanitized_dict(), dict)
    with args.main_process_first(desc="dataset map"):
        pass


def test_an_hf_override_point_finch_does_not_call_is_refused_not_ignored(tmp_path, toy):
    class CustomStep(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            raise AssertionError("never called by finch")

    with pytest.raises(ConfigError, match=r"CustomStep overrides training_step, which HuggingFace's Trainer calls but "
                                          r"finch's does not.*override compute_loss"):
        CustomStep(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=1), train_dataset=toy)
