"""The memory index's ranking, pure: candidates and a tuning in, scores out."""

from __future__ import annotations

import pytest

from service.memory.lexical import Analyzer, LexicalHit
from service.memory.memories import with_neighbours
from service.memory.ports import MemoryRecord
from service.memory.ranking import (
    Candidates,
    Ranked,
    SearchTuning,
    Traits,
    asks_time,
    by_dense,
    by_lexical,
    fuse,
    predecessor,
    query_names,
    text_key,
    traits_of,
)

ANALYZER = Analyzer()


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


# Two memories equally relevant by their signals; "said" is Anna's own.
EVEN = Candidates(
    dense=[("heard", 0.5), ("said", 0.5)],
    lexical=[hit("heard", 2.0, 0.4), hit("said", 2.0, 0.4)],
    cosine={"heard": 0.5, "said": 0.5},
    bm25={"heard": hit("heard", 2.0, 0.4), "said": hit("said", 2.0, 0.4)},
    names=query_names("Where did Anna move?", ANALYZER),
    traits={
        "heard": traits_of("[1 May] Ben: Anna moved, right?", "", ANALYZER),
        "said": traits_of("[1 May] Anna: I moved to Lisbon.", "", ANALYZER),
    },
)


def test_a_memory_whose_subject_the_query_names_gets_the_subject_bonus() -> None:
    tuning = SearchTuning(subject_weight=0.15)
    scores = {r.memory_id: r.score for r in fuse(EVEN, tuning)}
    base = 0.3 * 0.5 + 0.7 * 0.4
    assert scores == {"said": pytest.approx(base + 0.15), "heard": pytest.approx(base)}
    assert [r.memory_id for r in fuse(EVEN, tuning)] == ["said", "heard"]
    # No bonus without it, nor for a query that names nobody, nor under RRF.
    assert fuse(EVEN, SearchTuning(subject_weight=0.0))[0].score == pytest.approx(base)
    unnamed = Candidates(EVEN.dense, EVEN.lexical, EVEN.cosine, EVEN.bm25, frozenset(), EVEN.traits)
    assert [r.score for r in fuse(unnamed, tuning)] == [pytest.approx(base)] * 2
    rrf = fuse(EVEN, SearchTuning(fusion="rrf"))
    assert rrf[0].score == pytest.approx(1 / 61 + 1 / 61)


def test_an_answer_gets_a_share_of_the_question_before_it() -> None:
    question = "[1 May] Ben: What books do you keep in your library?"
    answer_context = f"[1 May] Ben: Hi!\n{question}\n[1 May] Ben: Nice."
    candidates = Candidates(
        dense=[("q", 0.8), ("a", 0.3)],
        lexical=[hit("q", 8.0, 0.8)],
        cosine={"q": 0.8, "a": 0.3},
        bm25={"q": hit("q", 8.0, 0.8), "a": hit("a", 0.0, 0.0)},
        traits={
            "q": traits_of(question, "", ANALYZER),
            "a": traits_of("[1 May] Anna: Mostly atlases and poetry.", answer_context, ANALYZER),
        },
    )
    q_score = 0.3 * 0.8 + 0.7 * 0.8
    scores = {r.memory_id: r.score for r in fuse(candidates, SearchTuning(reply_weight=0.3))}
    assert scores == {"q": pytest.approx(q_score), "a": pytest.approx(0.3 * 0.3 + 0.3 * q_score)}
    assert fuse(candidates, SearchTuning(reply_weight=0.0))[1].score == pytest.approx(0.09)
    # A predecessor that does not ask lends nothing; nor does one outside the pool.
    told = {"q": traits_of("[1 May] Ben: I keep books.", "", ANALYZER), "a": candidates.traits["a"]}
    plain = Candidates(candidates.dense, candidates.lexical, candidates.cosine, candidates.bm25)
    for other in (
        Candidates(
            candidates.dense, candidates.lexical, candidates.cosine, candidates.bm25, traits=told
        ),
        Candidates([("a", 0.3)], [], {"a": 0.3}, {}, traits=candidates.traits),
        plain,
    ):
        assert {r.memory_id: r.score for r in fuse(other, SearchTuning())}["a"] == pytest.approx(
            0.09
        )


def test_traits_read_subject_question_and_predecessor() -> None:
    said = traits_of(
        "[8 May, 2023] Caroline: Would you like it? [shares a photo: a cat]", "", ANALYZER
    )
    assert said.subject == ANALYZER.terms("Caroline")[0]
    assert said.asks
    assert said.follows is None
    assert traits_of("The user likes jazz.", "", ANALYZER) == Traits(
        hash(text_key("The user likes jazz.")), "", False, None
    )
    assert traits_of("anna likes jazz? No.", "", ANALYZER).subject == ""  # not capitalised
    answer = traits_of("Yes!", "Hello.\nDid you go?\nGreat.", ANALYZER)
    assert answer.follows == hash(text_key("Did you go?"))


def test_predecessor_reads_the_context_of_a_sequential_write() -> None:
    texts = [f"turn {i}" for i in range(5)]
    records = with_neighbours(
        [
            MemoryRecord(
                memory_id=f"m{i}", tenant="t", assistant_id="a", user_id="u", text=t, kind="fact"
            )
            for i, t in enumerate(texts)
        ]
    )
    assert predecessor(records[0].context) == ""
    # Every memory that has a successor is told its predecessor.
    for i in range(1, 4):
        assert predecessor(records[i].context) == texts[i - 1]


def test_query_names_are_its_capitalised_words() -> None:
    assert query_names("What did Melanie's kids paint in Lisbon?", ANALYZER) == frozenset(
        ANALYZER.terms("Melanie's Lisbon")
    )
    assert query_names("what did the kids paint?", ANALYZER) == frozenset()


def test_a_question_asking_when_gets_the_time_bonus_on_memories_that_say_when() -> None:
    query = "When did Anna move to Lisbon?"
    said = {
        "when": traits_of("[1 May] Anna: We moved to Lisbon last week.", "", ANALYZER),
        "how": traits_of("[1 May] Anna: Moving to Lisbon was hard.", "", ANALYZER),
    }
    even = Candidates(
        dense=[("how", 0.5), ("when", 0.5)],
        lexical=[hit("how", 2.0, 0.4), hit("when", 2.0, 0.4)],
        cosine={"how": 0.5, "when": 0.5},
        bm25={"how": hit("how", 2.0, 0.4), "when": hit("when", 2.0, 0.4)},
        traits=said,
        asks_time=asks_time(query),
    )
    base = 0.3 * 0.5 + 0.7 * 0.4
    tuning = SearchTuning(subject_weight=0.0, time_weight=0.1)
    assert {r.memory_id: r.score for r in fuse(even, tuning)} == {
        "when": pytest.approx(base + 0.1),
        "how": pytest.approx(base),
    }
    # Nothing for a question that does not ask when, nor with the weight at 0.
    other = Candidates(even.dense, even.lexical, even.cosine, even.bm25, traits=said)
    assert [r.score for r in fuse(other, tuning)] == [pytest.approx(base)] * 2
    unweighted = SearchTuning(subject_weight=0.0, time_weight=0.0)
    assert [r.score for r in fuse(even, unweighted)] == [pytest.approx(base)] * 2


def test_asks_time_reads_the_start_of_the_question() -> None:
    for query in (
        "When did Anna move?",
        "  what date was the party?",
        "What year did Ben start painting?",
        "How long has Anna lived in Lisbon?",
        "In which month did they meet?",
    ):
        assert asks_time(query), query
    for query in ("What did Anna paint?", "Where did Anna move when she left?", "Whence?"):
        assert not asks_time(query), query


def test_a_memory_is_dated_when_its_text_says_a_time() -> None:
    for text in (
        "[8 May, 2023] Anna: I went to a support group yesterday.",
        "[8 May] Anna: We moved two years ago.",
        "Anna moved to Lisbon in June",
        "[1 May] Ben: I have painted since 2016!",
        "Ben: See you next weekend.",
        "Ben: I ran for 3 days.",
    ):
        assert traits_of(text, "", ANALYZER).dated, text
    for text in (
        "[8 May, 2023] Anna: I like jazz.",  # the date of the prefix says when it was written
        "Ben: I may paint the lake.",  # "may" the verb
        "Ben: Mayday, the yesterdays.",
    ):
        assert not traits_of(text, "", ANALYZER).dated, text
