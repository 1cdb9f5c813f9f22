"""Reading a TrainConfig from YAML and `key=value` overrides, with errors a researcher can act on.

Every failure becomes a `ConfigError` naming the file, the dotted field path and the offending value, e.g.
``base.yaml: optim.lrr: unknown key (did you mean 'lr'?)``. The CLI prints it without a traceback.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ablate.core.config.base import ConfigError, excerpt
from ablate.core.config.presets import preset_overrides
from ablate.core.config.sections import TrainConfig
from ablate.core.config.yaml_input import decode_utf8, parse_yaml

# A whole-model rule blames a field by starting its message with it: "pruner.name: ...".
TOP_LEVEL_FIELD = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)+): (.*)$", re.DOTALL)
MAX_PROBLEMS = 10  # validation errors listed per message; one mistake repeated in a long list stays readable
# Where a config came from: a file name, or a function of an error's field path naming the file that holds it.
Source = str | Callable[[tuple[str, ...]], str]


def read_yaml(path: Path | str) -> dict[str, Any]:
    """Load a YAML mapping (`yaml_input`: UTF-8, no duplicate keys, bounded aliases), turning a missing or
    unreadable file or a syntax error into a ConfigError with the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = parse_yaml(decode_utf8(path.read_bytes(), str(path)), str(path))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem[:200]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def set_by_path(tree: dict[str, Any], dotted: str, value: Any, where: str = "") -> None:
    """Set `tree["a"]["b"] = value` for `dotted = "a.b"`, creating intermediate mappings. `where` (e.g.
    `study.yaml: overrides.`) prefixes the dotted key when a parent on the path is a value, not a mapping."""
    *parents, leaf = dotted.split(".")
    node = tree
    for i, key in enumerate(parents):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            parent = ".".join(parents[: i + 1])
            raise ConfigError(
                f"{where}{dotted}: {parent} is a value ({excerpt(child)}), not a section, so it has no "
                f"key {excerpt(dotted[len(parent) + 1 :])}"
            )
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`"optim.lr=1e-3"` -> `("optim.lr", 0.001)`: the value is read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    try:
        value = parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(tree: Mapping[str, Any], overrides: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """A deep copy of `tree` with each dotted override set; `where` (`study.yaml: overrides.`) locates them."""
    merged = copy.deepcopy(dict(tree))
    for dotted, value in overrides.items():
        set_by_path(merged, dotted, value, where)
    return merged


def validate_train_config(tree: Mapping[str, Any], source: Source) -> TrainConfig:
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
        tree = apply_overrides(tree, preset_overrides(preset, f"{source}: --preset"), f"--preset {preset}: ")
    parsed = dict(parse_override(item) for item in overrides)
    return validate_train_config(apply_overrides(tree, parsed, f"{source}: --set "), source)


def describe_validation_error(err: ValidationError, model: type[BaseModel], source: Source) -> str:
    """One line per pydantic error: `source: field.path: message (got value)`, with spelling suggestions.
    `source` is a file name, or a function of the error's field path that says which file holds that field."""
    lines = []
    problems = err.errors()
    for item in problems[:MAX_PROBLEMS]:
        loc = [str(part) for part in item["loc"]]
        where = source(tuple(loc)) if callable(source) else source
        path = ".".join(loc) or "<top level>"
        named = TOP_LEVEL_FIELD.match(item["msg"].removeprefix("Value error, ")) if not loc else None
        if named:  # a whole-model rule names the field it blames at the start of its message
            path, item = named[1], {**item, "msg": named[2]}
        if item["type"] == "extra_forbidden":
            hint = _suggest(model, loc)
            lines.append(f"{where}: {path}: unknown key{hint}")
        elif item["type"] == "missing":
            lines.append(f"{where}: {path}: required field is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")[:300]
            got = "" if not loc else f" (got {excerpt(item['input'])})"
            lines.append(f"{where}: {path}: {message}{got}")
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"{where}: ... and {len(problems) - MAX_PROBLEMS} more problems")
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
