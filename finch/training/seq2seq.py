"""`Seq2SeqTrainer`: HF's trainer for sequence-to-sequence models (T5, BART, `EncoderDecoderModel`...), whose
evaluation and prediction can generate (`predict_with_generate`) instead of returning logits.

It is `Trainer` with two differences, both in what a prediction batch contributes: the generated token ids (padded
to the generation's `max_length` with the pad token, as HF pads them; batches of different lengths are then padded
with -100 across batches by the prediction loop, as HF's), and the labels padded the same way. Training, the loss,
checkpoints and resume are `Trainer`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.trainer_utils import PredictionOutput

from finch.args import Seq2SeqTrainingArguments
from finch.errors import ConfigError
from finch.training.trainer import Trainer


class Seq2SeqTrainer(Trainer):
    """HF's `Seq2SeqTrainer`: `Trainer` whose `evaluate` and `predict` generate with `predict_with_generate=True`
    (and take generation keyword arguments: `max_length`, `max_new_tokens`, `num_beams`...)."""

    arguments_class = Seq2SeqTrainingArguments

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = getattr(self.args, "generation_config", None)
        if config is not None:
            self.model.generation_config = load_generation_config(config)
        self._gen_kwargs = self._generation_kwargs({})  # finch's try of compute_metrics before training uses them

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval", **gen_kwargs: Any) -> dict[str, float]:
        reuse = gen_kwargs.pop("reuse_unchanged", False)
        self._gen_kwargs = self._generation_kwargs(gen_kwargs)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, reuse_unchanged=reuse)

    def predict(self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test",
                **gen_kwargs: Any) -> PredictionOutput:
        self._gen_kwargs = self._generation_kwargs(gen_kwargs)
        return super().predict(test_dataset, ignore_keys, metric_key_prefix)

    def _evaluation_key(self, dataset: Any, ignore_keys: list[str] | None, prefix: str) -> tuple | None:
        key = super()._evaluation_key(dataset, ignore_keys, prefix)  # and what generation was asked to do
        return None if key is None else (*key, getattr(self.args, "predict_with_generate", False),
                                         repr(sorted(self._gen_kwargs.items())))

    def _generation_kwargs(self, given: dict[str, Any]) -> dict[str, Any]:
        """`given`, completed with the arguments' `generation_max_length` and `generation_num_beams` as HF does."""
        kwargs = dict(given)
        max_length = getattr(self.args, "generation_max_length", None)
        if kwargs.get("max_length") is None and kwargs.get("max_new_tokens") is None and max_length is not None:
            kwargs["max_length"] = max_length
        beams = getattr(self.args, "generation_num_beams", None)
        if kwargs.get("num_beams") is None and beams is not None:
            kwargs["num_beams"] = beams
        return {key: value for key, value in kwargs.items() if value is not None}

    def _batch_predictions(self, model: torch.nn.Module, batch: dict, outputs: Any, has_labels: bool,
                           ignore: tuple[str, ...]) -> Any:
        if not getattr(self.args, "predict_with_generate", False):
            return super()._batch_predictions(model, batch, outputs, has_labels, ignore)
        inputs = {key: value for key, value in batch.items() if key not in self.label_names}
        labels = batch.get("labels")
        decoder_ids = inputs.get("decoder_input_ids")
        if labels is not None and decoder_ids is not None and decoder_ids.shape == labels.shape:
            # the collator's decoder inputs are the labels shifted: generation starts from the start token instead
            inputs = {key: value for key, value in inputs.items()
                      if key not in ("decoder_input_ids", "decoder_attention_mask")}
        generated = _generate(model, inputs, self._gen_kwargs)
        return self._pad_to_generation_length(generated)

    def _batch_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None or not getattr(self.args, "predict_with_generate", False):
            return labels
        labels = self._pad_to_generation_length(labels)
        # columns that padding to a multiple (finch's rounding) added beyond the generation length: dropped, so
        # labels are as wide as HF gives them (and as the generated ids)
        length = getattr(self.model.generation_config, "max_length", None) or 20
        if labels.shape[-1] > length and bool((labels[:, length:] == -100).all()):
            longest = int((labels != -100).any(dim=0).nonzero().max()) + 1 if (labels != -100).any() else 0
            labels = labels[:, :max(length, longest)]
        return labels

    def _pad_to_generation_length(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` padded on the right to the generation config's `max_length` (or `max_new_tokens` + 1) with the
        pad token, as HF's `Seq2SeqTrainer` pads generated ids and labels."""
        config = self.model.generation_config
        length = getattr(config, "max_length", None) or 20
        if tensor.shape[-1] >= length:
            new_tokens = getattr(config, "max_new_tokens", None)
            if new_tokens is None or tensor.shape[-1] >= new_tokens + 1:
                return tensor
            length = new_tokens + 1
        padded = torch.full((tensor.shape[0], length), self._pad_token_id(), dtype=tensor.dtype, device=tensor.device)
        padded[:, :tensor.shape[-1]] = tensor
        return padded

    def _pad_token_id(self) -> int:
        tokenizer = self.processing_class
        if tokenizer is not None and hasattr(tokenizer, "pad_token_id"):
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            if pad is not None:
                return pad
        pad = getattr(getattr(self.model, "config", None), "pad_token_id", None)
        if pad is None:
            raise ConfigError("predict_with_generate pads generated sequences with the pad token, and neither the "
                              "processing_class nor the model config has one: pass the tokenizer as "
                              "processing_class=..., or set model.config.pad_token_id")
        return pad


def _generate(model: torch.nn.Module, inputs: dict, gen_kwargs: dict[str, Any]) -> torch.Tensor:
    if not hasattr(model, "generate"):
        raise ConfigError(f"predict_with_generate=True needs a model with generate() (a transformers generation "
                          f"model); {type(model).__name__} has none. Set predict_with_generate=False")
    return model.generate(**inputs, **gen_kwargs)


def load_generation_config(value: Any) -> Any:
    """`Seq2SeqTrainingArguments.generation_config` as a `GenerationConfig`: one as it is, else loaded from the
    folder or hub name it gives."""
    from transformers import GenerationConfig

    if isinstance(value, GenerationConfig):
        return value
    try:
        return GenerationConfig.from_pretrained(value)
    except OSError as error:
        raise ConfigError(f"generation_config={value!r}: no generation config could be loaded from it ({error}); "
                          f"pass a GenerationConfig or a folder holding generation_config.json") from None
