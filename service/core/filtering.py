"""List and search filters in the subset of AIP-160 Loom accepts, parsed
against the fields one list names; the list's store or index applies them.

    kind = FACT AND metadata.source = "crm" AND create_time >= "2026-01-01T00:00:00Z"

Comparisons joined by ``AND``, each a field, an operator and a value. A field
is a name (``kind``) or a key of a map (``metadata.KEY``, or
``metadata."key with spaces"``); the operators are ``=``, ``!=``, ``<``,
``<=``, ``>`` and ``>=``, as each field allows; a value is quoted (``"`` or
``'``, ``\\`` escapes the quote and itself) or bare up to the next space.
Each use names its fields (``FieldSpec``): their type (``string``, ``enum``
with the spellings of each value, or ``timestamp``: RFC 3339 with an
offset), their operators, and whether they are maps. ``OR``, ``NOT``,
negation, ``:`` and parentheses are refused by name; every error is
``InvalidArgument`` naming the request field and the character (1-based)
where the filter went wrong.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.core.errors import InvalidArgument
from service.core.limits import MAX_FILTER_CHARS, MAX_FILTER_CLAUSES

__all__ = [
    "EQUALITY",
    "ORDERED",
    "Comparison",
    "FieldSpec",
    "Filter",
    "compare",
    "parse_filter",
]

EQUALITY = frozenset({"=", "!="})
ORDERED = frozenset({"=", "!=", "<", "<=", ">", ">="})

_OPERATORS: dict[str, Callable[[Any, Any], object]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_SPELLED = (">=", "<=", "!=", "=", ">", "<", ":")  # longest first
_WORD = re.compile(r"""[^\s=!<>:()"']+""")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = {
    "OR": "OR is not supported; join comparisons with AND",
    "NOT": "NOT is not supported",
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What a filterable field accepts. ``map`` fields take a key
    (``metadata.KEY``); ``values`` lists an enum's accepted values, each
    with the spellings that mean it (``{"fact": ("FACT", "MEMORY_KIND_FACT")}``)."""

    type: str  # "string", "enum" or "timestamp"
    ops: frozenset[str] = EQUALITY
    map: bool = False
    values: Mapping[str, tuple[str, ...]] | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    """``field`` (with ``key`` for a map field) ``op`` ``value``: an enum's
    canonical value, a string, or an aware datetime."""

    field: str
    key: str
    op: str
    value: str | datetime

    @property
    def name(self) -> str:
        """The field as written: ``metadata.KEY`` for a map's key."""
        return f"{self.field}.{self.key}" if self.key else self.field


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter: every comparison must hold (none: keep all)."""

    comparisons: tuple[Comparison, ...]

    def __bool__(self) -> bool:
        return bool(self.comparisons)

    def canonical(self) -> list[list[str]]:
        """The comparisons in a stable, JSON-ready form, the same however
        the filter was written (what a page token is tied to)."""
        return [
            [c.name, c.op, c.value.isoformat() if isinstance(c.value, datetime) else c.value]
            for c in self.comparisons
        ]


def compare(op: str, left: object, right: object) -> bool:
    """``left op right`` for comparable values of one type; False when
    ``left`` is None (the field is missing), except for ``!=``."""
    if left is None:
        return op == "!="
    try:
        return bool(_OPERATORS[op](left, right))
    except TypeError:  # values of types that do not order: no match
        return False


class _Error(Exception):
    def __init__(self, at: int, problem: str) -> None:
        super().__init__(problem)
        self.at = at  # 0-based
        self.problem = problem


class _Reader:
    """Reads a filter left to right, one token at a time."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def position(self) -> int:
        """Where the next token starts."""
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1
        return self.at

    def done(self) -> bool:
        return self.position() >= len(self.text)

    def found(self) -> str:
        """What is at the next token, for a message."""
        at = self.position()
        if at >= len(self.text):
            return "the end"
        word = _WORD.match(self.text, at)
        return repr(word.group()[:60] if word else self.text[at])

    def word(self, expected: str) -> str:
        """A bare word (a field, ``AND``); ``(``, ``)``, ``-``, ``OR`` and
        ``NOT`` are refused by name."""
        at = self.position()
        if self.text.startswith(("(", ")"), at):
            raise _Error(at, "parentheses are not supported; join comparisons with AND")
        if self.text.startswith("-", at):
            raise _Error(at, "negation ('-') is not supported")
        word = _WORD.match(self.text, at)
        if word is None:
            raise _Error(at, f"expected {expected}, found {self.found()}")
        if word.group() in _RESERVED:
            raise _Error(at, _RESERVED[word.group()])
        self.at = word.end()
        return word.group()

    def operator(self) -> str:
        at = self.position()
        for op in _SPELLED:
            if self.text.startswith(op, at):
                if op == ":":
                    raise _Error(at, "operator ':' is not supported")
                self.at += len(op)
                return op
        raise _Error(at, f"expected an operator (=, !=, <, <=, >, >=), found {self.found()}")

    def value(self) -> str:
        at = self.position()
        if at < len(self.text) and self.text[at] in "\"'":
            return self.quoted()
        end = at
        while end < len(self.text) and not self.text[end].isspace() and self.text[end] not in "()":
            end += 1
        if end == at:
            raise _Error(at, f"expected a value, found {self.found()}")
        self.at = end
        return self.text[at:end]

    def quoted(self) -> str:
        start, quote = self.at, self.text[self.at]
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


def parse_filter(
    text: str, fields: Mapping[str, FieldSpec], *, name: str = "filter", example: str = ""
) -> Filter:
    """Parse ``text`` over ``fields``; an empty or blank text is the filter
    that keeps all. ``name`` is the request field errors name; ``example`` a
    filter they show.

    Raises:
        InvalidArgument: too long, or not in the accepted subset (the
            message gives the character and what was expected).
    """
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(
            f"{name} is {len(text):,} characters; the limit is {MAX_FILTER_CHARS:,}", field=name
        )
    if "\x00" in text:
        raise InvalidArgument(f"{name} must not contain NUL characters", field=name)
    reader = _Reader(text)
    comparisons: list[Comparison] = []
    try:
        while not reader.done():
            if comparisons:
                _conjunction(reader)
            comparisons.append(_comparison(reader, fields))
            if len(comparisons) > MAX_FILTER_CLAUSES:
                raise _Error(reader.at, f"at most {MAX_FILTER_CLAUSES} comparisons are allowed")
    except _Error as error:
        hint = f"; for example: {example}" if example else ""
        raise InvalidArgument(
            f"{name} is invalid at character {error.at + 1}: {error.problem} "
            f"(in {_excerpt(text, error.at)}){hint}",
            field=name,
        ) from None
    return Filter(tuple(comparisons))


def _conjunction(reader: _Reader) -> None:
    at = reader.position()
    word = reader.word("AND")
    if word != "AND":
        raise _Error(at, f"expected AND between comparisons, found {word[:60]!r}")


def _comparison(reader: _Reader, fields: Mapping[str, FieldSpec]) -> Comparison:
    field, key, spec = _field(reader, fields)
    op_at = reader.position()
    op = reader.operator()
    if op not in spec.ops:
        allowed = (
            f"{field} can only be compared with '='"
            if spec.ops == {"="}
            else f"{field} takes the operators {', '.join(sorted(spec.ops))}"
        )
        raise _Error(op_at, f"operator {op!r} is not supported: {allowed}")
    value_at = reader.position()
    return Comparison(field, key, op, _value(field, spec, reader.value(), value_at))


def _field(reader: _Reader, fields: Mapping[str, FieldSpec]) -> tuple[str, str, FieldSpec]:
    """A field name, with its key for a map (``metadata.KEY`` or
    ``metadata."KEY"``), and what the field accepts."""
    at = reader.position()
    word = reader.word("a field name")
    name, dot, key = word.partition(".")
    spec = fields.get(name)
    if spec is None or not _NAME.fullmatch(name):
        known = ", ".join(f"{n}.KEY" if s.map else n for n, s in fields.items())
        raise _Error(at, f"unknown field {word!r} cannot be filtered on; use one of {known}")
    if not spec.map:
        if dot:
            raise _Error(at, f"{name} has no keys")
        return name, "", spec
    if dot and not key and reader.text.startswith(("'", '"'), reader.at):
        key = reader.quoted()
    if not key:
        raise _Error(at, f"{name} needs a key: {name}.KEY")
    if key.startswith("$") or "." in key:
        # No stored key has them (core/validation.py), and a store would
        # read a dotted key as a path into the map.
        raise _Error(at, f"{name} keys never start with '$' or contain '.'")
    return name, key, spec


def _value(field: str, spec: FieldSpec, value: str, at: int) -> str | datetime:
    """``value`` as ``field`` holds it: a datetime, an enum's canonical
    value, or the string itself."""
    if spec.type == "timestamp":
        zulu = value[:-1] + "+00:00" if value.endswith(("z", "Z")) else value
        try:
            moment = datetime.fromisoformat(zulu)
        except ValueError:
            raise _Error(
                at,
                f"{field} needs an RFC 3339 timestamp with a zone, e.g. "
                f'"2026-01-01T00:00:00Z", not {value[:60]!r}',
            ) from None
        if moment.tzinfo is None:
            raise _Error(
                at,
                f"{field} needs an RFC 3339 timestamp with a zone: {value[:60]!r} needs "
                "an offset (Z or +hh:mm)",
            )
        return moment
    if spec.type == "enum" and spec.values is not None:
        for canonical, spellings in spec.values.items():
            if value.upper() in (s.upper() for s in spellings):
                return canonical
        accepted = ", ".join(s[0] for s in spec.values.values())
        raise _Error(at, f"{field} is one of {accepted}, not {value[:60]!r}")
    return value


def _excerpt(text: str, at: int) -> str:
    """The filter around ``at``, with a marker where it went wrong."""
    return repr(f"{text[max(at - 20, 0) : at]}>>{text[at : at + 20]}")
