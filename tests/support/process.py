"""Loom as a real OS process (``python -m service``) for end-to-end tests:
a clean environment, start and readiness via the gRPC health service, the
CLI, and grpcurl with its stream of JSON objects."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = [
    "REPO",
    "LoomProcess",
    "clean_env",
    "grpcurl",
    "grpcurl_bin",
    "health_status",
    "json_objects",
    "run_cli",
    "wait_serving",
]

REPO = Path(__file__).resolve().parents[2]


def clean_env(**values: str | None) -> dict[str, str]:
    """The current environment without any inherited ``LOOM_*`` / ``OPENAI_*``
    variable, plus ``ORT_DISABLE_TELEMETRY=1`` and ``values`` (None drops one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "OPENAI_"))}
    env["ORT_DISABLE_TELEMETRY"] = "1"
    for name, value in values.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """``python -m service ARGS`` to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def health_status(address: str, timeout: float = 1.0) -> int | None:
    """The overall (service "") health status, or None if the call failed."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return None
        return int(reply.status)


def wait_serving(address: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll the health service until it reports SERVING; fail after ``timeout``
    seconds, or as soon as ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited with {proc.returncode} before serving")
        if health_status(address, timeout=0.5) == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.05)
    raise AssertionError(f"{address} was not SERVING within {timeout:g}s")


class LoomProcess:
    """One ``python -m service`` process; its stdout and stderr go to files in
    ``log_dir`` so that they never fill a pipe."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.env = env
        self.address = env["LOOM_LISTEN"]
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=out, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """What the process wrote so far, stdout then stderr."""
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def wait_ready(self, timeout: float = 60.0) -> LoomProcess:
        """Wait until it serves; if it does not, kill it (so that no process
        outlives a failed test) and fail with its output. ``timeout`` bounds a
        hang and measures nothing: a start (imports, the embedding model)
        takes seconds, and several times that on a loaded machine."""
        try:
            wait_serving(self.address, timeout, self.proc)
        except AssertionError as exc:
            self.kill()
            output = self.output()
            raise AssertionError(f"{exc}\n--- output of pid {self.pid} ---\n{output}") from None
        return self

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the exit; fail (and kill it) if it takes longer than ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"pid {self.pid} did not exit within {timeout:g}s\n{self.output()}"
            ) from None

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL this process (only this one) if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def grpcurl_bin() -> str:
    """The grpcurl binary (``LOOM_GRPCURL_BIN`` or .tools/bin/grpcurl); fails
    the test, never skips it, when it is missing."""
    path = os.environ.get("LOOM_GRPCURL_BIN") or str(REPO / ".tools" / "bin" / "grpcurl")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"grpcurl not found at {path}: run `make setup` (it installs .tools/bin/grpcurl) "
            "or point LOOM_GRPCURL_BIN at a grpcurl binary",
            pytrace=False,
        )
    return path


def grpcurl(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run grpcurl with ``args`` to completion, output captured as text."""
    return subprocess.run(
        [grpcurl_bin(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=clean_env(),
    )


def json_objects(text: str) -> list[Any]:
    """Parse a sequence of (pretty-printed) JSON values, as grpcurl prints a stream."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return values
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)
