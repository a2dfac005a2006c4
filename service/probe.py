"""The container's health probe (``python -m service health``): one
grpc.health.v1 Check of this replica, through the port it serves."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["local_address", "probe"]

_WILDCARDS = {"0.0.0.0", "[::]", "::", ""}  # noqa: S104 - recognised, not bound


def local_address(listen: str) -> str:
    """The address to reach a server bound to ``listen`` from its own host:
    a wildcard host becomes the loopback address."""
    host, _, port = listen.rpartition(":")
    return f"{'127.0.0.1' if host in _WILDCARDS else host}:{port}"


def probe(address: str, timeout: float = 3.0) -> int:
    """0 if the server at ``address`` reports SERVING, else 1 with the reason
    on stderr (the exit status a container health check wants)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            sys.stderr.write(f"loom: health check of {address} failed: {code}\n")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        sys.stderr.write(f"loom: {address} is {status}\n")
        return 1
    sys.stdout.write(f"{status}\n")
    return 0
