"""Class names and prompt templates of zero-shot tasks: built-in names, files and inline lists, one form.

Templates come in three spellings: clip_benchmark's `a photo of a {c}.`, open_clip's and our manifests'
`a photo of a {}.`, and open_clip's callables (`lambda c: f"a photo of a {c}."`). All become one canonical string
with a single `{c}` placeholder, so a task's prompts are plain data: they hash into cache keys and compare equal
across spellings. Built-in names refer to the lists open_clip ships (`open_clip.zero_shot_metadata`); nothing is
copied here.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from pathlib import Path

from open_clip import zero_shot_metadata

from ablate.core.config.base import ConfigError

# Built-in names -> the attribute of open_clip.zero_shot_metadata that holds the list.
BUILTIN_CLASSNAMES = {"imagenet1k": "IMAGENET_CLASSNAMES"}
BUILTIN_TEMPLATES = {"openai_imagenet": "OPENAI_IMAGENET_TEMPLATES", "simple_imagenet": "SIMPLE_IMAGENET_TEMPLATES"}
_PROBE = "\x00class\x00"  # a class name no template contains, to turn a callable template into a string


def canonical_template(template: str | Callable[[str], str], where: str) -> str:
    """The template with exactly one `{c}` placeholder; literal braces stay escaped. `where` names the field."""
    if callable(template):
        template = template(_PROBE).replace("{", "{{").replace("}", "}}").replace(_PROBE, "{c}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError(f"{where}: {template!r} is not a template ({err}); use {{c}} for the class name") from None
    fields = [field for _, field, _, _ in parts if field is not None]
    if len(fields) != 1 or fields[0] not in ("", "c"):
        raise ConfigError(f"{where}: {template!r} needs exactly one {{c}} or {{}} for the class name (got {fields})")
    escaped = "".join(
        text.replace("{", "{{").replace("}", "}}") + ("{c}" if field is not None else "") for text, field, _, _ in parts
    )
    return escaped


def render(template: str, classname: str) -> str:
    """One prompt from a canonical template."""
    return template.format(c=classname)


def read_lines(path: Path, where: str) -> list[str]:
    """Non-empty stripped lines of a text file, as clip_benchmark reads classnames.txt; blank lines inside the
    list are an error, since they would shift every later class index."""
    if not path.is_file():
        raise ConfigError(f"{where}: {path}: file not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise ConfigError(f"{where}: {path}: line {lines.index('') + 1} is empty (one entry per line)")
    if not lines:
        raise ConfigError(f"{where}: {path}: the file is empty")
    return lines


def _entries(value: str | Sequence[str], builtins: dict[str, str], folder: Path | None, where: str) -> list:
    if not isinstance(value, str):
        return list(value)
    if value in builtins:
        return list(getattr(zero_shot_metadata, builtins[value]))
    path = Path(value)
    if not path.is_absolute() and folder is not None and (folder / path).is_file():
        path = folder / path
    if not path.is_file():
        raise ConfigError(f"{where}: {value!r} is neither a built-in name ({', '.join(builtins)}) nor an existing file")
    return read_lines(path, where)


def resolve_classnames(value: str | Sequence[str], folder: Path | None, where: str) -> list[str]:
    """Class names in label order; duplicates are allowed (ImageNet has two `missile`s): labels are indices."""
    names = _entries(value, BUILTIN_CLASSNAMES, folder, where)
    if len(names) < 2:
        raise ConfigError(f"{where}: a zero-shot task needs at least 2 class names (got {len(names)})")
    if not all(isinstance(name, str) and name.strip() for name in names):
        raise ConfigError(f"{where}: class names must be non-empty strings")
    return names


def resolve_templates(value: str | Sequence[str], folder: Path | None, where: str) -> list[str]:
    """Canonical templates (`{c}`), in the given order."""
    entries = _entries(value, BUILTIN_TEMPLATES, folder, where)
    if not entries:
        raise ConfigError(f"{where}: no templates")
    return [canonical_template(entry, f"{where}[{index}]") for index, entry in enumerate(entries)]
