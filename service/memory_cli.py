"""``python -m service memory``: re-embed, export and import assistants'
memories, with progress (a bar on a terminal, plain lines otherwise).

    python -m service memory reindex [--all]
    python -m service memory export --tenant T --assistant ID --out FILE
    python -m service memory import --tenant T --assistant ID --in FILE [--new-ids]

Each can be interrupted (Ctrl-C) and run again with the same arguments to
finish: an export appends what its file lacks, an import writes what the
assistant lacks, a reindex keeps what its copy already holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pymongo.errors import PyMongoError

from service.config import Settings
from service.core.errors import LoomError

if TYPE_CHECKING:
    from service.memory.index import ChromaMemoryIndex
    from service.store import MongoStore

__all__ = ["Progress", "add_parser", "main"]

_STEP = 5  # plain progress lines: one per this many percent


class Progress:
    """How far a long command is, on ``stream``: on a terminal one bar
    redrawn in place, otherwise a line each time another 5% is done."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._shown = -_STEP

    def advance(self, n: int) -> None:
        """Count ``n`` more items done."""
        self.done += n
        percent = 100 * self.done // self.total if self.total else 100
        if self._tty:
            bar = "#" * (percent // 4)
            self._stream.write(
                f"\r{self.label} [{bar:<25}] {self.done:,}/{self.total:,} {percent}%"
            )
        elif percent >= self._shown + _STEP or self.done == self.total:
            self._shown = percent
            self._stream.write(f"{self.label}: {self.done:,}/{self.total:,} ({percent}%)\n")
        self._stream.flush()

    def close(self) -> None:
        """End the bar's line (on a terminal)."""
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


@dataclass(slots=True)
class _State:
    """What a command has done, for the message when it is interrupted."""

    progress: Progress | None = None
    verb: str = ""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``memory`` command group to the CLI."""
    memory = sub.add_parser("memory", help="re-embed, export and import assistant memory")
    cmds = memory.add_subparsers(dest="command", required=True)
    reindex = cmds.add_parser(
        "reindex",
        help="re-embed memories written with another embedding model than LOOM_EMBEDDING",
    )
    reindex.add_argument("--all", action="store_true", help="re-embed every assistant's memory")
    export = cmds.add_parser(
        "export", help="write an assistant's memories, with their history, as JSON Lines"
    )
    export.add_argument("--tenant", required=True)
    export.add_argument("--assistant", required=True, help="the assistant's id")
    export.add_argument("--out", required=True, type=Path, help="the file (appended to)")
    load = cmds.add_parser("import", help="read memories exported as JSON Lines into an assistant")
    load.add_argument("--tenant", required=True)
    load.add_argument("--assistant", required=True, help="the assistant's id (it must exist)")
    load.add_argument("--in", dest="source", required=True, type=Path, help="the file")
    load.add_argument(
        "--new-ids",
        action="store_true",
        help="give the memories new ids (derived from the old ones) instead of keeping theirs",
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run a ``memory`` command; return the exit code (130 when interrupted)."""
    state = _State()
    try:
        return asyncio.run(_run(args, settings, state))
    except KeyboardInterrupt:
        if state.progress is not None:
            state.progress.close()
            done = f"{state.progress.done:,} of {state.progress.total:,} {state.verb}; "
        else:
            done = ""
        sys.stderr.write(
            f"loom: interrupted: {done}run the same command again to finish (nothing is "
            "done twice)\n"
        )
        return 130


async def _run(args: argparse.Namespace, settings: Settings, state: _State) -> int:
    from service.database import unreachable
    from service.memory.embeddings import EmbeddingError

    try:
        async with _opened(settings) as (store, index):
            if args.command == "reindex":
                return await _reindex(index, args.all, state)
            if await store.assistants.get(args.tenant, args.assistant) is None:
                sys.stderr.write(
                    f"loom: tenant {args.tenant!r} has no assistant {args.assistant!r}\n"
                )
                return 2
            if args.command == "export":
                return await _export(store, index, args, state)
            return await _import(store, index, args, state)
    except (EmbeddingError, LoomError) as exc:
        sys.stderr.write(f"loom: {exc.message}\n")
        return 2
    except PyMongoError as exc:
        sys.stderr.write(unreachable(exc) + "\n")
        return 1


@asynccontextmanager
async def _opened(settings: Settings) -> AsyncIterator[tuple[MongoStore, ChromaMemoryIndex]]:
    """The store and the memory index the settings name (the index bumps the
    store's write counters, so running replicas see what the command wrote)."""
    from service.database import store_from
    from service.memory.index import open_index
    from service.memory_wiring import embedder_of

    embedder = embedder_of(settings)
    store = store_from(settings)
    index = open_index(
        settings.data_dir, settings.chroma_url, embedder, versions=store.memory_versions
    )
    try:
        yield store, index
    finally:
        await index.close()
        await store.close()


async def _reindex(index: ChromaMemoryIndex, force: bool, state: _State) -> int:
    from service.memory.reindex import reindex, stale_assistants

    stale = await stale_assistants(index, force=force)
    progress = state.progress = Progress("reindex", sum(n for _, _, n in stale))
    state.verb = "re-embedded"
    total = 0
    for tenant, assistant_id, _ in stale:
        total += await reindex(index, tenant, assistant_id, advance=progress.advance)
    progress.close()
    print(
        f"re-embedded {total} memories of {len(stale)} assistants with {index.embedder.model_name}"
    )
    return 0


def _exported_ids(path: Path) -> set[str]:
    """The memory ids a file from an earlier export holds; a last line cut
    short by an interruption is dropped from the file."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):
        with path.open("r+b") as f:
            f.truncate(len(whole))
    return {json.loads(line)["memory_id"] for line in whole.splitlines() if line.strip()}


async def _export(
    store: MongoStore, index: ChromaMemoryIndex, args: argparse.Namespace, state: _State
) -> int:
    from service.memory.transfer import export_memories

    skip = _exported_ids(args.out)
    progress = state.progress = Progress("export", await index.count(args.tenant, args.assistant))
    state.verb = "exported"
    written = 0
    with args.out.open("a", encoding="utf-8") as out:
        async for obj in export_memories(
            index,
            store.memory_history,
            args.tenant,
            args.assistant,
            skip=skip,
            advance=progress.advance,
        ):
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
            written += 1
            out.flush()
    progress.close()
    print(f"exported {written} memories to {args.out} ({len(skip)} were there already)")
    return 0


def _batches(path: Path, size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """The file's JSON objects with their line numbers, ``size`` at a time.

    Raises:
        ValueError: a line that is not JSON (named by its number).
    """
    batch: list[tuple[int, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                batch.append((number, json.loads(line)))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


async def _import(
    store: MongoStore, index: ChromaMemoryIndex, args: argparse.Namespace, state: _State
) -> int:
    from service.memory.transfer import BATCH, import_memories

    with args.source.open(encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip())
    progress = state.progress = Progress("import", total)
    state.verb = "imported"
    written = 0
    try:
        for batch in _batches(args.source, BATCH):
            try:
                written += await import_memories(
                    index,
                    store.memory_history,
                    args.tenant,
                    args.assistant,
                    [obj for _, obj in batch],
                    remap=args.new_ids,
                )
            except ValueError as exc:
                lines = f"{args.source}, lines {batch[0][0]}-{batch[-1][0]}"
                raise ValueError(f"{lines}: {exc}") from None
            progress.advance(len(batch))
    except ValueError as exc:
        progress.close()
        sys.stderr.write(f"loom: {exc}; the memories before them are imported\n")
        return 2
    progress.close()
    print(f"imported {written} memories into {args.assistant} ({total - written} were there)")
    return 0
