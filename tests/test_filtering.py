"""The AIP-160 subset of list and search filters (core/filtering.py) over the
field tables of ListThreads and of ListMemories/SearchMemories: what parses,
and errors that point at the character where a filter goes wrong (pure
functions, no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.core.errors import InvalidArgument
from service.core.filtering import Comparison, parse_filter
from service.core.threads import FILTERS
from service.memory.filters import parse_memory_filter


def _threads(text: str) -> list[Comparison]:
    return list(parse_filter(text, FILTERS).comparisons)


def test_comparisons_joined_by_and() -> None:
    comparisons = _threads(
        'metadata.ticket = "123" AND user_id=alice AND update_time >= "2025-01-01T00:00:00Z"'
        " AND update_time < '2025-02-01T00:00:00+01:00'"
    )
    assert comparisons == [
        Comparison("metadata", "ticket", "=", "123"),
        Comparison("user_id", "", "=", "alice"),
        Comparison("update_time", "", ">=", datetime(2025, 1, 1, tzinfo=UTC)),
        Comparison(
            "update_time", "", "<", datetime(2025, 2, 1, tzinfo=timezone(timedelta(hours=1)))
        ),
    ]
    assert comparisons[0].name == "metadata.ticket"
    assert _threads("") == []
    assert _threads("   ") == []
    assert not parse_filter("   ", FILTERS)


def test_quoted_values_keep_spaces_and_escapes() -> None:
    [comparison] = _threads(r'metadata.note = "say \"hi\" \\ bye"')
    assert comparison.value == 'say "hi" \\ bye'
    [comparison] = _threads("metadata.case-id = 'a b'")
    assert comparison == Comparison("metadata", "case-id", "=", "a b")


def test_quoted_keys_enum_spellings_and_not_equal() -> None:
    parsed = parse_memory_filter('metadata."the team" = \'EU "west"\' AND kind != episodic')
    assert [(c.field, c.key, c.op, c.value) for c in parsed.comparisons] == [
        ("metadata", "the team", "=", 'EU "west"'),
        ("kind", "", "!=", "episodic"),
    ]
    assert not parse_memory_filter("   ")
    # Bare times parse as quoted ones do (a bare value runs to the next space).
    [bare] = parse_memory_filter("create_time >= 2026-01-01T00:00:00z").comparisons
    assert bare.value == datetime(2026, 1, 1, tzinfo=UTC)


def test_canonical_form_is_stable_for_page_tokens() -> None:
    one = parse_filter('user_id = "a"  AND update_time > 2025-01-01T00:00:00Z', FILTERS)
    two = parse_filter("user_id=a AND update_time>'2025-01-01T00:00:00+00:00'", FILTERS)
    assert one.canonical() == two.canonical()
    # ListThreads page tokens issued before the parsers merged stay valid:
    # the canonical form kept its shape.
    assert one.canonical() == [
        ["user_id", "=", "a"],
        ["update_time", ">", "2025-01-01T00:00:00+00:00"],
    ]
    spelled = parse_memory_filter("kind = MEMORY_KIND_FACT AND metadata.source = 'crm'")
    same = parse_memory_filter('kind=fact AND metadata.source="crm"')
    assert spelled.canonical() == same.canonical()
    assert spelled.canonical() != parse_memory_filter("kind = FACT").canonical()


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
        ("user_id = a)", 12, "parentheses"),
        ("user_id", 8, "expected an operator"),
        ("user_id =", 10, "expected a value"),
        ("user_id != a", 9, "'!=' is not supported"),
        ("user_id : a", 9, "':' is not supported"),
        ("user_id.x = a", 1, "user_id has no keys"),
        ("metadata.a.b = x", 1, "never start with '$' or contain '.'"),
        ("metadata.$where = x", 1, "never start with '$' or contain '.'"),
        ("update_time != 2025-01-01T00:00:00Z", 13, "takes the operators <, <=, =, >, >="),
        ("update_time > yesterday", 15, "RFC 3339"),
        ("update_time > 2025-01-01", 15, "needs an offset"),
        ("update_time > 2025-01-01T00:00:00", 15, "needs an offset"),
    ],
)
def test_errors_point_at_the_offending_character(text: str, position: int, needle: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_filter(text, FILTERS)
    message = caught.value.message
    assert caught.value.field == "filter"
    assert f"at character {position}:" in message, message
    assert needle in message, message


@pytest.mark.parametrize(
    ("text", "position", "says"),
    [
        ("kind = FACT OR kind = MANUAL", 13, "OR is not supported"),
        ("(kind = FACT)", 1, "parentheses are not supported"),
        ("owner = bob", 1, "unknown field 'owner'"),
        ("kind = SECRET", 8, "kind is one of EPISODIC, FACT, MANUAL"),
        ("kind > FACT", 6, "kind takes the operators"),
        ("create_time > 2026-01-01", 15, "RFC 3339 timestamp with a zone"),
        ("metadata = crm", 1, "metadata needs a key"),
        ("kind = FACT kind", 13, "expected AND"),
        ("kind =", 7, "expected a value, found the end"),
        ("kind ~ FACT", 6, "expected an operator"),
    ],
)
def test_memory_errors_say_what_is_wrong_and_where(text: str, position: int, says: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_memory_filter(text)
    message = caught.value.message
    assert says in message, message
    assert f"at character {position}:" in message, message
    assert "for example: kind = FACT" in message, message
    assert caught.value.field == "filter"


def test_limits() -> None:
    with pytest.raises(InvalidArgument, match="limit is 2,000"):
        parse_filter("user_id = " + "a" * 2000, FILTERS)
    many = " AND ".join(["user_id = a"] * 17)
    with pytest.raises(InvalidArgument, match="at most 16 comparisons"):
        parse_filter(many, FILTERS)
    assert len(parse_memory_filter(" AND ".join(["kind = FACT"] * 16)).comparisons) == 16
    with pytest.raises(InvalidArgument, match="NUL"):
        parse_memory_filter("metadata.source = a\x00b")
