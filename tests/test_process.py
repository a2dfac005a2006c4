"""Loom as a real OS process: ``python -m service`` started with environment
variables only, talked to over TCP with grpcurl (server reflection, no proto
files) and with gRPC stubs; its CLI; configuration errors; SIGTERM shutdown;
and a restart on the same database."""

from __future__ import annotations

import json
import re
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from generated.loom.v1 import assistant_pb2, assistant_pb2_grpc, thread_pb2, thread_pb2_grpc
from tests.conftest import MODEL_DIR, error_info
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB, free_port
from tests.support.process import (
    LoomProcess,
    clean_env,
    grpcurl,
    grpcurl_bin,
    health_status,
    json_objects,
    run_cli,
)

DEV_KEY = "loom-process-dev-key"
MODEL = "scripted-model"

Spawn = Callable[..., LoomProcess]


# ----------------------------------------------------------------- fixtures


@pytest.fixture
def db_name() -> str:
    """A database of its own for each test."""
    return f"loomproc_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def env_for(ferretdb: FerretDB, llm: ScriptedLLM, db_name: str) -> Callable[..., dict[str, str]]:
    """Builds the environment of a Loom process: a new free port each time,
    this test's database, the scripted model; keyword arguments override (None
    removes a variable). Processes of one test share a data folder (Chroma's
    files), as replicas of one deployment would share a Chroma server."""
    data_dir = tempfile.mkdtemp(prefix="loom-process-data-")

    def build(**overrides: str | None) -> dict[str, str]:
        values: dict[str, str | None] = {
            "LOOM_LISTEN": f"127.0.0.1:{free_port()}",
            "LOOM_MONGODB_URI": ferretdb.uri,
            "LOOM_MONGODB_DB": db_name,
            "LOOM_LLM_BASE_URL": llm.base_url,
            "LOOM_DEV_API_KEY": DEV_KEY,
            "LOOM_LLM_MODEL": MODEL,
            "LOOM_LLM_TIMEOUT": "10",
            "LOOM_LLM_RETRY_DELAY": "0.01",
            "LOOM_DATA_DIR": data_dir,
            "LOOM_EMBEDDING_MODEL_DIR": str(MODEL_DIR),
        }
        values.update(overrides)
        return clean_env(**values)

    return build


@pytest.fixture
def spawn(env_for: Callable[..., dict[str, str]], tmp_path: Path) -> Iterator[Spawn]:
    """Starts Loom processes (waiting until SERVING); every one of them is
    killed at teardown."""
    started: list[LoomProcess] = []

    def start(env: dict[str, str] | None = None, ready: bool = True) -> LoomProcess:
        proc = LoomProcess(env or env_for(), tmp_path, f"loom{len(started)}")
        started.append(proc)
        return proc.wait_ready() if ready else proc

    yield start
    for proc in started:
        proc.kill()


def _md(key: str = DEV_KEY) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


def _text(events: list[thread_pb2.SendMessageResponse]) -> str:
    return "".join(e.delta.text for e in events if e.HasField("delta"))


def _send(
    channel: grpc.Channel, key: str = DEV_KEY, **fields: Any
) -> list[thread_pb2.SendMessageResponse]:
    stub = thread_pb2_grpc.ThreadServiceStub(channel)
    call = stub.SendMessage(thread_pb2.SendMessageRequest(**fields), metadata=_md(key), timeout=20)
    return list(call)


def _list_messages(channel: grpc.Channel, thread_id: str) -> list[thread_pb2.Message]:
    stub = thread_pb2_grpc.ThreadServiceStub(channel)
    return list(
        stub.ListMessages(
            thread_pb2.ListMessagesRequest(thread_id=thread_id), metadata=_md(), timeout=10
        ).messages
    )


def _rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _turns(body: dict[str, Any] | None) -> list[tuple[str, str]]:
    assert body is not None
    return [(m["role"], m["content"]) for m in body["messages"]]


# ------------------------------------------------------ grpcurl, reflection


def _grpcurl_send(address: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    done = grpcurl(
        [
            "-plaintext",
            "-H",
            f"x-api-key: {DEV_KEY}",
            "-d",
            json.dumps(request),
            address,
            "loom.v1.ThreadService/SendMessage",
        ]
    )
    assert done.returncode == 0, f"grpcurl failed ({done.returncode}): {done.stderr}"
    events = json_objects(done.stdout)
    assert events, f"grpcurl printed no message: {done.stdout!r}"
    return events


def _grpcurl_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"]["text"] for e in events if "delta" in e)


def test_seed_scenario_through_grpcurl(spawn: Spawn, llm: ScriptedLLM) -> None:
    grpcurl_bin()  # fails with a clear message when grpcurl is missing
    llm.script(Reply(text="Noted: blue."), Reply(text="You said your favorite color is blue."))
    loom = spawn()

    listed = grpcurl(["-plaintext", loom.address, "list"])
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "loom.v1.AssistantService" in services
    assert "loom.v1.ThreadService" in services

    first = _grpcurl_send(loom.address, {"content": "My favorite color is blue."})
    # grpcurl prints the proto field names (thread_id, thread_created, ...).
    started = first[0]["started"]
    thread_id = started["thread_id"]
    assert thread_id.startswith("thread_")
    assert started["thread_created"] is True
    assert started["model"] == MODEL
    assert _grpcurl_text(first) == "Noted: blue."
    assert set(first[-1]) == {"completed"}
    assert first[-1]["completed"]["message"]["status"] == "MESSAGE_STATUS_COMPLETE"

    second = _grpcurl_send(
        loom.address, {"content": "What did I just tell you?", "thread_id": thread_id}
    )
    assert second[0]["started"]["thread_id"] == thread_id
    assert not second[0]["started"].get("thread_created", False)
    assert _grpcurl_text(second) == "You said your favorite color is blue."
    assert second[-1]["completed"]["message"]["sequence"] == "3"  # int64: a JSON string

    requests = llm.requests
    assert len(requests) == 2
    assert _turns(requests[1].body)[-3:] == [
        ("user", "My favorite color is blue."),
        ("assistant", "Noted: blue."),
        ("user", "What did I just tell you?"),
    ]


# ------------------------------------------------------------- api-keys CLI


def _list_threads(address: str, key: str) -> thread_pb2.ListThreadsResponse:
    with grpc.insecure_channel(address) as channel:
        stub = thread_pb2_grpc.ThreadServiceStub(channel)
        reply: thread_pb2.ListThreadsResponse = stub.ListThreads(
            thread_pb2.ListThreadsRequest(), metadata=_md(key), timeout=10
        )
        return reply


def test_api_keys_cli_create_list_revoke(
    spawn: Spawn, env_for: Callable[..., dict[str, str]]
) -> None:
    env = env_for()
    created = run_cli(["api-keys", "create", "--tenant", "acme"], env)
    assert created.returncode == 0, created.stderr
    lines = created.stdout.strip().splitlines()
    key = lines[-1]
    assert key == key.strip(), f"last line is not a bare key: {key!r}"
    assert " " not in key, f"last line is not a bare key: {key!r}"
    assert key.startswith("loom_")
    key_id = key.split("_")[1]  # the key is loom_<key id>_<secret>
    assert key_id in created.stdout.replace(key, "")

    loom = spawn(env)
    assert list(_list_threads(loom.address, key).threads) == []
    bogus = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    error = _rpc_error(lambda: _list_threads(loom.address, bogus))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    listing = run_cli(["api-keys", "list", "--tenant", "acme"], env)
    assert listing.returncode == 0, listing.stderr
    assert key_id in listing.stdout
    assert "acme" in listing.stdout
    secret = key.split("_", 2)[2]
    for output in (listing.stdout, listing.stderr):
        assert key not in output
        assert secret not in output
        assert secret[:8] not in output

    revoked = run_cli(["api-keys", "revoke", key_id], env)
    assert revoked.returncode == 0, revoked.stderr
    after = run_cli(["api-keys", "list", "--tenant", "acme"], env)
    assert key_id in after.stdout
    assert "revoked" in after.stdout

    fresh = spawn(env_for())  # a new process: nothing cached
    error = _rpc_error(lambda: _list_threads(fresh.address, key))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert "revoked" in (error.details() or "")

    unknown = run_cli(["api-keys", "revoke", "0123456789ab"], env)
    assert unknown.returncode != 0
    assert "0123456789ab" in unknown.stderr

    bad = run_cli(["api-keys", "create", "--tenant", "bad tenant!"], env)
    assert bad.returncode != 0
    assert "tenant" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert "loom_" not in bad.stdout


# ------------------------------------------------------ configuration errors


def _names(variable: str, text: str) -> bool:
    """Whether ``text`` names ``variable`` as a whole word (not LOOM_LOOM_X)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(variable)}(?![A-Za-z0-9_])", text) is not None


@pytest.mark.parametrize(
    ("variable", "overrides"),
    [
        ("LOOM_LISTEN", {"LOOM_LISTEN": "nonsense"}),
        ("LOOM_LLM_TIMEOUT", {"LOOM_LLM_TIMEOUT": "-1"}),
        ("LOOM_MONGODB_URI", {"LOOM_MONGODB_URI": "http://x"}),
        pytest.param("LOOM_LLM_BASE_URL", {"LOOM_LLM_BASE_URL": "ftp://x"}, id="base-url"),
        pytest.param(
            "OPENAI_BASE_URL",
            {"LOOM_LLM_BASE_URL": None, "OPENAI_BASE_URL": "ftp://x"},
            id="openai-base-url",
        ),
    ],
)
def test_invalid_configuration_exits_2_naming_the_variable(
    env_for: Callable[..., dict[str, str]], variable: str, overrides: dict[str, str | None]
) -> None:
    # The timeout bounds a hang (the check runs before anything connects);
    # how fast a call fails is measured by bench.outage, not here.
    done = run_cli([], env_for(**overrides), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "LOOM_LOOM_" not in done.stderr
    assert _names(variable, done.stderr), done.stderr


def test_unreachable_database_exits_naming_the_uri(
    env_for: Callable[..., dict[str, str]],
) -> None:
    uri = f"mongodb://loom:s3cr3t-pw@127.0.0.1:{free_port()}"
    done = run_cli([], env_for(LOOM_MONGODB_URI=uri, LOOM_MONGODB_TIMEOUT="1"), timeout=60)
    assert done.returncode != 0
    assert _names("LOOM_MONGODB_URI", done.stderr), done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cr3t-pw" not in done.stderr + done.stdout


def test_api_keys_cli_with_unreachable_database_names_the_uri(
    env_for: Callable[..., dict[str, str]],
) -> None:
    env = env_for(LOOM_MONGODB_URI=f"mongodb://127.0.0.1:{free_port()}")
    done = run_cli(["api-keys", "list"], env, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-500:]
    assert _names("LOOM_MONGODB_URI", done.stderr), done.stderr[-500:]


def test_listen_address_in_use_exits_with_a_message(
    env_for: Callable[..., dict[str, str]],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = run_cli([], env_for(LOOM_LISTEN=address), timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-500:]
    assert address in done.stderr
    assert done.stderr.startswith("loom: ") or "\nloom: " in done.stderr, done.stderr[-500:]


# ------------------------------------------------------------ no model set


def test_without_model_endpoint_serves_but_send_message_is_failed_precondition(
    spawn: Spawn, env_for: Callable[..., dict[str, str]], llm: ScriptedLLM
) -> None:
    loom = spawn(env_for(LOOM_LLM_BASE_URL=None))
    assert health_status(loom.address) == health_pb2.HealthCheckResponse.SERVING
    with loom.channel() as channel:
        error = _rpc_error(lambda: _send(channel, content="hello?"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert "LOOM_LLM_BASE_URL" in (error.details() or "")
        stub = thread_pb2_grpc.ThreadServiceStub(channel)
        threads = stub.ListThreads(thread_pb2.ListThreadsRequest(), metadata=_md(), timeout=10)
        assert list(threads.threads) == []
    assert llm.requests == []


# ------------------------------------------------------------ graceful stop


def test_sigterm_lets_a_streaming_reply_finish_and_exits_0(spawn: Spawn, llm: ScriptedLLM) -> None:
    words = "one two three four five six seven eight"
    llm.script(Reply(text=words, chunk_delay=0.3))
    loom = spawn()
    with loom.channel() as channel:
        stub = thread_pb2_grpc.ThreadServiceStub(channel)
        call = stub.SendMessage(
            thread_pb2.SendMessageRequest(content="count"), metadata=_md(), timeout=30
        )
        events = [next(call), next(call)]
        assert events[0].HasField("started")
        assert events[1].HasField("delta")

        loom.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        # New calls are refused while the reply in flight still streams. gRPC core
        # cancels calls that reach a server which is shutting down (CANCELLED, see
        # grpc/grpc#41785); once the listener is closed a connect fails (UNAVAILABLE).
        refused: grpc.StatusCode | None = None
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and refused is None:
            with loom.channel() as probe:
                try:
                    thread_pb2_grpc.ThreadServiceStub(probe).ListThreads(
                        thread_pb2.ListThreadsRequest(), metadata=_md(), timeout=1
                    )
                except grpc.RpcError as exc:
                    refused = exc.code()
            time.sleep(0.05)
        assert refused in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert loom.proc.poll() is None, "the process must wait for the reply in flight"

        events.extend(call)
    assert events[-1].HasField("completed")
    assert _text(events) == words
    done = events[-1].completed.message
    assert done.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    assert done.content == words
    assert loom.wait(15) == 0
    assert time.monotonic() - stopped_at < 12
    assert "Traceback" not in loom.output(), loom.output()


def _read_deltas(call: Iterator[thread_pb2.SendMessageResponse], into: list[str]) -> None:
    """Append the text of every delta until the stream ends; the reply must
    not complete."""
    for event in call:
        assert not event.HasField("completed"), "the reply cannot have finished"
        into.append(event.delta.text)


GREEK = "alpha beta gamma delta epsilon zeta eta theta iota kappa"


def _cut_off_by_sigterm(
    spawn: Spawn, env_for: Callable[..., dict[str, str]], llm: ScriptedLLM
) -> tuple[str, thread_pb2.ReplyStarted, str]:
    """Start a reply that takes ~4.5 s, SIGTERM the process (grace 0.5 s)
    after two deltas; return the database, the started event and the text the
    client received. Asserts the stream fails and the process exits 0."""
    llm.script(Reply(text=GREEK, chunk_delay=0.5))
    env = env_for(LOOM_SHUTDOWN_GRACE="0.5")
    loom = spawn(env)
    received: list[str] = []
    with loom.channel() as channel:
        stub = thread_pb2_grpc.ThreadServiceStub(channel)
        call = stub.SendMessage(
            thread_pb2.SendMessageRequest(content="the greek letters"), metadata=_md(), timeout=30
        )
        started = next(call).started
        assert started.thread_id.startswith("thread_")
        received.append(next(call).delta.text)
        received.append(next(call).delta.text)
        loom.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            _read_deltas(call, received)
    # Cut by Loom, which says why, not cancelled by gRPC without a word.
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert error_info(caught.value)["reason"] == "SERVER_SHUTTING_DOWN"
    assert time.monotonic() - stopped_at < 3, "the stream outlived the grace period"
    assert loom.wait(15) == 0, loom.output()
    # Logged (and measured) as a shutdown, not as a client's cancellation.
    assert "SendMessage UNAVAILABLE SERVER_SHUTTING_DOWN" in loom.output(), loom.output()
    assert llm.wait_for(lambda s: s.disconnects >= 1, timeout=5), "the model call was not closed"
    text = "".join(received)
    assert text
    assert text != GREEK
    return env["LOOM_MONGODB_DB"], started, text


def test_sigterm_past_the_grace_period_cancels_the_stream_and_exits(
    spawn: Spawn, env_for: Callable[..., dict[str, str]], llm: ScriptedLLM
) -> None:
    db, started, _ = _cut_off_by_sigterm(spawn, env_for, llm)
    again = spawn(env_for(LOOM_MONGODB_DB=db))
    with again.channel() as channel:
        user, reply = _list_messages(channel, started.thread_id)
    assert (user.sequence, user.role) == (0, thread_pb2.ROLE_USER)
    assert user.content == "the greek letters"
    assert user.message_id == started.user_message_id
    assert user.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    assert (reply.sequence, reply.role) == (1, thread_pb2.ROLE_ASSISTANT)
    assert reply.message_id == started.assistant_message_id


def test_reply_cut_off_by_shutdown_is_stored_incomplete_and_thread_reusable(
    spawn: Spawn, env_for: Callable[..., dict[str, str]], llm: ScriptedLLM
) -> None:
    db, started, received = _cut_off_by_sigterm(spawn, env_for, llm)
    again = spawn(env_for(LOOM_MONGODB_DB=db))
    with again.channel() as channel:
        reply = _list_messages(channel, started.thread_id)[1]
        thread = (
            thread_pb2_grpc.ThreadServiceStub(channel)
            .GetThread(
                thread_pb2.GetThreadRequest(thread_id=started.thread_id), metadata=_md(), timeout=10
            )
            .thread
        )
        assert reply.status == thread_pb2.MESSAGE_STATUS_INCOMPLETE, thread_pb2.MessageStatus.Name(
            reply.status
        )
        assert reply.content.startswith(received), (reply.content, received)
        assert GREEK.startswith(reply.content)
        assert reply.content != GREEK
        assert thread.message_count == 2

        llm.script(Reply(text="Where were we?"))
        events = _send(channel, content="go on", thread_id=started.thread_id)
        assert events[-1].HasField("completed")
        assert events[-1].completed.message.sequence == 3
    assert _turns(llm.requests[-1].body)[-3:] == [
        ("user", "the greek letters"),
        ("assistant", reply.content),
        ("user", "go on"),
    ]


def test_sigint_stops_an_idle_server_cleanly(spawn: Spawn) -> None:
    loom = spawn()
    loom.signal(signal.SIGINT)
    assert loom.wait(10) == 0, loom.output()
    assert "Traceback" not in loom.output(), loom.output()
    assert health_status(loom.address, timeout=0.5) is None


# ------------------------------------------------------------------ restart


def test_restart_keeps_assistants_threads_and_history(
    spawn: Spawn, env_for: Callable[..., dict[str, str]], llm: ScriptedLLM
) -> None:
    env = env_for()
    first = spawn(env)
    exchanges = [("Hi, I am Ada.", "Hello Ada."), ("I like chess.", "Chess is great.")]
    with first.channel() as channel:
        assistants = assistant_pb2_grpc.AssistantServiceStub(channel)
        assistant = assistants.CreateAssistant(
            assistant_pb2.CreateAssistantRequest(
                assistant=assistant_pb2.Assistant(
                    name="Tutor", instructions="You are a patient tutor.", metadata={"k": "v"}
                )
            ),
            metadata=_md(),
            timeout=10,
        ).assistant
        threads = thread_pb2_grpc.ThreadServiceStub(channel)
        thread = threads.CreateThread(
            thread_pb2.CreateThreadRequest(
                thread=thread_pb2.Thread(assistant_id=assistant.assistant_id, user_id="ada")
            ),
            metadata=_md(),
            timeout=10,
        ).thread
        for question, answer in exchanges:
            llm.script(Reply(text=answer))
            events = _send(channel, content=question, thread_id=thread.thread_id)
            assert events[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
        before = _list_messages(channel, thread.thread_id)
    assert first.terminate() == 0
    assert "Traceback" not in first.output(), first.output()

    second = spawn(env_for(LOOM_MONGODB_DB=env["LOOM_MONGODB_DB"]))
    with second.channel() as channel:
        got = (
            assistant_pb2_grpc.AssistantServiceStub(channel)
            .GetAssistant(
                assistant_pb2.GetAssistantRequest(assistant_id=assistant.assistant_id),
                metadata=_md(),
                timeout=10,
            )
            .assistant
        )
        assert got == assistant
        threads = thread_pb2_grpc.ThreadServiceStub(channel)
        stored = threads.GetThread(
            thread_pb2.GetThreadRequest(thread_id=thread.thread_id), metadata=_md(), timeout=10
        ).thread
        assert stored.message_count == 4
        assert (stored.assistant_id, stored.user_id) == (assistant.assistant_id, "ada")

        after = _list_messages(channel, thread.thread_id)
        assert after == before
        assert [m.sequence for m in after] == [0, 1, 2, 3]
        assert [m.content for m in after] == [text for pair in exchanges for text in pair]
        assert [m.role for m in after] == [thread_pb2.ROLE_USER, thread_pb2.ROLE_ASSISTANT] * 2
        assert {m.status for m in after} == {thread_pb2.MESSAGE_STATUS_COMPLETE}

        llm.script(Reply(text="You are Ada and you like chess."))
        events = _send(channel, content="What do you know about me?", thread_id=thread.thread_id)
        assert events[-1].completed.message.sequence == 5
    assert _turns(llm.requests[-1].body) == [
        ("system", "You are a patient tutor."),
        *[
            (role, text)
            for pair in exchanges
            for role, text in zip(("user", "assistant"), pair, strict=True)
        ],
        ("user", "What do you know about me?"),
    ]
