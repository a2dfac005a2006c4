"""The container's health probe (``python -m service health``): one
grpc.health.v1 Check of this replica, through the port it serves, over TLS
(and with a client certificate) when the replica serves TLS (mTLS)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["ProbeTls", "local_address", "probe"]

_WILDCARDS = {"0.0.0.0", "[::]", "::", ""}  # noqa: S104 - recognised, not bound


def local_address(listen: str) -> str:
    """The address to reach a server bound to ``listen`` from its own host:
    a wildcard host becomes the loopback address."""
    host, _, port = listen.rpartition(":")
    return f"{'127.0.0.1' if host in _WILDCARDS else host}:{port}"


@dataclass(frozen=True, slots=True)
class ProbeTls:
    """How the probe speaks TLS: the CA bundle it trusts (None: the
    system's), its client certificate and key (for mTLS), and the name the
    server's certificate must carry ("" : the host dialled)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def channel(self, address: str) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(address, credentials, options)


def _hint(tls: ProbeTls | None) -> str:
    if tls is None:
        return ""
    missing = []
    if tls.ca is None:
        missing.append("LOOM_PROBE_CA (the CA that signed Loom's certificate)")
    if tls.cert is None:
        missing.append("LOOM_PROBE_CERT/LOOM_PROBE_KEY (a client certificate, if Loom asks mTLS)")
    return f" over TLS; check {' and '.join(missing)}" if missing else " over TLS"


def probe(address: str, timeout: float = 3.0, tls: ProbeTls | None = None) -> int:
    """0 if the server at ``address`` reports SERVING, else 1 with the reason
    on stderr (the exit status a container health check wants); ``tls``
    None dials plaintext."""
    channel = grpc.insecure_channel(address) if tls is None else tls.channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            sys.stderr.write(f"loom: health check of {address} failed: {code}{_hint(tls)}\n")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        sys.stderr.write(f"loom: {address} is {status}\n")
        return 1
    sys.stdout.write(f"{status}\n")
    return 0
