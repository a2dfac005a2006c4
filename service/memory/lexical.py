"""Okapi BM25 over one collection's memories, in this process.

Why in-process: Chroma 1.5.9 refuses sparse-vector indexes (and with them
``ChromaBm25EmbeddingFunction`` and the ``Search`` API) both embedded and in a
single-node ``chroma run`` server ("Sparse vector indexing is not enabled in
local"); they exist only in Chroma Cloud. So the lexical side lives here: an
inverted index per collection, built from Chroma on first use and kept up to
date by the writes of this process (``service.memory._cache`` decides when
it is stale and rebuilds it).

Analysis: lowercase, split on anything that is not a letter or digit, drop
English stopwords, Snowball (Porter 2) stemming with PyStemmer. Scoring is
Okapi BM25 with the Lucene idf ``ln(1 + (N - df + 0.5) / (df + 0.5))``, which
is never negative. The statistics (N, df, the average length) are those of
the scopes a search may see, never of the whole index: a user's scores
depend on that user's memories and the assistant-wide ones alone, so they
cannot tell what another user said. ``BM25Index.search`` also returns each score divided by the
highest score the query could reach (every query term, saturated), a number
in [0, 1) that says how much of the query's information a memory matches and
that can be compared across queries (the fused score and its floor use it).

Not thread-safe: the owner serialises calls (``_cache.py`` holds a lock).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import Stemmer

__all__ = ["STOPWORDS", "Analyzer", "BM25Index", "LexicalHit"]

# A short English list (NLTK's, less the negations, which carry meaning in
# memories: "does not eat meat"); question words are stopwords since every
# query has one and no memory is about "what".
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "s",
        "t",
        "d",
        "ll",
        "m",
        "o",
        "re",
        "ve",
        "y",
        "im",
        "ive",
        "id",
        "youre",
        "youve",
        "hes",
        "shes",
        "thats",
        "whats",
    ]
)

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class Analyzer:
    """Text to index terms: lowercase words, stopwords out, stemmed.

    PyStemmer (the Snowball project's C stemmers) is maintained and about ten
    times faster than the pure-Python ``snowballstemmer``; both give the same
    stems.
    """

    def __init__(self, stopwords: Collection[str] = STOPWORDS, language: str = "english") -> None:
        self._stopwords = frozenset(stopwords)
        self._stemmer = Stemmer.Stemmer(language)
        self._stemmer.maxCacheSize = 100_000

    def terms(self, text: str) -> list[str]:
        """The index terms of ``text``, in order, repeats kept."""
        words = [
            w for w in _WORD.findall(text.lower().replace("'", "")) if w not in self._stopwords
        ]
        return list(self._stemmer.stemWords(words))


@dataclass(frozen=True, slots=True)
class LexicalHit:
    """One document's BM25 score for a query."""

    doc_id: str
    score: float  # raw BM25
    normalized: float  # score / the query's highest reachable score, in [0, 1)


_F32 = npt.NDArray[np.float32]


class BM25Index:
    """An inverted index with Okapi BM25 scoring and a scope per document.

    Each document has a ``scope`` string (Loom puts the memory's user id
    there, "" for assistant-wide memories); searches name the scopes they may
    see, never return a document of another scope, and score with the
    statistics of those scopes only (each scope keeps its document count,
    total length and document frequencies). A document may carry
    ``context``: words indexed with it at ``context_weight`` (a term found
    only in the context counts that fraction of an occurrence).

    Removal leaves a tombstone that no search returns; the postings are
    compacted once tombstones are half the slots.
    """

    def __init__(
        self,
        *,
        k1: float = 1.2,
        b: float = 0.75,
        context_weight: float = 0.5,
        analyzer: Analyzer | None = None,
    ) -> None:
        self.k1 = k1
        self.b = b
        self.context_weight = context_weight
        self.analyzer = analyzer or Analyzer()
        self._slot_of: dict[str, int] = {}
        self._ids: list[str] = []
        self._terms: list[dict[int, float]] = []  # per slot: term id -> weighted tf
        self._length = np.zeros(64, dtype=np.float32)
        self._alive = np.zeros(64, dtype=bool)
        self._scope = np.zeros(64, dtype=np.int32)
        self._scope_codes: dict[str, int] = {}
        # Per scope code: live documents, their total length, and term id -> df.
        self._scope_live: list[int] = []
        self._scope_length: list[float] = []
        self._scope_df: list[dict[int, int]] = []
        self._vocab: dict[str, int] = {}
        self._df: list[int] = []
        self._post_slots: list[list[int]] = []
        self._post_tfs: list[list[float]] = []
        self._post_cache: dict[int, tuple[npt.NDArray[np.int64], _F32]] = {}
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def nbytes(self) -> int:
        """About how much memory the index holds, from its counts: about 250
        bytes a slot, 72 a posting and 505 a distinct term (fitted with
        tracemalloc on CPython 3.11 over 1,000 and 10,000 short texts)."""
        postings = sum(len(slots) for slots in self._post_slots)
        return 250 * len(self._ids) + 72 * postings + 505 * len(self._vocab)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._slot_of

    def add(self, doc_id: str, text: str, scope: str, context: str = "") -> None:
        """Index a document, replacing any document with the same id."""
        self.remove(doc_id)
        weighted: dict[str, float] = dict(Counter(self.analyzer.terms(text)))
        if context and self.context_weight > 0:
            for term in self.analyzer.terms(context):
                weighted[term] = weighted.get(term, 0.0) + self.context_weight
        slot = len(self._ids)
        self._grow(slot + 1)
        self._ids.append(doc_id)
        self._slot_of[doc_id] = slot
        code = self._scope_code(scope)
        scope_df = self._scope_df[code]
        tfs: dict[int, float] = {}
        for term, tf in weighted.items():
            tid = self._vocab.get(term)
            if tid is None:
                tid = self._vocab[term] = len(self._df)
                self._df.append(0)
                self._post_slots.append([])
                self._post_tfs.append([])
            self._df[tid] += 1
            scope_df[tid] = scope_df.get(tid, 0) + 1
            self._post_slots[tid].append(slot)
            self._post_tfs[tid].append(tf)
            self._post_cache.pop(tid, None)
            tfs[tid] = tf
        self._terms.append(tfs)
        length = float(sum(weighted.values()))
        self._length[slot] = length
        self._alive[slot] = True
        self._scope[slot] = code
        self._live += 1
        self._scope_live[code] += 1
        self._scope_length[code] += length

    def add_many(self, docs: Iterable[tuple[str, str, str, str]]) -> None:
        """``add`` for each (doc_id, text, scope, context)."""
        for doc_id, text, scope, context in docs:
            self.add(doc_id, text, scope, context)

    def remove(self, doc_id: str) -> bool:
        """Forget a document; False if it was not indexed."""
        slot = self._slot_of.pop(doc_id, None)
        if slot is None:
            return False
        code = int(self._scope[slot])
        scope_df = self._scope_df[code]
        for tid in self._terms[slot]:
            self._df[tid] -= 1
            left = scope_df[tid] - 1
            if left:
                scope_df[tid] = left
            else:
                del scope_df[tid]
        self._terms[slot] = {}
        self._alive[slot] = False
        self._live -= 1
        self._scope_live[code] -= 1
        self._scope_length[code] -= float(self._length[slot])
        self._length[slot] = 0.0
        if len(self._ids) > 1024 and self._live * 2 < len(self._ids):
            self._compact()
        return True

    def search(self, query: str, scopes: Collection[str], limit: int) -> list[LexicalHit]:
        """The ``limit`` best documents of those ``scopes`` for ``query``,
        best first, scored with those scopes' statistics; documents that
        match no query term are left out."""
        codes = self._codes(scopes)
        scores, upper = self._scores(query, codes)
        if scores is None or limit <= 0:
            return []
        scores *= np.isin(self._scope[: len(self._ids)], codes)
        found = int(np.count_nonzero(scores > 0))
        if found == 0:
            return []
        n = min(limit, found)
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [
            LexicalHit(self._ids[i], float(scores[i]), float(scores[i]) / upper)
            for i in top
            if scores[i] > 0
        ]

    def score(
        self, query: str, doc_ids: Iterable[str], scopes: Collection[str]
    ) -> dict[str, LexicalHit]:
        """BM25 of ``query`` for those documents of those ``scopes``, with
        the scopes' statistics (0 when no term matches); ids that are not
        indexed, or of another scope, are left out."""
        codes = self._codes(scopes)
        allowed = set(codes.tolist())
        wanted = [
            (d, slot)
            for d in doc_ids
            if (slot := self._slot_of.get(d)) is not None and int(self._scope[slot]) in allowed
        ]
        scores, upper = self._scores(query, codes)
        if scores is None:
            return {d: LexicalHit(d, 0.0, 0.0) for d, _ in wanted}
        return {d: LexicalHit(d, float(scores[s]), float(scores[s]) / upper) for d, s in wanted}

    # -- internals -----------------------------------------------------------

    def _scores(self, query: str, codes: npt.NDArray[np.int32]) -> tuple[_F32 | None, float]:
        """Scores of every slot (dead ones 0) under the statistics of the
        scopes ``codes`` (slots of other scopes are scored too, for the
        caller to mask), and the query's upper bound under them."""
        terms = set(self.analyzer.terms(query))
        scopes = [int(c) for c in codes]
        n = sum(self._scope_live[c] for c in scopes)
        if not terms or n == 0:
            return None, 1.0
        avgdl = max(sum(self._scope_length[c] for c in scopes) / n, 1e-6)
        k1, b = self.k1, self.b
        size = len(self._ids)
        scores = np.zeros(size, dtype=np.float32)
        norm = k1 * (1.0 - b + b * self._length[:size] / avgdl)
        upper = 0.0
        for term in terms:
            tid = self._vocab.get(term)
            df = sum(self._scope_df[c].get(tid, 0) for c in scopes) if tid is not None else 0
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            upper += idf * (k1 + 1.0)
            if tid is None or df == 0:
                continue
            slots, tfs = self._postings(tid)
            scores[slots] += idf * tfs * (k1 + 1.0) / (tfs + norm[slots])
        scores *= self._alive[:size]
        return scores, max(upper, 1e-9)

    def _postings(self, tid: int) -> tuple[npt.NDArray[np.int64], _F32]:
        cached = self._post_cache.get(tid)
        if cached is None:
            cached = (
                np.asarray(self._post_slots[tid], dtype=np.int64),
                np.asarray(self._post_tfs[tid], dtype=np.float32),
            )
            self._post_cache[tid] = cached
        return cached

    def _codes(self, scopes: Collection[str]) -> npt.NDArray[np.int32]:
        """The codes of those scopes that have ever held a document, once each."""
        found = {self._scope_codes[s] for s in scopes if s in self._scope_codes}
        return np.asarray(sorted(found), dtype=np.int32)

    def _scope_code(self, scope: str) -> int:
        code = self._scope_codes.get(scope)
        if code is None:
            code = self._scope_codes[scope] = len(self._scope_codes)
            self._scope_live.append(0)
            self._scope_length.append(0.0)
            self._scope_df.append({})
        return code

    def _grow(self, size: int) -> None:
        if size <= len(self._length):
            return
        capacity = max(size, len(self._length) * 2)
        for name in ("_length", "_alive", "_scope"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _compact(self) -> None:
        """Drop tombstones: renumber the live slots and rebuild the postings."""
        live = [(self._ids[s], s) for s in range(len(self._ids)) if self._alive[s]]
        terms = [self._terms[s] for _, s in live]
        lengths = [float(self._length[s]) for _, s in live]
        scopes = [int(self._scope[s]) for _, s in live]
        self._ids = [d for d, _ in live]
        self._slot_of = {d: i for i, d in enumerate(self._ids)}
        self._terms = terms
        capacity = max(64, len(live) * 2)
        self._length = np.zeros(capacity, dtype=np.float32)
        self._alive = np.zeros(capacity, dtype=bool)
        self._scope = np.zeros(capacity, dtype=np.int32)
        self._length[: len(live)] = lengths
        self._alive[: len(live)] = True
        self._scope[: len(live)] = scopes
        self._post_slots = [[] for _ in self._df]
        self._post_tfs = [[] for _ in self._df]
        self._post_cache.clear()
        for slot, tfs in enumerate(terms):
            for tid, tf in tfs.items():
                self._post_slots[tid].append(slot)
                self._post_tfs[tid].append(tf)
