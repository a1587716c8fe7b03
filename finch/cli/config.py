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


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (YAML keeps the last one, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                                f"YAML would keep the last one silently: keep one", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """`text` parsed as plain YAML data (no Python object is ever built, no key given twice).

    Raises:
        ConfigError: not valid YAML (where, and the likely fix), a `!!python/...` or other unknown tag, or a key given
            twice in one mapping.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: plain data only
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        at = f"{where}, line {mark.line + 1}" if mark is not None else where
        problem = error.problem or str(error).splitlines()[0]
        if "constructor for the tag" in problem:
            tag = problem.split("tag", 1)[1].strip(" '")
            raise ConfigError(f"{at}: the tag {tag.replace('tag:yaml.org,2002:', '!!')} is refused: finch reads "
                              f"YAML as plain data and never builds Python objects from a file. Write the value as "
                              f"a number, string, list or mapping") from None
        raise ConfigError(f"{at}: {problem}") from None
    except yaml.YAMLError as error:
        mark, start = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
        at = f"{where}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else where
        what = getattr(error, "problem", None) or str(error).splitlines()[0]
        if getattr(error, "context", None) and start is not None:  # e.g. "while parsing a flow sequence": its start
            what += f"; {error.context} that starts on line {start.line + 1}"
        raise ConfigError(f"{at}: not valid YAML ({what}); a missing closing bracket or quote, or a tab used for "
                          f"indentation?") from error


def load_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (keys with dashes become underscores)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the config file ({error}); pass a UTF-8 YAML file") from error
    loaded = load_yaml(text, str(path))
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of option: value, not a {type(loaded).__name__}")
    keys = [str(k).replace("-", "_") for k in loaded]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:  # learning-rate and learning_rate
        raise ConfigError(f"{path}: {', '.join(twice)} is given twice (with - and _); keep one")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["learning_rate=3e-5", "text_columns=[a, b]"]` -> values parsed as YAML."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r}: overrides are written key=value, e.g. learning_rate=3e-5")
        try:
            parsed[key.strip().lstrip("-").replace("-", "_")] = yaml.load(value, Loader=_StrictLoader) \
                if value.strip() else None
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
