"""Isolation as a stateful property, against the real service.

A hypothesis state machine plays two tenants, each with end users "alice"
and "bob" under the same assistants (the same user names in both tenants),
interleaving creates, lists, pages, reads, searches, updates and deletes of
assistants, threads, messages and memories, and SendMessage with memory
AUTO, and trying every object of one tenant with the other's key. Every
text a user sends or stores starts with a marker word owned by (tenant,
assistant, user), and messages also name other users' markers, so that a
recall or a search that crossed a scope would find them. After every step:

- no tenant is shown, or changes, the other's objects (NOT_FOUND, never the
  object; the owner still sees it unchanged);
- no recall (the ``memory`` event, and the prompt the model is sent),
  SearchMemories or ListMemories shows a memory of another user, another
  assistant, another tenant, or one that was deleted;
- a page token replayed by the other tenant, or with other filters, is
  refused; replayed as issued, it works;
- each tenant's lists hold its own objects only, and all those alive.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from generated.loom.v1 import assistant_pb2, common_pb2, memory_pb2, thread_pb2
from tests.scripted_llm import ScriptedLLM
from tests.support.fuzzing import STATS
from tests.support.threaded import ThreadedLoom
from tests.support.world import Stubs, model_route

USERS = ("alice", "bob")
_MARK = re.compile(r"\bmk[0-9a-f]{10}\b")
_counter = itertools.count()


def owner_of(text: str) -> str | None:
    """The marker a text starts with (its owner's), if any."""
    found = _MARK.search(text)
    return found.group(0) if found and text.startswith(found.group(0)) else None


@dataclass(frozen=True)
class Scope:
    tenant: int
    assistant: str
    user: str  # "" for assistant-wide


@dataclass
class Tenant:
    api: Stubs
    assistants: set[str] = field(default_factory=set)
    created_assistants: set[str] = field(default_factory=set)
    threads: dict[str, Scope] = field(default_factory=dict)  # alive
    created_threads: set[str] = field(default_factory=set)
    memories: dict[str, str] = field(default_factory=dict)  # manual memory id -> marker


def _code(call: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as error:
        if not isinstance(error, grpc.Call):
            raise
        return error.code(), None


class Isolation(RuleBasedStateMachine):
    """Two tenants, two users each; see the module docstring."""

    loom: ThreadedLoom
    llm: ScriptedLLM
    channel: grpc.Channel

    def __init__(self) -> None:
        super().__init__()
        self.tenants = [Tenant(Stubs(self.channel, self.loom.new_key(f"iso{i}"))) for i in (0, 1)]
        self.owners: dict[str, Scope] = {}  # marker -> scope it belongs to
        self.texts: dict[str, str] = {}  # marker -> the text it starts
        self.thread_markers: dict[str, list[str]] = {}  # thread -> markers sent in it
        self.dead: set[str] = set()  # markers whose memory was deleted
        self.tokens: list[tuple[int, str, dict[str, Any], str]] = []  # tenant, rpc, request, token
        STATS["runs"] += 1

    # -- helpers -------------------------------------------------------------

    def mark(self, scope: Scope) -> str:
        marker = f"mk{next(_counter):04x}{secrets.token_hex(3)}"
        self.owners[marker] = scope
        return marker

    def visible(self, tenant: int, assistant: str, user: str, marker: str | None) -> bool:
        """Whether a memory owned by ``marker`` may be shown to ``user``."""
        if marker is None or marker in self.dead:
            return False
        scope = self.owners[marker]
        return (
            scope.tenant == tenant
            and scope.assistant == assistant
            and (scope.user in ("", user) or not user)
        )

    def check_memories(self, tenant: int, assistant: str, user: str, texts: list[str], what: str):
        for text in texts:
            marker = owner_of(text)
            assert self.visible(tenant, assistant, user, marker), (
                f"{what} for tenant {tenant} user {user!r} showed {text[:80]!r} "
                f"(owned by {self.owners.get(marker or '')}, dead: {marker in self.dead})"
            )

    def others(self) -> list[str]:
        return list(self.owners) or ["mk0000000000"]

    # -- set-up ----------------------------------------------------------------

    @initialize()
    def assistants(self) -> None:
        for i in (0, 1):
            self._create_assistant(i)

    def _create_assistant(self, i: int) -> str:
        t = self.tenants[i]
        made = t.api.assistants.CreateAssistant(
            assistant_pb2.CreateAssistantRequest(
                assistant=assistant_pb2.Assistant(
                    name=f"iso {i}", memory_mode=common_pb2.MEMORY_MODE_AUTO
                )
            ),
            metadata=t.api.md,
        ).assistant.assistant_id
        t.assistants.add(made)
        t.created_assistants.add(made)
        return made

    # -- rules -------------------------------------------------------------

    @rule(i=st.sampled_from([0, 1]))
    @precondition(lambda self: sum(len(t.assistants) for t in self.tenants) < 6)
    def create_assistant(self, i: int) -> None:
        STATS["rule create_assistant"] += 1
        self._create_assistant(i)

    @precondition(lambda self: all(t.assistants for t in self.tenants))
    @rule(data=st.data(), i=st.sampled_from([0, 1]), user=st.sampled_from(USERS))
    def send(self, data: st.DataObject, i: int, user: str) -> None:
        """A message with memory AUTO, in a new thread or one of the user's,
        asking about someone's marker: recall must stay in scope."""
        STATS["rule send"] += 1
        t = self.tenants[i]
        mine = sorted(k for k, s in t.threads.items() if s.user == user)
        thread = data.draw(st.sampled_from(["", *mine]), label="thread")
        assistant = (
            t.threads[thread].assistant
            if thread
            else data.draw(st.sampled_from(sorted(t.assistants)), label="assistant")
        )
        scope = Scope(i, assistant, user)
        marker = self.mark(scope)
        asked = data.draw(st.sampled_from(self.others()), label="asked")
        content = f"{marker} wants to know about {asked} and {' '.join(USERS)}."
        self.texts[marker] = content
        events = t.api.send(
            content=content,
            thread_id=thread,
            assistant_id="" if thread else assistant,
            user_id=user,
            memory=common_pb2.MEMORY_MODE_AUTO,
        )
        thread = events[0].started.thread_id
        t.threads[thread] = scope
        t.created_threads.add(thread)
        self.thread_markers.setdefault(thread, []).append(marker)
        assert events[-1].HasField("completed"), events[-1]
        recalled = [m.content for e in events if e.HasField("memory") for m in e.memory.memories]
        self.check_memories(i, assistant, user, recalled, "recall")
        prompts = [r.body for r in self.llm.requests if marker in str(r.body["messages"][-1])]
        assert prompts, "the model was not asked"
        system = " ".join(
            str(m.get("content")) for m in prompts[-1]["messages"] if m["role"] == "system"
        )
        # A visible memory may quote other markers (its user asked about them).
        quoted = {
            m
            for v in self.owners
            if self.visible(i, assistant, user, v)
            for m in _MARK.findall(self.texts.get(v, ""))
        }
        for seen in _MARK.findall(system):
            assert seen in quoted, f"the prompt held {seen} ({self.owners.get(seen)})"

    @precondition(lambda self: all(t.assistants for t in self.tenants))
    @rule(data=st.data(), i=st.sampled_from([0, 1]), user=st.sampled_from([*USERS, ""]))
    def create_memory(self, data: st.DataObject, i: int, user: str) -> None:
        STATS["rule create_memory"] += 1
        t = self.tenants[i]
        assistant = data.draw(st.sampled_from(sorted(t.assistants)), label="assistant")
        marker = self.mark(Scope(i, assistant, user))
        self.texts[marker] = f"{marker} likes {' '.join(USERS)}"
        made = t.api.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(
                    assistant_id=assistant, user_id=user, content=self.texts[marker]
                )
            ),
            metadata=t.api.md,
        ).memory
        t.memories[made.memory_id] = marker

    @precondition(lambda self: all(t.assistants for t in self.tenants))
    @rule(data=st.data(), i=st.sampled_from([0, 1]), user=st.sampled_from([*USERS, ""]))
    def search(self, data: st.DataObject, i: int, user: str) -> None:
        """SearchMemories and ListMemories, for words of anyone's."""
        STATS["rule search"] += 1
        t = self.tenants[i]
        assistant = data.draw(st.sampled_from(sorted(t.assistants)), label="assistant")
        asked = data.draw(st.sampled_from(self.others()), label="asked")
        found = t.api.memory.SearchMemories(
            memory_pb2.SearchMemoriesRequest(
                assistant_id=assistant, user_id=user, query=f"{asked} {' '.join(USERS)}", limit=100
            ),
            metadata=t.api.md,
        )
        if user:  # no user: the tenant searches every user's memories
            self.check_memories(
                i, assistant, user, [r.memory.content for r in found.results], "search"
            )
        listed = [m.content for m in t.api.all_memories(assistant, user)]
        self.check_memories(i, assistant, user, listed, "list")
        # ListMemories with a user lists that user's memories alone.
        expected = {
            m
            for m in t.memories.values()
            if self.visible(i, assistant, user, m)
            and self.owners[m].user in ("", user)
            and (self.owners[m].user == user or not user)
        }
        missing = expected - {owner_of(text) for text in listed}
        assert not missing, f"ListMemories lost {missing}"

    @precondition(lambda self: any(t.memories for t in self.tenants))
    @rule(data=st.data(), i=st.sampled_from([0, 1]), delete=st.booleans())
    def change_memory(self, data: st.DataObject, i: int, delete: bool) -> None:
        STATS["rule change_memory"] += 1
        t = self.tenants[i]
        if not t.memories:
            return
        memory_id = data.draw(st.sampled_from(sorted(t.memories)), label="memory")
        old = t.memories[memory_id]
        scope = self.owners[old]
        if delete:
            t.api.memory.DeleteMemory(
                memory_pb2.DeleteMemoryRequest(assistant_id=scope.assistant, memory_id=memory_id),
                metadata=t.api.md,
            )
            del t.memories[memory_id]
        else:
            marker = self.mark(scope)
            self.texts[marker] = f"{marker} now"
            t.api.memory.UpdateMemory(
                memory_pb2.UpdateMemoryRequest(
                    memory=memory_pb2.Memory(
                        assistant_id=scope.assistant, memory_id=memory_id, content=f"{marker} now"
                    ),
                    update_mask={"paths": ["content"]},
                ),
                metadata=t.api.md,
            )
            t.memories[memory_id] = marker
        self.dead.add(old)

    @precondition(lambda self: any(t.threads for t in self.tenants))
    @rule(data=st.data(), i=st.sampled_from([0, 1]), forget=st.booleans())
    def delete_thread(self, data: st.DataObject, i: int, forget: bool) -> None:
        STATS["rule delete_thread"] += 1
        t = self.tenants[i]
        if not t.threads:
            return
        thread = data.draw(st.sampled_from(sorted(t.threads)), label="thread")
        t.api.threads.DeleteThread(
            thread_pb2.DeleteThreadRequest(thread_id=thread, delete_memories=forget),
            metadata=t.api.md,
        )
        del t.threads[thread]
        if forget:
            self.dead.update(self.thread_markers.get(thread, []))

    @precondition(lambda self: any(len(t.assistants) > 1 for t in self.tenants))
    @rule(data=st.data(), i=st.sampled_from([0, 1]))
    def delete_assistant(self, data: st.DataObject, i: int) -> None:
        STATS["rule delete_assistant"] += 1
        t = self.tenants[i]
        if len(t.assistants) < 2:
            return
        assistant = data.draw(st.sampled_from(sorted(t.assistants)), label="assistant")
        t.api.assistants.DeleteAssistant(
            assistant_pb2.DeleteAssistantRequest(assistant_id=assistant), metadata=t.api.md
        )
        t.assistants.discard(assistant)
        for thread, scope in list(t.threads.items()):
            if scope.assistant == assistant:
                del t.threads[thread]
        for memory_id, marker in list(t.memories.items()):
            if self.owners[marker].assistant == assistant:
                del t.memories[memory_id]
        self.dead.update(
            m for m, s in self.owners.items() if (s.tenant, s.assistant) == (i, assistant)
        )

    @rule(data=st.data(), i=st.sampled_from([0, 1]))
    def trespass(self, data: st.DataObject, i: int) -> None:
        """The other tenant's objects, with this tenant's key: NOT_FOUND."""
        STATS["rule trespass"] += 1
        me, them = self.tenants[i], self.tenants[1 - i]
        targets = sorted(them.created_assistants | them.created_threads | set(them.memories))
        if not targets:
            return
        target = data.draw(st.sampled_from(targets), label="target")
        attempts = self._attempts(target, them)
        name = data.draw(st.sampled_from(sorted(attempts)), label="rpc")
        code, _ = _code(lambda: attempts[name](me.api))
        assert code == grpc.StatusCode.NOT_FOUND, f"{name} on the other tenant's {target}: {code}"
        self._still_theirs(target, them)

    def _attempts(self, target: str, them: Tenant) -> dict[str, Callable[[Stubs], Any]]:
        md = lambda api: api.md  # noqa: E731 - read as "the caller's key"
        if target in them.memories:
            assistant = self.owners[them.memories[target]].assistant
            return {
                "GetMemory": lambda a: a.memory.GetMemory(
                    memory_pb2.GetMemoryRequest(assistant_id=assistant, memory_id=target),
                    metadata=md(a),
                ),
                "UpdateMemory": lambda a: a.memory.UpdateMemory(
                    memory_pb2.UpdateMemoryRequest(
                        memory=memory_pb2.Memory(
                            assistant_id=assistant, memory_id=target, content="mine now"
                        ),
                        update_mask={"paths": ["content"]},
                    ),
                    metadata=md(a),
                ),
                "DeleteMemory": lambda a: a.memory.DeleteMemory(
                    memory_pb2.DeleteMemoryRequest(assistant_id=assistant, memory_id=target),
                    metadata=md(a),
                ),
            }
        if target.startswith("thread_"):
            return {
                "GetThread": lambda a: a.threads.GetThread(
                    thread_pb2.GetThreadRequest(thread_id=target), metadata=md(a)
                ),
                "ListMessages": lambda a: a.threads.ListMessages(
                    thread_pb2.ListMessagesRequest(thread_id=target), metadata=md(a)
                ),
                "DeleteThread": lambda a: a.threads.DeleteThread(
                    thread_pb2.DeleteThreadRequest(thread_id=target, delete_memories=True),
                    metadata=md(a),
                ),
                "SendMessage": lambda a: a.send(content="hello", thread_id=target),
            }
        return {
            "GetAssistant": lambda a: a.assistants.GetAssistant(
                assistant_pb2.GetAssistantRequest(assistant_id=target), metadata=md(a)
            ),
            "UpdateAssistant": lambda a: a.assistants.UpdateAssistant(
                assistant_pb2.UpdateAssistantRequest(
                    assistant=assistant_pb2.Assistant(assistant_id=target, name="mine now"),
                    update_mask={"paths": ["name"]},
                ),
                metadata=md(a),
            ),
            "DeleteAssistant": lambda a: a.assistants.DeleteAssistant(
                assistant_pb2.DeleteAssistantRequest(assistant_id=target), metadata=md(a)
            ),
            "CreateThread": lambda a: a.threads.CreateThread(
                thread_pb2.CreateThreadRequest(thread=thread_pb2.Thread(assistant_id=target)),
                metadata=md(a),
            ),
            "SendMessage": lambda a: a.send(content="hello", assistant_id=target, user_id="alice"),
            "CreateMemory": lambda a: a.memory.CreateMemory(
                memory_pb2.CreateMemoryRequest(
                    memory=memory_pb2.Memory(assistant_id=target, content="planted")
                ),
                metadata=md(a),
            ),
            "SearchMemories": lambda a: a.memory.SearchMemories(
                memory_pb2.SearchMemoriesRequest(assistant_id=target, query="alice bob"),
                metadata=md(a),
            ),
            "ListMemories": lambda a: a.memory.ListMemories(
                memory_pb2.ListMemoriesRequest(assistant_id=target), metadata=md(a)
            ),
        }

    def _still_theirs(self, target: str, them: Tenant) -> None:
        """The owner sees the object as it was (when it is alive)."""
        api = them.api
        if target in them.memories:
            marker = them.memories[target]
            got = api.memory.GetMemory(
                memory_pb2.GetMemoryRequest(
                    assistant_id=self.owners[marker].assistant, memory_id=target
                ),
                metadata=api.md,
            ).memory
            assert owner_of(got.content) == marker, got.content
        elif target in them.threads:
            api.threads.GetThread(thread_pb2.GetThreadRequest(thread_id=target), metadata=api.md)
        elif target in them.assistants:
            got = api.assistants.GetAssistant(
                assistant_pb2.GetAssistantRequest(assistant_id=target), metadata=api.md
            ).assistant
            assert got.name.startswith("iso "), got.name

    @rule(data=st.data(), i=st.sampled_from([0, 1]), user=st.sampled_from(["", *USERS]))
    def page(self, data: st.DataObject, i: int, user: str) -> None:
        """A first page of one item; its token goes in the bag."""
        STATS["rule page"] += 1
        t = self.tenants[i]
        kind = data.draw(st.sampled_from(["assistants", "threads", "memories"]), label="list")
        assistant = data.draw(st.sampled_from(sorted(t.assistants) or [""]), label="assistant")
        request = self._list_request(kind, assistant, user, "")
        page = self._list(t.api, kind, request)
        if page.next_page_token:
            self.tokens.append((i, kind, request, page.next_page_token))

    def _list_request(self, kind: str, assistant: str, user: str, token: str) -> dict[str, Any]:
        if kind == "assistants":
            return {"page_size": 1, "page_token": token}
        return {"assistant_id": assistant, "user_id": user, "page_size": 1, "page_token": token}

    def _list(self, api: Stubs, kind: str, request: dict[str, Any]) -> Any:
        if kind == "assistants":
            call = api.assistants.ListAssistants(
                assistant_pb2.ListAssistantsRequest(**request), metadata=api.md
            )
            return call
        if kind == "threads":
            return api.threads.ListThreads(
                thread_pb2.ListThreadsRequest(**request), metadata=api.md
            )
        return api.memory.ListMemories(memory_pb2.ListMemoriesRequest(**request), metadata=api.md)

    @precondition(lambda self: bool(self.tokens))
    @rule(data=st.data(), how=st.sampled_from(["other tenant", "other filters", "as issued"]))
    def replay(self, data: st.DataObject, how: str) -> None:
        STATS["rule replay"] += 1
        i, kind, request, token = data.draw(st.sampled_from(self.tokens), label="token")
        request = {**request, "page_token": token}
        tenant = self.tenants[i]
        if how == "other tenant":
            tenant = self.tenants[1 - i]
        elif how == "other filters":
            if kind == "assistants":
                request["page_size"] = 2  # the page size is no filter: choose another field
                how = "as issued"
            else:
                request["user_id"] = "bob" if request["user_id"] != "bob" else "alice"
        if kind != "assistants" and request["assistant_id"] not in self.tenants[i].assistants:
            return  # the assistant was deleted: NOT_FOUND says nothing about tokens
        code, _ = _code(lambda: self._list(tenant.api, kind, request))
        if how == "as issued":
            assert code == grpc.StatusCode.OK, f"{kind} token replayed as issued: {code}"
        elif how == "other tenant" and kind != "assistants":
            # The filter names the other tenant's assistant: NOT_FOUND or refused.
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), code
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{kind} token, {how}: {code}"

    # -- after every step -----------------------------------------------------

    @invariant()
    def lists_hold_own_objects(self) -> None:
        STATS["steps"] += 1
        for t in self.tenants:
            listed = {a.assistant_id for a in t.api.all_assistants()}
            assert listed <= t.created_assistants, "another tenant's assistant listed"
            assert t.assistants <= listed, f"assistants missing: {t.assistants - listed}"
            threads = {x.thread_id for x in t.api.all_threads()}
            assert threads <= t.created_threads, "another tenant's thread listed"
            assert set(t.threads) <= threads, f"threads missing: {set(t.threads) - threads}"


@pytest.fixture(scope="module")
def isolated(threaded_loom: ThreadedLoom, llm: ScriptedLLM) -> Iterator[type[Isolation]]:
    with threaded_loom.channel() as channel:
        Isolation.loom, Isolation.llm, Isolation.channel = threaded_loom, llm, channel
        yield Isolation


def test_no_tenant_or_user_sees_anothers_objects_or_memories(
    isolated: type[Isolation], llm: ScriptedLLM
) -> None:
    llm.set_default(model_route)
    # Histories are long; half as many as the profile's examples (but the
    # whole "ci" count, whose short histories must still reach every rule).
    current = settings.default
    runs = current.max_examples if current.derandomize else max(3, current.max_examples // 2)
    run_state_machine_as_test(isolated, settings=settings(current, max_examples=runs))


def test_a_thread_deleted_with_its_memories_stays_forgotten(
    threaded_loom: ThreadedLoom, llm: ScriptedLLM
) -> None:
    """Found by the state machine: the memory job of a thread's last
    exchange indexed its message again after DeleteThread with
    delete_memories had forgotten it, so it was recalled in later threads."""
    llm.set_default(model_route)
    with threaded_loom.channel() as channel:
        api = Stubs(channel, threaded_loom.new_key("forget"))
        assistant = api.assistants.CreateAssistant(
            assistant_pb2.CreateAssistantRequest(
                assistant=assistant_pb2.Assistant(
                    name="forget", memory_mode=common_pb2.MEMORY_MODE_AUTO
                )
            ),
            metadata=api.md,
        ).assistant.assistant_id
        first = api.send(content="mkf1 my first words", assistant_id=assistant, user_id="alice")
        thread = first[0].started.thread_id
        last = api.send(content="mkf2 my second words", thread_id=thread, user_id="alice")
        operation = last[-1].completed.memory_operation_id
        api.threads.DeleteThread(
            thread_pb2.DeleteThreadRequest(thread_id=thread, delete_memories=True),
            metadata=api.md,
        )
        done = (memory_pb2.MemoryOperation.STATE_SUCCEEDED, memory_pb2.MemoryOperation.STATE_FAILED)
        for _ in range(600):  # a bound on a hang, not a measurement
            state = api.memory.GetMemoryOperation(
                memory_pb2.GetMemoryOperationRequest(operation_id=operation), metadata=api.md
            ).operation.state
            if state in done:
                break
            time.sleep(0.05)
        assert state in done, state
        assert [m.content for m in api.all_memories(assistant)] == []
