"""AssistantService end to end: create, read, list, update (AIP-134 masks),
delete with its threads, and the tenant's default assistant."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from generated.loom.v1 import assistant_pb2, common_pb2, thread_pb2
from tests.conftest import Api, error_info, expect_error

ASSISTANT_ID = re.compile(r"^asst_[0-9a-f]{32}$")


async def _create(api: Api, **fields: Any) -> assistant_pb2.Assistant:
    response = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(**fields)),
    )
    return response.assistant


async def _get(api: Api, assistant_id: str) -> assistant_pb2.Assistant:
    response = await api.call(
        api.assistants.GetAssistant, assistant_pb2.GetAssistantRequest(assistant_id=assistant_id)
    )
    return response.assistant


async def _list(api: Api) -> list[assistant_pb2.Assistant]:
    response = await api.call(
        api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest(page_size=1000)
    )
    assert not response.next_page_token
    return list(response.assistants)


def _update(api: Api, assistant: assistant_pb2.Assistant, paths: list[str] | None = None) -> Any:
    request = assistant_pb2.UpdateAssistantRequest(assistant=assistant)
    if paths is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    return api.call(api.assistants.UpdateAssistant, request)


async def _full(api: Api) -> assistant_pb2.Assistant:
    return await _create(
        api,
        name="Support",
        instructions="Be brief.",
        model="model-a",
        memory_mode=common_pb2.MEMORY_MODE_READONLY,
        metadata={"team": "blue", "tier": "gold"},
    )


# ------------------------------------------------------------------ create / get


async def test_create_returns_stored_assistant_and_get_reads_it_back(api: Api) -> None:
    created = await _full(api)
    assert ASSISTANT_ID.match(created.assistant_id)
    assert created.name == "Support"
    assert created.instructions == "Be brief."
    assert created.model == "model-a"
    assert created.memory_mode == common_pb2.MEMORY_MODE_READONLY
    assert dict(created.metadata) == {"team": "blue", "tier": "gold"}
    assert created.HasField("create_time")
    assert created.create_time.ToNanoseconds() > 0
    assert created.update_time == created.create_time

    fetched = await _get(api, created.assistant_id)
    assert fetched == created


async def test_create_ignores_output_only_fields(api: Api) -> None:
    chosen = "asst_" + "1" * 24
    request = assistant_pb2.CreateAssistantRequest(
        assistant=assistant_pb2.Assistant(assistant_id=chosen, name="mine")
    )
    request.assistant.create_time.FromSeconds(1)
    request.assistant.update_time.FromSeconds(2)
    created = (await api.call(api.assistants.CreateAssistant, request)).assistant
    assert created.assistant_id != chosen
    assert ASSISTANT_ID.match(created.assistant_id)
    assert created.create_time.seconds > 1_600_000_000
    assert created.update_time == created.create_time
    await expect_error(
        api.call(
            api.assistants.GetAssistant, assistant_pb2.GetAssistantRequest(assistant_id=chosen)
        ),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )


async def test_each_create_gets_a_new_id(api: Api) -> None:
    first = await _create(api, name="same")
    second = await _create(api, name="same")
    assert first.assistant_id != second.assistant_id
    assert {a.assistant_id for a in await _list(api)} == {first.assistant_id, second.assistant_id}


async def test_memory_mode_unspecified_is_stored_as_off(api: Api) -> None:
    created = await _create(api, name="no memory mode")
    assert created.memory_mode == common_pb2.MEMORY_MODE_OFF
    assert (await _get(api, created.assistant_id)).memory_mode == common_pb2.MEMORY_MODE_OFF

    auto = await _create(api, name="auto", memory_mode=common_pb2.MEMORY_MODE_AUTO)
    assert auto.memory_mode == common_pb2.MEMORY_MODE_AUTO
    reset = (
        await _update(
            api,
            assistant_pb2.Assistant(
                assistant_id=auto.assistant_id, memory_mode=common_pb2.MEMORY_MODE_UNSPECIFIED
            ),
            ["memory_mode"],
        )
    ).assistant
    assert reset.memory_mode == common_pb2.MEMORY_MODE_OFF
    assert (await _get(api, auto.assistant_id)).memory_mode == common_pb2.MEMORY_MODE_OFF


async def test_list_shows_every_created_assistant(api: Api) -> None:
    assert await _list(api) == []
    created = [await _create(api, name=f"a{i}") for i in range(3)]
    listed = await _list(api)
    assert sorted(a.assistant_id for a in listed) == sorted(a.assistant_id for a in created)
    by_id = {a.assistant_id: a for a in listed}
    for a in created:
        assert by_id[a.assistant_id] == a


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("metadata", "what"),
    [
        ({f"k{i}": "v" for i in range(17)}, "17 pairs"),
        ({"k" * 65: "v"}, "65-character key"),
        ({"a.b": "v"}, "key with a dot"),
        ({"$set": "v"}, "key starting with $"),
        ({"k": "v" * 513}, "513-character value"),
        ({"": "v"}, "empty key"),
    ],
)
async def test_create_with_metadata_over_the_limits_is_refused_and_stores_nothing(
    api: Api, metadata: dict[str, str], what: str
) -> None:
    before = await _create(api, name="already here")
    error = await expect_error(
        api.call(
            api.assistants.CreateAssistant,
            assistant_pb2.CreateAssistantRequest(
                assistant=assistant_pb2.Assistant(name=what, metadata=metadata)
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    info = error_info(error)
    assert info["domain"] == "loom.v1"
    assert info["field"] == "assistant.metadata"
    assert await _list(api) == [before]


async def test_metadata_at_the_limits_is_accepted(api: Api) -> None:
    metadata = {f"k{i}": "v" for i in range(15)}
    metadata["k" * 64] = "v" * 512
    created = await _create(api, name="edge", metadata=metadata)
    assert len(created.metadata) == 16
    assert dict((await _get(api, created.assistant_id)).metadata) == metadata


async def test_name_longer_than_256_characters_is_refused(api: Api) -> None:
    error = await expect_error(
        api.call(
            api.assistants.CreateAssistant,
            assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(name="n" * 257)),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert error_info(error)["field"] == "assistant.name"
    assert await _list(api) == []
    created = await _create(api, name="n" * 256)
    assert created.name == "n" * 256


async def test_update_with_bad_metadata_changes_nothing(api: Api) -> None:
    original = await _full(api)
    await expect_error(
        _update(
            api,
            assistant_pb2.Assistant(
                assistant_id=original.assistant_id,
                name="renamed",
                metadata={f"k{i}": "v" for i in range(17)},
            ),
            ["name", "metadata"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert await _get(api, original.assistant_id) == original


async def test_update_with_long_name_changes_nothing(api: Api) -> None:
    original = await _full(api)
    error = await expect_error(
        _update(
            api,
            assistant_pb2.Assistant(assistant_id=original.assistant_id, name="n" * 257),
            ["name"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert error_info(error)["field"] == "assistant.name"
    assert await _get(api, original.assistant_id) == original


# ------------------------------------------------------------------ update


async def test_update_single_path_changes_only_that_field(api: Api) -> None:
    original = await _full(api)
    changed = (
        await _update(
            api,
            assistant_pb2.Assistant(
                assistant_id=original.assistant_id,
                name="Renamed",
                instructions="ignored: not in the mask",
                model="ignored-model",
                memory_mode=common_pb2.MEMORY_MODE_AUTO,
                metadata={"ignored": "yes"},
            ),
            ["name"],
        )
    ).assistant
    assert changed.name == "Renamed"
    assert changed.instructions == original.instructions
    assert changed.model == original.model
    assert changed.memory_mode == original.memory_mode
    assert dict(changed.metadata) == dict(original.metadata)
    assert changed.create_time == original.create_time
    assert await _get(api, original.assistant_id) == changed


async def test_update_each_path_on_its_own(api: Api) -> None:
    original = await _full(api)
    new_values: dict[str, Any] = {
        "instructions": "Be verbose.",
        "model": "model-b",
        "memory_mode": common_pb2.MEMORY_MODE_AUTO,
        "metadata": {"only": "this"},
    }
    expected = assistant_pb2.Assistant()
    expected.CopyFrom(original)
    for path, value in new_values.items():
        message = assistant_pb2.Assistant(assistant_id=original.assistant_id, name="not this")
        if path == "metadata":
            message.metadata.update(value)
            expected.metadata.clear()
            expected.metadata.update(value)
        else:
            setattr(message, path, value)
            setattr(expected, path, value)
        changed = (await _update(api, message, [path])).assistant
        expected.update_time.CopyFrom(changed.update_time)
        assert changed == expected, path


async def test_update_metadata_replaces_the_whole_map(api: Api) -> None:
    original = await _full(api)
    changed = (
        await _update(
            api,
            assistant_pb2.Assistant(assistant_id=original.assistant_id, metadata={"new": "1"}),
            ["metadata"],
        )
    ).assistant
    assert dict(changed.metadata) == {"new": "1"}
    cleared = (
        await _update(
            api, assistant_pb2.Assistant(assistant_id=original.assistant_id), ["metadata"]
        )
    ).assistant
    assert dict(cleared.metadata) == {}
    assert dict((await _get(api, original.assistant_id)).metadata) == {}


async def test_update_star_replaces_every_field(api: Api) -> None:
    original = await _full(api)
    changed = (
        await _update(
            api,
            assistant_pb2.Assistant(
                assistant_id=original.assistant_id, name="Only a name", model="model-c"
            ),
            ["*"],
        )
    ).assistant
    assert changed.assistant_id == original.assistant_id
    assert changed.name == "Only a name"
    assert changed.model == "model-c"
    assert changed.instructions == ""
    assert changed.memory_mode == common_pb2.MEMORY_MODE_OFF
    assert dict(changed.metadata) == {}
    assert changed.create_time == original.create_time
    assert await _get(api, original.assistant_id) == changed


async def test_update_without_mask_changes_the_fields_set_in_the_message(api: Api) -> None:
    original = await _full(api)
    changed = (
        await _update(
            api,
            assistant_pb2.Assistant(
                assistant_id=original.assistant_id,
                instructions="New instructions.",
                metadata={"k": "v"},
            ),
        )
    ).assistant
    assert changed.instructions == "New instructions."
    assert dict(changed.metadata) == {"k": "v"}
    assert changed.name == original.name
    assert changed.model == original.model
    assert changed.memory_mode == original.memory_mode
    assert await _get(api, original.assistant_id) == changed

    # An explicitly empty mask is the same as no mask.
    again = (
        await _update(
            api,
            assistant_pb2.Assistant(assistant_id=original.assistant_id, name="Third name"),
            [],
        )
    ).assistant
    assert again.name == "Third name"
    assert again.instructions == "New instructions."


async def test_update_without_mask_and_nothing_set_is_refused(api: Api) -> None:
    original = await _full(api)
    error = await expect_error(
        _update(api, assistant_pb2.Assistant(assistant_id=original.assistant_id)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert error_info(error)["field"] == "update_mask"
    assert await _get(api, original.assistant_id) == original


@pytest.mark.parametrize(
    "paths",
    [
        ["nickname"],
        ["name", "nickname"],
        ["assistant_id"],
        ["create_time"],
        ["update_time"],
        ["*", "name"],
        ["name", "*"],
    ],
)
async def test_update_with_a_bad_mask_is_refused_and_changes_nothing(
    api: Api, paths: list[str]
) -> None:
    original = await _full(api)
    error = await expect_error(
        _update(
            api,
            assistant_pb2.Assistant(assistant_id=original.assistant_id, name="Changed"),
            paths,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    info = error_info(error)
    assert info["domain"] == "loom.v1"
    assert info["field"] == "update_mask"
    if "*" in paths:
        assert "'*' alone" in (error.details() or "")
    assert await _get(api, original.assistant_id) == original


async def test_update_advances_update_time_only(api: Api) -> None:
    original = await _full(api)
    await asyncio.sleep(0.01)
    first = (
        await _update(
            api, assistant_pb2.Assistant(assistant_id=original.assistant_id, name="v2"), ["name"]
        )
    ).assistant
    assert first.update_time.ToNanoseconds() > original.update_time.ToNanoseconds()
    assert first.create_time == original.create_time
    await asyncio.sleep(0.01)
    second = (
        await _update(
            api, assistant_pb2.Assistant(assistant_id=original.assistant_id, name="v3"), ["name"]
        )
    ).assistant
    assert second.update_time.ToNanoseconds() > first.update_time.ToNanoseconds()
    assert (await _get(api, original.assistant_id)).update_time == second.update_time


async def test_update_unknown_assistant_is_not_found(api: Api) -> None:
    missing = "asst_" + "0" * 24
    error = await expect_error(
        _update(api, assistant_pb2.Assistant(assistant_id=missing, name="x"), ["name"]),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )
    assert error_info(error)["assistant_id"] == missing
    assert await _list(api) == []


# ------------------------------------------------------------------ delete


async def _thread_ids(api: Api, assistant_id: str = "") -> list[str]:
    page = await api.call(
        api.threads.ListThreads,
        thread_pb2.ListThreadsRequest(assistant_id=assistant_id, page_size=1000),
    )
    return [t.thread_id for t in page.threads]


async def test_delete_assistant_deletes_its_threads_and_their_messages(api: Api) -> None:
    doomed = await _create(api, name="doomed")
    kept = await _create(api, name="kept")

    talked = await api.send(content="first", assistant_id=doomed.assistant_id, user_id="u1")
    talked_id = talked[0].started.thread_id
    await api.send(content="second", thread_id=talked_id)
    empty = await api.call(
        api.threads.CreateThread,
        thread_pb2.CreateThreadRequest(thread=thread_pb2.Thread(assistant_id=doomed.assistant_id)),
    )
    empty_id = empty.thread.thread_id
    other = await api.send(content="keep me", assistant_id=kept.assistant_id)
    other_id = other[0].started.thread_id

    deleted = await api.call(
        api.assistants.DeleteAssistant,
        assistant_pb2.DeleteAssistantRequest(assistant_id=doomed.assistant_id),
    )
    assert deleted.deleted_thread_count == 2

    await expect_error(
        api.call(
            api.assistants.GetAssistant,
            assistant_pb2.GetAssistantRequest(assistant_id=doomed.assistant_id),
        ),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )
    for thread_id in (talked_id, empty_id):
        await expect_error(
            api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id)),
            grpc.StatusCode.NOT_FOUND,
            "THREAD_NOT_FOUND",
        )
        await expect_error(
            api.call(api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id)),
            grpc.StatusCode.NOT_FOUND,
            "THREAD_NOT_FOUND",
        )
    await expect_error(
        api.send(content="still there?", thread_id=talked_id),
        grpc.StatusCode.NOT_FOUND,
        "THREAD_NOT_FOUND",
    )

    # The other assistant and its thread are untouched.
    assert await _get(api, kept.assistant_id) == kept
    assert await _thread_ids(api) == [other_id]
    assert await _thread_ids(api, kept.assistant_id) == [other_id]
    assert await _thread_ids(api, doomed.assistant_id) == []
    messages = await api.call(
        api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=other_id)
    )
    assert len(messages.messages) == 2
    assert messages.messages[0].content == "keep me"
    assert [a.assistant_id for a in await _list(api)] == [kept.assistant_id]


async def test_delete_assistant_without_threads_counts_zero_and_cannot_repeat(api: Api) -> None:
    lonely = await _create(api, name="lonely")
    deleted = await api.call(
        api.assistants.DeleteAssistant,
        assistant_pb2.DeleteAssistantRequest(assistant_id=lonely.assistant_id),
    )
    assert deleted.deleted_thread_count == 0
    assert await _list(api) == []
    error = await expect_error(
        api.call(
            api.assistants.DeleteAssistant,
            assistant_pb2.DeleteAssistantRequest(assistant_id=lonely.assistant_id),
        ),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )
    assert error_info(error)["assistant_id"] == lonely.assistant_id
    await expect_error(
        _update(api, assistant_pb2.Assistant(assistant_id=lonely.assistant_id, name="x"), ["name"]),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )
    await expect_error(
        api.call(
            api.threads.CreateThread,
            thread_pb2.CreateThreadRequest(
                thread=thread_pb2.Thread(assistant_id=lonely.assistant_id)
            ),
        ),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )
    assert await _thread_ids(api) == []


# ------------------------------------------------------------------ default assistant


async def test_send_without_assistant_uses_one_default_assistant(api: Api) -> None:
    first = await api.send(content="hello")
    second = await api.send(content="hello again")
    first_started = first[0].started
    second_started = second[0].started
    assert first_started.thread_id != second_started.thread_id
    assert first_started.assistant_id
    assert ASSISTANT_ID.match(first_started.assistant_id)
    assert second_started.assistant_id == first_started.assistant_id

    default = await _get(api, first_started.assistant_id)
    assert default.assistant_id == first_started.assistant_id
    assert default.memory_mode == common_pb2.MEMORY_MODE_OFF
    assert default.HasField("create_time")
    assert [a.assistant_id for a in await _list(api)] == [default.assistant_id]

    thread = await api.call(
        api.threads.CreateThread, thread_pb2.CreateThreadRequest(thread=thread_pb2.Thread())
    )
    assert thread.thread.assistant_id == default.assistant_id
    for started in (first_started, second_started):
        got = await api.call(
            api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=started.thread_id)
        )
        assert got.thread.assistant_id == default.assistant_id


async def test_default_assistant_can_be_updated_and_keeps_its_id(api: Api) -> None:
    first = await api.send(content="hello")
    default_id = first[0].started.assistant_id
    await _update(
        api, assistant_pb2.Assistant(assistant_id=default_id, name="Renamed default"), ["name"]
    )
    again = await api.send(content="and again")
    assert again[0].started.assistant_id == default_id
    assert (await _get(api, default_id)).name == "Renamed default"


async def test_default_assistant_is_listed_in_creation_order(api: Api) -> None:
    older = await _create(api, name="older")
    await asyncio.sleep(0.01)
    default_id = (await api.send(content="make the default"))[0].started.assistant_id
    await asyncio.sleep(0.01)
    newer = await _create(api, name="newer")
    listed = [a.assistant_id for a in await _list(api)]
    assert listed == [newer.assistant_id, default_id, older.assistant_id]


async def test_deleting_the_default_assistant_takes_its_threads_and_a_new_one_follows(
    api: Api,
) -> None:
    first = await api.send(content="hello")
    default_id = first[0].started.assistant_id
    old_thread = first[0].started.thread_id
    deleted = await api.call(
        api.assistants.DeleteAssistant,
        assistant_pb2.DeleteAssistantRequest(assistant_id=default_id),
    )
    assert deleted.deleted_thread_count == 1
    await expect_error(
        api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=old_thread)),
        grpc.StatusCode.NOT_FOUND,
        "THREAD_NOT_FOUND",
    )
    again = await api.send(content="hello again")
    assert again[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    new_default = again[0].started.assistant_id
    assert (await _get(api, new_default)).assistant_id == new_default
    assert await _thread_ids(api) == [again[0].started.thread_id]
    assert [a.assistant_id for a in await _list(api)] == [new_default]
