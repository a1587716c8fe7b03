"""Run configuration for the CLI: a YAML file, `key=value` overrides and flags, resolved in that order.

    finch train --config run.yaml learning_rate=3e-5 --num-train-epochs 2

Keys are the CLI's option names with underscores (`train`, `text_columns`, `max_length`, ...) and every
`TrainingArguments` field. The file is read with `yaml.safe_load` (no Python objects); values are converted to each
field's type, so `learning_rate: 3e-5` (a string to YAML 1.1) is the number it means.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from finch.errors import DataError


def load_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (keys with dashes become underscores)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such config file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: a config file must be a mapping of option: value, not a {type(loaded).__name__}")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["learning_rate=3e-5", "text_columns=[a, b]"]` -> values parsed as YAML."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"{item!r}: overrides are written key=value, e.g. learning_rate=3e-5")
        parsed[key.strip().lstrip("-").replace("-", "_")] = yaml.safe_load(value) if value.strip() else None
    return parsed


def check_keys(values: dict[str, Any], known: set[str], where: str) -> None:
    """Raise for keys that are not options, suggesting the closest ones."""
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = [f"{k!r} (did you mean {', '.join(map(repr, difflib.get_close_matches(k, known, n=2)))}?)"
                 if difflib.get_close_matches(k, known, n=1) else repr(k) for k in unknown]
        raise DataError(f"{where}: unknown option(s) {', '.join(hints)}")


def coerce(values: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
    """Convert strings and numbers to each option's declared type (float, int, bool, list)."""
    converted = {}
    for key, value in values.items():
        kinds = typing.get_args(hints[key]) or (hints[key],) if key in hints else ()
        converted[key] = _convert(key, value, kinds)
    return converted


def _convert(key: str, value: Any, kinds: tuple) -> Any:
    if value is None or not kinds or isinstance(value, (list, dict)):
        return value
    names = {getattr(k, "__name__", str(k)) for k in kinds}
    try:
        if "bool" in names and isinstance(value, str):
            if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "yes", "1")
        if "float" in names and isinstance(value, (str, int)) and not isinstance(value, bool):
            number = float(value)
            return int(number) if "int" in names and number.is_integer() else number
        if "int" in names and isinstance(value, str):
            return int(value)
    except ValueError as error:
        raise DataError(f"option {key}: {value!r} is not a {' or '.join(sorted(names - {'NoneType'}))}") from error
    return value


def dump(values: dict[str, Any]) -> str:
    """The resolved options as YAML (token redacted), for printing and for `finch_config.yaml`."""
    shown = {k: ("<redacted>" if k == "hub_token" and v else v) for k, v in sorted(values.items())}
    return yaml.safe_dump(shown, sort_keys=False, default_flow_style=None).rstrip()
