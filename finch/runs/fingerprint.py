"""Fingerprints of the training data and of the model, recorded in every checkpoint and checked on resume.

A resume continues the same run only with the same examples, in the same order, and the same architecture. Sizes
do not tell (other data of the same size resumed silently), and `datasets.Dataset._fingerprint` is a cache key
that differs between processes. So the data fingerprint hashes what the model learns from: the token ids and the
labels, with their row boundaries, in dataset order (arrow buffers hashed whole: MRPC's 3.7k rows take a few
milliseconds). The model fingerprint hashes the architecture, not the weights (those come from the checkpoint):
the model class and its config without the keys that change between runs of the same model (its path, the
transformers version, the attention implementation, label names, keys a forward pass fills in).

Both can be computed before any weights are loaded (`data_fingerprint` of the tokenized training set,
`config_fingerprint` of the config and the class to be built), so the CLI can refuse a resume early.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from finch.runs import adapters

# The columns the model learns from; a dataset with neither is hashed whole. `label`/`label_ids` count as `labels`
# (`prepare_dataset` renames them), so the fingerprint is the same before and after that renaming.
TOKEN_COLUMN = "input_ids"
LABEL_COLUMNS = ("labels", "label", "label_ids")
# Config keys that differ between two loads of the same architecture or that a forward pass sets.
VOLATILE_CONFIG_KEYS = frozenset({
    "_name_or_path", "transformers_version", "architectures", "_commit_hash", "dtype", "torch_dtype",
    "attn_implementation", "_attn_implementation", "_attn_implementation_internal", "_attn_implementation_autoset",
    "id2label", "label2id", "problem_type", "output_attentions", "output_hidden_states", "return_dict", "use_cache",
    "torchscript", "use_return_dict", "_experts_implementation"})


@dataclass(frozen=True)
class Fingerprint:
    """SHA-256 digests of the training data and of the model; None where one could not be computed."""

    data: str | None = None
    model: str | None = None

    @classmethod
    def of(cls, train_dataset: Any, model: torch.nn.Module) -> Fingerprint:
        return cls(data_fingerprint(train_dataset), model_fingerprint(model))


def data_fingerprint(dataset: Any) -> str | None:
    """Digest of a training set's token ids and labels (all columns if it has neither), in dataset order.

    Takes a `datasets.Dataset` (hashed through its arrow buffers) or any sized dataset of dict rows. Returns None
    for rows that are not dicts (the resume is then not checked against the data).
    """
    digest = hashlib.sha256(f"rows {len(dataset)}\n".encode())
    columns = getattr(dataset, "column_names", None)
    if columns is not None and hasattr(dataset, "select_columns"):
        chosen = _chosen_columns(columns)
        table = dataset.select_columns([source for _, source in chosen]).with_format("arrow")[:]
        for name, source in chosen:
            digest.update(f"column {name}\n".encode())
            _hash_arrow(digest, table.column(source))
        return digest.hexdigest()
    rows = (dataset[index] for index in range(len(dataset)))
    for row in rows:
        if not isinstance(row, dict):
            return None
        for name, source in _chosen_columns(list(row)):
            value = row[source]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            digest.update(f"{name} {array.shape}\n".encode())
            _hash_array(digest, array)
    return digest.hexdigest()


def _chosen_columns(columns: list[str]) -> list[tuple[str, str]]:
    """(name in the digest, column) pairs: token ids and the first label column, or every column."""
    label = next((c for c in LABEL_COLUMNS if c in columns), None)
    chosen = [(TOKEN_COLUMN, TOKEN_COLUMN)] if TOKEN_COLUMN in columns else []
    chosen += [("labels", label)] if label is not None else []
    return chosen or [(c, c) for c in sorted(columns)]


def _hash_arrow(digest: Any, array: Any) -> None:
    """Row boundaries then values of a (possibly nested) arrow array, independent of its chunking and int width."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        _hash_array(digest, pc.fill_null(pc.list_value_length(array), -1).to_numpy(zero_copy_only=False))
        _hash_arrow(digest, pc.list_flatten(array))
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        # chunk by chunk, a million values at a time: the same bytes to the digest as one array, without a 64-bit
        # copy of every token id at once (1.86M rows: 330 MB)
        for chunk in getattr(array, "chunks", [array]):
            for start in range(0, len(chunk), 1 << 20):
                _hash_array(digest, chunk.slice(start, 1 << 20).to_numpy(zero_copy_only=False))
    else:  # strings and other types: only when a dataset has no token ids or labels
        digest.update(json.dumps(array.to_pylist(), default=str).encode())


def _hash_array(digest: Any, array: np.ndarray) -> None:
    if array.dtype.kind in "iub":
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    elif array.dtype.kind == "f":
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    else:
        digest.update(json.dumps(array.tolist(), default=str).encode())


def model_fingerprint(model: torch.nn.Module) -> str:
    """Digest of a model's architecture: `config_fingerprint` for transformers models, else the class and the
    names and shapes of its parameters and buffers."""
    config = getattr(model, "config", None)
    if adapters.is_peft(model):  # the base's architecture and the adapters' (rank, targets, modules_to_save)
        peft = {name: _plain(adapter.to_dict()) for name, adapter in model.peft_config.items()}
        return _digest({"base": model_fingerprint(model.get_base_model()), "class": type(model).__name__,
                        "adapters": peft})
    if config is not None and hasattr(config, "to_dict"):
        return config_fingerprint(config, type(model))
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    return _digest({"class": type(model).__name__, "tensors": shapes})


def config_fingerprint(config: Any, model_class: type | str) -> str:
    """Digest of a transformers config (without `VOLATILE_CONFIG_KEYS`) and the class built from it.

    Args:
        config: the `PretrainedConfig` the model is (or will be) built from, with the number of labels it will have.
        model_class: the model's class or class name; an Auto class (`AutoModelForSequenceClassification`) is
            resolved to the class it builds for `config`, without loading weights.
    """
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is not None:  # an Auto class
        model_class = mapping[type(config)]
    name = model_class if isinstance(model_class, str) else model_class.__name__
    values = _stable(config.to_dict())
    values["num_labels"] = getattr(config, "num_labels", None)
    return _digest({"class": name, "config": values})


def _stable(values: dict[str, Any]) -> dict[str, Any]:
    return {key: _stable(value) if isinstance(value, dict) else value for key, value in values.items()
            if key not in VOLATILE_CONFIG_KEYS}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _plain(value: Any) -> Any:
    """A config dict as JSON-ready values (sets sorted, enums and other objects as strings), for digests."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()
                if key not in ("base_model_name_or_path", "revision", "inference_mode")}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(item) for item in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
