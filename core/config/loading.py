"""Reading a TrainConfig from YAML and `key=value` overrides, with errors a researcher can act on.

Every failure becomes a `ConfigError` naming the file, the dotted field path and the offending value, e.g.
``base.yaml: optim.lrr: unknown key (did you mean 'lr'?)``. The CLI prints it without a traceback.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ablate.core.config.base import ConfigError
from ablate.core.config.presets import preset_overrides
from ablate.core.config.sections import TrainConfig


def read_yaml(path: Path | str) -> dict[str, Any]:
    """Load a YAML mapping, turning a missing file or a syntax error into a ConfigError with the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def set_by_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `tree["a"]["b"] = value` for `dotted = "a.b"`, creating intermediate mappings."""
    *parents, leaf = dotted.split(".")
    node = tree
    for i, key in enumerate(parents):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])}: is a value, cannot set '{dotted}' inside it")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`"optim.lr=1e-3"` -> `("optim.lr", 0.001)`: the value is read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(tree: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `tree` with each dotted override set."""
    merged = copy.deepcopy(dict(tree))
    for dotted, value in overrides.items():
        set_by_path(merged, dotted, value)
    return merged


def validate_train_config(tree: Mapping[str, Any], source: str) -> TrainConfig:
    """Build a TrainConfig or raise a ConfigError listing every problem with its field path and value."""
    try:
        return TrainConfig.model_validate(dict(tree))
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, TrainConfig, source)) from None


def load_train_config(path: Path | str | None, overrides: Iterable[str] = (), preset: str | None = None) -> TrainConfig:
    """The `ablate train` entry: YAML file (or the embedded defaults when None), then a named preset
    (`core/config/presets.py`), then `--set` overrides, each later one winning."""

    tree = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    if preset is not None:
        tree = apply_overrides(tree, preset_overrides(preset, f"{source}: --preset"))
    parsed = dict(parse_override(item) for item in overrides)
    return validate_train_config(apply_overrides(tree, parsed), source)


def describe_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per pydantic error: `source: field.path: message (got value)`, with spelling suggestions."""
    lines = []
    for item in err.errors():
        loc = [str(part) for part in item["loc"]]
        path = ".".join(loc) or "<top level>"
        if item["type"] == "extra_forbidden":
            hint = _suggest(model, loc)
            lines.append(f"{source}: {path}: unknown key{hint}")
        elif item["type"] == "missing":
            lines.append(f"{source}: {path}: required field is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            got = "" if not loc else f" (got {item['input']!r})"
            lines.append(f"{source}: {path}: {message}{got}")
    return "\n".join(lines)


def _suggest(model: type[BaseModel], loc: list[str]) -> str:
    """Walk the model along `loc[:-1]` and propose the closest field names for the unknown `loc[-1]`."""
    current: Any = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if isinstance(current, type) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        current = annotation
    names = [alias for name, f in current.model_fields.items() for alias in (name, f.alias) if alias]
    close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6) if loc else []
    valid = ", ".join(sorted(current.model_fields))
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {valid})"
