"""A real FerretDB server (the MongoDB wire protocol) for tests and benchmarks,
on a free port, over the local database `make run` uses: PostgreSQL (the
default) or SQLite, chosen by ``LOOM_LOCAL_DB`` as for `make run`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from tests.support.postgres import Postgres, process_cpu_seconds

__all__ = ["BACKENDS", "FerretDB", "free_port"]

REPO = Path(__file__).resolve().parents[2]

# What FerretDB stores in: PostgreSQL, where the GIN twins of
# scripts/postgres-gin-twins.sql serve the declared indexes; SQLite with
# FerretDB's pragmas (WAL, an fsync per commit); SQLite with
# synchronous(normal) (WAL, fsync at checkpoints only).
BACKENDS = ("postgresql", "sqlite", "sqlite-normal")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FerretDB:
    """Start with ``start()``; ``uri`` is then a MongoDB URI to it."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        backend: str = "",
        postgres_settings: dict[str, str] | None = None,
        pool: int | None = None,
        postgres: Postgres | None = None,
    ) -> None:
        """``postgres_settings`` are set on the PostgreSQL database before
        FerretDB connects (``ALTER DATABASE ... SET``); ``pool`` is how many
        connections FerretDB opens to PostgreSQL at most (its
        ``pool_max_conns``, 50 by default), which must exceed the
        connections all its clients open together (``service.store.mongo.connect``
        says why); ``postgres`` is a cluster of the caller's to store in
        instead of the process's shared one (to stop it under FerretDB)."""
        self.backend = backend or os.environ.get("LOOM_LOCAL_DB", "") or BACKENDS[0]
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {BACKENDS}")
        self.binary = binary or os.environ.get(
            "LOOM_FERRETDB_BIN", str(REPO / ".tools" / "bin" / "ferretdb")
        )
        if not Path(self.binary).exists():
            raise RuntimeError(f"FerretDB not found at {self.binary}; run `make setup`")
        self.port = 0
        self.dir = ""
        self.postgres: Postgres | None = postgres
        self.database = ""  # the PostgreSQL database, if any
        self.postgres_settings = postgres_settings or {}
        self.pool = pool
        self.proc: subprocess.Popen[bytes] | None = None
        self._args: list[str] = []

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> FerretDB:
        self.dir = tempfile.mkdtemp(prefix="loom-ferretdb-")
        self.port = free_port()
        self._args = [self.binary, *self._storage_args(), *self._common_args()]
        with open(Path(self.dir) / "ferretdb.log", "wb") as log:
            self.proc = self._spawn(log)
        self._wait()
        return self

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        # The same arguments every time: a restart must find the same
        # PostgreSQL database (or SQLite directory) and port.
        return subprocess.Popen(self._args, stdout=log, stderr=subprocess.STDOUT)

    def _storage_args(self) -> list[str]:
        if self.backend == "postgresql":
            self.postgres = self.postgres or Postgres.shared()
            url = self.postgres.create_database()
            self.database = urlsplit(url).path.lstrip("/")
            for name, value in self.postgres_settings.items():
                self.postgres.psql(
                    "postgres", f'ALTER DATABASE "{self.database}" SET {name} = {value}'
                )
            if self.pool is not None:
                url += f"&pool_max_conns={self.pool}"
            return ["--handler=postgresql", f"--postgresql-url={url}"]
        query = "?_pragma=synchronous(normal)" if self.backend == "sqlite-normal" else ""
        return ["--handler=sqlite", f"--sqlite-url=file:{self.dir}/{query}"]

    def _common_args(self) -> list[str]:
        return [
            f"--state-dir={self.dir}",
            "--telemetry=disable",
            f"--listen-addr=127.0.0.1:{self.port}",
            "--log-level=error",
            "--debug-addr=-",  # its debug HTTP port is fixed (8088) by default
        ]

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

    def cpu_seconds(self) -> float:
        """CPU time of the database so far: FerretDB, and PostgreSQL under it
        (the whole cluster, shared by this process's FerretDBs)."""
        assert self.proc is not None
        total = process_cpu_seconds(self.proc.pid)
        if self.postgres is not None:
            total += self.postgres.cpu_seconds()
        return total

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
