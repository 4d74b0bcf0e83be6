"""Safe YAML loading that remembers the line of every mapping, key and list item."""

from __future__ import annotations

from pathlib import Path

import yaml


class SuiteError(ValueError):
    """A suite or case file that breaks a rule, located by file and line."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else str(self.path)
        super().__init__(f"{where}: {message}")


class LineDict(dict):
    """A dict from YAML that knows its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.key_lines = {}

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    """A list from YAML that knows its own line and the line of each item (1-based)."""

    line: int = 0
    item_lines: list


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry their source lines."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) or key is None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain scalars", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)
_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence
)


def load_yaml(path: Path) -> object:
    """Parse one YAML document safely; raise SuiteError on a syntax error or empty file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SuiteError(path, None, f"not valid UTF-8 ({error.reason})") from error
    if not text.strip():
        raise SuiteError(path, None, "file is empty; a case file needs a 'cases:' list")
    try:
        documents = list(yaml.load_all(text, Loader=_LineLoader))  # noqa: S506
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        problem = error.problem or error.context or "invalid YAML"
        raise SuiteError(
            path, line, f"YAML syntax error: {problem}; {_syntax_fix(problem)}"
        ) from error
    except yaml.YAMLError as error:
        raise SuiteError(path, None, f"YAML syntax error: {error}") from error
    documents = [document for document in documents if document is not None]
    if not documents:
        raise SuiteError(path, None, "file holds no YAML document")
    if len(documents) > 1:
        raise SuiteError(path, None, "file holds several YAML documents; use one")
    return documents[0]


def _syntax_fix(problem: str) -> str:
    """Return the likely fix for a PyYAML problem text."""
    if problem.startswith("duplicate key"):
        return "keep one of the two entries"
    if problem.startswith("mapping keys"):
        return "write the key as plain text"
    if "'\\t'" in problem:  # PyYAML shows a tab character as '\t'
        return "indent with spaces, not tabs"
    return "check the indentation, brackets and quotes at this line"
