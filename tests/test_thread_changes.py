"""Threads that change after they are created, end to end: UpdateThread
(metadata, expiration, moving to another assistant), ListThreads filters,
retention (expired threads are NOT_FOUND at once and deleted by a job), and
the usage totals GetThread reports."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from generated.loom.v1 import assistant_pb2, common_pb2, memory_pb2, thread_pb2
from service.server import Loom
from service.store.scoped import key
from tests.conftest import Api, expect_error, new_tenant_key
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.process import grpcurl_bin, json_objects
from tests.test_memory import EXTRACT_MARK, Mem

SUMMARY_MARK = "You keep the running summary"


async def _assistant(api: Api, **fields: Any) -> str:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(**fields)),
    )
    return str(created.assistant.assistant_id)


async def _thread(api: Api, thread_id: str) -> thread_pb2.Thread:
    got = await api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    return got.thread


async def _create(api: Api, **fields: Any) -> thread_pb2.Thread:
    created = await api.call(
        api.threads.CreateThread,
        thread_pb2.CreateThreadRequest(thread=thread_pb2.Thread(**fields)),
    )
    return created.thread


async def _update(api: Api, paths: list[str] | None, **fields: Any) -> thread_pb2.Thread:
    request = thread_pb2.UpdateThreadRequest(thread=thread_pb2.Thread(**fields))
    if paths is not None:
        request.update_mask.CopyFrom(FieldMask(paths=paths))
    updated = await api.call(api.threads.UpdateThread, request)
    return updated.thread


def _at(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


async def _list(api: Api, filter_text: str, **fields: Any) -> thread_pb2.ListThreadsResponse:
    return await api.call(
        api.threads.ListThreads, thread_pb2.ListThreadsRequest(filter=filter_text, **fields)
    )


# -- UpdateThread -----------------------------------------------------------------


async def test_update_metadata_with_a_mask_and_without(api: Api) -> None:
    thread = await _create(api, metadata={"ticket": "1", "queue": "a"})
    updated = await _update(api, ["metadata"], thread_id=thread.thread_id, metadata={"ticket": "2"})
    assert dict(updated.metadata) == {"ticket": "2"}
    assert updated.update_time.ToDatetime() >= thread.update_time.ToDatetime()
    # Without a mask, the fields that are set (AIP-134).
    updated = await _update(api, None, thread_id=thread.thread_id, metadata={"ticket": "3"})
    assert dict(updated.metadata) == {"ticket": "3"}
    assert updated.assistant_id == thread.assistant_id
    assert dict((await _thread(api, thread.thread_id)).metadata) == {"ticket": "3"}
    for paths, needle in (
        (["user_id"], "'user_id' cannot be updated"),
        (["*", "metadata"], "cannot be combined"),
        ([], "names no field"),
    ):
        error = await expect_error(
            api.call(
                api.threads.UpdateThread,
                thread_pb2.UpdateThreadRequest(
                    thread=thread_pb2.Thread(thread_id=thread.thread_id),
                    update_mask=FieldMask(paths=paths),
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert needle in error.details()
    await expect_error(
        _update(api, ["metadata"], thread_id="thread_" + "0" * 24, metadata={}),
        grpc.StatusCode.NOT_FOUND,
        "THREAD_NOT_FOUND",
    )


async def test_moving_a_thread_to_another_assistant_hands_it_off(
    api: Api, llm: ScriptedLLM, loom: Loom, channel: aio.Channel
) -> None:
    triage = await _assistant(api, instructions="You are the triage desk.")
    billing = await _assistant(api, instructions="You are the billing specialist.")
    first = await api.send(content="I was charged twice.", assistant_id=triage, user_id="u1")
    thread_id = first[0].started.thread_id
    moved = await _update(api, ["assistant_id"], thread_id=thread_id, assistant_id=billing)
    assert moved.assistant_id == billing
    assert moved.user_id == "u1"
    llm.reset()
    events = await api.send(content="Can you refund one?", thread_id=thread_id)
    assert events[0].started.assistant_id == billing
    sent = llm.requests[0].body["messages"]
    assert sent[0]["content"] == "You are the billing specialist."
    assert "I was charged twice." in [m["content"] for m in sent]
    # Another tenant's assistant is as unknown as a missing one.
    other = Api(channel, await new_tenant_key(loom))
    theirs = await _assistant(other, instructions="Not yours.")
    await expect_error(
        _update(api, ["assistant_id"], thread_id=thread_id, assistant_id=theirs),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )
    assert (await _thread(api, thread_id)).assistant_id == billing


async def test_a_thread_cannot_move_while_a_reply_runs(api: Api, llm: ScriptedLLM) -> None:
    other = await _assistant(api, instructions="Other.")
    first = await api.send(content="hello")
    thread_id = first[0].started.thread_id
    llm.script(Reply(text="a slow reply in many parts", chunk_delay=0.3))
    slow = api.threads.SendMessage(
        thread_pb2.SendMessageRequest(content="slow one", thread_id=thread_id),
        metadata=api.metadata,
    )
    assert (await slow.read()).HasField("started")
    await expect_error(
        _update(api, ["assistant_id"], thread_id=thread_id, assistant_id=other),
        grpc.StatusCode.ABORTED,
        "THREAD_BUSY",
    )
    # A thread has one writer at a time: its labels wait for the reply too.
    await expect_error(
        _update(api, ["metadata"], thread_id=thread_id, metadata={"seen": "yes"}),
        grpc.StatusCode.ABORTED,
        "THREAD_BUSY",
    )
    while await slow.read() is not aio.EOF:
        pass
    moved = await _update(
        api,
        ["assistant_id", "metadata"],
        thread_id=thread_id,
        assistant_id=other,
        metadata={"seen": "yes"},
    )
    assert moved.assistant_id == other
    assert moved.metadata["seen"] == "yes"
    # The reply that was running is whole: the update did not undo its save.
    thread = await _thread(api, thread_id)
    assert thread.message_count == 4


# -- ListThreads filter ------------------------------------------------------------


async def test_list_threads_by_filter(api: Api) -> None:
    a = await _assistant(api, name="a")
    b = await _assistant(api, name="b")
    t1 = await _create(api, assistant_id=a, user_id="ann", metadata={"ticket": "1", "team": "x"})
    t2 = await _create(api, assistant_id=a, user_id="bob", metadata={"ticket": "2", "team": "x"})
    t3 = await _create(api, assistant_id=b, user_id="ann", metadata={"ticket": "1"})

    async def ids(text: str, **fields: Any) -> list[str]:
        return [t.thread_id for t in (await _list(api, text, **fields)).threads]

    assert await ids('metadata.ticket = "1"') == [t3.thread_id, t1.thread_id]
    assert await ids('metadata.ticket = "1" AND assistant_id = "' + a + '"') == [t1.thread_id]
    assert await ids("metadata.team = x AND user_id = bob") == [t2.thread_id]
    assert await ids("metadata.team = x", user_id="ann") == [t1.thread_id]
    assert await ids('metadata.ticket = "3"') == []
    # update_time ranges: touch t2, then ask for what changed since.
    mark = datetime.now(UTC) - timedelta(milliseconds=1)
    await asyncio.sleep(0.01)
    await _update(api, ["metadata"], thread_id=t2.thread_id, metadata={"ticket": "2b"})
    since = f'update_time > "{mark.isoformat()}"'
    assert await ids(since) == [t2.thread_id]
    before = f'update_time <= "{mark.isoformat()}"'
    assert await ids(before) == [t3.thread_id, t1.thread_id]
    error = await expect_error(
        _list(api, 'metadata.ticket = "1" OR user_id = "bob"'), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "at character 23: OR is not supported" in error.details()


async def test_list_threads_filter_pages_and_tokens_are_tied_to_it(api: Api) -> None:
    made = [(await _create(api, metadata={"kind": "x"})).thread_id for _ in range(5)]
    await _create(api, metadata={"kind": "y"})
    seen: list[str] = []
    token = ""
    while True:
        page = await _list(api, "metadata.kind = x", page_size=2, page_token=token)
        seen.extend(t.thread_id for t in page.threads)
        token = page.next_page_token
        if not token:
            break
        first_token = token
    assert seen == made[::-1]
    error = await expect_error(
        _list(api, "metadata.kind = y", page_size=2, page_token=first_token),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "other filters" in error.details()
    # The same filter written differently is the same filter.
    page = await _list(api, "metadata.kind='x'", page_size=2, page_token=first_token)
    assert page.threads


# -- retention -----------------------------------------------------------------------


async def test_expiration_is_set_by_time_or_ttl_and_can_be_removed(api: Api) -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    by_time = await _create(api, expire_time=_at(when), expire_memories=True)
    assert by_time.expire_time.ToDatetime(tzinfo=UTC) == when
    assert by_time.expire_memories
    by_ttl = await _create(api, ttl=Duration(seconds=3600))
    left = by_ttl.expire_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(minutes=59) < left <= timedelta(hours=1)
    assert not by_ttl.HasField("ttl")  # input only: stored as expire_time
    kept = await _update(api, ["expire_time"], thread_id=by_ttl.thread_id)
    assert not kept.HasField("expire_time")
    assert not (await _thread(api, by_ttl.thread_id)).HasField("expire_time")
    renewed = await _update(api, ["ttl"], thread_id=by_ttl.thread_id, ttl=Duration(seconds=60))
    assert renewed.HasField("expire_time")
    for fields, needle in (
        ({"expire_time": _at(datetime.now(UTC) - timedelta(minutes=1))}, "not in the future"),
        ({"ttl": Duration(seconds=-5)}, "ttl must be positive"),
        ({"ttl": Duration(seconds=4000 * 86400)}, "at most 3650 days"),
    ):
        error = await expect_error(_create(api, **fields), grpc.StatusCode.INVALID_ARGUMENT)
        assert needle in error.details()


async def test_an_expired_thread_is_not_found_at_once_even_before_its_job(
    api: Api, loom: Loom
) -> None:
    events = await api.send(content="remember this for a while")
    thread_id = events[0].started.thread_id
    # Expired a moment ago, with no job queued for it yet.
    tenant = (await loom.keys.authenticate(api.key)).tenant
    await loom.store.db["threads"].update_one(
        {"_id": key(tenant, thread_id)},
        {"$set": {"expire_time": datetime.now(UTC) - timedelta(seconds=1)}},
    )
    for call in (
        api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id)),
        api.call(api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id)),
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="still there?", thread_id=thread_id),
            metadata=api.metadata,
        ),
        api.call(
            api.threads.AddMessages,
            thread_pb2.AddMessagesRequest(
                thread_id=thread_id,
                messages=[thread_pb2.Message(role=thread_pb2.ROLE_USER, content="x")],
            ),
        ),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "THREAD_NOT_FOUND")
    assert (await _list(api, "")).threads == []


async def test_expired_threads_are_deleted_by_a_job_with_their_memories_if_asked(
    loom: Loom, channel: aio.Channel, llm: ScriptedLLM
) -> None:
    llm.set_default(lambda body: Reply(text='{"facts": []}'))
    api = Mem(channel, await new_tenant_key(loom))
    assistant_id = await _assistant(api, memory_mode=common_pb2.MEMORY_MODE_AUTO)
    kept, forgotten = [], []
    for forget, into in ((False, kept), (True, forgotten)):
        thread = await _create(
            api,
            assistant_id=assistant_id,
            user_id="u1",
            ttl=Duration(seconds=1),
            expire_memories=forget,
        )
        await api.call(
            api.threads.AddMessages,
            thread_pb2.AddMessagesRequest(
                thread_id=thread.thread_id,
                messages=[
                    thread_pb2.Message(role=thread_pb2.ROLE_USER, content=f"I like tea {forget}")
                ],
            ),
        )
        into.append(thread.thread_id)
    tenant = (await loom.keys.authenticate(api.key)).tenant
    messages = loom.store.db["messages"]
    threads = loom.store.db["threads"]

    async def gone(thread_id: str) -> bool:
        return (
            await threads.count_documents({"_id": key(tenant, thread_id)}) == 0
            and await messages.count_documents({"thread_id": thread_id}) == 0
        )

    for _ in range(200):
        if await gone(kept[0]) and await gone(forgotten[0]):
            break
        await asyncio.sleep(0.05)
    assert await gone(kept[0])
    assert await gone(forgotten[0])

    async def remembered() -> list[str]:
        listed = await api.call(
            api.memory.ListMemories,
            memory_pb2.ListMemoriesRequest(assistant_id=assistant_id, user_id="u1", page_size=100),
        )
        return [m.content for m in listed.memories]

    # The batch's extraction job may have indexed the message again just
    # before the thread went; it then finds the messages gone and unwrites
    # it, a moment after the deletion ends.
    for _ in range(200):
        if await remembered() == ["I like tea False"]:
            break
        await asyncio.sleep(0.05)
    assert await remembered() == ["I like tea False"]


# -- usage totals ------------------------------------------------------------------


async def test_get_thread_totals_replies_summaries_and_extraction(
    loom: Loom, channel: aio.Channel, llm: ScriptedLLM
) -> None:
    def route(body: dict[str, Any]) -> Reply:
        system = body["messages"][0]["content"]
        if system.startswith(SUMMARY_MARK):
            return Reply(text="A summary.", usage=(1000, 100))
        if EXTRACT_MARK in system:
            return Reply(text='{"facts": []}', usage=(300, 30))
        return Reply(text="ok", usage=(20, 2))

    llm.set_default(route)
    api = Mem(channel, await new_tenant_key(loom))
    assistant_id = await _assistant(
        api, memory_mode=common_pb2.MEMORY_MODE_AUTO, context_window=1024
    )
    batch = [
        thread_pb2.Message(
            role=thread_pb2.ROLE_USER if i % 2 == 0 else thread_pb2.ROLE_ASSISTANT,
            content=f"Imported line {i} about topic {i} " * 3,
        )
        for i in range(200)
    ]
    added = await api.call(
        api.threads.AddMessages,
        thread_pb2.AddMessagesRequest(messages=batch, assistant_id=assistant_id, user_id="u1"),
    )
    thread_id = added.thread.thread_id
    assert added.thread.usage.input_tokens == 0
    await api.send(content="hello", thread_id=thread_id)
    await api.send(content="again", thread_id=thread_id)

    async def totals() -> tuple[int, int]:
        usage = (await _thread(api, thread_id)).usage
        return usage.input_tokens, usage.output_tokens

    folds = extractions = 0
    for _ in range(200):
        folds = sum(
            1
            for r in llm.requests
            if r.body and r.body["messages"][0]["content"].startswith(SUMMARY_MARK)
        )
        extractions = sum(
            1 for r in llm.requests if r.body and EXTRACT_MARK in r.body["messages"][0]["content"]
        )
        expected = (
            2 * 20 + 1000 * folds + 300 * extractions,
            2 * 2 + 100 * folds + 30 * extractions,
        )
        if folds and extractions == 3 and await totals() == expected:
            break
        await asyncio.sleep(0.05)
    assert folds >= 1
    assert extractions == 3  # the batch's job and one per reply
    assert await totals() == expected


# -- the README's conversation commands --------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_commands() -> list[str]:
    """The grpcurl commands of the README's conversations section, in order."""
    section = README.read_text().split("## Conversations: import, hand off")[1].split("\n## ")[0]
    [block] = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    commands: list[str] = []
    current: list[str] = []
    for line in block.splitlines():
        if line.startswith("grpcurl") or current:
            current.append(line)
            if "127.0.0.1:50051 loom.v1." in line:
                commands.append("\n".join(current))
                current = []
    return commands


async def test_the_readme_conversation_commands_run_as_written(
    api: Api, loom: Loom, llm: ScriptedLLM
) -> None:
    llm.set_default(lambda body: Reply(text="ok", usage=(12, 3)))
    billing = await _assistant(api, instructions="You are the billing specialist.")
    names = {"asst_6b0a...": billing}

    async def run(command: str) -> dict[str, Any]:
        for placeholder, value in names.items():
            command = command.replace(placeholder, value)
        command = command.replace("grpcurl", grpcurl_bin(), 1).replace("dev-key", str(api.key))
        command = command.replace("127.0.0.1:50051", f"127.0.0.1:{loom.port}")
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, f"{command}\n{err.decode()}"
        return dict(json_objects(out.decode())[-1])

    commands = _readme_commands()
    assert [c.rsplit("/", 1)[1] for c in commands] == [
        "AddMessages",
        "AddMessages",
        "UpdateThread",
        "UpdateThread",
        "ListThreads",
        "UpdateThread",
        "ForkThread",
        "SendMessage",
        "ForkThread",
        "SendMessage",
        "SendMessage",
        "SendMessage",
        "GetThread",
    ]
    imported = await run(commands[0])
    assert imported["thread_created"] is True
    names["thread_6b09..."] = thread_id = imported["thread"]["thread_id"]
    assert (await run(commands[1]))["messages"][0]["sequence"] == "2"
    assert (await run(commands[2]))["thread"]["metadata"] == {"ticket": "123", "queue": "billing"}
    assert (await run(commands[3]))["thread"]["assistant_id"] == billing
    assert [t["thread_id"] for t in (await run(commands[4]))["threads"]] == [thread_id]
    kept = (await run(commands[5]))["thread"]
    assert kept["expire_memories"] is True
    assert "expire_time" in kept
    names["thread_6b0b..."] = (await run(commands[6]))["thread"]["thread_id"]
    edited = await run(commands[7])
    assert edited["completed"]["message"]["sequence"] == "2"
    regenerate = (await run(commands[8]))["thread"]
    assert regenerate["forked_from"]["thread_id"] == names["thread_6b0b..."]
    names["thread_6b0c..."] = regenerate["thread_id"]
    again = await run(commands[9])
    assert again["completed"]["message"]["sequence"] == "1"
    # on_busy: with no reply running, both are answered at once (the
    # waiting and the interrupting are tested in tests/test_on_busy.py).
    assert (await run(commands[10]))["completed"]["message"]["sequence"] == "4"
    assert (await run(commands[11]))["completed"]["message"]["sequence"] == "6"
    shown = (await run(commands[12]))["thread"]
    assert shown["thread_id"] == thread_id
    assert shown["message_count"] == "7"
