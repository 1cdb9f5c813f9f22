"""Reading YAML a person wrote: what PyYAML accepts silently or cannot survive becomes a ConfigError.

`yaml.safe_load` already refuses `!!python` tags, but it keeps the last of two equal keys (a second
`search_space:` silently drops the first), expands aliases without bound (a "billion laughs" file of a few
hundred bytes becomes hundreds of millions of list items, which then hang whatever prints or copies the value)
and decodes bytes itself (a latin-1 file raised a UnicodeDecodeError). Here the document is composed into
nodes first, checked (duplicate keys with their dotted location, expanded size, recursive aliases) and only
then constructed, so no check ever touches an expanded value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ablate.core.config.base import ConfigError, excerpt

MAX_FILE_BYTES = 4 << 20  # a config or study file is a few KB; anything this large is the wrong file
MAX_NODES = 100_000  # values after alias expansion; the largest ready study has a few hundred
MERGE_TAG = "tag:yaml.org,2002:merge"


def decode_utf8(data: bytes, source: str) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped); anything else names the line and byte."""
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: {len(data)} bytes is too large for a config file (limit {MAX_FILE_BYTES})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{source}: line {line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "save the file as UTF-8"
        ) from None


def parse_yaml(text: str, source: str) -> Any:
    """The document in `text`, refusing duplicate keys, recursive aliases and more than MAX_NODES values
    after alias expansion. YAML syntax errors propagate as `yaml.YAMLError` (their marks give the line)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, source)
        _check_duplicate_keys(node, loader, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _check_expanded_size(root: Node, source: str) -> None:
    """Count values as if every alias were copied out, without copying: each distinct node is sized once (an
    alias is the same node object reached twice), iteratively, so depth cannot exhaust the stack either."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # started, not finished: exactly the path from the root to the current node
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_NODES:
                line = node.start_mark.line + 1
                raise ConfigError(
                    f"{source}: line {line}: this value expands to more than {MAX_NODES} values through aliases "
                    "(*name); a config needs far fewer, so the file is refused"
                )
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ConfigError(f"{source}: line {node.start_mark.line + 1}: an alias refers to a value containing it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _check_duplicate_keys(root: Node, loader: yaml.SafeLoader, source: str) -> None:
    """Every mapping once, keys compared as constructed (`1` and `0x1` are the same int key)."""
    seen: set[int] = set()
    for node, path in _mappings(root, ()):
        if id(node) in seen:
            continue
        seen.add(id(node))
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
                continue  # `<<: *defaults` merges are meant to be overridden; complex keys fail later
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                where = ".".join((*path, str(key)))
                raise ConfigError(
                    f"{source}: {where}: duplicate key {excerpt(key)} at line {line} (first at line "
                    f"{first_line[key]}); a key may appear once per mapping, merge the two blocks"
                )
            first_line[key] = line


def _mappings(root: Node, path: tuple[str, ...]) -> Iterator[tuple[MappingNode, tuple[str, ...]]]:
    """Each mapping node with the dotted path of its first occurrence, depth first, without recursion."""
    stack: list[tuple[Node, tuple[str, ...]]] = [(root, path)]
    visited: set[int] = set()
    while stack:
        node, where = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, MappingNode):
            yield node, where
            for key_node, value in reversed(node.value):
                label = key_node.value if isinstance(key_node, ScalarNode) else "?"
                stack.append((value, (*where, str(label))))
        elif isinstance(node, SequenceNode):
            stack.extend((item, (*where, str(index))) for index, item in reversed(list(enumerate(node.value))))
