"""Uploads to the HuggingFace Hub: `push_to_hub`, `hub_strategy`, and the model card, through `huggingface_hub.HfApi`.

HuggingFace's semantics (`hub_strategy`):
- `end`: only `Trainer.push_to_hub()` uploads (finch's `train()` calls it at its end when `push_to_hub=True`).
- `every_save`: also at each checkpoint, the model (weights, config, tokenizer, arguments, model card) in the
  background.
- `checkpoint`: like `every_save`, and the whole checkpoint as `last-checkpoint/` (to resume from the hub).
- `all_checkpoints`: like `every_save`, and every checkpoint as `checkpoint-<step>/`.

What finch does differently, on purpose:
- A model upload never holds optimizer, scheduler, scaler, RNG or trainer state, nor a checkpoint folder; only the
  checkpoint strategies upload those, as the checkpoint's own folder.
- What a background upload reads is staged first (hard links, a copy where links fail) under
  `output_dir/.hub-uploads/`, so a later save, a rotation that deletes the checkpoint, or the final save cannot change
  files while they are being sent (HF uploads `output_dir` itself while training writes to it).
- Uploads run one at a time in a background thread. A save whose upload has not started yet when the next save comes
  is replaced by the newer one (same place in the repository), so a slow network never builds a backlog; with
  `all_checkpoints` each checkpoint has its own place and is always sent (HF skips saves while a push runs).
- An upload that fails during training is one warning; training goes on, and the upload is retried at the end
  (a failed model upload is not: the final upload carries a newer model). The upload at the end of `train()` is an
  observer too: its failure is a warning, the model is in `output_dir` all the same.
- Offline (`HF_HUB_OFFLINE=1`) or without a token, `Trainer(...)` raises `ConfigError` before any training; the repo
  is created (rank 0) when the Trainer is built, so a wrong name or token is said then as well.
- The token goes to `HfApi` only: it is never written to a file, a log or a tracker (`TrainingArguments.save`
  redacts it, the model card leaves it out).
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, get_token

from finch.distributed.fsdp import SHARDS
from finch.errors import ConfigError, UnknownArgumentError, mask_secrets
from finch.events import TrainerCallback
from finch.runs.files import write_text

logger = logging.getLogger("finch")

# a checkpoint's training state: never part of a model upload (only of a checkpoint strategy's checkpoint folder)
TRAINING_STATE = ("optimizer.pt", "scheduler.json", "scaler.json", "rng_state*.json", "trainer_state.json",
                  "manifest.json")
STAGING = ".hub-uploads"
CARD = "README.md"
CARD_FIELDS = ("model_name", "language", "license", "tags", "finetuned_from", "tasks", "dataset", "dataset_tags")


def _true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def check_can_push(args: Any, token: str | None = None) -> str:
    """The token to upload with (`token`, else `hub_token`, else HF's: `HF_TOKEN` or `hf auth login`).

    Raises:
        ConfigError: the repository's name is not one the hub accepts, the hub is switched off (`HF_HUB_OFFLINE` /
            `TRANSFORMERS_OFFLINE`), or there is no token.
    """
    check_repo_name(args)
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _true(os.environ.get(variable)):
            raise ConfigError(f"push_to_hub=True but {variable}={os.environ[variable]}: the hub cannot be reached, so "
                              f"the model could not be uploaded. Unset {variable}, or train with push_to_hub=False "
                              f"(--no-push-to-hub) and upload output_dir later with `hf upload`.")
    token = token or args.hub_token or get_token()
    if not token:
        raise ConfigError("push_to_hub=True needs a HuggingFace token with write access: set hub_token (--hub-token), "
                          "the HF_TOKEN environment variable, or run `hf auth login` once; or set push_to_hub=False.")
    return token


def repo_name(args: Any) -> str:
    """The repository uploads go to: `hub_model_id`, else the output folder's name (as HuggingFace's Trainer)."""
    return args.hub_model_id or Path(args.output_dir).absolute().name


def check_repo_name(args: Any) -> None:
    """Raise `ConfigError` unless the repository's name is one the hub accepts (huggingface_hub's own rule: `name` or
    `namespace/name`, letters, digits, '-', '_', '.'): a space or a path such as '../../etc' is said with the other
    checks, before any data is read or weights load, not as an error from the hub client after training starts."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    name = repo_name(args)
    try:
        validate_repo_id(name)
    except HFValidationError as error:
        given = f"hub_model_id={name!r}" if args.hub_model_id else f"the output folder's name {name!r} (the " \
                f"repository's name when hub_model_id is not set)"
        raise ConfigError(f"push_to_hub: {given} is not a hub repository name ({error}). Give "
                          f"--hub-model-id namespace/name (hub_model_id=...), e.g. 'me/my-model'") from None


def is_network_error(error: BaseException) -> bool:
    """Whether `error` is the network's (no connection, DNS, a timeout, TLS) or the hub's HTTP answer: the user's
    network, token or rights to fix, not a bug. huggingface_hub's HTTP clients (httpx, requests) raise their own."""
    return isinstance(error, OSError) or any(kind.__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
                                             for kind in type(error).__mro__)


@dataclass
class Upload:
    """One `upload_folder` call: `folder` (staged, or `output_dir` for the final upload) to `path_in_repo`."""

    folder: Path
    path_in_repo: str  # "" for the model at the repository's root
    message: str
    revision: str | None
    allow_patterns: list[str] | None = None
    staged: bool = True  # the folder is ours to delete once sent
    future: Future | None = None
    started: bool = False
    replaced: bool = False  # a newer upload to the same place came before this one started
    result: Any = None
    error: BaseException | None = None
    attempts: int = 0


@dataclass
class Hub:
    """The repository a Trainer uploads to, and its uploads in flight (rank 0 only uploads).

    Build it with `Hub.for_trainer`, which checks the token and creates the repository."""

    args: Any
    api: Any  # huggingface_hub.HfApi holding the token
    repo_id: str | None = None
    uploads: list[Upload] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    executor: ThreadPoolExecutor | None = None

    @classmethod
    def for_trainer(cls, args: Any, runtime: Any, token: str | None = None) -> Hub:
        """Check the token on every rank; rank 0 creates the repository (and `hub_revision`'s branch) and tells the
        others its id. Raises `ConfigError` (offline, no token, a repository that cannot be created)."""
        hub = cls(args, HfApi(token=check_can_push(args, token)))
        hub.repo_id = runtime.on_main(hub.create_repo)
        return hub

    def create_repo(self) -> str:
        name = repo_name(self.args)
        try:
            repo_id = self.api.create_repo(name, private=self.args.hub_private_repo, exist_ok=True).repo_id
            if self.args.hub_revision:
                self.api.create_branch(repo_id, branch=self.args.hub_revision, exist_ok=True)
        except Exception as error:
            if not is_network_error(error):  # anything else is a bug: its traceback is shown
                raise
            said = mask_secrets(str(error).splitlines()[0]) if str(error) else ""
            where = getattr(self.api, "endpoint", None) or "the hub"
            raise ConfigError(f"push_to_hub: the hub repository {name!r} could not be created or reached "
                              f"({type(error).__name__}: {said}). Check the network (can this machine reach "
                              f"{where}?), hub_model_id (namespace/name) and that the token may write there; or set "
                              f"push_to_hub=False.") from error
        return repo_id

    # ---- uploads during training ---------------------------------------------------------------------------------
    def push_checkpoint(self, checkpoint: Path, state: Any, model: Any) -> None:
        """After a save: the model (and, with a checkpoint strategy, the checkpoint) uploaded in the background.
        A failure to stage is a warning (the disk): training goes on."""
        strategy = self.args.hub_strategy
        if strategy == "end":
            return
        message = (f"Training in progress, step {state.global_step}" if self.args.save_strategy == "steps"
                   else f"Training in progress, epoch {int(state.epoch)}")
        try:
            if not (
                checkpoint / SHARDS
            ).is_dir():  # a sharded checkpoint holds no loadable model: it goes up at the end
                staged = _stage(checkpoint, self._staging() / f"{checkpoint.name}-model", skip=TRAINING_STATE)
                write_text(staged / CARD, model_card(self.args, state, model, self.repo_id))
                self._submit(Upload(staged, "", message, self.args.hub_revision))
            if strategy in ("checkpoint", "all_checkpoints"):
                place = "last-checkpoint" if strategy == "checkpoint" else checkpoint.name
                staged = _stage(checkpoint, self._staging() / f"{checkpoint.name}-checkpoint")
                self._submit(Upload(staged, place, f"{message}, checkpoint", self.args.hub_revision))
        except OSError as error:
            logger.warning("hub: %s could not be staged for upload (%s); training goes on", checkpoint, error)

    def wait(self) -> None:
        """Block until every upload submitted so far has ended (succeeded, failed or been replaced)."""
        for upload in list(self.uploads):
            if upload.future is not None:
                with contextlib.suppress(Exception):
                    upload.future.result()

    def retry_failed(self, except_model: bool) -> None:
        """Wait for the uploads in flight, then retry, once and in order, each failed upload that no later upload
        to the same place replaced; `except_model`: not those of the model (a final upload follows). A retry that
        fails again is a warning."""
        self.wait()
        with self.lock:
            uploads, self.uploads = self.uploads, []
        retried = []
        for index, upload in enumerate(uploads):
            later = [u for u in uploads[index + 1:] if u.path_in_repo == upload.path_in_repo and u.error is None
                     and not u.replaced]
            if upload.error is None or later or (except_model and upload.path_in_repo == ""):
                _remove_staged(upload)
                continue
            logger.info("hub: retrying the upload that failed during training: %s (%s)", upload.message,
                        upload.path_in_repo or "model")
            upload.error, upload.replaced, upload.started = None, False, False
            retried.append(self._submit(upload))
        for future in retried:
            with contextlib.suppress(Exception):  # _run logged it
                future.result()
        with self.lock:
            self.uploads = [u for u in self.uploads if u.error is not None]  # failed twice: kept for the next call
        self._remove_staging_if_empty()

    # ---- the final upload ----------------------------------------------------------------------------------------
    def push_folder(self, folder: str | Path, state: Any, model: Any, commit_message: str, blocking: bool,
                    revision: str | None, card_fields: dict[str, Any], observer: bool = False) -> Any:
        """`folder`'s files (not its subfolders: no checkpoints; no training state) with a fresh model card, after
        the uploads of the training (failed ones retried). Returns the `CommitInfo`, or its `Future`.
        `observer` (the end of `train()`): a failed upload is a warning and None is returned."""
        folder = Path(folder)
        self.retry_failed(except_model=True)
        write_text(folder / CARD, model_card(self.args, state, model, self.repo_id, **card_fields))
        files = sorted(path.name for path in folder.iterdir() if path.is_file() and not path.name.startswith((".", "_"))
                       and not any(fnmatch.fnmatch(path.name, pattern) for pattern in TRAINING_STATE))
        future = self._submit(Upload(folder, "", commit_message, revision, allow_patterns=files, staged=False),
                              warn=False)
        if not blocking:
            return future
        if not observer:
            return future.result()
        with warn_on_failure("the upload at the end of training"):
            return future.result()
        return None

    # ---- machinery -----------------------------------------------------------------------------------------------
    def _staging(self) -> Path:
        return Path(self.args.output_dir) / STAGING

    def _submit(self, upload: Upload, warn: bool = True) -> Future:
        with self.lock:
            for earlier in self.uploads:
                if earlier.path_in_repo == upload.path_in_repo and not earlier.started and not earlier.replaced:
                    earlier.replaced = True  # the newer one goes instead: no backlog on a slow network
            self.uploads.append(upload)
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finch-hub")
        upload.future = self.executor.submit(self._run, upload, warn)
        return upload.future

    def _run(self, upload: Upload, warn: bool) -> Any:
        with self.lock:
            if upload.replaced:
                _remove_staged(upload)
                return None
            upload.started = True
        upload.attempts += 1
        try:
            upload.result = self.api.upload_folder(
                repo_id=self.repo_id, folder_path=str(upload.folder), path_in_repo=upload.path_in_repo or None,
                commit_message=upload.message, revision=upload.revision, allow_patterns=upload.allow_patterns)
        except Exception as error:  # kept on the upload (retried at the end) and raised into its Future
            upload.error = error
            if warn:
                logger.warning("hub: upload of %s to %s failed (%s: %s); training goes on, and it is retried at the "
                               "end", upload.path_in_repo or "the model", self.repo_id, type(error).__name__,
                               mask_secrets(str(error).splitlines()[0]) if str(error) else "")
            raise
        _remove_staged(upload)
        return upload.result

    def remove_stale_staging(self) -> None:
        """Staged folders a killed run (or an earlier `train()`'s uploads that failed twice) left behind."""
        with self.lock:
            if any(upload.future is not None and not upload.future.done() for upload in self.uploads):
                return
            self.uploads = []
        shutil.rmtree(self._staging(), ignore_errors=True)

    def _remove_staging_if_empty(self) -> None:
        with contextlib.suppress(OSError):
            self._staging().rmdir()


class HubCallback(TrainerCallback):
    """Tells `Hub` about each save (rank 0 only; `hub_strategy="end"` uploads nothing during training)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.hub.remove_stale_staging()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            from finch.runs.folders import PREFIX

            self.hub.push_checkpoint(Path(args.output_dir) / f"{PREFIX}{state.global_step}", state,
                                     kwargs.get("model"))


@contextlib.contextmanager
def warn_on_failure(what: str) -> Iterator[None]:
    """An upload at the end of training is an observer too: its failure is one warning, the run's result stands."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 (observers never stop training: DESIGN invariant 14)
        logger.warning("hub: %s failed (%s: %s); the model is saved locally: upload it with trainer.push_to_hub() "
                       "or `hf upload`", what, type(error).__name__,
                       mask_secrets(str(error).splitlines()[0]) if str(error) else "")


def _stage(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    """`source`'s files (recursively) linked into `target` (copied where links fail); names matching `skip` left out.
    A checkpoint's files are never rewritten in place, so a link is a frozen view of them."""
    shutil.rmtree(target, ignore_errors=True)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or any(fnmatch.fnmatch(relative.name, pattern) for pattern in skip):
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)
    target.mkdir(parents=True, exist_ok=True)
    return target


def _remove_staged(upload: Upload) -> None:
    if upload.staged:
        shutil.rmtree(upload.folder, ignore_errors=True)


# ---- the model card --------------------------------------------------------------------------------------------------
def model_card(args: Any, state: Any, model: Any, repo_id: str | None, **fields: Any) -> str:
    """README.md for the hub: metadata, the last evaluation's metrics, the evaluations by step, the training
    arguments that differ from the defaults (never the token), and the versions. `fields`: HF's `push_to_hub`
    keywords (`model_name`, `language`, `license`, `tags`, `finetuned_from`, `tasks`, `dataset`, `dataset_tags`)."""
    unknown = sorted(set(fields) - set(CARD_FIELDS))
    if unknown:
        raise UnknownArgumentError(f"push_to_hub got unknown model card fields {unknown}; it takes {list(CARD_FIELDS)}")
    base = fields.get("finetuned_from") or _base_model(model)
    tags = ["finch", *_as_list(fields.get("tags"))]
    metadata = {"library_name": "transformers", "tags": tags, "base_model": base, "license": fields.get("license"),
                "language": fields.get("language"),
                "datasets": _as_list(fields.get("dataset_tags") or fields.get("dataset")) or None,
                "pipeline_tag": _as_list(fields.get("tasks"))[0] if fields.get("tasks") else None}
    import yaml

    front = yaml.safe_dump({k: v for k, v in metadata.items() if v}, sort_keys=False).strip()
    name = fields.get("model_name") or (repo_id or Path(args.output_dir).name).split("/")[-1]
    history = list(getattr(state, "log_history", []) or [])
    evaluations = [e for e in history if any(k.startswith("eval_") for k in e)]
    last = evaluations[-1] if evaluations else {}
    metrics = {k: v for k, v in last.items() if k.startswith("eval_") and not k.endswith(
        ("runtime", "samples_per_second", "steps_per_second"))}
    lines = [f"---\n{front}\n---", f"# {name}", "",
             (f"This model was fine-tuned with finch from `{base or 'a model of its own'}` for "
             f"{getattr(state, 'global_step', 0)} steps ({_number(getattr(state, 'epoch', 0) or 0)} epochs)."), ""]
    if metrics:
        lines += ["## Evaluation results", "", f"At step {last.get('step')}:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key[5:]} | {_number(value)} |" for key, value in metrics.items()]
        lines.append("")
    if evaluations:
        keys = sorted({k for e in evaluations for k in e if k in metrics})
        lines += ["## Training results", "", "| step | epoch | " + " | ".join(k[5:] for k in keys) + " |",
                  "|---" * (len(keys) + 2) + "|"]
        lines += [f"| {e.get('step')} | {_number(e.get('epoch', 0))} | " + " | ".join(_number(e.get(k)) for k in keys)
                  + " |" for e in evaluations]
        lines.append("")
    lines += ["## Training arguments", "", "| argument | value |", "|---|---|"]
    lines += [f"| {key} | {_markdown(value)} |" for key, value in _changed_arguments(args)]
    lines += ["", "## Framework versions", "", *[f"- {name}: {version}" for name, version in _versions()], "",
              f"_Card written by finch on {datetime.date.today().isoformat()}._", ""]
    return "\n".join(lines)


def _changed_arguments(args: Any) -> list[tuple[str, Any]]:
    """Arguments that differ from the defaults, plus the hyperparameters a reader looks for first; no token."""
    import dataclasses

    from finch.args import FIELD_GROUPS, SCRIPTS_ONLY

    always = {"learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
              "max_steps", "seed", "lr_scheduler_type", "optim", "weight_decay", "warmup_steps"}
    values = args.to_dict()
    rows = []
    for item in dataclasses.fields(args):
        if item.name == "hub_token" or item.name not in values or FIELD_GROUPS.get(item.name) == SCRIPTS_ONLY:
            continue  # the token never; do_eval, local_rank...: the script's business, not the model's
        default = item.default if item.default is not dataclasses.MISSING else None
        if item.name in always or values[item.name] != default:
            rows.append((item.name, values[item.name]))
    return rows


def _base_model(model: Any) -> str | None:
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    return name if name and not Path(name).exists() and not name.startswith(("/", ".")) else None


def _versions() -> list[tuple[str, str]]:
    import importlib.metadata

    found = []
    for package in ("finch", "transformers", "torch", "datasets", "tokenizers"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append((package, importlib.metadata.version(package)))
    return found


def _as_list(value: Any) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def _markdown(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
