"""BM25 and exact cosine over the in-process caches."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from service.memory.dense import VectorSet
from service.memory.lexical import Analyzer, BM25Index


def test_analyzer_stems_and_drops_stopwords() -> None:
    terms = Analyzer().terms("When did Caroline's kids go running? She doesn't run!")
    assert terms == ["carolin", "kid", "go", "run", "doesnt", "run"]


def test_bm25_ranks_scopes_and_forgets() -> None:
    index = BM25Index()
    index.add("a", "The user adopted a cat.", "alice")
    index.add("b", "The user's cats and dogs sleep inside.", "bob")
    index.add("c", "Shop policy: no pets inside.", "")
    index.add("d", "Nothing related here.", "alice", context="they talked about a cat")
    hits = index.search("cats", ["alice", ""], 10)
    assert [h.doc_id for h in hits] == ["a", "d"]  # the context counts a fifth of the text
    assert all(0 < h.normalized < 1 for h in hits)
    assert hits[0].score > hits[1].score
    assert [h.doc_id for h in index.search("cats", ["bob"], 10)] == ["b"]
    assert index.search("cats", ["carol"], 10) == []
    assert index.search("the and of", ["alice"], 10) == []  # stopwords only
    assert index.remove("a")
    assert not index.remove("a")
    assert [h.doc_id for h in index.search("cat", ["alice", ""], 10)] == ["d"]
    index.add("d", "A dog now.", "alice")  # replaced: the old words are gone
    assert index.search("cat", ["alice"], 10) == []
    scores = index.score("dog", ["d", "b", "zzz"], ["alice", "bob"])
    assert set(scores) == {"d", "b"}
    assert scores["d"].score > 0
    assert set(index.score("dog", ["d", "b"], ["alice"])) == {"d"}  # b is bob's


def _scores(index: BM25Index, query: str, scopes: list[str]) -> dict[str, tuple[float, float]]:
    hits = index.search(query, scopes, 50)
    return {h.doc_id: (h.score, h.normalized) for h in hits}


def test_bm25_scores_in_a_scope_ignore_every_other_scope() -> None:
    alice = [
        ("a1", "I want a pineapple smoothie for breakfast.", "alice"),
        ("a2", "My dog hates the vacuum cleaner.", "alice"),
        ("w1", "The shop opens at nine, pineapple juice on Fridays.", ""),
    ]
    others = {
        "pineapple": [("b1", "pineapple pineapple pineapple", "bob")],
        "blueberry": [("b1", "blueberry", "bob")],
        "crowd": [
            (f"c{i}", f"pineapple smoothie number {i} for the dog", f"user{i % 7}")
            for i in range(300)
        ],
        "none": [],
    }
    seen = []
    for extra in others.values():
        index = BM25Index()
        for doc_id, text, scope in [*extra[:1], *alice, *extra[1:]]:
            index.add(doc_id, text, scope)
        for doc_id, _, _ in extra[::2]:  # removals leave nothing behind either
            index.remove(doc_id)
        queries = ("pineapple smoothie", "dog vacuum", "juice")
        seen.append([_scores(index, q, ["alice", ""]) for q in queries])
        seen.append([_scores(index, q, [""]) for q in queries])
        pooled = index.score("pineapple smoothie", ["a1", "a2", "w1"], ["alice", ""])
        seen.append([{d: (h.score, h.normalized) for d, h in pooled.items()}])
    assert all(run == seen[0] for run in seen[::3])
    assert all(run == seen[1] for run in seen[1::3])
    assert all(run == seen[2] for run in seen[2::3])
    assert seen[0][0]["a1"][0] > 0


def test_bm25_compacts_after_many_removals() -> None:
    index = BM25Index()
    for i in range(3000):
        index.add(f"m{i}", f"memory {i} about topic{i % 5}", "u")
    for i in range(2500):
        index.remove(f"m{i}")
    assert len(index) == 500
    hits = index.search("topic3", ["u"], 1000)
    assert len(hits) == 100
    assert all(int(h.doc_id[1:]) >= 2500 for h in hits)


def test_vector_set_scopes_and_exactness() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = VectorSet(16)
    for i, v in enumerate(vectors):
        store.add(f"v{i}", v, "alice" if i % 2 else "")
    query = vectors[11]
    found = store.search(query, ["alice"], 5)
    assert found[0] == ("v11", found[0][1])
    assert found[0][1] == np.float32(1.0) or abs(found[0][1] - 1.0) < 1e-5
    expected = sorted(
        ((float(vectors[i] @ query), f"v{i}") for i in range(1, 2000, 2)), reverse=True
    )[:5]
    assert [d for d, _ in found] == [d for _, d in expected]
    assert all(int(d[1:]) % 2 == 0 for d, _ in store.search(query, [""], 50))
    for i in range(1500):
        store.remove(f"v{i}")
    assert len(store) == 500
    assert store.search(query, ["alice"], 3)[0][0] != "v11"
    assert set(store.cosine(query, ["v1999", "v3"])) == {"v1999"}


def test_vector_set_searches_several_scopes_on_one_blas_thread() -> None:
    store = VectorSet(4)
    basis = np.eye(4, dtype=np.float32)
    for i, scope in enumerate(["alice", "", "bob", "~alice"]):
        store.add(f"v{i}", basis[i], scope)
    query = np.full(4, 0.5, dtype=np.float32)
    assert {d for d, _ in store.search(query, ["alice", "", "~alice"], 10)} == {"v0", "v1", "v3"}
    assert [d for d, _ in store.search(query, ["bob", "carol"], 10)] == ["v2"]
    assert store.search(query, ["carol"], 10) == []
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas
    assert all(p["num_threads"] == 1 for p in blas)
