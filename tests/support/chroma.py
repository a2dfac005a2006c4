"""A real Chroma server (``chroma run`` from the venv) for tests and
benchmarks, on a free port with its own data folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.ferretdb import free_port

__all__ = ["ChromaServer"]


class ChromaServer:
    """Start with ``start()``; ``url`` is then ``http://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        self.binary = str(Path(sys.executable).with_name("chroma"))
        if not Path(self.binary).exists():
            raise RuntimeError(f"the chroma CLI is not at {self.binary}; run `make setup`")
        self.port = 0
        self.dir = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ChromaServer:
        self.dir = tempfile.mkdtemp(prefix="loom-chroma-")
        self.port = free_port()
        return self._launch(timeout)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; its data and port are kept
        for ``restart``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout: float = 60.0) -> ChromaServer:
        """Start the server again on the same port and data (after ``kill``)."""
        self.kill()
        return self._launch(timeout)

    def _launch(self, timeout: float) -> ChromaServer:
        env = dict(os.environ, ORT_DISABLE_TELEMETRY="1", ANONYMIZED_TELEMETRY="False")
        with open(Path(self.dir) / "chroma.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "run",
                    "--path",
                    str(Path(self.dir) / "data"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma run exited: {self.log()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"chroma run did not answer on {self.url} within {timeout} s")

    def log(self) -> str:
        try:
            return (Path(self.dir) / "chroma.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
