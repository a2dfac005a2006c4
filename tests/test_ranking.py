"""The memory index's ranking, pure: candidates and a tuning in, scores out."""

from __future__ import annotations

import pytest

from service.memory.lexical import LexicalHit
from service.memory.ranking import (
    Candidates,
    Ranked,
    SearchTuning,
    by_dense,
    by_lexical,
    fuse,
    text_key,
)


def hit(doc_id: str, score: float, normalized: float) -> LexicalHit:
    return LexicalHit(doc_id=doc_id, score=score, normalized=normalized)


# "a" is found by both sides, "b" only by the dense side (and shares no term
# with the query), "c" only by BM25 (its cosine computed once pooled), "d"
# by the dense side with a negative cosine and a term scored once pooled.
CANDIDATES = Candidates(
    dense=[("b", 0.9), ("a", 0.5), ("d", -0.2)],
    lexical=[hit("c", 6.0, 0.6), hit("a", 2.0, 0.2)],
    cosine={"a": 0.5, "b": 0.9, "c": 0.1, "d": -0.2},
    bm25={"c": hit("c", 6.0, 0.6), "a": hit("a", 2.0, 0.2), "d": hit("d", 1.0, 0.1)},
)


def test_pool_keeps_each_id_once_dense_side_first() -> None:
    assert Candidates.pool(CANDIDATES.dense, CANDIDATES.lexical) == ["b", "a", "d", "c"]
    assert Candidates.pool([], []) == []


def test_linear_fusion_weighs_absolute_signals() -> None:
    ranked = fuse(CANDIDATES, SearchTuning(dense_weight=0.3))
    scores = {r.memory_id: r.score for r in ranked}
    assert scores["a"] == pytest.approx(0.3 * 0.5 + 0.7 * 0.2)
    assert scores["b"] == pytest.approx(0.3 * 0.9)  # no shared term: BM25 counts 0
    assert scores["c"] == pytest.approx(0.3 * 0.1 + 0.7 * 0.6)
    assert scores["d"] == pytest.approx(0.7 * 0.1)  # a negative cosine counts 0
    assert [r.memory_id for r in ranked] == ["c", "a", "b", "d"]
    by_id = {r.memory_id: r for r in ranked}
    # The signals are reported raw: the cosine as it is, BM25 unnormalised.
    assert by_id["d"] == Ranked("d", pytest.approx(0.07), -0.2, 1.0)
    assert by_id["b"].lexical is None
    assert by_id["c"].dense == pytest.approx(0.1)


def test_dense_weight_moves_the_order() -> None:
    dense_only = fuse(CANDIDATES, SearchTuning(dense_weight=1.0))
    assert [r.memory_id for r in dense_only] == ["b", "a", "c", "d"]
    lexical_only = fuse(CANDIDATES, SearchTuning(dense_weight=0.0))
    assert [r.memory_id for r in lexical_only][:2] == ["c", "a"]


def test_a_pooled_id_without_a_cosine_counts_zero() -> None:
    candidates = Candidates(
        dense=[], lexical=[hit("x", 3.0, 0.5)], cosine={}, bm25={"x": hit("x", 3.0, 0.5)}
    )
    [only] = fuse(candidates, SearchTuning(dense_weight=0.4))
    assert only == Ranked("x", pytest.approx(0.6 * 0.5), 0.0, 3.0)


def test_a_zero_bm25_is_no_lexical_signal() -> None:
    candidates = Candidates(
        dense=[("x", 0.8)], lexical=[], cosine={"x": 0.8}, bm25={"x": hit("x", 0.0, 0.0)}
    )
    assert fuse(candidates, SearchTuning())[0].lexical is None


def test_reciprocal_rank_fusion_sums_the_ranks_of_the_sides() -> None:
    ranked = fuse(CANDIDATES, SearchTuning(fusion="rrf", rrf_k=60))
    scores = {r.memory_id: r.score for r in ranked}
    assert scores["a"] == pytest.approx(1 / 62 + 1 / 62)  # second on both sides
    assert scores["b"] == pytest.approx(1 / 61)
    assert scores["c"] == pytest.approx(1 / 61)
    assert scores["d"] == pytest.approx(1 / 63)  # scored by BM25 once pooled, not ranked there
    assert [r.memory_id for r in ranked] == ["a", "b", "c", "d"]  # ties by memory id
    # Unlike linear fusion, the top score says nothing of how good the match is.
    weak = Candidates(
        dense=[("z", 0.01)], lexical=[hit("z", 0.1, 0.01)], cosine={"z": 0.01}, bm25={}
    )
    assert fuse(weak, SearchTuning(fusion="rrf"))[0].score == pytest.approx(2 / 61)


def test_single_side_modes_score_by_their_own_signal() -> None:
    assert by_dense([("b", 0.9), ("d", -0.2)]) == [
        Ranked("b", 0.9, 0.9, None),
        Ranked("d", -0.2, -0.2, None),
    ]
    assert by_lexical([hit("c", 6.0, 0.6)]) == [Ranked("c", 0.6, None, 6.0)]
    assert by_dense([]) == []
    assert by_lexical([]) == []


def test_text_key_ignores_case_and_spacing() -> None:
    assert text_key("The user  likes\tJAZZ. ") == text_key("the user likes jazz.")
    assert text_key("The user likes jazz.") != text_key("The user likes jazz!")
