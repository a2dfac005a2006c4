"""A real Jaeger all-in-one (v1.76.0, built by ``make jaeger`` into
``.tools/bin/``) on free ports, in-memory storage: an OTLP receiver for
Loom's spans and the query HTTP API to read them back."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.ferretdb import free_port

__all__ = ["Jaeger", "jaeger_bin"]

REPO = Path(__file__).resolve().parents[2]


def jaeger_bin() -> Path:
    """The binary: ``LOOM_JAEGER_BIN`` or ``.tools/bin/jaeger-all-in-one``."""
    return Path(
        os.environ.get("LOOM_JAEGER_BIN", str(REPO / ".tools" / "bin" / "jaeger-all-in-one"))
    )


class Jaeger:
    """``start()``, then ``otlp_grpc``/``otlp_http`` take spans and
    ``trace(trace_id)`` reads one back; ``stop()`` ends the process."""

    def __init__(self, binary: Path | None = None) -> None:
        self.binary = binary or jaeger_bin()
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkdtemp(prefix="loom-jaeger-")) / "jaeger.log"

    @property
    def otlp_grpc(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp-grpc']}"

    @property
    def otlp_http(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp-http']}"

    @property
    def query(self) -> str:
        return f"http://127.0.0.1:{self.ports['query-http']}"

    def start(self, timeout: float = 30.0) -> Jaeger:
        flags = {
            "admin": "--admin.http.host-port",
            "collector-grpc": "--collector.grpc-server.host-port",
            "collector-http": "--collector.http-server.host-port",
            "otlp-grpc": "--collector.otlp.grpc.host-port",
            "otlp-http": "--collector.otlp.http.host-port",
            "query-http": "--query.http-server.host-port",
            "query-grpc": "--query.grpc-server.host-port",
        }
        self.ports = {name: free_port() for name in flags}
        args = [str(self.binary)] + [
            f"{flag}=127.0.0.1:{self.ports[name]}" for name, flag in flags.items()
        ]
        env = {**os.environ, "SPAN_STORAGE_TYPE": "memory", "OTEL_SDK_DISABLED": "true"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jaeger exited {self.proc.returncode}: {self.output()}")
            status = self._get(f"http://127.0.0.1:{self.ports['admin']}/")
            if status and status.get("status") == "Server available":
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"jaeger was not ready within {timeout:g}s: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @staticmethod
    def _get(url: str) -> Any:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own URL
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def services(self) -> list[str]:
        """Services Jaeger has spans of (``/api/services``)."""
        got = self._get(f"{self.query}/api/services")
        return list((got or {}).get("data") or [])

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """One trace from the query API (``/api/traces/{id}``), or None."""
        got = self._get(f"{self.query}/api/traces/{trace_id}")
        data = (got or {}).get("data") or []
        return data[0] if data else None

    def traces(self, service: str, limit: int = 20) -> list[dict[str, Any]]:
        """Recent traces of ``service`` (``/api/traces?service=...``)."""
        got = self._get(f"{self.query}/api/traces?service={service}&limit={limit}")
        return list((got or {}).get("data") or [])
