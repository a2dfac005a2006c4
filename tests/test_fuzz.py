"""Every RPC of loom.v1 fuzzed against the real server (grpc.aio, FerretDB,
embedded Chroma, the scripted model over HTTP).

Requests are built by hypothesis from the protobuf descriptors
(tests/support/fuzzing.py), and raw bytes (random, or valid requests
flipped, cut and spliced) are sent as they are. For every call:

- the status is one the README's reason table documents, never UNKNOWN or
  INTERNAL, and a non-OK status carries an ErrorInfo (domain loom.v1) whose
  reason is in that table (only gRPC's own refusal of an oversized message
  carries none, as the README says);
- a refused write leaves every list of the tenant as it was;
- another tenant's objects are never in an answer, and its lists never
  change, whatever the caller sends;
- the server still answers health checks as SERVING afterwards.

``make test`` runs the "ci" profile (a few fixed-seed examples per RPC);
``make fuzz`` runs the "long" one and prints the figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import given
from hypothesis import strategies as st

from generated.loom.v1 import assistant_pb2, thread_pb2, tools_pb2
from tests.scripted_llm import ScriptedLLM
from tests.support.fuzzing import (
    MAX_MESSAGE_CHARS,
    METHODS,
    STATS,
    Pool,
    byte_mutations,
    requests,
)
from tests.support.process import health_status
from tests.support.threaded import ThreadedLoom
from tests.support.world import DOCUMENTED, Outcome, TenantWorld, invoke, model_route

# Calls that write: a refusal of one must leave every list as it was.
WRITES = {
    name
    for name in METHODS
    if name.split("/")[1].startswith(("Create", "Update", "Delete", "Send", "Submit", "Cancel"))
}
# Codes a call may answer with (with an ErrorInfo), from the README's table.
ALLOWED = {code for codes in DOCUMENTED.values() for code in codes} - {"INTERNAL"}


@dataclass
class Fuzz:
    """The server under fuzz, the caller's tenant and another one."""

    loom: ThreadedLoom
    channel: grpc.Channel
    mine: TenantWorld
    other: TenantWorld
    pool: Pool
    other_counts: dict[str, int]
    strategies: dict[str, st.SearchStrategy[bytes]]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # How hypothesis prints the fixtures of a failing example: briefly.
        printer.text(f"Fuzz({self.loom.address})")

    def refresh(self) -> None:
        self.pool.ids[:] = [*self.mine.ids(), *self.other.ids()]
        self.pool.own[:] = [i for i in self.mine.ids() if i != self.mine.deleted]
        self.pool.tokens[:] = [self.mine.token, self.other.token]
        self.pool.users[:] = ["", self.mine.user, "u2", "U1"]
        self.pool.tool_call_ids[:] = [self.mine.call, self.other.call]


@pytest.fixture(scope="module")
def fuzz(threaded_loom: ThreadedLoom, llm: ScriptedLLM) -> Iterator[Fuzz]:
    llm.set_default(model_route)
    with threaded_loom.channel() as channel:
        mine = TenantWorld(channel, threaded_loom.new_key("fuzz")).build()
        other = TenantWorld(channel, threaded_loom.new_key("other")).build()
        pool = Pool()
        state = Fuzz(threaded_loom, channel, mine, other, pool, other.counts(), {})
        for name, method in METHODS.items():
            valid = requests(method, pool).map(lambda m: m.SerializeToString())
            state.strategies[name] = valid
            state.strategies[f"raw {name}"] = byte_mutations(valid)
        state.refresh()
        yield state


@pytest.fixture(autouse=True)
def _model(llm: ScriptedLLM) -> None:
    llm.set_default(model_route)  # conftest resets the model before each test


def check_outcome(name: str, outcome: Outcome, size: int) -> None:
    """The status, and the ErrorInfo of a non-OK one, are documented."""
    STATS[f"code {outcome.code.name}"] += 1
    code = outcome.code.name
    assert outcome.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
        f"{name} answered {code}: {outcome.details}"
    )
    if outcome.code is grpc.StatusCode.OK:
        return
    if code == "RESOURCE_EXHAUSTED" and outcome.reason is None:
        # gRPC's own refusal of a message over the transport limit.
        assert "larger than max" in outcome.details, outcome.details
        assert size > MAX_MESSAGE_CHARS, size
        return
    assert code in ALLOWED, f"{name} answered {code}, which the README does not list"
    assert outcome.reason is not None, f"{name} answered {code} without ErrorInfo: {outcome}"
    assert outcome.domain == "loom.v1", outcome
    assert outcome.reason in DOCUMENTED, f"{name}: reason {outcome.reason} is not in the README"
    assert code in DOCUMENTED[outcome.reason], f"{name}: {outcome.reason} with {code}"
    assert outcome.details, f"{name}: {code} with no message"


def run_example(fuzz: Fuzz, name: str, raw: bytes) -> Outcome:
    """One call by the fuzzing tenant, checked."""
    method: MethodDescriptor = METHODS[name]
    write = name in WRITES
    mine_before = fuzz.mine.counts() if write else None
    outcome = invoke(fuzz.channel, method, raw, fuzz.mine.key)
    STATS["examples"] += 1
    check_outcome(name, outcome, len(raw))
    for response in outcome.responses:
        leaked = [s for s in fuzz.other.secrets() if s.encode() in response]
        assert not leaked, f"{name} showed another tenant's {leaked}"
    if write:
        assert fuzz.other.counts() == fuzz.other_counts, f"{name} changed another tenant's lists"
        if outcome.code is not grpc.StatusCode.OK and not outcome.responses:
            assert fuzz.mine.counts() == mine_before, (
                f"{name} refused ({outcome.code.name}: {outcome.details}) but left writes"
            )
        if outcome.code is grpc.StatusCode.OK:
            fuzz.mine.heal()
            fuzz.refresh()
    return outcome


def assert_serving(fuzz: Fuzz) -> None:
    status = health_status(fuzz.loom.address, timeout=10)
    assert status == health_pb2.HealthCheckResponse.SERVING, status


@pytest.mark.parametrize("name", sorted(METHODS))
@given(data=st.data())
def test_every_request_is_answered_with_a_documented_status(
    fuzz: Fuzz, name: str, data: st.DataObject
) -> None:
    run_example(fuzz, name, data.draw(fuzz.strategies[name], label="request"))
    assert_serving(fuzz)


@pytest.mark.parametrize("name", sorted(METHODS))
@given(data=st.data())
def test_raw_bytes_never_crash_the_server_or_answer_internal(
    fuzz: Fuzz, name: str, data: st.DataObject
) -> None:
    run_example(fuzz, name, data.draw(fuzz.strategies[f"raw {name}"], label="bytes"))
    assert_serving(fuzz)


# -- failures the fuzzer found, kept as regressions ---------------------------


def _tool(parameters: dict[str, Any]) -> tools_pb2.Tool:
    tool = tools_pb2.Tool(type="function", function=tools_pb2.FunctionDefinition(name="lookup"))
    tool.function.parameters.update(parameters)
    return tool


@pytest.mark.parametrize("number", [float("nan"), float("inf"), -float("inf")])
def test_a_tool_schema_with_nan_or_infinity_is_invalid_argument(fuzz: Fuzz, number: float) -> None:
    """Was INTERNAL: protobuf's JSON printer refuses NaN and infinities."""
    create = assistant_pb2.CreateAssistantRequest(
        assistant=assistant_pb2.Assistant(name="nan", tools=[_tool({"maximum": number})])
    )
    send = thread_pb2.SendMessageRequest(
        content="hi", assistant_id=fuzz.mine.assistant, tools=[_tool({"x": [number]})]
    )
    for name, request in (
        ("AssistantService/CreateAssistant", create),
        ("ThreadService/SendMessage", send),
    ):
        outcome = run_example(fuzz, name, request.SerializeToString())
        assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, outcome
        assert "parameters" in outcome.details, outcome.details


def test_an_error_quoting_a_long_input_still_carries_its_error_info(fuzz: Fuzz) -> None:
    """Was RESOURCE_EXHAUSTED on the client: an order_by of 1,001 NULs came
    back quoted whole, twice, past the 8 KiB a client takes in trailers."""
    request = thread_pb2.ListMessagesRequest(thread_id=fuzz.mine.thread, order_by="\x00" * 1001)
    outcome = run_example(fuzz, "ThreadService/ListMessages", request.SerializeToString())
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert outcome.reason == "INVALID_ARGUMENT"
    assert len(outcome.details) < 300, outcome.details


def test_a_send_refused_for_its_tool_choice_creates_no_thread(fuzz: Fuzz) -> None:
    """Was a thread left behind: tool_choice "required" with no tools was
    refused after the new thread had been stored."""
    request = thread_pb2.SendMessageRequest(content="a", tool_choice="required")
    outcome = run_example(fuzz, "ThreadService/SendMessage", request.SerializeToString())
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, outcome


@pytest.mark.parametrize(("seconds", "nanos"), [(0, -1), (0, 10**9), (-(2**40), 0)])
def test_a_thread_expiring_at_an_invalid_time_is_invalid_argument(
    fuzz: Fuzz, seconds: int, nanos: int
) -> None:
    """Was INTERNAL (the long fuzz run): protobuf refuses to turn a
    Timestamp out of its range into a time."""
    thread = thread_pb2.Thread(assistant_id=fuzz.mine.assistant)
    thread.expire_time.seconds, thread.expire_time.nanos = seconds, nanos
    create = thread_pb2.CreateThreadRequest(thread=thread)
    outcome = run_example(fuzz, "ThreadService/CreateThread", create.SerializeToString())
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert "expire_time" in outcome.details
