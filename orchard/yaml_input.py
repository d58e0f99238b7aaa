"""YAML written by a user (config files, ``--algorithm '{bayes: {...}}'``), read strictly and boundedly.

``yaml.safe_load`` never runs code, but it accepts things that hurt here:

- **a key given twice** keeps the last value silently (``max_trials: 10`` then
  ``max_trials: 1000`` further down runs 1,000 trials): refused, naming the key and its lines;
- **aliases that multiply** ("billion laughs": nine lists of nine aliases of the
  previous one are 9**9 strings once expanded) load in microseconds as shared
  references, then hang whatever walks the value (checking it, storing it, naming it
  in a message): refused when the document, expanded, holds more than
  :data:`MAX_NODES` values, or refers to itself;
- a value its constructor cannot build (an int of more than 4,300 digits, the 30th of
  February) raised a bare ``ValueError``: refused with its line like any other YAML error;
- a text holding a NUL character (``"a\\0b"``) reached ``os.makedirs`` or ``open`` as a
  path and raised a bare ``ValueError``: refused with its line.

Aliases within that bound (``<<: *defaults``, then keys that override the merged ones)
are read as usual.
"""

from __future__ import annotations

from typing import Any

import yaml

from orchard.errors import ConfigurationError
from orchard.report import shown

__all__ = ["MAX_NODES", "load_yaml"]

#: Values a user's YAML document may hold once its aliases are expanded.
MAX_NODES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):  # type: ignore[misc]
    """A document refused for a reason whose text is complete (no YAML mark to add)."""


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """``SafeLoader`` refusing a key given twice in one mapping (a ``<<`` merge may still be overridden)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Checked before the first flattening, which puts the merged keys into node.value:
        # once flattened, a key overriding a merged one would look given twice.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._refuse_a_key_twice(node)
        super().flatten_mapping(node)

    def _refuse_a_key_twice(self, node: yaml.MappingNode) -> None:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                earlier = first_line.get(key)
                first_line.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeLoader says so itself
                continue
            if earlier is not None:
                where = f"line {line}" if earlier == line else f"lines {earlier} and {line}"
                raise _Refused(f"gives key {shown(key)} twice ({where}); keep one")

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as err:  # int("1" * 5000), date(2001, 2, 30): give it the node's line
            raise yaml.constructor.ConstructorError(None, None, str(err), node.start_mark) from None


def _expanded_size(node: yaml.Node, sizes: dict[int, int], limit: int) -> int:
    """How many values ``node`` holds once its aliases are expanded (``limit + 1`` once past ``limit``).

    Each node is counted once (``sizes``), so a document is measured in the time of
    reading it, however much its aliases multiply. A text holding a NUL character
    (``"\\0"``) is refused on the way: no path, name or script argument can hold one.
    """
    if isinstance(node, yaml.ScalarNode) and "\x00" in node.value:
        raise _Refused(f"holds a NUL character (\\0) in the value at line {node.start_mark.line + 1}, which "
                       "no path, name or script argument can hold; remove it")
    known = sizes.get(id(node))
    if known is not None:
        if known < 0:  # still being counted: the node holds itself
            raise _Refused(f"refers to itself through an alias (the value at line {node.start_mark.line + 1}); "
                           "write the value out instead")
        return known
    sizes[id(node)] = -1
    total = 1
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    for child in children:
        total += _expanded_size(child, sizes, limit)
        if total > limit:
            break
    sizes[id(node)] = min(total, limit + 1)
    return sizes[id(node)]


def load_yaml(text: str, what: str) -> Any:
    """The value of the YAML document ``text``.

    Args:
        text: the document.
        what: what it is, for messages (``"config file orchard.yaml"``, ``"--algorithm"``).

    Raises:
        ConfigurationError: not valid YAML, a key given twice, more than :data:`MAX_NODES`
            values once aliases are expanded, an alias to itself, or nesting too deep to read;
            one line naming ``what``, the line in the document and what to do.
    """
    try:
        loader = _StrictLoader(text)  # reads the text: a character YAML refuses raises here
    except yaml.YAMLError as err:
        raise _not_yaml(what, err) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}
        if _expanded_size(node, sizes, MAX_NODES) > MAX_NODES:
            if len(sizes) > MAX_NODES:  # as many values written out: no alias to blame (there was none)
                raise _Refused(f"holds more than {MAX_NODES:,} values; settings take far fewer: check it")
            raise _Refused(f"holds more than {MAX_NODES:,} values once its aliases (*name) are expanded; "
                           "write the values out, or use fewer aliases")
        return loader.construct_document(node)
    except _Refused as err:
        raise ConfigurationError(f"{what} {err}") from None
    except yaml.YAMLError as err:
        raise _not_yaml(what, err) from None
    except RecursionError:
        raise ConfigurationError(f"{what} is nested too deeply to be read; flatten it") from None
    finally:
        loader.dispose()


def _not_yaml(what: str, err: yaml.YAMLError) -> ConfigurationError:
    """The one line saying where ``what`` is not valid YAML, and why."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = str(err.problem or err.context)
    elif isinstance(err, yaml.reader.ReaderError):  # a control character, or bytes that are not UTF-8
        where = f" at character {err.position + 1}"
        problem = f"{chr(err.character)!r} is a character YAML does not allow"
    else:
        where, problem = "", str(err)
    return ConfigurationError(f"{what} is not valid YAML{where}: {' '.join(problem.split())}; correct it")
