"""The AIP-160 subset of list filters: what parses, and errors that point at
the character where a filter goes wrong (pure functions, no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.core.errors import InvalidArgument
from service.core.filters import Clause, FieldKind, canonical, parse_filter

FIELDS = {
    "user_id": FieldKind.TEXT,
    "assistant_id": FieldKind.TEXT,
    "metadata": FieldKind.MAP,
    "update_time": FieldKind.TIME,
}


def test_comparisons_joined_by_and() -> None:
    clauses = parse_filter(
        'metadata.ticket = "123" AND user_id=alice AND update_time >= "2025-01-01T00:00:00Z"'
        " AND update_time < '2025-02-01T00:00:00+01:00'",
        FIELDS,
    )
    assert clauses == [
        Clause("metadata.ticket", "=", "123"),
        Clause("user_id", "=", "alice"),
        Clause("update_time", ">=", datetime(2025, 1, 1, tzinfo=UTC)),
        Clause("update_time", "<", datetime(2025, 2, 1, tzinfo=timezone(timedelta(hours=1)))),
    ]
    assert parse_filter("", FIELDS) == []
    assert parse_filter("   ", FIELDS) == []


def test_quoted_values_keep_spaces_and_escapes() -> None:
    [clause] = parse_filter(r'metadata.note = "say \"hi\" \\ bye"', FIELDS)
    assert clause.value == 'say "hi" \\ bye'
    [clause] = parse_filter("metadata.case-id = 'a b'", FIELDS)
    assert clause == Clause("metadata.case-id", "=", "a b")


def test_canonical_form_is_stable_for_page_tokens() -> None:
    one = canonical(parse_filter('user_id = "a"  AND update_time > 2025-01-01T00:00:00Z', FIELDS))
    two = canonical(parse_filter("user_id=a AND update_time>'2025-01-01T00:00:00+00:00'", FIELDS))
    assert one == two


@pytest.mark.parametrize(
    ("text", "position", "needle"),
    [
        ('metadata.ticket = "123', 19, "never closed"),
        ('user_id > "a"', 9, "only be compared with '='"),
        ("foo = 1", 1, "'foo' cannot be filtered on"),
        ("metadata = x", 1, "metadata.KEY"),
        ("user_id = a OR user_id = b", 13, "OR is not supported"),
        ("user_id = a user_id = b", 13, "expected AND"),
        ("NOT user_id = a", 1, "NOT is not supported"),
        ("-user_id = a", 1, "negation"),
        ("(user_id = a)", 1, "parentheses"),
        ("user_id", 8, "expected an operator"),
        ("user_id =", 10, "expected a value"),
        ("user_id != a", 9, "'!=' is not supported"),
        ("user_id : a", 9, "':' is not supported"),
        ("update_time > yesterday", 15, "RFC 3339"),
        ("update_time > 2025-01-01", 15, "needs an offset"),
        ("update_time > 2025-01-01T00:00:00", 15, "needs an offset"),
    ],
)
def test_errors_point_at_the_offending_character(text: str, position: int, needle: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_filter(text, FIELDS)
    message = caught.value.message
    assert caught.value.field == "filter"
    assert f"at character {position}:" in message, message
    assert needle in message, message


def test_limits() -> None:
    with pytest.raises(InvalidArgument, match="limit is 2,000"):
        parse_filter("user_id = " + "a" * 2000, FIELDS)
    many = " AND ".join(["user_id = a"] * 17)
    with pytest.raises(InvalidArgument, match="at most 16 comparisons"):
        parse_filter(many, FIELDS)
