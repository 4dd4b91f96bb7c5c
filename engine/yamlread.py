"""YAML to plain data, with the line of every value: the job file's reader.

The data is built from libyaml's event stream rather than by PyYAML's constructor:
that is several times faster (100,000 jobs must load in seconds), and the one pass
also records each value's line, resolves ``${VAR}`` (after parsing, so an
environment value is never read as YAML) and refuses alias bombs before they
expand. Scalars follow YAML 1.2 where 1.1 would surprise: only true/false are
booleans, ``0123`` is decimal, and floats become ``Decimal`` from the text written.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from engine.yamlscalars import SCALARS, STR, T, implicit_tag

MAX_FILE_BYTES = 64 * 2**20
#: Aliases may add this many values, or as many as the file itself holds if that is more.
MAX_ALIAS_EXPANSION = 100_000

Loc = tuple[Any, ...]
Problem = tuple[int, Loc, str]  # line, where in the document, message

_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_REF = re.compile(r"\$\$\{|\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})?")
_BAD_REF = "'${' must start ${NAME} or ${NAME:-default} (write $${ for a literal ${)"
_NO_KEY = object()
_CACHE_SIZE = 50_000
_OPEN = object()  # an anchored mapping or list still being read: an alias to it is recursive


class JobFileError(Exception):
    """The job file cannot be run; ``problems`` holds every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        problems = [printable(problem) for problem in problems]
        super().__init__("\n".join(problems))
        self.problems = problems


def printable(text: str) -> str:
    """``text`` with control characters escaped: a key or id quoted back from the file could
    otherwise break a problem over lines or send escape codes to the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class LineDict(dict[Any, Any]):
    __slots__ = ("key_lines", "line")
    line: int
    key_lines: dict[Any, int]


class LineList(list[Any]):
    __slots__ = ("item_lines", "line")
    line: int
    item_lines: list[int]


class _Frame:
    __slots__ = ("anchor", "container", "key", "key_line", "size")

    def __init__(self, container: LineDict | LineList, anchor: str | None) -> None:
        self.container, self.anchor = container, anchor
        self.key: Any = _NO_KEY
        self.key_line = 0
        self.size = 1


def _line(event: yaml.Event) -> int:
    """The line ``event`` starts on, counted from 1 (libyaml marks every event)."""
    return event.start_mark.line + 1 if event.start_mark is not None else 0


class Builder:
    """Plain data from YAML events, with lines, ``${VAR}`` resolved and aliases bounded."""

    def __init__(self, env: Mapping[str, str], where: str) -> None:
        self.env, self.where = env, where
        self.problems: list[Problem] = []
        self.flagged: set[Loc] = set()  # reported here; pydantic's echo of them is dropped
        #: Every value read from the environment: never quoted back in a message, since that
        #: is where secrets live (a secret put where no account says it is one, too).
        self.env_values: set[str] = set()
        #: Account name -> the variables whose default was used, when secret_key has a ${VAR}.
        self.secret_refs: dict[Any, list[str]] = {}
        self.anchors: dict[str, tuple[object, int]] = {}
        self.stack: list[_Frame] = []
        self.root: object = None
        self.nodes = self.extra = 0
        self.cache: dict[str, object] = {}

    def build(self, data: bytes) -> object:
        parser = _Parser(data)
        stack, cache = self.stack, self.cache
        documents = 0
        try:
            while True:
                event = parser.get_event()
                kind = type(event)
                if kind is ScalarEvent:  # inline: 100,000 jobs are 1.5 million values
                    self.nodes += 1
                    text = event.value
                    if event.tag is not None or event.anchor or "$" in text:
                        value = self._scalar(event)
                    elif not event.implicit[0]:
                        value = text  # quoted: always text
                    elif (value := cache.get(text, _NO_KEY)) is _NO_KEY:
                        value = self._plain(text, event)
                    top = stack[-1] if stack else None
                    if top and top.key is _NO_KEY and type(top.container) is LineDict:
                        top.key, top.key_line = value, event.start_mark.line + 1
                        top.size += 1
                    else:
                        self._add(value, 1, event.start_mark.line + 1)
                elif kind is MappingStartEvent:
                    self._open(event, LineDict(), T + "map")
                elif kind is SequenceStartEvent:
                    self._open(event, LineList(), T + "seq")
                elif kind is MappingEndEvent or kind is SequenceEndEvent:
                    self._close()
                elif kind is AliasEvent:
                    self._alias(event)
                elif kind is DocumentStartEvent:
                    documents += 1
                    if documents > 1:
                        self._fatal(event, "a job file holds one YAML document; found a second")
                elif kind is StreamEndEvent:
                    return self.root
        except yaml.YAMLError as exc:
            raise JobFileError([_yaml_problem(self.where, exc)]) from None
        finally:
            parser.dispose()

    def _fatal(self, event: Any, message: str) -> NoReturn:
        raise JobFileError([f"{self.where}:{_line(event)}: {message}"])

    def _unsupported(self, event: Any) -> NoReturn:
        tag = event.tag.replace(T, "!!")
        self._fatal(event, f"tag {tag} is not allowed: a job file holds plain YAML data only")

    def _loc(self) -> Loc:
        """Where the value being read goes; worked out only when a message needs it."""
        loc = [len(f.container) if type(f.container) is LineList else f.key for f in self.stack]
        return tuple(loc[:-1] if loc and loc[-1] is _NO_KEY else loc)  # a key: its mapping

    def problem(self, line: int, loc: Loc, message: str) -> None:
        """Report a problem at ``loc``; pydantic's own about it is then dropped."""
        self.problems.append((line, loc, message))
        self.flagged.add(loc)

    def _plain(self, text: str, event: ScalarEvent) -> object:
        """An untagged plain scalar, typed by YAML 1.1's patterns; values repeat, so cache them."""
        tag = implicit_tag(text)
        value = text if tag == STR else self._construct(tag, text, event)
        if len(self.cache) < _CACHE_SIZE and (tag == STR or value is not text):
            self.cache[text] = value
        return value

    def _scalar(self, event: ScalarEvent) -> object:
        """A scalar with a tag, an anchor or a ``$`` in it."""
        text, tag = event.value, event.tag
        if tag is None:
            tag = implicit_tag(text) if event.implicit[0] else STR
        if tag in ("!", STR):
            top = self.stack[-1] if self.stack else None
            is_key = top is not None and top.key is _NO_KEY and type(top.container) is LineDict
            value: object = text if is_key or "$" not in text else self._substitute(text, event)
        else:
            value = self._construct(tag, text, event)
        if event.anchor:
            self.anchors[event.anchor] = (value, 1)
        return value

    def _construct(self, tag: str, text: str, event: ScalarEvent) -> object:
        build = SCALARS.get(tag)
        if build is None:
            self._unsupported(event)
        try:
            return build(text)
        except (ValueError, ArithmeticError, LookupError):
            self.problem(_line(event), self._loc(), f"not a valid {tag.removeprefix(T)}")
            return text

    def _substitute(self, text: str, event: ScalarEvent) -> str:
        """``${VAR}``, or ``${VAR:-default}`` (also used when VAR is empty); ``$${`` is ``${``."""
        messages: dict[str, None] = {}  # each said once
        used: list[str] = []
        defaulted: list[str] = []

        def one(match: re.Match[str]) -> str:
            name = match["name"]
            if match[0] == "$${":
                return "${"
            if name is None:
                messages[_BAD_REF] = None
                return match[0]
            used.append(name)
            value = self.env.get(name)
            if value:
                self.env_values.add(value)
                return value
            if match["default"] is not None:
                defaulted.append(name)
                return match["default"]
            if value is None:
                messages[f"environment variable {name} is not set"] = None
            return ""

        result = _REF.sub(one, text)
        loc = self._loc()
        for message in messages:
            self.problem(_line(event), loc, message)
        if messages:
            return text
        if used and len(loc) == 3 and loc[0] == "accounts" and loc[2] == "secret_key":
            self.secret_refs[loc[1]] = defaulted
        return result

    def _open(self, event: Any, container: LineDict | LineList, tag: str) -> None:
        if event.tag not in (None, "!", tag):
            self._unsupported(event)
        self.nodes += 1
        container.line = event.start_mark.line + 1
        if isinstance(container, LineDict):
            container.key_lines = {}
        else:
            container.item_lines = []
        if event.anchor:
            self.anchors[event.anchor] = (_OPEN, 0)
        self.stack.append(_Frame(container, event.anchor))

    def _close(self) -> None:
        frame = self.stack.pop()
        container = frame.container
        if frame.anchor:
            self.anchors[frame.anchor] = (container, frame.size)
        self._add(container, frame.size, container.line)

    def _alias(self, event: AliasEvent) -> None:
        value, size = self.anchors.get(event.anchor or "", (None, -1))
        if size < 0:
            self._fatal(event, f"alias *{event.anchor} has no anchor &{event.anchor} before it")
        if value is _OPEN:
            self._fatal(event, f"alias *{event.anchor} is inside what it refers to")
        self.extra += size - 1
        if self.extra > MAX_ALIAS_EXPANSION and self.extra > self.nodes:
            self._fatal(
                event, f"aliases expand the file too much ({self.extra} extra values); refused"
            )
        self._add(value, size, _line(event))

    def _add(self, value: object, size: int, line: int) -> None:
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        top.size += size
        container = top.container
        if isinstance(container, LineList):
            container.append(value)
            container.item_lines.append(line)
        elif top.key is _NO_KEY:
            if isinstance(value, (LineDict, LineList)):
                raise JobFileError([f"{self.where}:{line}: a mapping key must be a plain value"])
            top.key, top.key_line = value, line
        else:
            if top.key in container:
                first = container.key_lines[top.key]
                self.problem(top.key_line, self._loc(), f"duplicate key (first at line {first})")
            else:
                container[top.key] = value
                container.key_lines[top.key] = top.key_line
            top.key = _NO_KEY


@contextmanager
def gc_paused() -> Iterator[None]:
    """Loading makes millions of objects and no cycles: collecting meanwhile only costs time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_file(path: Path, where: str) -> bytes:
    too_big = f"{where}: the job file is larger than {MAX_FILE_BYTES} bytes; refused"
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise JobFileError([too_big])
            # A buffer of the file's size, not of the limit; more only where st_size was wrong
            # (a file still growing, a pipe), and bounded even then.
            data = file.read(size + 1)
            if len(data) > size:
                data += file.read(MAX_FILE_BYTES + 1 - len(data))
    except OSError as exc:
        raise JobFileError([f"{where}: cannot read the job file: {exc.strerror or exc}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise JobFileError([too_big])
    return data


def _yaml_problem(where: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is None:  # a reader error: bad encoding or a control character
        return f"{where}: invalid YAML: {str(exc).split(chr(10))[0]}"
    problem = exc.problem or "cannot be parsed"  # type: ignore[attr-defined]
    context, context_mark = exc.context, exc.context_mark  # type: ignore[attr-defined]
    if context and context_mark is not None:
        problem += f" ({context} at line {context_mark.line + 1})"
    return f"{where}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"
