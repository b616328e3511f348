"""One bounded pass over a YAML document: data plus the line of every key, duplicates refused.

Why not `yaml.safe_load`: the config loader needs the line of each field for its errors and
used to compose the document and then load it again (two parses); PyYAML's composer and
constructor recurse per nesting level (a document nested a few thousand deep crashes the
interpreter in libyaml's composer, ~600 deep raises RecursionError in the Python one) and
silently keep the last of duplicate keys. Here one walk over the parser's *events* (libyaml's
C parser where available: iterative, fast) builds plain dicts/lists with an explicit stack,
bounds depth and node count (aliases count their full size, so "billion laughs" is refused),
refuses duplicate keys, and resolves scalars with PyYAML's safe resolver/constructor (so
`60`, `true`, `2027-01-31` mean what they mean in YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import ScalarNode

Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 64
MAX_NODES = 200_000  # nodes (aliases expanded) any document may have, however short
BYTES_PER_NODE = 4  # a longer document may have up to len / this (a mailbox is ~10 nodes in ~75 bytes)
MERGE_TAG = "tag:yaml.org,2002:merge"

Path_ = tuple[Any, ...]


class YAMLProblem(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


@dataclass
class Document:
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)  # (key, index, ...) -> 1-based line
    duplicates: list[tuple[Path_, int]] = field(default_factory=list)  # (path, line) of repeated keys

    def line_of(self, loc: Path_) -> int:
        """Line of the deepest known prefix of `loc` (1 when nothing is known)."""
        for n in range(len(loc), 0, -1):
            line = self.lines.get(tuple(loc[:n]))
            if line is not None:
                return line
        return 1


@dataclass
class _Frame:
    value: dict[Any, Any] | list[Any]
    path: Path_
    anchor: str | None
    size: int = 1
    key: Any = None
    key_line: int = 0
    have_key: bool = False
    explicit: set[Any] = field(default_factory=set)


def node_limit(length: int) -> int:
    """Nodes allowed in a document of `length` characters, aliases expanded.

    Proportional to the text, so a config of 30,000 mailboxes (~300,000 nodes in 2.2 MB) loads,
    while aliases can never make a document much bigger than its text ("billion laughs" in a
    few hundred bytes still stops at MAX_NODES)."""
    return max(MAX_NODES, length // BYTES_PER_NODE)


def load_document(text: str) -> Document:
    """Parse `text` (one YAML document) -> Document. Raises YAMLProblem or yaml.YAMLError."""
    loader = Loader(text)
    try:
        return _walk(loader, node_limit(len(text)))
    finally:
        loader.dispose()


def _walk(loader: Any, limit: int) -> Document:
    doc = Document(None)
    stack: list[_Frame] = []
    anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, node count)
    nodes = 0
    documents = 0
    result: Any = None

    def place(value: Any, size: int, line: int, anchor: str | None) -> None:
        nonlocal result
        if anchor:
            anchors[anchor] = (value, size)
        if not stack:
            result = value
            return
        top = stack[-1]
        top.size += size
        if isinstance(top.value, list):
            doc.lines.setdefault(top.path + (len(top.value),), line)
            top.value.append(value)
            return
        if not top.have_key:
            if isinstance(value, dict | list):
                raise YAMLProblem(line, "a mapping or list cannot be a key")
            top.key, top.key_line, top.have_key = value, line, True
            return
        key, top.have_key = top.key, False
        if isinstance(key, _MergeKey):
            for src in value if isinstance(value, list) else [value]:
                if not isinstance(src, dict):
                    raise YAMLProblem(line, "'<<' merges mappings only")
                for k, v in src.items():
                    if k not in top.explicit:
                        top.value[k] = v
            return
        if key in top.explicit:
            doc.duplicates.append((top.path + (key,), top.key_line))
        top.explicit.add(key)
        doc.lines.setdefault(top.path + (key,), top.key_line)
        top.value[key] = value

    while loader.check_event():
        event = loader.get_event()
        line = event.start_mark.line + 1 if event.start_mark else 1
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise YAMLProblem(line, "more than one YAML document ('---'): give one")
            continue
        if isinstance(event, yaml.StreamStartEvent | yaml.StreamEndEvent | yaml.DocumentEndEvent):
            continue
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent | yaml.ScalarEvent):
            nodes += 1
            if nodes > limit:
                raise YAMLProblem(line, f"more than {limit} YAML nodes")
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise YAMLProblem(line, f"unknown or recursive alias *{event.anchor}")
            value, size = anchors[event.anchor]
            nodes += size
            if nodes > limit:
                raise YAMLProblem(line, f"more than {limit} YAML nodes (aliases expanded)")
            place(value, size, line, None)
        elif isinstance(event, yaml.ScalarEvent):
            tag = event.tag if event.tag not in (None, "!") else loader.resolve(ScalarNode, event.value,
                                                                                event.implicit)
            if tag == MERGE_TAG and stack and isinstance(stack[-1].value, dict) and not stack[-1].have_key:
                place(_MergeKey(), 1, line, event.anchor)
                continue
            node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
            place(loader.construct_object(node, deep=True), 1, line, event.anchor)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise YAMLProblem(line, f"nested more than {MAX_DEPTH} levels deep")
            parent = stack[-1] if stack else None
            path: Path_ = ()
            if parent is not None:
                if isinstance(parent.value, list):
                    path = parent.path + (len(parent.value),)
                elif parent.have_key:
                    path = parent.path + (parent.key,)
                else:
                    raise YAMLProblem(line, "a mapping or list cannot be a key")
            container: dict[Any, Any] | list[Any] = {} if isinstance(event, yaml.MappingStartEvent) else []
            stack.append(_Frame(container, path, event.anchor))
            if parent is not None:
                doc.lines.setdefault(path, parent.key_line if isinstance(parent.value, dict) else line)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            frame = stack.pop()
            place(frame.value, frame.size, line, frame.anchor)
    doc.data = result
    return doc


class _MergeKey:
    """Stands for YAML's '<<' merge key while its value is read."""

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _MergeKey)
