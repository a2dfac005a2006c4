"""``loom`` (and ``python -m service chat``): a chat with Loom in the terminal,
the reply streamed as it is written; a thin shell over ``loom_client.Loom``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import TextIO

from loom_client._client import DEFAULT_ADDRESS, Loom
from loom_client.errors import LoomError, Unauthenticated
from loom_client.params import SendOptions
from loom_client.types import MemoriesRecalled, RecalledMemory, Reply, Started, TextDelta

__all__ = ["Chat", "main"]

HELP = """\
Type a message and press Enter; the reply streams in. Commands:
  /new              start a new thread with the next message
  /threads          list your threads (newest first)
  /open THREAD_ID   continue another thread
  /memories         show the memories recalled for the last reply
  /search QUERY     search the assistant's memory
  /help             this text
  /quit             leave (Ctrl-D does too)"""


class Chat:
    """One chat session: the thread it is in, the last reply's memories, and
    the slash commands."""

    def __init__(
        self,
        loom: Loom,
        *,
        assistant_id: str = "",
        user_id: str = "",
        thread_id: str = "",
        memory: str = "",
        out: TextIO = sys.stdout,
    ) -> None:
        self.loom = loom
        self.assistant_id, self.user_id, self.thread_id = assistant_id, user_id, thread_id
        self.memory = memory
        self.recalled: list[RecalledMemory] = []
        self.out = out
        self.commands: dict[str, Callable[[str], bool]] = {
            "/new": self._new,
            "/threads": self._threads,
            "/open": self._open,
            "/memories": self._memories,
            "/search": self._search,
            "/help": lambda _: self._say(HELP),
            "/quit": lambda _: False,
            "/exit": lambda _: False,
        }

    def _say(self, text: str) -> bool:
        self.out.write(text + "\n")
        self.out.flush()
        return True

    def run(self, read: Callable[[str], str] = input) -> int:
        """The read-reply loop; returns the exit status."""
        if self.thread_id and not self._open(self.thread_id):
            return 1
        self._say(f"Loom chat at {self.loom.address}. Type a message, or /help.")
        while True:
            try:
                line = read("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                self._say("")
                return 0
            if not line:
                continue
            if line.startswith("/"):
                name, _, rest = line.partition(" ")
                command = self.commands.get(name)
                if command is None:
                    self._say(f"unknown command {name}; /help lists them")
                elif not command(rest.strip()):
                    return 0
                continue
            self._send(line)

    def _options(self) -> SendOptions:
        options = SendOptions()
        if self.thread_id:
            options["thread_id"] = self.thread_id
        else:
            if self.assistant_id:
                options["assistant_id"] = self.assistant_id
            if self.user_id:
                options["user_id"] = self.user_id
        if self.memory:
            options["memory"] = self.memory
        return options

    def _send(self, content: str) -> None:
        self.out.write("loom> ")
        self.out.flush()
        self.recalled = []
        events = self.loom.stream_message(content, **self._options())
        try:
            for event in events:
                self._show(event)
        except KeyboardInterrupt:
            self._say("\n[reply stopped; what arrived is stored as INCOMPLETE]")
        except LoomError as exc:
            self._error(exc)
        finally:
            events.close()  # cancels the call if it was cut short

    def _show(self, event: Started | TextDelta | MemoriesRecalled | Reply) -> None:
        if isinstance(event, Started):
            self.thread_id, self.assistant_id = event.thread_id, event.assistant_id
            if event.thread_created:
                self.out.write(f"(new thread {event.thread_id}) ")
        elif isinstance(event, MemoriesRecalled):
            self.recalled = event.memories
        elif isinstance(event, TextDelta):
            self.out.write(event.text)
        elif event.requires_action:
            names = ", ".join(call.name for call in event.tool_calls)
            self.loom.cancel_run(event.thread_id, event.run_id)
            self._say(
                f"\n[the assistant asked for tools ({names}); this chat cannot run them, "
                "so that run was cancelled]"
            )
            return
        else:
            self._say("")
        self.out.flush()

    def _error(self, exc: LoomError) -> None:
        hint = ""
        if isinstance(exc, Unauthenticated):
            hint = " (pass --api-key, or set LOOM_API_KEY)"
        self._say(f"\nerror: {exc.message}{hint}")

    def _new(self, _: str) -> bool:
        self.thread_id = ""
        return self._say("the next message starts a new thread")

    def _threads(self, _: str) -> bool:
        try:
            threads = self.loom.threads.list(assistant_id=self.assistant_id, user_id=self.user_id)
            shown = [t for _, t in zip(range(20), threads, strict=False)]
        except LoomError as exc:
            self._error(exc)
            return True
        if not shown:
            return self._say("no threads yet")
        for thread in shown:
            mark = "*" if thread.thread_id == self.thread_id else " "
            when = f"{thread.update_time:%Y-%m-%d %H:%M}" if thread.update_time else ""
            user = f"  user {thread.user_id}" if thread.user_id else ""
            self._say(f"{mark} {thread.thread_id}  {thread.message_count} messages  {when}{user}")
        return True

    def _open(self, thread_id: str) -> bool:
        if not thread_id:
            return self._say("usage: /open THREAD_ID")
        try:
            thread = self.loom.threads.get(thread_id)
        except LoomError as exc:
            self._error(exc)
            return False
        self.thread_id, self.assistant_id, self.user_id = (
            thread.thread_id,
            thread.assistant_id,
            thread.user_id,
        )
        return self._say(f"continuing {thread.thread_id} ({thread.message_count} messages)")

    def _memories(self, _: str) -> bool:
        if not self.recalled:
            return self._say("no memories were recalled for the last reply")
        for memory in self.recalled:
            self._say(f"  {memory.score:.2f}  {memory.content}")
        return True

    def _search(self, query: str) -> bool:
        if not query:
            return self._say("usage: /search QUERY")
        if not self.assistant_id:
            return self._say("no assistant yet: send a message first, or start with --assistant")
        try:
            found = self.loom.memories.search(self.assistant_id, query, user_id=self.user_id)
        except LoomError as exc:
            self._error(exc)
            return True
        if not found:
            return self._say("no memories match")
        for result in found:
            self._say(f"  {result.score:.2f}  {result.memory.content}  ({result.memory.memory_id})")
        return True


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A chat with Loom in the terminal; /help inside lists the commands.",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("LOOM_ADDRESS", DEFAULT_ADDRESS),
        help="Loom's host:port (default: $LOOM_ADDRESS or %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LOOM_API_KEY") or os.environ.get("LOOM_DEV_API_KEY"),
        help="API key (default: $LOOM_API_KEY, else $LOOM_DEV_API_KEY)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    parser.add_argument("--assistant", default="", help="assistant of new threads")
    parser.add_argument("--user", default="", help="end user of new threads (memory scope)")
    parser.add_argument("--thread", default="", help="thread to continue")
    parser.add_argument(
        "--memory", choices=["auto", "readonly", "off"], help="memory mode of every message"
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "loom") -> int:
    """Entry point of ``loom``; returns the exit status."""
    args = _parser(prog).parse_args(argv)
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):  # not on every platform
            import readline  # noqa: F401 - line editing and history for input()
    with Loom(args.address, api_key=args.api_key or "", tls=args.tls) as loom:
        chat = Chat(
            loom,
            assistant_id=args.assistant,
            user_id=args.user,
            thread_id=args.thread,
            memory=args.memory or "",
        )
        return chat.run()


if __name__ == "__main__":
    raise SystemExit(main())
