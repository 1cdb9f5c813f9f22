"""A minimal reader of jupytext "percent" scripts, so report templates stay reviewable, lintable Python files.

Only what the templates use is supported: `# %%` code cells, `# %% [markdown]` cells whose lines are
`#`-comments, and `key=<json>` cell metadata such as `tags=["parameters"]`. Text before the first marker is a
file header and is dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import nbformat
from nbformat import NotebookNode

_MARKER = re.compile(r"^# %%(?P<header>.*)$")
_CELL_TYPE = re.compile(r"\[(?P<type>markdown|md)\]")
_METADATA = re.compile(r"(?P<key>\w+)=(?P<value>\[[^\]]*\]|\"[^\"]*\"|\S+)")
_PLACEHOLDER = re.compile(r"\"\{(?P<name>\w+)\}\"")
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


class TemplateError(ValueError):
    """A report template cannot be turned into a notebook."""


def parse_percent(text: str) -> NotebookNode:
    """Notebook with one cell per `# %%` marker of `text`, in order."""
    cells: list[NotebookNode] = []
    header: str | None = None
    lines: list[str] = []
    for line in [*text.splitlines(), "# %%"]:  # the sentinel marker flushes the last cell
        marker = _MARKER.match(line)
        if marker is None:
            lines.append(line)
            continue
        if header is not None:
            cell = _cell(header, lines)
            if cell is not None:
                cells.append(cell)
        header, lines = marker["header"], []
    return nbformat.v4.new_notebook(
        cells=cells, metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    )


def fill_parameters(notebook: NotebookNode, values: Mapping[str, object]) -> None:
    """Replace each `"{name}"` string literal of the parameters cell by the Python literal of `values[name]`.

    Only that cell is touched and the replacement is `repr`, so quotes in values and braces elsewhere in the
    template are safe. Every placeholder must be filled and every value used exactly once.
    """
    cell = next((c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        raise TemplateError('template has no cell tagged "parameters"')
    source = cell.source
    for name, value in values.items():
        token = f'"{{{name}}}"'
        if source.count(token) != 1:
            raise TemplateError(f"parameters cell must contain the placeholder {token} exactly once")
        source = source.replace(token, repr(value))
    unfilled = _PLACEHOLDER.findall(source)
    if unfilled:
        raise TemplateError(f"parameters cell has placeholders without values: {', '.join(unfilled)}")
    cell.source = source


def _cell(header: str, lines: list[str]) -> NotebookNode | None:
    metadata = {m["key"]: json.loads(m["value"]) for m in _METADATA.finditer(header)}
    markdown = _CELL_TYPE.search(header) is not None
    if markdown:
        lines = [re.sub(r"^# ?", "", line) for line in lines]
    source = "\n".join(lines).strip("\n")
    if not source.strip():
        return None
    if markdown:
        return nbformat.v4.new_markdown_cell(source, metadata=metadata)
    return nbformat.v4.new_code_cell(source, metadata=metadata)
