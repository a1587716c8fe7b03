"""What a `Trainer` records, prints and writes: `log`, HF's `log_metrics` / `save_metrics` / `save_state`,
`save_model` and `push_to_hub`, the run's header, and which process writes (`is_world_process_zero`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from finch.errors import OutputError
from finch.events import Event
from finch.observers.hub import Hub
from finch.runs import adapters, checkpoint
from finch.runs.files import write_text

logger = logging.getLogger("finch")


class OutputsMixin:
    """Part of `finch.training.trainer.Trainer`: it reads the trainer's state, arguments, runtime, model and hub."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Record `logs` (with the current epoch and step) in `state.log_history` and tell the callbacks.
        `start_time` is HF's signature (subclasses call `super().log(logs, start_time)`); finch times elsewhere."""
        logs = {**logs, "epoch": self._logged_epoch()}
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._fire(Event.ON_LOG, logs=logs)

    def log_metrics(self, split: str, metrics: dict[str, float]) -> None:
        """Print `metrics` under a `***** split metrics *****` header (HF's example scripts call it); rank 0 only."""
        if self.runtime.is_main_process:
            print(f"***** {split} metrics *****")
            width = max(map(len, metrics), default=0)
            for key in sorted(metrics):
                print(f"  {key: <{width}} = {metrics[key]}")

    def save_metrics(self, split: str, metrics: dict[str, float], combined: bool = True) -> None:
        """Write `metrics` to `output_dir/<split>_results.json` and merge them into `all_results.json`, as HF's
        example scripts expect; each file written whole (temporary name, then renamed); rank 0 only."""
        if not self.runtime.is_main_process:
            return
        folder = Path(self.args.output_dir)
        write_text(folder / f"{split}_results.json", json.dumps(metrics, indent=4, sort_keys=True))
        if combined:
            every = folder / "all_results.json"
            merged = {**(json.loads(every.read_text()) if every.exists() else {}), **metrics}
            write_text(every, json.dumps(merged, indent=4, sort_keys=True))

    def save_state(self) -> None:
        """Write `trainer_state.json` (the `TrainerState`) to `output_dir`; rank 0 only."""
        if self.runtime.is_main_process:
            Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
            self.state.save_to_json(Path(self.args.output_dir) / "trainer_state.json")

    def _logged_epoch(self) -> float:
        return round(self.state.epoch, 4)

    def save_model(self, output_dir: str | None = None) -> None:
        """Save an inference-ready folder (weights, config with label names, tokenizer) for `pipeline(...)`; for a
        PeftModel, the adapter folder `PeftModel.from_pretrained` loads (`merge_adapters=True`: the base model with the
        adapters merged in, which `from_pretrained` and `pipeline` load).
        Rank 0 writes (each machine's first process with `save_on_each_node`); every rank returns once the folder is
        complete."""
        folder = Path(output_dir or self.args.output_dir)
        if folder.exists() and not folder.is_dir():  # (os.makedirs' FileExistsError otherwise)
            raise OutputError(f"save_model({str(folder)!r}): a file of that name exists; the model is a folder (its "
                              f"weights, config and tokenizer): pass a folder path")
        self._checkpoint_writer.wait()  # a checkpoint still being written (save_model called during training)
        weights, _ = self.runtime.full_state(self.model, None)  # FSDP2: the whole model, gathered to rank 0
        model = self.model
        if self.args.merge_adapters and adapters.is_peft(model):  # a plain model, adapters merged into a copy
            model = adapters.merged_copy(model)

        def write() -> None:
            checkpoint.save_model_folder(model, folder, self.processing_class, weights)
            self.args.save(folder / "training_args.json")
        self.runtime.on_writers(write, self.args.save_on_each_node)

    def push_to_hub(self, commit_message: str = "End of training", blocking: bool = True, token: str | None = None,
                    revision: str | None = None, **kwargs: Any) -> Any:
        """HF's `push_to_hub`: save the model to `output_dir`, write its model card (`README.md`: metrics, training
        arguments), wait for the uploads made during training (retrying failed ones), then upload `output_dir`'s
        files (never its checkpoints or training state) to `hub_model_id`. Call it on every rank.

        Args:
            commit_message: the commit's message. blocking: wait for the upload (else a `Future` is returned).
            token: a token for this call (default: `hub_token`, HF_TOKEN or `hf auth login`'s). revision: the branch
            (default `hub_revision`). kwargs: model card fields (`model_name`, `language`, `license`, `tags`,
            `finetuned_from`, `tasks`, `dataset`, `dataset_tags`).

        Returns:
            huggingface_hub's `CommitInfo` (a `Future` of it when `blocking=False`); None on ranks other than 0.

        Raises:
            ConfigError: offline or no token. The hub's own errors when the upload fails.
        """
        hub = self.hub if self.hub is not None and token is None else Hub.for_trainer(self.args, self.runtime, token)
        self.save_model()
        if not self.runtime.is_main_process:
            return None
        return hub.push_folder(self.args.output_dir, self.state, self.model, commit_message, blocking,
                               revision or self.args.hub_revision, kwargs)

    def _print_header(self, num_examples: int, dropped: list[str], resume: Path | None, dropout: str,
                      graphs: str = "") -> None:
        args, state = self.args, self.state
        fused = bool(getattr(self.optimizer, "defaults", {}).get("fused"))
        logger.info("device %s | precision %s (%s) | sampling %s | optimizer %s%s | padding to %s | dropout %s | "
                    "compile %s%s", self.runtime.describe(), self.precision.name, self.precision.reason,
                    args.train_sampling_strategy, type(self.optimizer).__name__, " fused" if fused else "",
                    self.data_collator.describe() if hasattr(self.data_collator, "describe") else
                    f"multiple of {self.padding_multiple}" if self.padding_multiple else "longest in batch",
                    dropout, "on" if args.torch_compile else "off", f" | {graphs}" if graphs else "")
        processes = f" x {self.runtime.world_size} processes" if self.runtime.world_size > 1 else ""
        logger.info("%d examples | batch %d%s x accumulation %d | %d steps per epoch | %d steps%s", num_examples,
                    args.per_device_train_batch_size, processes, args.gradient_accumulation_steps,
                    state.steps_per_epoch, state.max_steps,
                    f" | resuming at step {state.global_step}" if resume else "")
        if dropped:
            logger.info("dropped columns the model does not take: %s (remove_unused_columns=False keeps them)",
                        ", ".join(dropped))

    def _warn_if_warmup_outlasts_the_run(self, max_steps: int) -> None:
        """A warmup longer than the run (the tutorial's 500 steps in a 40-step run) never reaches the learning rate."""
        warmup = self.args.get_warmup_steps(max_steps)
        if warmup > max_steps:
            logger.warning("warmup_steps=%d is more than this run's %d training steps: the learning rate climbs for "
                           "the whole run and never reaches learning_rate=%g. Set warmup_steps below %d, or a "
                           "fraction such as warmup_steps=0.1 (10%% of the steps).", warmup, max_steps,
                           self.args.learning_rate, max_steps)

    def is_world_process_zero(self) -> bool:
        """Whether this process is rank 0 of all (the one that writes); True in a single process."""
        return self.runtime.is_main_process

    def is_local_process_zero(self) -> bool:
        """Whether this process is rank 0 of its machine; True in a single process."""
        return self.runtime.is_local_main_process
