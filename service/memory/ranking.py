"""How the memory index ranks: each candidate's score from its dense and
BM25 signals under a ``SearchTuning``. Pure: no Chroma, no caches.

A search pools the ``candidates`` best of each side; every pooled memory
gets both signals and, with linear fusion (the default), the score

    score = dense_weight * max(cosine, 0) + (1 - dense_weight) * bm25 / bm25_max(query)

where ``bm25_max`` is the most the query could score (every term,
saturated). Both parts are absolute, so ``min_score`` is a relevance floor
that means the same for every query. Two bonuses are then added, from what
each memory's text says of itself (``Traits``, read when it is cached):

- **subject**: ``subject_weight`` when the memory's subject (its first
  word after a bracketed prefix such as a date, "[8 May] Caroline: ...",
  "Anna lives in Paris") is a name the query says (a capitalised query
  word): a question about Caroline prefers what Caroline said or what is
  about her over what others said to her.
- **reply**: ``reply_weight`` times the fused score of the memory written
  just before it in sequence, when that one asks a question (its text,
  less a trailing bracketed note, ends with "?"): the answer to "what
  books do you have?" is found by the question's words, which it rarely
  repeats. Only memories written in sequence know their predecessor
  (``predecessor``), and only pooled ones count.
- **time**: ``time_weight`` when the query asks for a time or a duration
  (it begins "when", "what date/day/month/year/time", "how long", "in
  which/what year/month": ``asks_time``) and the memory's text, less its
  bracketed prefix, states one ("yesterday", "last week", "two years
  ago", "in June", "2022": ``_TIME``): the answer to "when did Anna move?"
  is the memory that says when ("[8 May] Anna: we moved last week"), with
  the date of its prefix, rather than one that talks of moving. English
  only, like the analyzer's stopwords and stemmer.

A bonus only adds to a pooled memory's score, so a score may pass 1.
Reciprocal rank fusion
(``fusion="rrf"``, the sum of 1 / (rrf_k + rank) over the sides that found
a memory) gives the top hit the same score however poor it is, and ranked
worse on LoCoMo (docs/benchmarks.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from service.memory.lexical import Analyzer, LexicalHit

__all__ = [
    "Candidates",
    "Ranked",
    "SearchTuning",
    "Traits",
    "asks_time",
    "by_dense",
    "by_lexical",
    "fuse",
    "predecessor",
    "query_names",
    "text_key",
    "traits_of",
]


@dataclass(frozen=True, slots=True)
class SearchTuning:
    """Ranking parameters; the defaults were chosen on LoCoMo conversations
    1-2 (docs/benchmarks.md)."""

    dense_weight: float = 0.3
    candidates: int = 50  # from each side before fusion
    k1: float = 1.2
    b: float = 0.5
    context_weight: float = 0.2  # BM25: a context word counts this much of a text word
    dedupe_text: bool = True  # hits with the same text (case, spaces aside) collapse
    fusion: str = "linear"  # or "rrf": reciprocal rank fusion, sum of 1 / (rrf_k + rank)
    rrf_k: int = 60
    subject_weight: float = 0.05  # linear fusion: added when the subject is a name the query says
    reply_weight: float = 0.3  # linear fusion: share of the asking predecessor's score added
    time_weight: float = 0.1  # linear fusion: added when the query asks when and the memory says


@dataclass(frozen=True, slots=True)
class Ranked:
    """A memory id with its score and the signals behind it."""

    memory_id: str
    score: float
    dense: float | None  # cosine, None when the dense side was not asked
    lexical: float | None  # raw BM25, None when the query shares no term with it


@dataclass(frozen=True, slots=True)
class Candidates:
    """What each side found for one query, and both signals of every
    memory either side found (``pool()``)."""

    dense: Sequence[tuple[str, float]]  # (memory id, cosine), best first
    lexical: Sequence[LexicalHit]  # best first
    cosine: Mapping[str, float]  # of the pooled ids the vectors know
    bm25: Mapping[str, LexicalHit]  # of the pooled ids that share a term with the query
    names: frozenset[str] = frozenset()  # the query's names, as index terms (``query_names``)
    traits: Mapping[str, Traits] = field(default_factory=dict)  # of the pooled ids
    asks_time: bool = False  # the query asks for a time or a duration (``asks_time``)

    @staticmethod
    def pool(dense: Sequence[tuple[str, float]], lexical: Sequence[LexicalHit]) -> list[str]:
        """The ids of both sides, once each: the dense side's first."""
        return list(dict.fromkeys([i for i, _ in dense] + [h.doc_id for h in lexical]))


def by_dense(found: Sequence[tuple[str, float]]) -> list[Ranked]:
    """Dense mode: the cosine is the score."""
    return [Ranked(memory_id, cos, cos, None) for memory_id, cos in found]


def by_lexical(found: Sequence[LexicalHit]) -> list[Ranked]:
    """Lexical mode: the normalised BM25 is the score."""
    return [Ranked(h.doc_id, h.normalized, None, h.score) for h in found]


def fuse(candidates: Candidates, tuning: SearchTuning) -> list[Ranked]:
    """Hybrid mode: every pooled memory scored from both signals (linear
    fusion with its bonuses, or reciprocal rank fusion with
    ``fusion="rrf"``), best first, ties by memory id."""
    dense_rank = {i: rank for rank, (i, _) in enumerate(candidates.dense, 1)}
    lexical_rank = {h.doc_id: rank for rank, h in enumerate(candidates.lexical, 1)}
    base: dict[str, float] = {}
    for memory_id in Candidates.pool(candidates.dense, candidates.lexical):
        if tuning.fusion == "rrf":
            base[memory_id] = sum(
                1.0 / (tuning.rrf_k + ranks[memory_id])
                for ranks in (dense_rank, lexical_rank)
                if memory_id in ranks
            )
        else:
            hit = candidates.bm25.get(memory_id)
            norm = hit.normalized if hit is not None else 0.0
            cos = max(candidates.cosine.get(memory_id, 0.0), 0.0)
            base[memory_id] = tuning.dense_weight * cos + (1.0 - tuning.dense_weight) * norm
    scores = base if tuning.fusion == "rrf" else _with_bonuses(base, candidates, tuning)
    out = []
    for memory_id, score in scores.items():
        hit = candidates.bm25.get(memory_id)
        raw = hit.score if hit is not None and hit.score > 0 else None
        out.append(Ranked(memory_id, score, candidates.cosine.get(memory_id, 0.0), raw))
    return sorted(out, key=lambda r: (-r.score, r.memory_id))


def _with_bonuses(
    base: Mapping[str, float], candidates: Candidates, tuning: SearchTuning
) -> dict[str, float]:
    """The fused scores plus the subject, reply and time bonuses (module docstring)."""
    traits = candidates.traits
    # The best fused score of a pooled question, by its text's key.
    asked: dict[int, float] = {}
    for memory_id, score in base.items():
        t = traits.get(memory_id)
        if t is not None and t.asks:
            asked[t.key] = max(score, asked.get(t.key, 0.0))
    out = dict(base)
    for memory_id, t in traits.items():
        if memory_id not in out:
            continue
        if t.subject and t.subject in candidates.names:
            out[memory_id] += tuning.subject_weight
        if t.follows is not None:
            out[memory_id] += tuning.reply_weight * asked.get(t.follows, 0.0)
        if t.dated and candidates.asks_time:
            out[memory_id] += tuning.time_weight
    return out


@dataclass(frozen=True, slots=True)
class Traits:
    """What the ranking's bonuses read of a memory, from its text and context."""

    key: int  # hash of ``text_key(text)``
    subject: str  # the index term of its first word if that is capitalised, else ""
    asks: bool  # its text, less a trailing bracketed note, ends with "?"
    follows: int | None  # ``key`` of the memory written just before it in sequence
    dated: bool = False  # its text, less a bracketed prefix, states a time (``_TIME``)


_PREFIX = re.compile(r"\s*(?:\[[^\]]*\]\s*)?")  # a leading bracketed prefix: "[8 May, 2023] "
_CAPITALISED = re.compile(r"[^\W\d_][\w'\u2019-]*")  # a word; \u2019 is the typographic apostrophe
_NOTE = re.compile(r"(?:\s*\[[^\]]*\])+\s*$")  # trailing bracketed notes: " [shares a photo: ...]"
_UNIT = (
    r"(?:day|week|weekend|month|year|night|morning|evening|afternoon|summer|winter|spring"
    r"|fall|autumn|monday|tuesday|wednesday|thursday|friday|saturday|sunday)s?"
)
_COUNT = r"(?:\d+|an?|one|two|three|four|five|six|seven|eight|nine|ten|few|couple of|several)"
# A time or a duration a text states: relative ("yesterday", "last week",
# "two years ago"), a year, or a month by its capitalised name ("may" the
# verb is not one).
_TIME = re.compile(
    rf"(?i:\b(?:yesterday|today|tonight|tomorrow|recently|ago"
    rf"|(?:last|next|this|past|coming|other)\s+{_UNIT}|{_COUNT}\s+{_UNIT}|(?:19|20)\d\d)\b)"
    r"|\b(?:January|February|March|April|May|June|July|August|September|October|November"
    r"|December)\b"
)
_ASKS_TIME = re.compile(
    r"\s*(?:when|what\s+(?:date|day|month|year|time)|how\s+long"
    r"|in\s+(?:which|what)\s+(?:year|month))\b",
    re.IGNORECASE,
)


def traits_of(text: str, context: str, analyzer: Analyzer) -> Traits:
    """A memory's ``Traits``."""
    start = _PREFIX.match(text).end()  # type: ignore[union-attr]
    first = _CAPITALISED.match(text, start)
    subject = ""
    if first is not None and first.group()[0].isupper():
        subject = next(iter(analyzer.terms(first.group())), "")
    before = predecessor(context)
    return Traits(
        key=hash(text_key(text)),
        subject=subject,
        asks=_NOTE.sub("", text).rstrip().endswith("?"),
        follows=hash(text_key(before)) if before else None,
        dated=_TIME.search(text, start) is not None,
    )


def asks_time(query: str) -> bool:
    """Whether the query asks for a time or a duration: it begins "when",
    "what date" (day, month, year, time), "how long" or "in which year"
    (or month)."""
    return _ASKS_TIME.match(query) is not None


def predecessor(context: str) -> str:
    """The text of the memory written just before this one, from a context
    as a sequential write gives it (``memories.with_neighbours``: the texts
    of the two memories before it and the one after it, a line each): the
    line before the last. "" when there is none (a context of one line is
    the first memory's successor). The last memory of a sequence has no
    successor in its context, so it is given its second predecessor
    instead: a miss, which lends a bonus only when that one asks."""
    lines = context.split("\n")
    return lines[-2] if len(lines) >= 2 else ""


def query_names(query: str, analyzer: Analyzer) -> frozenset[str]:
    """The index terms of the query's capitalised words (its names; a
    capitalised question word is a stopword and drops out)."""
    return frozenset(
        term
        for word in _CAPITALISED.findall(query)
        if word[0].isupper()
        for term in analyzer.terms(word)
    )


def text_key(text: str) -> str:
    """What two memories share when ``dedupe_text`` collapses them: the
    text, lower case, with its runs of white space as one space."""
    return " ".join(text.lower().split())
