"""List filters in a subset of AIP-160, parsed into clauses that a store
turns into its own query.

The subset: comparisons joined by ``AND``. A comparison is a field, an
operator and a value: equality (``=``) on a text field or on a key of a
metadata map (``metadata.ticket = "123"``), and ``>``, ``>=``, ``<``, ``<=``
(or ``=``) on a time field, whose value is an RFC 3339 time with its offset
(``update_time >= "2025-01-01T00:00:00Z"``). Values are quoted with ``"`` or
``'`` (``\\`` escapes the quote and itself) or written bare when they hold no
space. ``OR``, ``NOT``, negation and parentheses are refused by name, and
every error says at which character the filter went wrong.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from service.core.errors import InvalidArgument
from service.core.limits import MAX_FILTER_CHARS, MAX_FILTER_CLAUSES

__all__ = ["Clause", "FieldKind", "canonical", "parse_filter"]


class FieldKind(enum.Enum):
    """What a filterable field holds, and so which comparisons it takes."""

    TEXT = "text"  # equality only
    TIME = "time"  # equality and ranges on RFC 3339 times
    MAP = "map"  # equality on one key: ``field.KEY = "value"``


@dataclass(frozen=True, slots=True)
class Clause:
    """One comparison: ``field`` is the field's name, or ``map.KEY`` for a
    key of a map field; ``op`` one of ``=``, ``>``, ``>=``, ``<``, ``<=``."""

    field: str
    op: str
    value: str | datetime


_OPERATORS = (">=", "<=", "!=", "=", ">", "<", ":")
_RANGES = {">", ">=", "<", "<="}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)?")
_UNSUPPORTED_WORDS = {"OR": "OR", "NOT": "NOT"}


class _Error(Exception):
    def __init__(self, position: int, problem: str) -> None:
        super().__init__(problem)
        self.position = position
        self.problem = problem


class _Reader:
    """Reads a filter left to right, one token at a time."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def skip_space(self) -> None:
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1

    def position(self) -> int:
        """Where the next token starts."""
        self.skip_space()
        return self.at

    def done(self) -> bool:
        return self.position() >= len(self.text)

    def name(self) -> str:
        self.skip_space()
        if self.text.startswith(("(", ")"), self.at):
            raise _Error(self.at, "parentheses are not supported; join comparisons with AND")
        if self.text.startswith("-", self.at):
            raise _Error(self.at, "negation ('-') is not supported")
        found = _NAME.match(self.text, self.at)
        if found is None:
            raise _Error(self.at, "expected a field name")
        word = found.group()
        if word in _UNSUPPORTED_WORDS:
            raise _Error(self.at, f"{word} is not supported; only AND joins comparisons")
        self.at = found.end()
        return word

    def operator(self) -> str:
        self.skip_space()
        for op in _OPERATORS:
            if self.text.startswith(op, self.at):
                if op in ("!=", ":"):
                    raise _Error(self.at, f"operator {op!r} is not supported")
                self.at += len(op)
                return op
        raise _Error(self.at, "expected an operator (=, >, >=, <, <=)")

    def value(self) -> str:
        self.skip_space()
        if self.at >= len(self.text):
            raise _Error(self.at, "expected a value")
        quote = self.text[self.at]
        if quote in "\"'":
            return self._quoted(quote)
        start = self.at
        while self.at < len(self.text) and not self.text[self.at].isspace():
            if self.text[self.at] in "()":
                break
            self.at += 1
        if self.at == start:
            raise _Error(start, "expected a value")
        return self.text[start : self.at]

    def _quoted(self, quote: str) -> str:
        start = self.at
        self.at += 1
        out: list[str] = []
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "\\" and self.at + 1 < len(self.text):
                out.append(self.text[self.at + 1])
                self.at += 2
                continue
            self.at += 1
            if char == quote:
                return "".join(out)
            out.append(char)
        raise _Error(start, "this quoted value is never closed")

    def conjunction(self) -> None:
        self.skip_space()
        word = _NAME.match(self.text, self.at)
        if word is not None and word.group() == "AND":
            self.at = word.end()
            return
        if word is not None and word.group() in _UNSUPPORTED_WORDS:
            raise _Error(self.at, f"{word.group()} is not supported; only AND joins comparisons")
        raise _Error(self.at, "expected AND between comparisons")


def parse_filter(
    text: str, fields: Mapping[str, FieldKind], *, field: str = "filter"
) -> list[Clause]:
    """The clauses of ``text`` over ``fields`` (no clause for an empty
    filter).

    Raises:
        InvalidArgument: the filter is too long, malformed, names a field
            that is not in ``fields``, compares a field in a way its kind
            does not allow, or gives a time that is not RFC 3339 with an
            offset; the message names the character where it went wrong.
    """
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(
            f"{field} is {len(text):,} characters; the limit is {MAX_FILTER_CHARS:,}", field=field
        )
    reader = _Reader(text)
    clauses: list[Clause] = []
    try:
        while not reader.done():
            if clauses:
                reader.conjunction()
            clauses.append(_comparison(reader, fields))
            if len(clauses) > MAX_FILTER_CLAUSES:
                raise _Error(reader.at, f"at most {MAX_FILTER_CLAUSES} comparisons are allowed")
    except _Error as error:
        raise InvalidArgument(
            f"{field} is invalid at character {error.position + 1}: {error.problem} "
            f"(in {_excerpt(text, error.position)})",
            field=field,
        ) from None
    return clauses


def _comparison(reader: _Reader, fields: Mapping[str, FieldKind]) -> Clause:
    start = reader.position()
    name = reader.name()
    base, _, key = name.partition(".")
    kind = fields.get(base)
    if kind is None or (kind is FieldKind.MAP) != bool(key):
        known = ", ".join(f"{f}.KEY" if k is FieldKind.MAP else f for f, k in fields.items())
        raise _Error(start, f"{name!r} cannot be filtered on; use one of {known}")
    op_at = reader.position()
    op = reader.operator()
    if op in _RANGES and kind is not FieldKind.TIME:
        raise _Error(op_at, f"{name} can only be compared with '='")
    value_at = reader.position()
    raw = reader.value()
    if kind is FieldKind.TIME:
        return Clause(name, op, _time(raw, value_at, name))
    return Clause(name, op, raw)


def _time(raw: str, position: int, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise _Error(
            position, f"{name} needs an RFC 3339 time such as 2025-01-31T09:30:00Z"
        ) from None
    if value.tzinfo is None:
        raise _Error(position, f"the time for {name} needs an offset (Z or +hh:mm)")
    return value


def _excerpt(text: str, position: int) -> str:
    """The filter around ``position``, with a marker where it went wrong."""
    left = text[max(position - 20, 0) : position]
    right = text[position : position + 20]
    return repr(f"{left}>>{right}")


def canonical(clauses: Sequence[Clause]) -> list[list[str]]:
    """The clauses in a stable, JSON-ready form (a page token's filters)."""
    return [
        [c.field, c.op, c.value.isoformat() if isinstance(c.value, datetime) else c.value]
        for c in clauses
    ]
