"""The ranking's bonuses through the real index (embedded Chroma,
all-MiniLM-L6-v2): a query naming a person prefers that person's memory,
an answer written in sequence is found by its question, a question asking
when prefers the memory that says when, and none reads another user's
memories."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from service.memory.embeddings import OnnxMiniLM
from service.memory.index import ChromaMemoryIndex, open_index
from service.memory.memories import with_neighbours
from service.memory.ports import MemoryRecord
from service.memory.ranking import SearchTuning
from tests.test_memory_index import rec

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ASSISTANT = "asst_1"
NO_BONUS = SearchTuning(subject_weight=0.0, reply_weight=0.0, time_weight=0.0)


@pytest.fixture
async def index(tmp_path: Path, embedder: OnnxMiniLM) -> AsyncIterator[ChromaMemoryIndex]:
    idx = open_index(tmp_path, None, embedder)
    yield idx
    await idx.close()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def ranked(
    index: ChromaMemoryIndex, tenant: str, query: str, user: str, tuning: SearchTuning | None
) -> list[tuple[str, float]]:
    """(memory id, score), best first, under ``tuning`` (the index's own when None)."""
    searcher = (
        index if tuning is None else ChromaMemoryIndex(index.client, index.embedder, tuning=tuning)
    )
    hits = await searcher.search(tenant, ASSISTANT, query, user_id=user, limit=10)
    return [(h.record.memory_id, h.score) for h in hits]


async def test_a_query_naming_a_person_ranks_that_persons_memory_first(
    index: ChromaMemoryIndex, tenant: str
) -> None:
    await index.upsert(
        [
            rec(tenant, "ben", "[3 May] Ben: Did Anna paint the lake?", user="u"),
            rec(tenant, "anna", "[3 May] Anna: I painted a lake.", user="u"),
            rec(tenant, "other", "[3 May] Ben: The weather was lovely.", user="u"),
        ]
    )
    query = "What did Anna paint?"
    plain = await ranked(index, tenant, query, "u", NO_BONUS)
    assert plain[0][0] == "ben"  # the query's words, asked again
    found = await ranked(index, tenant, query, "u", None)
    assert found[0][0] == "anna"
    # The bonus is the subject weight, on Anna's memory alone.
    bonus = dict(found)["anna"] - dict(plain)["anna"]
    assert bonus == pytest.approx(SearchTuning().subject_weight, abs=1e-5)
    assert dict(found)["ben"] == pytest.approx(dict(plain)["ben"], abs=1e-5)


def conversation(tenant: str, user: str, prefix: str) -> list[MemoryRecord]:
    turns = [
        "Ben: Hi Anna, good to see you.",
        "Ben: What kind of books do you keep in your library?",
        "Anna: My library has old atlases, poetry and cookbooks.",
        "Ben: Nice. I borrowed two books from the city library.",
        "Anna: Which ones?",
    ]
    return with_neighbours(
        [rec(tenant, f"{prefix}{i}", text, user=user) for i, text in enumerate(turns)]
    )


async def test_an_answer_written_in_sequence_is_found_by_its_question(
    index: ChromaMemoryIndex, tenant: str
) -> None:
    await index.upsert(conversation(tenant, "u", "m"))
    query = "What kind of books are in the library?"
    reply_only = SearchTuning(subject_weight=0.0)
    plain = await ranked(index, tenant, query, "u", NO_BONUS)
    # The question echoes the query; the answer is behind a remark on books.
    assert [i for i, _ in plain[:3]] == ["m1", "m3", "m2"]
    found = await ranked(index, tenant, query, "u", reply_only)
    assert [i for i, _ in found[:3]] == ["m1", "m2", "m3"]
    # The answer gains a share of the question's score; nothing else moves.
    gain = dict(found)["m2"] - dict(plain)["m2"]
    assert gain == pytest.approx(reply_only.reply_weight * dict(plain)["m1"], abs=1e-5)
    assert {i: round(v, 5) for i, v in found if i != "m2"} == {
        i: round(v, 5) for i, v in plain if i != "m2"
    }
    # Asked about Anna, her answer comes first (both bonuses).
    named = await ranked(index, tenant, "What kind of books does Anna keep?", "u", None)
    assert named[0][0] == "m2"


async def test_the_bonuses_read_no_other_users_memories(
    index: ChromaMemoryIndex, tenant: str
) -> None:
    # Bob holds the whole conversation; Alice holds only the answer, with the
    # same context (so the same predecessor). Bob's question must lend Alice nothing.
    bob = conversation(tenant, "bob", "b")
    alice = replace(rec(tenant, "a2", bob[2].text, user="alice"), context=bob[2].context)
    await index.upsert([*bob, alice])
    query = "What kind of books are in the library?"
    assert dict(await ranked(index, tenant, query, "alice", None)) == pytest.approx(
        dict(await ranked(index, tenant, query, "alice", NO_BONUS)), abs=1e-5
    )
    # Bob's own answer does gain from his question.
    bob_found = dict(await ranked(index, tenant, query, "bob", None))
    assert bob_found["b2"] > dict(await ranked(index, tenant, query, "bob", NO_BONUS))["b2"]


async def test_a_question_asking_when_prefers_the_memory_that_says_when(
    index: ChromaMemoryIndex, tenant: str
) -> None:
    await index.upsert(
        [
            rec(tenant, "how", "[3 May] Anna: I love living in Lisbon.", user="u"),
            rec(tenant, "when", "[3 May] Anna: We moved two years ago.", user="u"),
            rec(tenant, "other", "[3 May] Ben: The weather was lovely today.", user="u"),
            # Another user's memory that says when: never seen from u's scope.
            rec(tenant, "bob", "[3 May] Anna: We moved to Lisbon last year.", user="bob"),
        ]
    )
    query = "When did Anna move to Lisbon?"
    plain = await ranked(index, tenant, query, "u", NO_BONUS)
    assert plain[0][0] == "how"  # its words and meaning
    time_only = SearchTuning(subject_weight=0.0, reply_weight=0.0)
    found = await ranked(index, tenant, query, "u", time_only)
    assert found[0][0] == "when"
    assert "bob" not in dict(found)
    # The bonus is the time weight, on the memories that say a time alone.
    gain = {i: s - dict(plain)[i] for i, s in found}
    assert gain == {
        "how": pytest.approx(0.0, abs=1e-5),
        "when": pytest.approx(time_only.time_weight, abs=1e-5),
        "other": pytest.approx(time_only.time_weight, abs=1e-5),
    }
    # A question that does not ask when gets no time bonus.
    assert dict(await ranked(index, tenant, "Did Anna like Lisbon?", "u", time_only)) == (
        pytest.approx(dict(await ranked(index, tenant, "Did Anna like Lisbon?", "u", NO_BONUS)))
    )
