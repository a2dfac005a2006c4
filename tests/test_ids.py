"""Ids are random and say nothing about other tenants; nothing orders by
them (lists order by creation time, ties broken by id)."""

from __future__ import annotations

import itertools
import uuid

import grpc
import pytest

from generated.loom.v1 import assistant_pb2, thread_pb2
from service.core import ids
from service.core.clock import now
from service.core.errors import InvalidArgument
from service.core.models import Thread
from service.server import Loom
from tests.conftest import Api, expect_error


def test_new_ids_are_128_random_bits_with_their_prefix() -> None:
    made = [ids.new_id(ids.THREAD) for _ in range(2000)]
    assert len(set(made)) == len(made)
    assert all(m.startswith("thread_") and len(m) == len("thread_") + 32 for m in made)
    # No shared structure (a clock, a process tag, a counter): each hex
    # position takes many values, and consecutive ids share no prefix.
    digits = [m.removeprefix("thread_") for m in made]
    assert all(len({d[i] for d in digits}) >= 12 for i in range(32))
    assert all(a[:6] != b[:6] for a, b in itertools.pairwise(digits))
    assert all(a[-6:] != b[-6:] for a, b in itertools.pairwise(digits))


def test_check_id_takes_new_and_earlier_ids_only() -> None:
    for value in (
        ids.new_id(ids.ASSISTANT),
        "asst_" + "0" * 24,
        ids.derived_id(ids.ASSISTANT, "x"),
    ):
        assert ids.check_id(ids.ASSISTANT, value, "assistant_id") == value
    for value in ("asst_" + "0" * 31, "asst_" + "0" * 33, "asst_" + "0" * 25, "thread_" + "0" * 32):
        with pytest.raises(InvalidArgument, match="32 hex digits"):
            ids.check_id(ids.ASSISTANT, value, "assistant_id")


async def test_one_tenants_ids_tell_nothing_of_anothers(api: Api, loom: Loom) -> None:
    """Made alternately by two tenants, the ids of one share no prefix or
    suffix with the ids made just before and after by the other."""
    other = Api(api.channel, (await loom.keys.create(f"t-{uuid.uuid4().hex[:12]}")).secret)
    made = []
    for i in range(10):
        for client in (api, other):
            created = await client.call(
                client.assistants.CreateAssistant,
                assistant_pb2.CreateAssistantRequest(
                    assistant=assistant_pb2.Assistant(name=f"{i}")
                ),
            )
            made.append(created.assistant.assistant_id.removeprefix("asst_"))
    assert all(len(m) == 32 for m in made)
    assert all(a[:4] != b[:4] and a[-4:] != b[-4:] for a, b in itertools.pairwise(made))
    # And another tenant's id is simply not there.
    await expect_error(
        api.call(
            api.assistants.GetAssistant,
            assistant_pb2.GetAssistantRequest(assistant_id="asst_" + made[1]),
        ),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )


async def test_lists_break_creation_time_ties_by_id_across_pages(api: Api, loom: Loom) -> None:
    """Threads created in the same millisecond (BSON keeps no finer time)
    are listed once each, pages of one included."""
    assistant = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(name="ties")),
    )
    tenant = (await loom.keys.authenticate(api.key)).tenant
    moment = now().replace(microsecond=123000)
    made = [ids.new_id(ids.THREAD) for _ in range(5)]
    for thread_id in made:
        await loom.store.threads.insert(
            Thread(
                thread_id=thread_id,
                tenant=tenant,
                assistant_id=assistant.assistant.assistant_id,
                create_time=moment,
                update_time=moment,
            )
        )
    listed: list[str] = []
    token = ""
    while True:
        page = await api.call(
            api.threads.ListThreads,
            thread_pb2.ListThreadsRequest(page_size=1, page_token=token),
        )
        listed += [t.thread_id for t in page.threads]
        token = page.next_page_token
        if not token:
            break
    assert listed == sorted(made, reverse=True)
