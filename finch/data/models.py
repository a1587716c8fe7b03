"""Which model `--model` names, checked before anything is loaded, and loading it without surprises.

A local folder must exist and hold a config, weights and a tokenizer (a folder with weights but no tokenizer
files made transformers build a five-token tokenizer that maps every word to [UNK], and the run trained on
nothing). A hub name is looked up in the local cache first; when it is not there and the hub cannot be reached
(HF_HUB_OFFLINE=1, or no network), that is said at once instead of after half a minute of retries. Weights that
are not plain tensors (a pickle with code in it) are refused, never loaded with `weights_only=False`.
"""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from finch.errors import ConfigError, ModelError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# A tokenizer needs its vocabulary: one of these (tokenizer_config.json alone is not enough).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "spm.model")
DEFAULT_MAX_LENGTH = 128  # `finch train`'s token limit unless --max-length says otherwise


def is_peft(model: Any) -> bool:
    """Whether `model` is a `peft.PeftModel` (checked without importing peft, an optional dependency)."""
    return any(cls.__name__ == "PeftModel" and cls.__module__.startswith("peft") for cls in type(model).__mro__)


def model_source(name: str, need_weights: bool = True) -> str:
    """`name` checked: a local model folder (returned as a path) or a hub name that can be loaded.

    Raises:
        ModelError: a folder that does not exist or lacks files, a file instead of a folder, or a hub name that
            is not cached locally while the hub cannot be reached.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        _check_folder(path, need_weights)
        return str(path)
    if path.exists():
        raise ModelError(f"--model {name}: a file, not a model folder; pass the folder that holds config.json "
                         f"(e.g. the 'model' folder that finch train wrote)")
    if _looks_like_path(name):
        raise ModelError(f"--model {name}: no such folder; pass the folder that holds config.json, or a hub name "
                         f"such as bert-base-uncased")
    if not _cached_on_this_machine(name) and not _hub_reachable():
        raise ModelError(f"--model {name}: not a local folder, not in the local HuggingFace cache, and the hub "
                         f"cannot be reached ({_why_offline()}). Pass a local model folder (--model path/to/folder), "
                         f"or go online once to download it")
    return name


def _check_folder(path: Path, need_weights: bool) -> None:
    files = {p.name for p in path.iterdir()}
    missing = []
    if "config.json" not in files:
        missing.append("config.json")
    if need_weights and not files & set(WEIGHT_FILES):
        missing.append(f"weights ({' or '.join(WEIGHT_FILES[::2])})")
    if not files & set(TOKENIZER_FILES):
        missing.append(f"a tokenizer ({', '.join(TOKENIZER_FILES[:3])}...)")
    if missing and (path / "model" / "config.json").is_file():  # finch train's output folder, not its model
        raise ModelError(f"--model {path}: this is a run's output folder; its model is in {path / 'model'}: pass "
                         f"--model {path / 'model'}")
    if missing:
        raise ModelError(f"--model {path}: the folder lacks {', '.join(missing)}. A model folder holds what "
                         f"model.save_pretrained(folder) and tokenizer.save_pretrained(folder) write; save the "
                         f"tokenizer there too (finch train's output 'model' folder has everything)")
    _check_config_file(path / "config.json")


def _check_config_file(path: Path) -> None:
    """Raise `ModelError` unless `path` is a model configuration transformers can read: a JSON object naming its
    `model_type` (without one, the folder's name is guessed at, and the error comes from deep inside loading)."""
    problem = _config_problem(path)
    if problem is not None:
        raise ModelError(f"--model {path.parent}: its config.json is not a model configuration ({problem}); it "
                         f"should be the file model.save_pretrained(folder) writes. Restore it (a folder saved by "
                         f"transformers names its model_type, e.g. \"model_type\": \"bert\"), or pass another model "
                         f"folder")


def _config_problem(path: Path) -> str | None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"not readable JSON: {error}"
    if not isinstance(config, dict):
        return f"it holds a JSON {type(config).__name__}"
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        return "it has no model_type, so the kind of model (bert, roberta, ...) is unknown"
    return None


def _looks_like_path(name: str) -> bool:
    """Hub names are `name` or `owner/name`; anything else that does not exist was meant as a local path."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")


def _cached_on_this_machine(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def _hub_reachable() -> bool:
    """False when offline mode is on or the hub's host name does not resolve (answers at once, no retries)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _why_offline() -> str:
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else "no network"


def load_config(name: str) -> Any:
    from transformers import AutoConfig

    try:
        return _loaded(name, lambda: AutoConfig.from_pretrained(name))
    except ValueError as error:  # config.json not JSON, or JSON without a known model_type: the folder's, not finch's
        if isinstance(error, ModelError) or not (Path(name) / "config.json").is_file():
            raise
        first = str(error).strip().splitlines()[0]
        raise ModelError(f"--model {name}: its config.json is not a model configuration ({first}); it should be "
                         f"the file model.save_pretrained(folder) writes. Restore it, or pass another model "
                         f"folder") from error


def load_tokenizer(name: str) -> Any:
    """The model's tokenizer; one without a real vocabulary (a handful of special tokens) is refused."""
    from transformers import AutoTokenizer

    tokenizer = _loaded(name, lambda: AutoTokenizer.from_pretrained(name))
    if len(tokenizer) < 100:
        raise ModelError(f"--model {name}: its tokenizer has only {len(tokenizer)} tokens, so nearly every word "
                         f"would become [UNK]; save the model's own tokenizer into the folder")
    return tokenizer


def load_classifier(name: str, **kwargs: Any) -> Any:
    """`AutoModelForSequenceClassification.from_pretrained(name, **kwargs)`, refusing weights that are pickles."""
    from transformers import AutoModelForSequenceClassification

    return _loaded(name, lambda: AutoModelForSequenceClassification.from_pretrained(name, **kwargs))


def _loaded(name: str, load: Any) -> Any:
    """Run a transformers loader; its errors about the model (not bugs) become `ModelError`s with the fix."""
    try:
        return load()
    except pickle.UnpicklingError as error:
        raise ModelError(f"--model {name}: a weights file holds Python objects, not plain tensors, and finch refuses "
                         f"to load it (it could run code). Use a folder with model.safetensors") from error
    except OSError as error:  # transformers' "can't find / couldn't connect / not a valid identifier" family
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"--model {name}: could not be loaded ({first}); pass a local model folder or check the "
                         f"name") from error


def max_length_for(config: Any, requested: int | None, recorded: int | None = None,
                   fallback: int | None = DEFAULT_MAX_LENGTH) -> int:
    """The token limit: what was asked for, else what the model was trained with (its card), else `fallback`
    (None: the model's own limit); never more than the model's position embeddings allow.

    Raises:
        ModelError: `requested` is above the model's limit.
    """
    limit = getattr(config, "max_position_embeddings", None) or 512
    if requested is not None and requested > limit:
        raise ModelError(f"--max-length {requested}: the model takes at most {limit} tokens; use {limit} or less")
    return min(requested or recorded or fallback or limit, limit)



def check_room_for_text(tokenizer: Any, max_length: int, pair: bool) -> None:
    """Raise `ConfigError` if `max_length` leaves no token for the text once the special tokens are added
    (`--max-length 1` would train on `[CLS]` alone, every example the same input)."""
    special = tokenizer.num_special_tokens_to_add(pair=pair)
    if max_length <= special:
        kind = "a sentence pair" if pair else "a text"
        raise ConfigError(f"--max-length {max_length} leaves no room for the text: the tokenizer adds {special} "
                          f"special tokens to {kind}, so every example would be the same input. Use at least "
                          f"{special + 1}; a few dozen or more is usual (e.g. 128)")
