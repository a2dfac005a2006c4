"""Memory recall on LoCoMo, and the index's speed: ``python -m bench.memory``.

Every turn of each conversation goes through ``ChromaMemoryIndex.upsert``
as an episodic memory of one user (a fresh assistant per conversation),
each question goes through ``search``, and the evidence turns are looked
for in the hits: recall@1/5/10/20 (the share of a question's evidence
turns in the top k) and MRR (reciprocal rank of the first evidence turn in
the top 50), per category. Five rankings of the same index: hybrid (Loom's
default, linear fusion with its subject, reply and time bonuses), the same
without the bonuses, hybrid with reciprocal rank fusion, BM25 only and
dense only. Then the latency of one search with 10,000 memories in scope.

What a turn is indexed as (no labels, answers or generated summaries):
text = "[session date] speaker: text" plus "[shares a photo: caption]" for
an image; context = the texts of the two turns before it and the one after
it in the same session, as a sequential ``BatchCreateMemories`` of each
session gives it (``memories.with_neighbours``). The ranking parameters
(``SearchTuning`` defaults) were chosen on conversations 1-2 (the
``--quick`` pair); figures on conversations 3-10 are printed apart as the
held-out ones.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path

from bench.common import machine, pct
from bench.locomo import CATEGORIES, Conversation, Turn, load
from service.memory.embeddings import OnnxMiniLM
from service.memory.index import ChromaMemoryIndex, open_index
from service.memory.memories import with_neighbours
from service.memory.ports import MemoryRecord
from service.memory.ranking import SearchTuning

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

TENANT = "bench"
DEPTH = 50  # hits asked for; MRR counts ranks up to this
KS = (1, 5, 10, 20)
DEV = 2  # conversations the ranking parameters were chosen on
BATCH = 256  # memories per upsert call
SCOPE_SIZE = 10_000
NO_BONUS = SearchTuning(subject_weight=0.0, reply_weight=0.0, time_weight=0.0)
RUNS = ("hybrid", "hybrid-no-bonus", "hybrid-rrf", "lexical", "dense")


def turn_text(turn: Turn, *, date: bool) -> str:
    text = f"{turn.speaker}: {turn.text}"
    if turn.caption:
        text += f" [shares a photo: {turn.caption}]"
    return f"[{turn.date}] {text}" if date else text


def parse_date(raw: str) -> datetime | None:
    try:
        return datetime.strptime(raw, "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)
    except ValueError:
        return None


def records_of(conv: Conversation, assistant_id: str, user_id: str) -> list[MemoryRecord]:
    out = []
    for _, turns in groupby(conv.turns, key=lambda t: t.session):
        session = []
        for turn in turns:
            digest = hashlib.sha256(f"{conv.sample_id}/{turn.dia_id}".encode()).hexdigest()[:24]
            session.append(
                MemoryRecord(
                    memory_id=f"mem_{digest}",
                    tenant=TENANT,
                    assistant_id=assistant_id,
                    user_id=user_id,
                    text=turn_text(turn, date=True),
                    kind="episodic",
                    create_time=parse_date(turn.date),
                    metadata={"dia_id": turn.dia_id},
                )
            )
        out += with_neighbours(session)
    return out


@dataclass
class Scores:
    """Per-category lists of per-question metrics."""

    by_category: dict[int, list[dict[str, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def add(self, category: int, ranked: list[str], evidence: tuple[str, ...]) -> None:
        wanted = set(evidence)
        positions = [i for i, dia_id in enumerate(ranked) if dia_id in wanted]
        row = {f"r@{k}": sum(p < k for p in positions) / len(wanted) for k in KS}
        row["mrr"] = 1.0 / (positions[0] + 1) if positions else 0.0
        self.by_category[category].append(row)

    def merged(self, categories: tuple[int, ...]) -> list[dict[str, float]]:
        return [row for c in categories for row in self.by_category.get(c, [])]


def mean_row(rows: list[dict[str, float]]) -> str:
    if not rows:
        return "   (none)"
    cells = [statistics.fmean(r[f"r@{k}"] for r in rows) for k in KS]
    cells.append(statistics.fmean(r["mrr"] for r in rows))
    return f"{len(rows):5d} " + " ".join(f"{v:6.3f}" for v in cells)


def print_scores(name: str, scores: Scores, held_out: Scores | None) -> None:
    print(f"\n{name}")
    print(
        f"  {'category':<22} {'n':>5} "
        + " ".join(f"{h:>6}" for h in (*map("R@{}".format, KS), "MRR"))
    )
    print(f"  {'overall (1-4)':<22} {mean_row(scores.merged((1, 2, 3, 4)))}")
    if held_out is not None:
        print(f"  {'  held out: conv 3-10':<22} {mean_row(held_out.merged((1, 2, 3, 4)))}")
    for c in (1, 2, 3, 4):
        print(f"  {f'{c} {CATEGORIES[c]}':<22} {mean_row(scores.by_category.get(c, []))}")
    print(f"  {'5 adversarial':<22} {mean_row(scores.by_category.get(5, []))}")


async def ingest(index: ChromaMemoryIndex, records: list[MemoryRecord]) -> float:
    """Seconds to upsert ``records`` in batches."""
    start = time.perf_counter()
    for i in range(0, len(records), BATCH):
        await index.upsert(records[i : i + BATCH])
    return time.perf_counter() - start


async def recall(
    indexes: dict[str, ChromaMemoryIndex], convs: list[Conversation]
) -> tuple[dict[str, Scores], dict[str, Scores], dict[str, list[float]], tuple[int, float]]:
    scores = {run: Scores() for run in RUNS}
    held = {run: Scores() for run in RUNS}
    latency: dict[str, list[float]] = {run: [] for run in RUNS}
    ingested, seconds = 0, 0.0
    hybrid = indexes["hybrid"]
    for n, conv in enumerate(convs):
        assistant_id = f"locomo-{conv.sample_id}-{os.getpid()}"
        user_id = f"user-{conv.sample_id}"
        records = records_of(conv, assistant_id, user_id)
        seconds += await ingest(hybrid, records)
        ingested += len(records)
        for run in RUNS:  # build each index's BM25 side before timing
            await indexes[run].search(TENANT, assistant_id, "warm up", user_id=user_id, limit=1)
        for q in conv.questions:
            if not q.evidence:
                continue
            for run in RUNS:
                mode = run if run in ("lexical", "dense") else "hybrid"
                start = time.perf_counter()
                hits = await indexes[run].search(
                    TENANT, assistant_id, q.question, user_id=user_id, limit=DEPTH, mode=mode
                )
                latency[run].append(time.perf_counter() - start)
                ranked = [h.record.metadata.get("dia_id", "") for h in hits]
                scores[run].add(q.category, ranked, q.evidence)
                if n >= DEV:
                    held[run].add(q.category, ranked, q.evidence)
        await hybrid.drop_assistant(TENANT, assistant_id)
        print(f"  conversation {conv.sample_id}: {len(records)} turns", file=sys.stderr)
    return scores, held, latency, (ingested, seconds)


async def big_scope(index: ChromaMemoryIndex, convs: list[Conversation]) -> None:
    """10,000 memories in one scope: LoCoMo turns (no context), repeated
    with a counter until there are enough."""
    assistant_id = f"scope-10k-{os.getpid()}"
    user_id = "user-10k"
    turns = [(c, t) for c in convs for t in c.turns]
    records = []
    for i in range(SCOPE_SIZE):
        _, turn = turns[i % len(turns)]
        copy = i // len(turns)
        text = turn_text(turn, date=True) + (f" (copy {copy})" if copy else "")
        records.append(
            MemoryRecord(
                memory_id=f"mem_{i:024x}",
                tenant=TENANT,
                assistant_id=assistant_id,
                user_id=user_id if i % 10 else "",  # a tenth assistant-wide
                text=text,
                kind="episodic",
                metadata={"dia_id": turn.dia_id},
            )
        )
    seconds = await ingest(index, records)
    print(
        f"\n10,000 memories in one scope (plain turns, no context): ingest "
        f"{len(records) / seconds:.0f} memories/s ({seconds:.1f} s, batches of {BATCH})"
    )
    questions = [q.question for c in convs for q in c.questions][:300]
    start = time.perf_counter()
    await index.search(TENANT, assistant_id, questions[0], user_id=user_id, limit=10)
    print(f"  first search (builds the BM25 index): {(time.perf_counter() - start) * 1e3:.0f} ms")
    for mode in ("hybrid", "lexical", "dense"):
        times = []
        for q in questions:
            start = time.perf_counter()
            await index.search(TENANT, assistant_id, q, user_id=user_id, limit=10, mode=mode)
            times.append((time.perf_counter() - start) * 1e3)
        print(
            f"  search {mode:<8} limit 10: p50 {pct(times, 50):5.1f} ms"
            f"  p95 {pct(times, 95):5.1f} ms  ({len(times)} queries)"
        )
    await index.drop_assistant(TENANT, assistant_id)


def _beside_repo(path: str) -> str | None:
    """``../shared/<path>`` next to the repository, if it is there."""
    candidate = Path(__file__).resolve().parents[2] / "shared" / path
    return str(candidate) if candidate.exists() else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir",
        default=os.environ.get("LOOM_EMBEDDING_MODEL_DIR")
        or _beside_repo("models/all-MiniLM-L6-v2/onnx"),
        help="the all-MiniLM-L6-v2 onnx folder (default: LOOM_EMBEDDING_MODEL_DIR, else "
        "../shared/models beside the repo)",
    )
    parser.add_argument(
        "--data",
        default=os.environ.get("LOOM_LOCOMO_DATA") or _beside_repo("data/locomo10.json"),
        help="locomo10.json (default: LOOM_LOCOMO_DATA, else ../shared/data beside the repo)",
    )
    parser.add_argument("--chroma-url", default=None, help="a Chroma server; default embedded")
    parser.add_argument("--quick", action="store_true", help="conversations 1-2 only")
    parser.add_argument(
        "--no-context-vectors",
        action="store_true",
        help="embed each turn alone (the context still feeds BM25): faster ingest",
    )
    args = parser.parse_args()
    if not args.model_dir or not args.data:
        parser.error("--model-dir (or LOOM_EMBEDDING_MODEL_DIR) and --data are needed")

    convs = load(Path(args.data))
    if args.quick:
        convs = convs[:DEV]
    print(f"machine: {machine()}")
    print(
        f"data: {args.data}: {len(convs)} conversations, "
        f"{sum(len(c.turns) for c in convs)} turns, "
        f"{sum(1 for c in convs for q in c.questions if q.evidence)} questions with evidence"
    )
    embedder = OnnxMiniLM(args.model_dir)
    with tempfile.TemporaryDirectory(prefix="loom-bench-chroma-") as tmp:
        hybrid = open_index(
            Path(tmp), args.chroma_url, embedder, context_vectors=not args.no_context_vectors
        )
        client = hybrid.client
        indexes = {
            "hybrid": hybrid,
            "hybrid-no-bonus": ChromaMemoryIndex(client, embedder, tuning=NO_BONUS),
            "hybrid-rrf": ChromaMemoryIndex(client, embedder, tuning=SearchTuning(fusion="rrf")),
            "lexical": hybrid,
            "dense": hybrid,
        }
        where = args.chroma_url or "embedded (PersistentClient)"
        print(f"chroma: {where}; embedder: {embedder.model_name} (onnxruntime)")
        print(f"ranking: {hybrid.tuning}")
        scores, held, latency, (ingested, seconds) = await recall(indexes, convs)
        each = "one embedding" if args.no_context_vectors else "two embeddings"
        print(
            f"\ningest (LoCoMo turns with context, {each} each): "
            f"{ingested / seconds:.0f} memories/s ({ingested} in {seconds:.1f} s, "
            f"batches of {BATCH})"
        )
        print(f"\nevidence recall, top {DEPTH} asked; MRR over those {DEPTH}")
        for run in RUNS:
            print_scores(run, scores[run], held[run] if len(convs) > DEV else None)
        print(f"\nsearch latency ({len(latency['hybrid'])} queries a ranking, one scope each)")
        for run in RUNS:
            ms = [t * 1e3 for t in latency[run]]
            print(f"  {run:<10} p50 {pct(ms, 50):5.1f} ms  p95 {pct(ms, 95):5.1f} ms")
        await big_scope(hybrid, convs)
        await hybrid.close()
    embedder.close()


if __name__ == "__main__":
    asyncio.run(main())
