"""Loom as a fleet, for fault tests and benchmarks: one FerretDB, one Chroma
server (``chroma run``), the scripted model and N Loom replicas
(``python -m service``), each on its own port, sharing the database and
Chroma as a deployment behind a load balancer would.

    with Fleet(replicas=3, log_dir=Path("/tmp/fleet")) as fleet:
        channel = fleet.channel()          # round_robin over every replica
        fleet.kill(0)                      # SIGKILL, as a crash
        fleet.restart(0)                   # same port, same settings
        fleet.stop_database(); fleet.start_database()
        fleet.stop_chroma(); fleet.start_chroma()

Run it by hand (``make fleet``, or ``python -m tests.support.fleet -n 3
--token-delay 0.02``): it prints the addresses and an API key, and stops
everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from grpc import aio

from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.chroma import ChromaServer
from tests.support.ferretdb import REPO, FerretDB, free_port
from tests.support.process import LoomProcess, clean_env, health_status

__all__ = ["DEV_KEY", "Fleet"]

DEV_KEY = "loom-fleet-dev-key"
MODEL = "scripted-model"
# Each replica's connections to the database (LOOM_MONGODB_MAX_POOL), and
# FerretDB's to PostgreSQL beyond the replicas' sum: for the test's or the
# audit's own clients. FerretDB must have more than all its clients together
# (service/store/mongo.py, ``connect``), or it stops answering under load.
REPLICA_POOL = 16
CLIENT_HEADROOM = 16
MODEL_DIR = Path(
    os.environ.get("LOOM_EMBEDDING_MODEL_DIR", REPO.parent / "shared/models/all-MiniLM-L6-v2/onnx")
)


class Fleet:
    """FerretDB, Chroma, the scripted model and ``replicas`` Loom processes.

    ``llm`` is a running ``ScriptedLLM`` to use (a test's, so that it can
    script faults); without one the fleet starts its own, replying with
    ``token_delay`` seconds between words. ``env`` adds or overrides Loom
    settings (``LOOM_LEASE_SECONDS``, say) for every replica; FerretDB's
    pool to PostgreSQL is sized from the replicas' (``LOOM_MONGODB_MAX_POOL``,
    ``REPLICA_POOL`` unless ``env`` says otherwise)."""

    def __init__(
        self,
        replicas: int = 2,
        *,
        log_dir: Path | None = None,
        llm: ScriptedLLM | None = None,
        token_delay: float = 0.0,
        env: dict[str, str] | None = None,
        database: str = "loom",
    ) -> None:
        self.size = replicas
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="loom-fleet-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._own_llm = llm is None
        self.llm = llm or ScriptedLLM()
        self._token_delay = token_delay
        self._overrides = dict(env or {})
        self.database_name = database
        replica_pool = int(self._overrides.get("LOOM_MONGODB_MAX_POOL", REPLICA_POOL))
        self._overrides["LOOM_MONGODB_MAX_POOL"] = str(replica_pool)
        # One more connection each for the replica's health checks (its store's probe).
        self.ferretdb = FerretDB(pool=replicas * (replica_pool + 1) + CLIENT_HEADROOM)
        self.chroma = ChromaServer()
        self.ports = [free_port() for _ in range(replicas)]
        self.replicas: list[LoomProcess | None] = [None] * replicas
        self._starts = 0

    # ----------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start the database, Chroma, the model and every replica; return
        once each replica reports SERVING."""
        try:
            if self._own_llm:
                self.llm.start()
                self.llm.set_default(Reply(chunk_delay=self._token_delay))
            self.ferretdb.start()
            self.chroma.start()
            for i in range(self.size):
                self.start_replica(i, ready=False)
            for i in range(self.size):
                self.replica(i).wait_ready(120)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything this fleet started (replicas first)."""
        for proc in self.replicas:
            if proc is not None:
                proc.kill()
        self.chroma.stop()
        self.ferretdb.stop()
        if self._own_llm:
            self.llm.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ replicas

    def env(self, i: int) -> dict[str, str]:
        """The environment replica ``i`` runs with."""
        values: dict[str, str | None] = {
            "LOOM_LISTEN": f"127.0.0.1:{self.ports[i]}",
            "LOOM_MONGODB_URI": self.ferretdb.uri,
            "LOOM_MONGODB_DB": self.database_name,
            "LOOM_CHROMA_URL": self.chroma.url,
            "LOOM_LLM_BASE_URL": self.llm.base_url,
            "LOOM_LLM_MODEL": MODEL,
            "LOOM_LLM_RETRY_DELAY": "0.05",
            "LOOM_DEV_API_KEY": DEV_KEY,
            "LOOM_DATA_DIR": str(self.log_dir / f"data{i}"),
            "LOOM_EMBEDDING_MODEL_DIR": str(MODEL_DIR),
            "LOOM_JOB_POLL_SECONDS": "0.2",
        }
        values.update(self._overrides)
        return clean_env(**values)

    def start_replica(self, i: int, *, ready: bool = True) -> LoomProcess:
        """Start replica ``i`` (again, after a kill or a SIGTERM) on its port."""
        old = self.replicas[i]
        if old is not None:
            old.kill()
        self._starts += 1
        proc = LoomProcess(self.env(i), self.log_dir, f"replica{i}-{self._starts}")
        self.replicas[i] = proc
        return proc.wait_ready(120) if ready else proc

    def replica(self, i: int) -> LoomProcess:
        proc = self.replicas[i]
        if proc is None:
            raise RuntimeError(f"replica {i} is not running")
        return proc

    def kill(self, i: int) -> None:
        """SIGKILL replica ``i``, as a crash or an OOM kill would."""
        self.replica(i).kill()

    def restart(self, i: int) -> LoomProcess:
        """Start replica ``i`` again with the same port and settings."""
        return self.start_replica(i)

    def terminate(self, i: int, timeout: float = 30.0) -> int:
        """SIGTERM replica ``i`` and wait for its exit code."""
        return self.replica(i).terminate(timeout)

    def signal(self, i: int, sig: int = signal.SIGTERM) -> None:
        self.replica(i).signal(sig)

    # -------------------------------------------------------- dependencies

    def stop_database(self) -> None:
        """SIGKILL FerretDB (its data stays for ``start_database``)."""
        self.ferretdb.kill()

    def start_database(self) -> None:
        self.ferretdb.restart()

    def stop_chroma(self) -> None:
        """SIGKILL the Chroma server (its data stays for ``start_chroma``)."""
        self.chroma.kill()

    def start_chroma(self) -> None:
        self.chroma.restart()

    # -------------------------------------------------------------- clients

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    @property
    def target(self) -> str:
        """A gRPC target naming every replica (``ipv4:a:p1,a:p2``)."""
        return "ipv4:" + ",".join(self.addresses)

    def channel(self) -> grpc.Channel:
        """A channel that spreads calls over the replicas (round_robin)."""
        return grpc.insecure_channel(self.target, options=_ROUND_ROBIN)

    def aio_channel(self, i: int | None = None) -> aio.Channel:
        """An asyncio channel to replica ``i``, or round_robin over all."""
        if i is not None:
            return aio.insecure_channel(self.addresses[i])
        return aio.insecure_channel(self.target, options=_ROUND_ROBIN)

    def health(self, i: int) -> int | None:
        """Replica ``i``'s overall health status (None if it did not answer)."""
        return health_status(self.addresses[i])


_ROUND_ROBIN: list[tuple[str, Any]] = [("grpc.lb_policy_name", "round_robin")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fleet",
        description="FerretDB, a Chroma server, the scripted model and N Loom replicas.",
    )
    parser.add_argument("-n", "--replicas", type=int, default=3)
    parser.add_argument(
        "--token-delay", type=float, default=0.02, help="seconds between the model's words"
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="logs and replicas' data")
    args = parser.parse_args(argv)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with Fleet(args.replicas, log_dir=args.log_dir, token_delay=args.token_delay) as fleet:
        print(f"FerretDB  {fleet.ferretdb.uri}", flush=True)
        print(f"Chroma    {fleet.chroma.url}", flush=True)
        print(f"model     {fleet.llm.base_url}", flush=True)
        for i, address in enumerate(fleet.addresses):
            print(f"replica {i} {address} (pid {fleet.replica(i).pid})", flush=True)
        print(f"target    {fleet.target}  (gRPC round_robin)", flush=True)
        print(f"API key   {DEV_KEY}   logs in {fleet.log_dir}; Ctrl-C stops", flush=True)
        try:
            while not stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
