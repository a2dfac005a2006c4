"""A program on a pseudo-terminal (the stdlib ``pty``), driven as a person at
a keyboard would: type a line, press Ctrl-C or Ctrl-D, wait for text to
appear. Reading is done on the test's event loop, so the in-process server
keeps serving while the test waits."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Terminal"]

# Cursor and mode sequences readline writes (bracketed paste and the like).
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


# Run first in the child, which has a session of its own (start_new_session):
# make the pty its controlling terminal, so that Ctrl-C reaches the program as
# SIGINT, then become the program. (Done in a process of its own rather than
# in a preexec_fn, which is not safe in a parent with threads.)
_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


class Terminal:
    """``argv`` running on a new pty; what it writes accumulates in ``screen``."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL, *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        self.screen = ""
        self.seen = 0  # expect() looks after this offset
        self.closed = False
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the program closed the terminal
            data = b""
        if not data:
            self.closed = True
            asyncio.get_running_loop().remove_reader(self.master)
        self.screen += _CONTROL.sub("", data.decode(errors="replace"))
        self._changed.set()

    async def expect(self, text: str, timeout: float = 20.0) -> str:
        """Wait for ``text`` after the previous match; return what came
        between them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (found := self.screen.find(text, self.seen)) < 0:
            left = deadline - loop.time()
            if self.closed or left <= 0:
                raise AssertionError(f"{text!r} did not appear; the screen:\n{self.screen}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                continue
        before = self.screen[self.seen : found]
        self.seen = found + len(text)
        return before

    def type(self, line: str) -> None:
        """Type ``line`` and press Enter."""
        os.write(self.master, line.encode() + b"\r")

    def press(self, key: bytes) -> None:
        """A control key: b"\\x03" is Ctrl-C, b"\\x04" Ctrl-D."""
        os.write(self.master, key)

    async def exit_code(self, timeout: float = 20.0) -> int:
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.closed:
            asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
