"""``python -m service memory export`` and ``import`` as real processes:
an assistant's memories, with their history, moved to another Loom (its
own database and Chroma), the import interrupted half-way and resumed."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from generated.loom.v1 import memory_pb2
from service.config import Settings
from tests.conftest import make_settings, start_loom
from tests.scripted_llm import ScriptedLLM
from tests.support.ferretdb import FerretDB
from tests.support.process import REPO, clean_env, run_cli
from tests.test_memory import Mem, Model, _assistant, _settled

V = memory_pb2
MEMORIES = 1200


def _settings(ferretdb: FerretDB, llm: ScriptedLLM, db: str, data: Path) -> Settings:
    return make_settings(
        ferretdb, llm, mongodb_db=db, data_dir=str(data), embedding="openai:scripted-embedding"
    )


def _env(settings: Settings) -> dict[str, str]:
    return clean_env(
        LOOM_MONGODB_URI=settings.mongodb_uri.get_secret_value(),
        LOOM_MONGODB_DB=settings.mongodb_db,
        LOOM_DATA_DIR=str(settings.data_dir),
        LOOM_EMBEDDING=settings.embedding,
        LOOM_LLM_BASE_URL=settings.llm_base_url,
        LOOM_LOG_LEVEL="WARNING",
    )


async def _fill_source(api: Mem, model: Model) -> tuple[str, dict[str, str]]:
    """An assistant with a batch of memories, one updated, one replaced by
    extraction; its id and the ids that matter, by name."""
    assistant_id = await _assistant(api)
    made = []
    for start in range(0, MEMORIES, 600):
        created = await api.call(
            api.memory.BatchCreateMemories,
            V.BatchCreateMemoriesRequest(
                assistant_id=assistant_id,
                memories=[
                    V.Memory(content=f"Imported fact {i} about topic {i % 13}.", user_id="u")
                    for i in range(start, start + 600)
                ],
            ),
        )
        made += created.memories
    updated = made[0].memory_id
    await api.call(
        api.memory.UpdateMemory,
        V.UpdateMemoryRequest(
            memory=V.Memory(assistant_id=assistant_id, memory_id=updated, content="Fact zero.")
        ),
    )
    model.facts["Berlin"] = ["The user lives in Berlin."]
    events = await api.send(content="I live in Berlin.", assistant_id=assistant_id, user_id="u")
    [berlin] = (await _settled(api, events[-1].completed.memory_operation_id)).added_memory_ids

    def replace(body: dict[str, Any]) -> str:
        ops = [{"fact": 0, "action": "replace", "memory_id": berlin}]
        return json.dumps({"operations": ops})

    model.facts["Madrid"] = ["The user moved to Madrid."]
    model.reconcile = replace
    events = await api.send(content="I moved to Madrid.", assistant_id=assistant_id, user_id="u")
    [madrid] = (await _settled(api, events[-1].completed.memory_operation_id)).added_memory_ids
    return assistant_id, {"updated": updated, "berlin": berlin, "madrid": madrid}


async def _all(api: Mem, assistant_id: str) -> list[V.Memory]:
    out: list[V.Memory] = []
    token = ""
    while True:
        page = await api.call(
            api.memory.ListMemories,
            V.ListMemoriesRequest(
                assistant_id=assistant_id,
                include_invalidated=True,
                page_size=1000,
                page_token=token,
            ),
        )
        out += page.memories
        token = page.next_page_token
        if not token:
            return out


async def _interrupted_import(args: list[str], env: dict[str, str]) -> str:
    """Run the import, Ctrl-C it once a fifth is done; its error output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = []
    while line := (await asyncio.wait_for(proc.stderr.readline(), 60)).decode():
        seen.append(line)
        if line.startswith("import: ") and int(line.split()[1].split("/")[0].replace(",", "")):
            proc.send_signal(signal.SIGINT)
            break
    _, rest = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130, "".join(seen) + rest.decode()
    return "".join(seen) + rest.decode()


@pytest.mark.timeout(600)
async def test_export_then_import_into_another_loom_interrupted_and_resumed(
    ferretdb: FerretDB, llm: ScriptedLLM, tmp_path: Path
) -> None:
    model = Model()
    llm.set_default(model)
    tag = uuid.uuid4().hex[:8]
    source = _settings(ferretdb, llm, f"loom_export_{tag}", tmp_path / "a")
    target = _settings(ferretdb, llm, f"loom_import_{tag}", tmp_path / "b")
    tenant = f"t-{tag}"
    loom = await start_loom(source)
    try:
        key = (await loom.keys.create(tenant)).secret
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            assistant_id, ids = await _fill_source(Mem(channel, key), model)
    finally:
        await loom.stop(0)
    total = MEMORIES + 4  # and two episodic memories, two facts

    out = tmp_path / "memories.jsonl"
    export = ["memory", "export", "--tenant", tenant, "--assistant", assistant_id, "--out"]
    done = run_cli([*export, str(out)], _env(source), timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == total
    by_id = {line["memory_id"]: line for line in lines}
    assert [v["content"] for v in by_id[ids["updated"]]["history"]] == [
        "Imported fact 0 about topic 0."
    ]
    assert by_id[ids["berlin"]]["superseded_by"] == ids["madrid"]
    assert by_id[ids["berlin"]]["invalidate_time"]
    # An export cut short (a line half-written) finishes on a second run.
    text = out.read_text()
    cut = text.index("\n", len(text) // 2) + 40
    out.write_text(text[:cut])
    done = run_cli([*export, str(out)], _env(source), timeout=300)
    assert done.returncode == 0, done.stderr
    again = [json.loads(line)["memory_id"] for line in out.read_text().splitlines()]
    assert sorted(again) == sorted(by_id)

    loom = await start_loom(target)
    try:
        key = (await loom.keys.create(tenant)).secret
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            copy_id = await _assistant(Mem(channel, key))
    finally:
        await loom.stop(0)
    load = ["memory", "import", "--tenant", tenant, "--assistant", copy_id, "--in", str(out)]
    llm.set_embedding_delay(0.3)
    said = await _interrupted_import([*load, "--new-ids"], _env(target))
    assert "interrupted" in said
    assert "run the same command again" in said
    llm.set_embedding_delay(0)
    done = run_cli([*load, "--new-ids"], _env(target), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "import: " in done.stderr  # progress, as plain lines off a terminal
    written = int(done.stdout.split()[1])
    assert 0 < written < total
    done = run_cli([*load, "--new-ids"], _env(target), timeout=300)
    assert done.stdout.startswith("imported 0 memories")

    loom = await start_loom(target)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            api = Mem(channel, key)
            copied = await _all(api, copy_id)
            assert len(copied) == total
            assert len({m.memory_id for m in copied}) == total
            assert not {m.memory_id for m in copied} & set(by_id)  # remapped
            by_content = {m.content: m for m in copied}
            berlin = by_content["The user lives in Berlin."]
            madrid = by_content["The user moved to Madrid."]
            assert berlin.HasField("invalidate_time")
            assert berlin.superseded_by == madrid.memory_id
            assert madrid.supersedes == berlin.memory_id
            history = await api.call(
                api.memory.ListMemoryHistory,
                V.ListMemoryHistoryRequest(
                    assistant_id=copy_id, memory_id=by_content["Fact zero."].memory_id
                ),
            )
            assert [v.content for v in history.versions] == [
                "Imported fact 0 about topic 0.",
                "Fact zero.",
            ]
            found = await api.call(
                api.memory.SearchMemories,
                V.SearchMemoriesRequest(
                    assistant_id=copy_id, query="Imported fact 417", user_id="u"
                ),
            )
            assert found.results[0].memory.content == "Imported fact 417 about topic 1."
    finally:
        await loom.stop(0)
