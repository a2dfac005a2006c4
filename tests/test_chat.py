"""The chat in the terminal (``python -m service chat`` and ``loom``), driven
through a pseudo-terminal against the real service."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from loom_client import AsyncLoom, MessageStatus
from service.server import Loom as LoomServer
from tests.conftest import new_tenant_key
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.process import REPO, clean_env
from tests.support.terminal import Terminal
from tests.test_client import route

THREAD_ID = re.compile(r"thread_[0-9a-f]+")


@pytest.fixture
async def key(loom: LoomServer) -> str:
    return await new_tenant_key(loom)


@pytest.fixture
async def client(loom: LoomServer, key: str) -> AsyncIterator[AsyncLoom]:
    async with AsyncLoom(f"127.0.0.1:{loom.port}", api_key=key) as async_client:
        yield async_client


@pytest.fixture
async def chat(loom: LoomServer, key: str) -> AsyncIterator[Callable[..., Terminal]]:
    """Starts ``python -m service chat`` on a pty, against the test server."""
    started: list[Terminal] = []

    def start(*args: str, api_key: str = key) -> Terminal:
        argv = [sys.executable, "-m", "service", "chat", "--address", f"127.0.0.1:{loom.port}"]
        terminal = Terminal([*argv, "--api-key", api_key, *args], clean_env(), REPO)
        started.append(terminal)
        return terminal

    yield start
    for terminal in started:
        terminal.close()


async def say(term: Terminal, line: str) -> str:
    """Type a line at the prompt; what the chat printed until its next prompt."""
    term.type(line)
    return await term.expect("you> ")


async def test_a_chat_streams_replies_and_runs_its_commands(
    chat: Callable[..., Terminal], client: AsyncLoom, llm: ScriptedLLM
) -> None:
    llm.set_default(route)
    chef = await client.assistants.create(name="Chef", memory_mode="auto")
    term = chat("--assistant", chef.assistant_id, "--user", "u1")
    await term.expect("Type a message, or /help.")
    await term.expect("you> ")
    assert "/search QUERY" in await say(term, "/help")

    llm.script(Reply(text="Noted: no peanuts for you, ever.", chunk_delay=0.3))
    term.type("I'm allergic to peanuts.")
    await term.expect("loom> ")
    first = THREAD_ID.search(await term.expect("Noted:"))  # "(new thread thread_...)"
    assert first is not None
    assert "ever." not in term.screen  # the reply shows as it streams
    await term.expect("ever.\n")
    await term.expect("you> ")

    assert "I'm allergic to peanuts." in await say(term, "/search peanuts")
    assert "the next message starts a new thread" in await say(term, "/new")
    second = THREAD_ID.search(await say(term, "Any allergies?"))
    assert second is not None
    assert second.group() != first.group()
    assert "You said: Any allergies?" in term.screen
    assert "I'm allergic to peanuts." in await say(term, "/memories")
    listed = await say(term, "/threads")
    assert f"* {second.group()}  2 messages" in listed
    assert f"  {first.group()}  2 messages" in listed
    assert "unknown command /nonsense; /help lists them" in await say(term, "/nonsense")
    term.type("/quit")
    assert await term.exit_code() == 0

    threads = [t async for t in client.threads.list(user_id="u1")]
    assert {t.thread_id for t in threads} == {first.group(), second.group()}


async def test_a_chat_continues_a_thread_and_leaves_on_ctrl_d(
    chat: Callable[..., Terminal], client: AsyncLoom, llm: ScriptedLLM
) -> None:
    earlier = await client.send_message("My favorite color is blue.")
    term = chat("--thread", earlier.thread_id)
    await term.expect(f"continuing {earlier.thread_id} (2 messages)")
    await term.expect("you> ")
    assert "Echo: What is my favorite color?" in await say(term, "What is my favorite color?")
    history = [m["content"] for m in llm.requests[-1].body["messages"]]
    assert "My favorite color is blue." in history
    term.press(b"\x04")
    assert await term.exit_code() == 0


async def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(
    chat: Callable[..., Terminal], client: AsyncLoom, llm: ScriptedLLM
) -> None:
    llm.script(Reply(text="one two three four five six seven", chunk_delay=0.5))
    term = chat()
    await term.expect("you> ")
    term.type("Count slowly.")
    await term.expect("one")
    term.press(b"\x03")
    assert "[reply stopped; what arrived is stored as INCOMPLETE]" in await term.expect("you> ")
    [thread] = [t async for t in client.threads.list()]
    for _ in range(200):  # the server settles the cut reply once it sees the cancel
        messages = [m async for m in client.threads.messages(thread.thread_id)]
        if messages[-1].status is MessageStatus.INCOMPLETE:
            break
        await asyncio.sleep(0.05)
    assert messages[-1].content.startswith("one")
    assert messages[-1].status is MessageStatus.INCOMPLETE
    assert "Echo: Still there?" in await say(term, "Still there?")


async def test_a_chat_with_a_bad_key_says_what_to_do(chat: Callable[..., Terminal]) -> None:
    term = chat(api_key="not-a-key")
    await term.expect("you> ")
    said = await say(term, "hello")
    assert "error: " in said
    assert "(pass --api-key, or set LOOM_API_KEY)" in said
    term.type("/quit")
    assert await term.exit_code() == 0


def test_the_loom_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "loom"
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: loom ")
    assert "--thread THREAD" in done.stdout
