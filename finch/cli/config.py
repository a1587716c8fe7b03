"""Run configuration for the CLI: a YAML file, `key=value` overrides and flags, resolved in that order.

    finch train --config run.yaml learning_rate=3e-5 --num-train-epochs 2

Keys are the CLI's option names with underscores (`train`, `text_columns`, `max_length`, ...) and every
`TrainingArguments` field. The file is read with `yaml.safe_load` (no Python objects); values are converted to each
field's type, so `learning_rate: 3e-5` (a string to YAML 1.1) is the number it means.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from finch.errors import ConfigError


def load_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (keys with dashes become underscores)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the config file ({error}); pass a UTF-8 YAML file") from error
    except yaml.YAMLError as error:
        mark, start = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        what = getattr(error, "problem", None) or str(error).splitlines()[0]
        if (
            getattr(error, "context", None) and start is not None
        ):  # e.g. "while parsing a flow sequence": where it began
            what += f"; {error.context} that starts on line {start.line + 1}"
        raise ConfigError(f"{where}: not valid YAML ({what}); a missing closing bracket or quote, or a tab used for "
                          f"indentation?") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of option: value, not a {type(loaded).__name__}")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["learning_rate=3e-5", "text_columns=[a, b]"]` -> values parsed as YAML."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r}: overrides are written key=value, e.g. learning_rate=3e-5")
        try:
            parsed[key.strip().lstrip("-").replace("-", "_")] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as error:  # `report_to=[none`: the value is YAML, and this one does not parse
            raise ConfigError(f"{item!r}: the value is not valid YAML ({str(error).splitlines()[0]}); quote it or "
                              f"close its brackets, e.g. report_to=[none] or text_columns='[a, b]'") from error
    return parsed


def coerce(values: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
    """Each option converted to its declared type (`"3e-5"` -> 3e-5, `"true"` -> True, `[1, "3"]` -> [1.0, 3.0]).

    Raises:
        ConfigError: a value of the wrong type, naming the option, what it must be and the value given.
    """
    from finch.args import convert_value

    converted = {}
    for key, value in values.items():
        try:
            converted[key] = convert_value(value, hints[key]) if key in hints else value
        except (TypeError, ValueError) as error:
            raise ConfigError(f"option {key}: {error}, but it is {value!r}") from error
    return converted


def dump(values: dict[str, Any]) -> str:
    """The resolved options as YAML (token redacted), for printing and for `finch_config.yaml`."""
    shown = {k: ("<redacted>" if k == "hub_token" and v else v) for k, v in sorted(values.items())}
    return yaml.safe_dump(shown, sort_keys=False, default_flow_style=None).rstrip()
