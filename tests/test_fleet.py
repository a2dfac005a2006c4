"""Faults against a real fleet (tests/support/fleet.py): two Loom replicas
as OS processes on one FerretDB and one Chroma server, the scripted model,
and clients spreading calls over the replicas. Each test leaves the fleet
as it found it (every replica and dependency up).

The reply loop's own faults (issue 10, part 2) are here too: a reply whose
lease is taken over, the database killed mid-stream, the next message sent
right after ``completed``, one request id sent to two replicas at once."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from pymongo import MongoClient

from generated.loom.v1 import (
    assistant_pb2,
    assistant_pb2_grpc,
    common_pb2,
    memory_pb2,
    memory_pb2_grpc,
    thread_pb2,
    thread_pb2_grpc,
)
from service.memory.extraction import EXTRACT_PROMPT
from tests.conftest import error_info
from tests.scripted_llm import Fail, Hang, Reply, ScriptedLLM
from tests.support.fleet import DEV_KEY, Fleet

LEASE = 3.0
MD = (("x-api-key", DEV_KEY),)
EXTRACT_MARK = EXTRACT_PROMPT.splitlines()[0]
SLOW_WORDS = " ".join(f"w{i}" for i in range(40))
USER = "fleet-user"


@pytest.fixture(scope="module")
def fleet(llm: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    env = {
        "LOOM_LEASE_SECONDS": str(LEASE),
        "LOOM_JOB_LEASE_SECONDS": str(LEASE),
        "LOOM_JOB_MAX_ATTEMPTS": "2",
        "LOOM_JOB_RETRY_DELAY": "0.2",
        "LOOM_JOB_MAX_RETRY_DELAY": "1",
        "LOOM_MONGODB_TIMEOUT": "1",
        "LOOM_LLM_TIMEOUT": "30",
        "LOOM_LLM_MAX_RETRIES": "2",
        "LOOM_SHUTDOWN_GRACE": "10",
    }
    log_dir: Path = tmp_path_factory.mktemp("fleet")
    with Fleet(2, log_dir=log_dir, llm=llm, env=env, database="loom_fleet") as running:
        yield running


class Model:
    """Chat replies (slow ones paced per word), and fact extraction that can
    be made to hang (a job stuck in a replica that is about to die)."""

    def __init__(self) -> None:
        self.facts: dict[str, list[str]] = {}
        self.hang_extraction = False
        self.extractions = 0
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Reply | Hang:
        messages = body.get("messages") or []
        system = str(messages[0]["content"]) if messages and messages[0]["role"] == "system" else ""
        if EXTRACT_MARK in system:
            if self.hang_extraction:
                return Hang()
            with self._lock:
                self.extractions += 1
            said = str(messages[-1]["content"])
            facts = next((f for key, f in self.facts.items() if key in said), [])
            return Reply(text=json.dumps({"facts": facts}))
        if "operations" in system:
            return Reply(text='{"operations": []}')
        last = str(messages[-1]["content"]) if messages else ""
        if last.startswith("slow"):
            return Reply(text=SLOW_WORDS, chunk_delay=0.15)
        return Reply(text="Noted.")


@pytest.fixture
def model(llm: ScriptedLLM) -> Model:
    route = Model()
    llm.set_default(route)
    return route


# ------------------------------------------------------------------ helpers


def _threads(channel: grpc.Channel) -> thread_pb2_grpc.ThreadServiceStub:
    return thread_pb2_grpc.ThreadServiceStub(channel)


def _send(channel: grpc.Channel, timeout: float = 30, **fields: Any) -> list[Any]:
    call = _threads(channel).SendMessage(
        thread_pb2.SendMessageRequest(**fields), metadata=MD, timeout=timeout
    )
    return list(call)


def _messages(channel: grpc.Channel, thread_id: str) -> list[thread_pb2.Message]:
    reply = _threads(channel).ListMessages(
        thread_pb2.ListMessagesRequest(thread_id=thread_id), metadata=MD, timeout=10
    )
    return list(reply.messages)


def _assistant(channel: grpc.Channel, memory: int = common_pb2.MEMORY_MODE_AUTO) -> str:
    stub = assistant_pb2_grpc.AssistantServiceStub(channel)
    created = stub.CreateAssistant(
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(name="Fleet", memory_mode=memory)
        ),
        metadata=MD,
        timeout=10,
    )
    return str(created.assistant.assistant_id)


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[no-any-return,attr-defined]


def _eventually(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {within:g}s")


def _operation(channel: grpc.Channel, operation_id: str) -> memory_pb2.MemoryOperation:
    stub = memory_pb2_grpc.MemoryServiceStub(channel)
    got = stub.GetMemoryOperation(
        memory_pb2.GetMemoryOperationRequest(operation_id=operation_id), metadata=MD, timeout=10
    )
    return got.operation


def _memories(channel: grpc.Channel, assistant_id: str) -> list[memory_pb2.Memory]:
    stub = memory_pb2_grpc.MemoryServiceStub(channel)
    page = stub.ListMemories(
        memory_pb2.ListMemoriesRequest(assistant_id=assistant_id, page_size=100),
        metadata=MD,
        timeout=10,
    )
    return list(page.memories)


def _settled(channel: grpc.Channel, operation_id: str, within: float) -> memory_pb2.MemoryOperation:
    done = (memory_pb2.MemoryOperation.STATE_SUCCEEDED, memory_pb2.MemoryOperation.STATE_FAILED)
    found: list[memory_pb2.MemoryOperation] = []

    def check() -> bool:
        op = _operation(channel, operation_id)
        found[:] = [op]
        return op.state in done

    _eventually(check, within, f"operation {operation_id} settled")
    return found[0]


class Streamer(threading.Thread):
    """Reads one SendMessage stream in the background, keeping what arrived."""

    def __init__(self, channel: grpc.Channel, **fields: Any) -> None:
        super().__init__(daemon=True)
        self.call = _threads(channel).SendMessage(
            thread_pb2.SendMessageRequest(**fields), metadata=MD, timeout=60
        )
        self.events: list[Any] = []
        self.error: grpc.RpcError | None = None
        self.start()

    def run(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
        except grpc.RpcError as exc:
            self.error = exc

    @property
    def text(self) -> str:
        return "".join(e.delta.text for e in self.events if e.HasField("delta"))

    def deltas(self) -> int:
        return sum(e.HasField("delta") for e in self.events)


def _first_thread(channel: grpc.Channel, **fields: Any) -> str:
    return str(_send(channel, content="hello", **fields)[0].started.thread_id)


# -------------------------------------------------------------------- tests


def test_fleet_spreads_calls_over_every_replica(fleet: Fleet, model: Model) -> None:
    with fleet.channel() as channel:
        for _ in range(4):
            assert _send(channel, content="hi")[-1].HasField("completed")
    for i in range(fleet.size):
        assert fleet.health(i) == health_pb2.HealthCheckResponse.SERVING
        assert "SendMessage" in fleet.replica(i).output()


def test_a_replica_killed_mid_stream_leaves_nothing_stuck(
    fleet: Fleet, model: Model, llm: ScriptedLLM
) -> None:
    model.facts["cat named Tom"] = ["The user has a cat named Tom."]
    with fleet.replica(0).channel() as zero, fleet.replica(1).channel() as one:
        assistant_id = _assistant(zero)
        # Replica 1 is frozen, so replica 0 claims the exchange's extraction
        # job, which hangs in the model when replica 0 dies.
        model.hang_extraction = True
        fleet.signal(1, signal.SIGSTOP)
        try:
            # A thread with a user: a user-less one writes no memory.
            done = _send(
                zero, content="I have a cat named Tom.", assistant_id=assistant_id, user_id=USER
            )
            operation_id = done[-1].completed.memory_operation_id
            _eventually(
                lambda: any(
                    EXTRACT_MARK in json.dumps(r.body) for r in llm.requests if r.body is not None
                ),
                20,
                "replica 0 running the extraction job",
            )
        finally:
            fleet.signal(1, signal.SIGCONT)
        thread_id = _first_thread(zero, assistant_id=assistant_id)
        cut = Streamer(zero, content="slow: tell me a long story", thread_id=thread_id)
        _eventually(lambda: cut.deltas() >= 3, 20, "the first deltas")
        fleet.kill(0)
        model.hang_extraction = False
        cut.join(20)
        assert cut.error is not None
        assert cut.error.code() == grpc.StatusCode.UNAVAILABLE

        # Another replica serves the thread within the lease's lifetime.
        answered: list[Any] = []

        def answer() -> bool:
            try:
                answered[:] = _send(one, content="are you there?", thread_id=thread_id)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:  # type: ignore[attr-defined]
                    raise
                return False
            return True

        _eventually(answer, LEASE + 15, "the thread answering on replica 1")
        assert answered[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
        stored = _messages(one, thread_id)
        assert [m.status for m in stored][2:] == [
            thread_pb2.MESSAGE_STATUS_COMPLETE,
            thread_pb2.MESSAGE_STATUS_INCOMPLETE,
            thread_pb2.MESSAGE_STATUS_COMPLETE,
            thread_pb2.MESSAGE_STATUS_COMPLETE,
        ]
        assert [m.content for m in stored].count("slow: tell me a long story") == 1
        assert cut.text.startswith(stored[3].content)

        # The dead replica's job finishes once, on the live one.
        op = _settled(one, operation_id, 60)
        assert op.state == memory_pb2.MemoryOperation.STATE_SUCCEEDED
        facts = [m.content for m in _memories(one, assistant_id)]
        assert facts.count("The user has a cat named Tom.") == 1
    fleet.restart(0)


def test_database_down_and_back_every_replica_recovers_by_itself(
    fleet: Fleet, model: Model
) -> None:
    channels = [fleet.replica(i).channel() for i in range(fleet.size)]
    try:
        thread_id = _first_thread(channels[0])
        fleet.stop_database()
        try:
            for i, channel in enumerate(channels):
                _eventually(
                    lambda i=i: fleet.health(i) == health_pb2.HealthCheckResponse.NOT_SERVING,
                    15,
                    f"replica {i} NOT_SERVING",
                )
                # Fails fast: UNAVAILABLE inside a 5 s deadline.
                code = _code(
                    lambda channel=channel: _threads(channel).GetThread(
                        thread_pb2.GetThreadRequest(thread_id=thread_id), metadata=MD, timeout=5
                    )
                )
                assert code == grpc.StatusCode.UNAVAILABLE
        finally:
            fleet.start_database()
        for i, channel in enumerate(channels):
            _eventually(
                lambda i=i: fleet.health(i) == health_pb2.HealthCheckResponse.SERVING,
                30,
                f"replica {i} SERVING again",
            )
            events = _send(channel, content=f"back on {i}", thread_id=thread_id)
            assert events[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
        assert len(_messages(channels[1], thread_id)) == 2 + 2 * fleet.size
    finally:
        for channel in channels:
            channel.close()


def test_chroma_down_replies_stream_and_memory_writes_wait_for_it(
    fleet: Fleet, model: Model
) -> None:
    model.facts["dog called Rex"] = ["The user has a dog called Rex."]
    with fleet.channel() as channel:
        assistant_id = _assistant(channel)
        fleet.stop_chroma()
        try:
            events = _send(
                channel, content="I have a dog called Rex.", assistant_id=assistant_id, user_id=USER
            )
            assert events[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
            # The reply went on without recall, and says so.
            announced = [e.memory for e in events if e.HasField("memory")]
            assert [(list(m.memories), m.skipped_reason) for m in announced] == [
                ([], "UNAVAILABLE")
            ]
            operation_id = events[-1].completed.memory_operation_id
            code = _code(lambda: _memories(channel, assistant_id))
            assert code == grpc.StatusCode.UNAVAILABLE
            # Longer than two attempts' back-off (LOOM_JOB_MAX_ATTEMPTS=2),
            # after which the job used to fail for good.
            time.sleep(5)
            op = _operation(channel, operation_id)
            assert op.state != memory_pb2.MemoryOperation.STATE_FAILED, op.error
        finally:
            fleet.start_chroma()
        op = _settled(channel, operation_id, 60)
        assert op.state == memory_pb2.MemoryOperation.STATE_SUCCEEDED, op.error
        contents = [m.content for m in _memories(channel, assistant_id)]
        assert "The user has a dog called Rex." in contents
        assert "I have a dog called Rex." in contents  # the episodic write, applied late


@pytest.mark.parametrize(
    ("steps", "code", "requests"),
    [
        ([Fail(429, retry_after_ms=50)] * 3, grpc.StatusCode.RESOURCE_EXHAUSTED, 3),
        ([Fail(500)] * 3, grpc.StatusCode.UNAVAILABLE, 3),
        ([Fail(500), Reply(text="fine after all")], None, 2),
        ([Reply(text=SLOW_WORDS, break_after=5)], grpc.StatusCode.UNAVAILABLE, 1),
    ],
    ids=["429-retry-after", "500s", "one-500", "stream-cut"],
)
def test_model_faults_are_bounded_and_store_nothing_twice(
    fleet: Fleet,
    llm: ScriptedLLM,
    steps: list[Any],
    code: grpc.StatusCode | None,
    requests: int,
) -> None:
    with fleet.channel() as channel:
        thread_id = _first_thread(channel)
        llm.reset()
        llm.script(*steps)
        if code is None:
            assert _send(channel, content="fault", thread_id=thread_id)[-1].HasField("completed")
        else:
            assert _code(lambda: _send(channel, content="fault", thread_id=thread_id)) == code
        assert len(llm.requests) == requests
        stored = _messages(channel, thread_id)
        assert [m.content for m in stored].count("fault") == 1
        assert len(stored) == 4
        assert stored[3].status != thread_pb2.MESSAGE_STATUS_IN_PROGRESS


def test_model_hanging_past_the_callers_deadline(fleet: Fleet, llm: ScriptedLLM) -> None:
    with fleet.channel() as channel:
        thread_id = _first_thread(channel)
        llm.script(Hang())
        started = time.monotonic()
        code = _code(lambda: _send(channel, timeout=2, content="hang", thread_id=thread_id))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 10
        _eventually(
            lambda: (
                _messages(channel, thread_id)[-1].status == thread_pb2.MESSAGE_STATUS_INCOMPLETE
            ),
            10,
            "the cut reply stored INCOMPLETE",
        )
        assert [m.content for m in _messages(channel, thread_id)].count("hang") == 1


def test_sigterm_under_load_lets_every_stream_finish(fleet: Fleet, model: Model) -> None:
    channels = [fleet.replica(i).channel() for i in range(fleet.size)]
    try:
        threads = [_first_thread(channels[i % fleet.size]) for i in range(6)]
        streams = [
            Streamer(channels[i % fleet.size], content="slow: go on", thread_id=t)
            for i, t in enumerate(threads)
        ]
        _eventually(lambda: all(s.deltas() >= 1 for s in streams), 30, "every stream started")
        for i in range(fleet.size):
            fleet.signal(i, signal.SIGTERM)
        for stream in streams:
            stream.join(30)
            assert stream.error is None, stream.error
            assert stream.events[-1].HasField("completed")
        for i in range(fleet.size):
            assert fleet.replica(i).wait(30) == 0
            code = _code(
                lambda i=i: _threads(channels[i]).ListThreads(
                    thread_pb2.ListThreadsRequest(), metadata=MD, timeout=5
                )
            )
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        for channel in channels:
            channel.close()
        for i in range(fleet.size):
            fleet.restart(i)
    with fleet.channel() as channel:
        for thread_id, stream in zip(threads, streams, strict=True):
            stored = _messages(channel, thread_id)
            assert stored[-1].status == thread_pb2.MESSAGE_STATUS_COMPLETE
            assert stored[-1].content == stream.text


def test_same_request_id_on_two_replicas_at_once(
    fleet: Fleet, model: Model, llm: ScriptedLLM
) -> None:
    with fleet.replica(0).channel() as zero, fleet.replica(1).channel() as one:
        thread_id = _first_thread(zero)
        llm.reset()
        llm.set_default(model)
        fields = {"content": "slow: once", "thread_id": thread_id, "request_id": "req-twice"}
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda ch: _send(ch, **fields), (zero, one)))
        chats = [r for r in llm.requests if r.body and EXTRACT_MARK not in json.dumps(r.body)]
        assert len(chats) == 1
        replies = [r[-1].completed.message for r in results]
        assert replies[0].message_id == replies[1].message_id
        assert replies[0].content == replies[1].content
        assert [m.content for m in _messages(zero, thread_id)].count("slow: once") == 1


def test_next_message_right_after_completed_is_accepted(fleet: Fleet, model: Model) -> None:
    """Eight chat clients, each on its own thread, each sending its next
    message as soon as it reads ``completed`` (and reading no further)."""

    def client(channel: grpc.Channel) -> int:
        thread_id = _first_thread(channel)
        refused = 0
        for i in range(15):
            call = _threads(channel).SendMessage(
                thread_pb2.SendMessageRequest(content=f"m{i}", thread_id=thread_id),
                metadata=MD,
                timeout=30,
            )
            try:
                for event in call:
                    if event.HasField("completed"):
                        call.cancel()  # stop reading at `completed`
                        break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:  # type: ignore[attr-defined]
                    raise
                refused += 1
        return refused

    with fleet.channel() as channel, ThreadPoolExecutor(8) as pool:
        refused = sum(pool.map(client, [channel] * 8))
    assert refused == 0


@pytest.mark.parametrize("mode", ["enqueue", "interrupt"])
def test_a_message_on_a_busy_thread_waits_or_interrupts_across_replicas(
    fleet: Fleet, model: Model, mode: str
) -> None:
    """SendMessage's on_busy with the running reply on the other replica's
    process: it learns of the interrupt through its lease document."""
    interrupt = mode == "interrupt"
    on_busy = thread_pb2.ON_BUSY_INTERRUPT if interrupt else thread_pb2.ON_BUSY_ENQUEUE
    with fleet.replica(0).channel() as zero, fleet.replica(1).channel() as one:
        thread_id = _first_thread(zero)
        running = Streamer(zero, content="slow: first", thread_id=thread_id)
        _eventually(lambda: running.deltas() >= 1, 20, "the first delta")
        newer = _send(one, content="then this", thread_id=thread_id, on_busy=on_busy)
        running.join(30)
        assert newer[-1].completed.message.content == "Noted."
        messages = _messages(zero, thread_id)
    if interrupt:
        assert running.error is not None
        assert error_info(running.error)["reason"] == "REPLY_INTERRUPTED"
        assert messages[3].status == thread_pb2.MESSAGE_STATUS_INCOMPLETE
        assert messages[3].content == running.text
    else:
        assert running.error is None
        assert messages[3].status == thread_pb2.MESSAGE_STATUS_COMPLETE
        assert messages[3].content == SLOW_WORDS
    assert [m.content for m in messages[2:3] + messages[4:]] == [
        "slow: first",
        "then this",
        "Noted.",
    ]


def test_a_reply_that_loses_its_lease_stops_writing(fleet: Fleet, model: Model) -> None:
    with fleet.replica(0).channel() as channel:
        thread_id = _first_thread(channel)
        stream = Streamer(channel, content="slow: fenced", thread_id=thread_id)
        _eventually(lambda: stream.deltas() >= 2, 20, "the first deltas")
        with MongoClient(fleet.ferretdb.uri) as client:
            # Another replica took the thread over (as after a long stall).
            client[fleet.database_name]["leases"].update_one(
                {"_id": thread_id}, {"$set": {"owner": "another-replica"}}
            )
        stream.join(30)
        assert stream.error is not None
        assert stream.error.code() == grpc.StatusCode.ABORTED
        assert error_info(stream.error)["reason"] == "LEASE_LOST"
        cut = _messages(channel, thread_id)[-1]
        assert cut.content == stream.text
        # The model streams on for seconds more; nothing of it is written
        # (a save every second would show here).
        time.sleep(2.5)
        assert _messages(channel, thread_id)[-1] == cut


def test_database_killed_mid_stream_keeps_what_was_streamed(fleet: Fleet, model: Model) -> None:
    with fleet.replica(0).channel() as channel:
        thread_id = _first_thread(channel)
        stream = Streamer(channel, content="slow: outage", thread_id=thread_id)
        _eventually(lambda: stream.deltas() >= 10, 20, "ten deltas")
        fleet.stop_database()
        try:
            stream.join(60)  # the model streams on; the reply's last writes fail
            assert stream.error is not None
        finally:
            fleet.start_database()
        _eventually(
            lambda: fleet.health(0) == health_pb2.HealthCheckResponse.SERVING, 30, "SERVING"
        )

        def stored_whole() -> bool:
            # The cut reply's end is written once the database answers again
            # (its retries are at most 2 s apart): the reply, then the thread.
            stored = _messages(channel, thread_id)
            thread = _threads(channel).GetThread(
                thread_pb2.GetThreadRequest(thread_id=thread_id), metadata=MD, timeout=10
            )
            return (
                stored[3].status != thread_pb2.MESSAGE_STATUS_IN_PROGRESS
                and thread.thread.message_count == len(stored)
            )

        _eventually(stored_whole, LEASE + 2, "the cut reply and its thread stored, counts agreeing")
        stored = _messages(channel, thread_id)
        assert stored[3].content == stream.text
        assert _send(channel, content="next", thread_id=thread_id)[-1].HasField("completed")


def test_memories_written_through_any_replica_are_found_on_every_other_at_once(
    fleet: Fleet, model: Model
) -> None:
    """Read-your-writes across the fleet: memories created through both
    replicas at the same instant are each found by the very next search on
    both (warm caches: each replica searched the assistant before), and one
    deleted through either is gone from both."""
    with fleet.replica(0).channel() as first, fleet.replica(1).channel() as second:
        stubs = [memory_pb2_grpc.MemoryServiceStub(c) for c in (first, second)]
        assistant_id = _assistant(first)

        def create(i: int, name: str) -> str:
            memory = memory_pb2.Memory(
                assistant_id=assistant_id, user_id=USER, content=f"The user visited {name}."
            )
            made = stubs[i].CreateMemory(
                memory_pb2.CreateMemoryRequest(memory=memory), metadata=MD, timeout=10
            )
            return str(made.memory.memory_id)

        def found(i: int) -> set[str]:
            reply = stubs[i].SearchMemories(
                memory_pb2.SearchMemoriesRequest(
                    assistant_id=assistant_id, query="visited", user_id=USER, limit=50
                ),
                metadata=MD,
                timeout=10,
            )
            return {r.memory.memory_id for r in reply.results}

        written = {create(0, "Lisbon")}
        assert found(0) == found(1) == written
        with ThreadPoolExecutor(2) as pool:
            for round_ in range(6):
                made = pool.map(create, (0, 1), (f"Porto {round_}", f"Faro {round_}"))
                written.update(made)
                assert found(0) == written
                assert found(1) == written
            gone = sorted(written)[:2]
            for i, memory_id in enumerate(gone):
                stubs[i].DeleteMemory(
                    memory_pb2.DeleteMemoryRequest(assistant_id=assistant_id, memory_id=memory_id),
                    metadata=MD,
                    timeout=10,
                )
        written.difference_update(gone)
        assert found(0) == found(1) == written
