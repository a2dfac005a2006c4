"""A real FerretDB server (MongoDB wire protocol over SQLite) for tests and
benchmarks, on a free port with its own data folder."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["FerretDB", "free_port"]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FerretDB:
    """Start with ``start()``; ``uri`` is then a MongoDB URI to it."""

    def __init__(self, binary: str | None = None, *, synchronous: str = "") -> None:
        """``synchronous`` sets SQLite's synchronous pragma (FerretDB's default
        is FULL: an fsync per commit); "normal" trades durability on power
        loss for speed, for benchmarks that want Loom's cost, not the disk's."""
        self.url_query = f"?_pragma=synchronous({synchronous})" if synchronous else ""
        self.binary = binary or os.environ.get(
            "LOOM_FERRETDB_BIN", str(REPO / ".tools" / "bin" / "ferretdb")
        )
        if not Path(self.binary).exists():
            raise RuntimeError(f"FerretDB not found at {self.binary}; run `make setup`")
        self.port = 0
        self.dir = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> FerretDB:
        self.dir = tempfile.mkdtemp(prefix="loom-ferretdb-")
        self.port = free_port()
        with open(Path(self.dir) / "ferretdb.log", "wb") as log:
            self.proc = self._spawn(log)
        self._wait()
        return self

    def _spawn(self, log: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                self.binary,
                "--handler=sqlite",
                f"--sqlite-url=file:{self.dir}/{self.url_query}",
                f"--state-dir={self.dir}",
                "--telemetry=disable",
                f"--listen-addr=127.0.0.1:{self.port}",
                "--log-level=error",
                "--debug-addr=-",  # its debug HTTP port is fixed (8088) by default
            ],
            stdout=log,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
        )

    def _wait(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"FerretDB exited; see {self.dir}/ferretdb.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("FerretDB did not start within 30 s")

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; its data and port are kept
        for ``restart``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> FerretDB:
        """Start the server again on the same port and data (after ``kill``)."""
        self.kill()
        with open(Path(self.dir) / "ferretdb.log", "ab") as log:
            self.proc = self._spawn(log)
        self._wait()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
