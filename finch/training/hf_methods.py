"""HF `Trainer` methods that scripts call although finch's loop does not need them (`run_glue.py` ends with
`create_model_card`; others read `get_eval_dataloader`, `num_examples` or `prediction_step`), and a clear error
for the HF methods finch does not have."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from finch.data import batching
from finch.hf.names import no_such_attribute
from finch.observers.hub import CARD, model_card
from finch.runs.files import write_text
from finch.training.evaluation import split_outputs, to_device


class HFMethodsMixin:
    """Part of `finch.training.trainer.Trainer`: it reads the trainer's model, arguments, runtime, datasets and
    collator."""

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """This rank's training batches of the first epoch, in finch's order (a pure function of seed and epoch):
        what `train()` loads for epoch 0 (each later epoch has its own order)."""
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        args, runtime = self.args, self.runtime
        dataset, _ = batching.prepare_dataset(self.train_dataset, self.model, args.remove_unused_columns,
                                              self.label_names, self._own_collator)
        lengths = batching.example_lengths(dataset) if args.train_sampling_strategy == "group_by_length" else None
        steps = self._epoch_steps(len(dataset), lengths, 0)
        return self._loader(dataset, [batching.rank_share(batch, runtime.rank, runtime.world_size)[0]
                                      for step in steps for batch in step])

    def get_eval_dataloader(self, eval_dataset: Any = None) -> torch.utils.data.DataLoader:
        """The batches `evaluate()` runs on this rank (longest first; `evaluate` restores dataset order)."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        if dataset is None:
            raise ValueError("Trainer: evaluation requires an eval_dataset.")
        return self._prediction_loader(dataset, "eval")[2]

    def get_test_dataloader(self, test_dataset: Any) -> torch.utils.data.DataLoader:
        """The batches `predict(test_dataset)` runs on this rank."""
        return self._prediction_loader(test_dataset, "test")[2]

    def num_examples(self, dataloader: torch.utils.data.DataLoader) -> int:
        """The number of examples in `dataloader`'s dataset."""
        return len(dataloader.dataset)

    def prediction_step(self, model: torch.nn.Module, inputs: dict, prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Any, Any, Any]:
        """One batch without gradients: `(loss, logits, labels)` as HF returns them (loss the batch mean, None
        without labels; logits and labels None when `prediction_loss_only`). Calling it is fine; overriding it is
        refused (finch's prediction loop does not call it)."""
        has_labels = bool(self.label_names) and all(inputs.get(name) is not None for name in self.label_names)
        inputs = to_device(inputs, self.device)
        labels = inputs[self.label_names[0]] if has_labels else None  # before compute_loss, which may pop them
        with torch.no_grad(), self.precision.autocast(self.device):
            if has_labels:
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
                loss = loss.detach().mean()
            else:
                loss, outputs = None, model(**inputs)
        if prediction_loss_only:
            return loss, None, None
        return loss, split_outputs(outputs, has_labels, ignore_keys or ())[1], labels

    def create_model_card(self, **fields: Any) -> None:
        """Write the model card, `README.md` in `output_dir` (metrics, evaluations by step, the training arguments
        that differ from the defaults, versions), as `push_to_hub` does; rank 0 only. `fields`: `model_name`,
        `language`, `license`, `tags`, `finetuned_from`, `tasks`, `dataset`, `dataset_tags` (HF's `dataset_args`
        is accepted and left out)."""
        fields.pop("dataset_args", None)
        if self.runtime.is_main_process:
            folder = Path(self.args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            write_text(folder / CARD, model_card(self.args, self.state, self.model, self.args.hub_model_id, **fields))

    def __getattr__(self, name: str) -> Any:
        """Only for names not found: an HF Trainer method finch lacks is named as such, not as a typo."""
        raise no_such_attribute(self, name, "Trainer")
