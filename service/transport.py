"""The server's transport: TLS or mTLS credentials from PEM files, the port
bound with them, and the HTTP/2 limits a server on a network sets (message
size, keepalive enforcement, concurrent streams per connection); and the
same TLS for the HTTP door's socket (``LOOM_HTTP_LISTEN``)."""

from __future__ import annotations

import logging
import socket
import ssl

import grpc
from grpc import aio

from service.config import Settings, is_loopback
from service.core.limits import MAX_INSTRUCTIONS

__all__ = [
    "ENVELOPE_BYTES",
    "MAX_SEND_BYTES",
    "bind",
    "bind_http",
    "describe",
    "http_tls",
    "receive_limit",
    "server_options",
]

log = logging.getLogger(__name__)

# Room in a request for everything but its longest text field: ids, metadata,
# tool definitions and the protobuf framing.
ENVELOPE_BYTES = 1024 * 1024
MAX_SEND_BYTES = 8 * 1024 * 1024
# UTF-8 spends at most 4 bytes on a character.
_UTF8_WORST = 4
_INT32 = 2**31 - 1


def receive_limit(max_message_chars: int) -> int:
    """The largest request gRPC accepts: the longest text field Loom takes
    (a message of ``LOOM_MAX_MESSAGE_CHARS``, or an assistant's instructions)
    at 4 bytes a character, plus ``ENVELOPE_BYTES``. A request under it but
    over Loom's own limits gets INVALID_ARGUMENT saying which; one over it,
    RESOURCE_EXHAUSTED from gRPC before it is read into memory."""
    needed = _UTF8_WORST * max(max_message_chars, MAX_INSTRUCTIONS) + ENVELOPE_BYTES
    return min(needed, _INT32)  # gRPC takes a C int


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC core channel arguments for the server."""
    return [
        ("grpc.max_receive_message_length", receive_limit(settings.max_message_chars)),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls past it wait on the
        # client for a free slot, so one connection cannot open thousands.
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # The server's own pings find peers that vanished without a FIN.
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        # Enforcement of clients' pings: idle channels may be kept alive, but
        # a client pinging more often than the minimum (without data) earns a
        # strike, and past the strikes gets GOAWAY "too_many_pings".
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(settings.keepalive_min_ping_seconds * 1000),
        ),
        ("grpc.http2.max_ping_strikes", settings.keepalive_max_ping_strikes),
    ]


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    # With a client CA, a handshake without a certificate it signed fails.
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def bind(server: aio.Server, settings: Settings) -> tuple[int, str]:
    """Add ``LOOM_LISTEN`` to ``server``, with TLS when configured; returns
    the bound port and the mode (``mTLS``, ``TLS`` or ``plaintext``).

    Raises:
        OSError: the address cannot be bound.
    """
    credentials = _credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as exc:  # grpc raises this when the address is taken
        raise OSError(f"could not listen on LOOM_LISTEN={settings.listen}: {exc}") from None
    if port == 0:
        raise OSError(f"could not listen on LOOM_LISTEN={settings.listen}")
    if credentials is None:
        return port, "plaintext"
    return port, "mTLS" if settings.tls_client_ca else "TLS"


def describe(mode: str, address: str, door: str = "loom") -> tuple[int, str]:
    """The level and text of the start-up line saying how ``door`` (the gRPC
    server, or the HTTP door) serves."""
    if mode == "mTLS":
        return logging.INFO, f"{door} listening on {address} (mTLS: client certificates required)"
    if mode == "TLS":
        return logging.INFO, f"{door} listening on {address} (TLS)"
    if is_loopback(address):
        return logging.INFO, (
            f"{door} listening on {address} (plaintext, loopback only; "
            "set LOOM_TLS_CERT and LOOM_TLS_KEY to serve TLS)"
        )
    return logging.WARNING, (
        f"{door} listening on {address} in PLAINTEXT on the network (LOOM_ALLOW_PLAINTEXT=true): "
        "calls, API keys and content can be read on the wire"
    )


def http_tls(settings: Settings) -> ssl.SSLContext | None:
    """The HTTP door's TLS from the same files as gRPC's (None: plaintext);
    with ``LOOM_TLS_CLIENT_CA``, a handshake without a client certificate it
    signed fails, as on the gRPC port."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(cafile=settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def bind_http(listen: str) -> socket.socket:
    """A listening socket on ``listen`` (``LOOM_HTTP_LISTEN``).

    Raises:
        OSError: the address cannot be listened on.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, int(port)), family=family)
    except OSError as exc:
        raise OSError(f"could not listen on LOOM_HTTP_LISTEN={listen}: {exc}") from None
