"""List and search filters in the subset of AIP-160 Loom accepts:
comparisons joined by ``AND``, each a field, an operator and a value.

    kind = FACT AND metadata.source = "crm" AND create_time >= "2026-01-01T00:00:00Z"

A field is a name (``kind``) or a map key (``metadata.KEY``, or
``metadata."key with spaces"``); operators are ``=``, ``!=``, ``<``,
``<=``, ``>`` and ``>=``; a value is a quoted string (double or single
quotes, backslash escapes) or a bare word (``FACT``, ``2026-01-01``).
``OR``, ``NOT``, parentheses and functions are refused with a message that
says so. Each use names the fields it accepts (``FieldSpec``): their type
(``string``, ``enum`` or ``timestamp``, parsed as RFC 3339 with a zone), the
operators allowed, and for enums the values. Errors are ``InvalidArgument``
naming the request field and the position (1-based) of what is wrong.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from service.core.errors import InvalidArgument

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
MAX_FILTER_CHARS = 2000
MAX_COMPARISONS = 20

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op><=|>=|!=|=|<|>|:)
      | (?P<quoted>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<paren>[()])
      | (?P<word>[^\s=!<>:()"']+)
    )""",
    re.VERBOSE,
)
_OPERATORS: dict[str, Callable[[Any, Any], object]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = {"OR": "OR is not supported; join comparisons with AND", "NOT": "NOT is not supported"}


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


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter: every comparison must hold. ``text`` is what the
    caller sent (page tokens are tied to it)."""

    text: str
    comparisons: tuple[Comparison, ...]

    def __bool__(self) -> bool:
        return bool(self.comparisons)


def compare(op: str, left: object, right: object) -> bool:
    """``left op right`` for comparable values of one type; False when
    ``left`` is None (the field is missing), except for ``!=``."""
    if left is None:
        return op == "!="
    try:
        return bool(_OPERATORS[op](left, right))
    except TypeError:  # values of types that do not order: no match
        return False


class _Parser:
    def __init__(self, text: str, fields: Mapping[str, FieldSpec], name: str, example: str) -> None:
        self.text = text
        self.fields = fields
        self.name = name
        self.example = example
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, 1-based position)
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                if not text[pos:].strip():
                    break
                self.fail(pos + len(text[pos:]) - len(text[pos:].lstrip()), "unexpected character")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind), match.start(kind) + 1))
            pos = match.end()
        self.at = 0

    def fail(self, position: int, problem: str) -> NoReturn:
        hint = f" (e.g. {self.example})" if self.example else ""
        raise InvalidArgument(
            f"{self.name} at position {position}: {problem}; a filter is comparisons joined "
            f"by AND{hint}",
            field=self.name,
        )

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, expected: str) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            self.fail(len(self.text) + 1, f"expected {expected}, found the end")
        self.at += 1
        return token

    def parse(self) -> tuple[Comparison, ...]:
        out = [self.comparison()]
        while self.peek() is not None:
            kind, text, position = self.take("AND")
            if kind != "word" or text != "AND":
                self.fail(position, _RESERVED.get(text, f"expected AND, found {text!r}"))
            out.append(self.comparison())
        if len(out) > MAX_COMPARISONS:
            self.fail(1, f"at most {MAX_COMPARISONS} comparisons are allowed")
        return tuple(out)

    def comparison(self) -> Comparison:
        kind, text, position = self.take("a field name")
        if kind == "paren":
            self.fail(position, "parentheses are not supported")
        if kind != "word" or text in _RESERVED:
            self.fail(position, _RESERVED.get(text, f"expected a field name, found {text!r}"))
        field, key, spec = self.field(text, position)
        kind, op, position = self.take("an operator (=, !=, <, <=, >, >=)")
        if kind != "op" or op == ":":
            self.fail(position, f"expected an operator (=, !=, <, <=, >, >=), found {op!r}")
        if op not in spec.ops:
            allowed = ", ".join(sorted(spec.ops))
            self.fail(position, f"{field} takes the operators {allowed}, not {op}")
        kind, raw, position = self.take("a value")
        if kind not in ("word", "quoted"):
            self.fail(position, f"expected a value, found {raw!r}")
        value = _unquote(raw) if kind == "quoted" else raw
        return Comparison(field, key, op, self.value(field, spec, value, position))

    def field(self, text: str, position: int) -> tuple[str, str, FieldSpec]:
        name, dot, key = text.partition(".")
        spec = self.fields.get(name)
        if spec is None or not _NAME.fullmatch(name):
            known = ", ".join(f"{n}.KEY" if s.map else n for n, s in sorted(self.fields.items()))
            self.fail(position, f"unknown field {text!r}; filter on {known}")
        if spec.map and not dot:
            # metadata."quoted key": the key is the next token, after a "." word
            self.fail(position, f"{name} needs a key, e.g. {name}.source")
        if spec.map and not key:
            kind, raw, _ = self.take("a key")
            if kind != "quoted":
                self.fail(position, f"{name} needs a key, e.g. {name}.source")
            key = _unquote(raw)
        elif not spec.map and dot:
            self.fail(position, f"{name} has no keys")
        return name, key, spec

    def value(self, field: str, spec: FieldSpec, value: str, position: int) -> str | datetime:
        if spec.type == "timestamp":
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                moment = None
            if moment is None or moment.tzinfo is None:
                self.fail(
                    position,
                    f"{field} needs an RFC 3339 timestamp with a zone, e.g. "
                    f'"2026-01-01T00:00:00Z", not {value[:60]!r}',
                )
            return moment
        if spec.type == "enum" and spec.values is not None:
            for canonical, spellings in spec.values.items():
                if value.upper() in (s.upper() for s in spellings):
                    return canonical
            accepted = ", ".join(s[0] for s in spec.values.values())
            self.fail(position, f"{field} is one of {accepted}, not {value[:60]!r}")
        return value


def _unquote(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def parse_filter(
    text: str, fields: Mapping[str, FieldSpec], *, name: str = "filter", example: str = ""
) -> Filter:
    """Parse ``text``; an empty or blank text is the filter that keeps all.
    ``name`` is the request field errors name; ``example`` a filter they show.

    Raises:
        InvalidArgument: too long, or not in the accepted subset (the
            message gives the position and what was expected).
    """
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(
            f"{name} is {len(text):,} characters; the limit is {MAX_FILTER_CHARS:,}", field=name
        )
    if not text.strip():
        return Filter(text, ())
    if "\x00" in text:
        raise InvalidArgument(f"{name} must not contain NUL characters", field=name)
    return Filter(text, _Parser(text, fields, name, example).parse())
