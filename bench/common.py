"""What every benchmark shares: the machine description, percentiles, CPU
time, and starting the real parts (FerretDB, the scripted model, Loom) as
processes."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.ferretdb import BACKENDS, FerretDB, free_port
from tests.support.postgres import process_cpu_seconds

__all__ = [
    "BACKENDS",
    "MODEL_DIR",
    "REPO",
    "FerretDB",
    "Process",
    "machine",
    "pct",
    "process_cpu_seconds",
    "start_loom",
    "start_model",
]

REPO = Path(__file__).resolve().parents[1]
# Chroma's default embedding model, shipped beside the repository for offline use.
MODEL_DIR = Path(
    os.environ.get("LOOM_EMBEDDING_MODEL_DIR", REPO.parent / "shared/models/all-MiniLM-L6-v2/onnx")
)


def machine() -> str:
    """One line naming the machine the numbers come from."""
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


class Process:
    """A child process killed on exit."""

    def __init__(self, args: list[str], env: dict[str, str], port: int, cwd: Path = REPO) -> None:
        self.port = port
        # A file, not a pipe: a pipe nobody reads stalls a process that logs
        # more than its buffer over a long run.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=self.stderr
        )
        deadline = time.monotonic() + 60  # Loom imports for 20 s on a busy machine
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stderr.seek(0)
                err = self.stderr.read().decode(errors="replace")
                raise RuntimeError(f"{args[2:]} exited: {err[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{args} did not listen on {port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "OPENAI_"))}
    env["ORT_DISABLE_TELEMETRY"] = "1"
    env.update(extra)
    return env


def start_model() -> Process:
    """The scripted OpenAI-compatible model in its own process."""
    port = free_port()
    return Process([sys.executable, "-m", "tests.scripted_llm", "--port", str(port)], _env(), port)


def start_loom(
    ferretdb: FerretDB,
    model: Process,
    db: str,
    *,
    module: str = "service",
    source: Path = REPO,
    data_dir: Path | None = None,
    **extra: str,
) -> Process:
    """``python -m service`` (or ``module``, a wrapper of it such as
    bench/probe.py) against that FerretDB and model, from the checkout at
    ``source`` (another revision's, for a before/after in one run)."""
    port = free_port()
    env = _env(
        LOOM_LISTEN=f"127.0.0.1:{port}",
        LOOM_MONGODB_URI=ferretdb.uri,
        LOOM_MONGODB_DB=db,
        LOOM_LLM_BASE_URL=f"http://127.0.0.1:{model.port}/v1",
        LOOM_LLM_MODEL="scripted-model",
        LOOM_DEV_API_KEY="bench-key",
        LOOM_LOG_LEVEL="WARNING",
        LOOM_DATA_DIR=str(data_dir or tempfile.mkdtemp(prefix="loom-bench-data-")),
        LOOM_EMBEDDING_MODEL_DIR=str(MODEL_DIR),
        # One key drives every benchmark faster than a client is allowed by
        # default: measure Loom, not its rate limiter.
        LOOM_RATE_LIMIT_PER_KEY="0",
        LOOM_MAX_STREAMS_PER_TENANT="0",
        **extra,
    )
    return Process([sys.executable, "-m", module], env, port, cwd=source)
