"""How the memory index ranks: each candidate's score from its dense and
BM25 signals under a ``SearchTuning``. Pure: no Chroma, no caches.

A search pools the ``candidates`` best of each side; every pooled memory
gets both signals and, with linear fusion (the default), the score

    score = dense_weight * max(cosine, 0) + (1 - dense_weight) * bm25 / bm25_max(query)

where ``bm25_max`` is the most the query could score (every term,
saturated). Both parts are absolute, so ``min_score`` is a relevance floor
that means the same for every query. Reciprocal rank fusion
(``fusion="rrf"``, the sum of 1 / (rrf_k + rank) over the sides that found
a memory) gives the top hit the same score however poor it is, and ranked
worse on LoCoMo (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.memory.lexical import LexicalHit

__all__ = ["Candidates", "Ranked", "SearchTuning", "by_dense", "by_lexical", "fuse", "text_key"]


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
    fusion, or reciprocal rank fusion with ``fusion="rrf"``), best first,
    ties by memory id."""
    dense_rank = {i: rank for rank, (i, _) in enumerate(candidates.dense, 1)}
    lexical_rank = {h.doc_id: rank for rank, h in enumerate(candidates.lexical, 1)}
    out = []
    for memory_id in Candidates.pool(candidates.dense, candidates.lexical):
        cos = candidates.cosine.get(memory_id, 0.0)
        hit = candidates.bm25.get(memory_id)
        if tuning.fusion == "rrf":
            score = sum(
                1.0 / (tuning.rrf_k + ranks[memory_id])
                for ranks in (dense_rank, lexical_rank)
                if memory_id in ranks
            )
        else:
            norm = hit.normalized if hit is not None else 0.0
            score = tuning.dense_weight * max(cos, 0.0) + (1.0 - tuning.dense_weight) * norm
        raw = hit.score if hit is not None and hit.score > 0 else None
        out.append(Ranked(memory_id, score, cos, raw))
    return sorted(out, key=lambda r: (-r.score, r.memory_id))


def text_key(text: str) -> str:
    """What two memories share when ``dedupe_text`` collapses them: the
    text, lower case, with its runs of white space as one space."""
    return " ".join(text.lower().split())
