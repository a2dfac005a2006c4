"""The transport: TLS with a CA the client trusts, mTLS that refuses clients
without a certificate from the configured CA, plaintext refused on the
network unless allowed, settings checked at start, and the HTTP/2 limits
(request size tied to LOOM_MAX_MESSAGE_CHARS, keepalive enforcement,
concurrent streams per connection). Certificates are made by the test, and
once by the README's openssl commands, which are run as written."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from generated.loom.v1 import assistant_pb2, assistant_pb2_grpc
from service.config import Settings
from service.server import Loom
from service.transport import receive_limit
from tests.conftest import (
    DEV_KEY,
    MODEL_DIR,
    Api,
    expect_error,
    make_settings,
    new_tenant_key,
    start_loom,
)
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.certs import Issued, Pki, make_pki
from tests.support.ferretdb import FerretDB, free_port
from tests.support.process import (
    REPO,
    LoomProcess,
    clean_env,
    grpcurl,
    grpcurl_bin,
    health_status,
    run_cli,
)

KEY = (("x-api-key", DEV_KEY),)
MAX_CHARS = 1000


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
async def tls_loom(ferretdb: FerretDB, llm: ScriptedLLM, pki: Pki) -> AsyncIterator[Loom]:
    loom = await start_loom(
        make_settings(ferretdb, llm, tls_cert=pki.server.cert, tls_key=pki.server.key)
    )
    yield loom
    await loom.stop(0)


@pytest.fixture(scope="module")
async def mtls_loom(ferretdb: FerretDB, llm: ScriptedLLM, pki: Pki) -> AsyncIterator[Loom]:
    loom = await start_loom(
        make_settings(
            ferretdb,
            llm,
            tls_cert=pki.server.cert,
            tls_key=pki.server.key,
            tls_client_ca=pki.ca.cert,
        )
    )
    yield loom
    await loom.stop(0)


@pytest.fixture(scope="module")
async def small_loom(ferretdb: FerretDB, llm: ScriptedLLM) -> AsyncIterator[Loom]:
    """Plaintext on loopback, with small transport limits."""
    loom = await start_loom(
        make_settings(
            ferretdb,
            llm,
            max_message_chars=MAX_CHARS,
            max_concurrent_streams=2,
            keepalive_min_ping_seconds=60.0,
            keepalive_max_ping_strikes=1,
        )
    )
    yield loom
    await loom.stop(0)


def _tls(
    pki: Pki, client: Issued | None = None, root: Issued | None = None
) -> grpc.ChannelCredentials:
    chain, key = client.pem() if client else (None, None)
    return grpc.ssl_channel_credentials(
        root_certificates=(root or pki.ca).cert.read_bytes(),
        private_key=key,
        certificate_chain=chain,
    )


async def _health(channel: aio.Channel, timeout: float = 5.0) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=timeout
    )
    return int(reply.status)


async def _list_assistants(channel: aio.Channel) -> assistant_pb2.ListAssistantsResponse:
    stub = assistant_pb2_grpc.AssistantServiceStub(channel)
    reply: assistant_pb2.ListAssistantsResponse = await stub.ListAssistants(
        assistant_pb2.ListAssistantsRequest(), metadata=KEY, timeout=5
    )
    return reply


async def _refused(channel: aio.Channel) -> aio.AioRpcError:
    """The health check on ``channel`` fails at the connection (UNAVAILABLE)."""
    with pytest.raises(aio.AioRpcError) as caught:
        await _health(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    return caught.value


# ----------------------------------------------------------------------- TLS


async def test_tls_serves_a_client_that_trusts_the_ca(tls_loom: Loom, pki: Pki) -> None:
    assert tls_loom.transport == "TLS"
    async with aio.secure_channel(f"127.0.0.1:{tls_loom.port}", _tls(pki)) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        await _list_assistants(channel)


async def test_tls_refuses_a_plaintext_client(tls_loom: Loom) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{tls_loom.port}") as channel:
        await _refused(channel)


async def test_tls_client_that_does_not_trust_the_server_fails(tls_loom: Loom, pki: Pki) -> None:
    credentials = _tls(pki, root=pki.other_ca)
    async with aio.secure_channel(f"127.0.0.1:{tls_loom.port}", credentials) as channel:
        await _refused(channel)


async def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    """grpcurl in a thread: the in-process server shares this event loop."""
    return await asyncio.to_thread(grpcurl, list(args))


async def test_grpcurl_with_cacert_calls_loom_over_tls(tls_loom: Loom, pki: Pki) -> None:
    address = f"127.0.0.1:{tls_loom.port}"
    done = await _grpcurl("-cacert", str(pki.ca.cert), address, "list")
    assert done.returncode == 0, done.stderr
    assert "loom.v1.ThreadService" in done.stdout.split()
    call = ["-H", f"x-api-key: {DEV_KEY}", address, "loom.v1.AssistantService/ListAssistants"]
    done = await _grpcurl("-cacert", str(pki.ca.cert), *call)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), dict)
    plaintext = await _grpcurl("-plaintext", *call)
    assert plaintext.returncode != 0
    assert "ListAssistants" not in plaintext.stdout


def _https(pki: Pki, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca.cert)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


async def _conversation(loom: Loom, verify: ssl.SSLContext | bool, scheme: str = "https") -> int:
    """POST /v1/conversations on the HTTP door; its status code."""
    url = f"{scheme}://127.0.0.1:{loom.http_port}/v1/conversations"
    async with httpx.AsyncClient(verify=verify, timeout=10) as http:
        answer = await http.post(url, json={}, headers={"Authorization": f"Bearer {DEV_KEY}"})
    return answer.status_code


async def test_the_http_door_serves_tls_from_the_same_files(tls_loom: Loom, pki: Pki) -> None:
    assert await _conversation(tls_loom, _https(pki)) == 200
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
        await _conversation(tls_loom, ssl.create_default_context(cafile=pki.other_ca.cert))
    with pytest.raises(httpx.TransportError):  # plaintext on the TLS port
        await _conversation(tls_loom, False, scheme="http")


# ---------------------------------------------------------------------- mTLS


async def test_mtls_accepts_a_client_certificate_from_the_ca(mtls_loom: Loom, pki: Pki) -> None:
    assert mtls_loom.transport == "mTLS"
    credentials = _tls(pki, client=pki.client)
    async with aio.secure_channel(f"127.0.0.1:{mtls_loom.port}", credentials) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        await _list_assistants(channel)


@pytest.mark.parametrize("client", ["none", "stranger"])
async def test_mtls_refuses_at_the_handshake_without_a_certificate_from_the_ca(
    mtls_loom: Loom, pki: Pki, client: str
) -> None:
    credentials = _tls(pki, client=pki.stranger if client == "stranger" else None)
    async with aio.secure_channel(f"127.0.0.1:{mtls_loom.port}", credentials) as channel:
        # Even health, which needs no API key, is out of reach.
        await _refused(channel)


@pytest.mark.parametrize("client", ["none", "stranger"])
async def test_the_http_door_requires_a_client_certificate_under_mtls(
    mtls_loom: Loom, pki: Pki, client: str
) -> None:
    assert await _conversation(mtls_loom, _https(pki, pki.client)) == 200
    with pytest.raises(httpx.TransportError):
        await _conversation(mtls_loom, _https(pki, pki.stranger if client == "stranger" else None))


async def test_grpcurl_with_a_client_certificate_calls_loom_over_mtls(
    mtls_loom: Loom, pki: Pki
) -> None:
    address = f"127.0.0.1:{mtls_loom.port}"
    call = ["-H", f"x-api-key: {DEV_KEY}", address, "loom.v1.AssistantService/ListAssistants"]
    cert = ["-cert", str(pki.client.cert), "-key", str(pki.client.key)]
    done = await _grpcurl("-cacert", str(pki.ca.cert), *cert, *call)
    assert done.returncode == 0, done.stderr
    without = await _grpcurl("-cacert", str(pki.ca.cert), *call)
    assert without.returncode != 0
    stranger = ["-cert", str(pki.stranger.cert), "-key", str(pki.stranger.key)]
    refused = await _grpcurl("-cacert", str(pki.ca.cert), *stranger, *call)
    assert refused.returncode != 0


# -------------------------------------------------- settings checked at start


@pytest.mark.parametrize(
    ("variable", "settings", "words"),
    [
        ("LOOM_ALLOW_PLAINTEXT", "LISTEN=0.0.0.0:50051", "LOOM_TLS_CERT"),
        ("LOOM_TLS_KEY", "TLS_CERT=server.crt", "together"),
        ("LOOM_TLS_KEY", "TLS_KEY=server.key", "together"),
        ("LOOM_TLS_KEY", "TLS_CERT=server.crt TLS_KEY=client.key", "private key"),
        ("LOOM_TLS_CERT", "TLS_CERT=missing.crt TLS_KEY=server.key", "missing.crt"),
        ("LOOM_TLS_CERT", "TLS_CERT=server.key TLS_KEY=server.key", "certificate"),
        ("LOOM_TLS_CLIENT_CA", "TLS_CLIENT_CA=ca.crt", "LOOM_TLS_CERT"),
        (
            "LOOM_TLS_CLIENT_CA",
            "TLS_CERT=server.crt TLS_KEY=server.key TLS_CLIENT_CA=ca.key",
            "certificate",
        ),
    ],
)
def test_bad_transport_settings_stop_loom_at_start_naming_the_variable(
    pki: Pki, variable: str, settings: str, words: str
) -> None:
    folder = pki.ca.cert.parent
    values = {}
    for pair in settings.split():
        name, value = pair.split("=")
        values[f"LOOM_{name}"] = value if name == "LISTEN" else str(folder / value)
    done = run_cli([], clean_env(**values), timeout=15)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{variable}:" in done.stderr, done.stderr
    assert words in done.stderr.split(f"{variable}:", 1)[1], done.stderr


def _wait_tls(address: str, credentials: grpc.ChannelCredentials, proc: LoomProcess) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, proc.output()
        with grpc.secure_channel(address, credentials) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=0.5
                )
                return
            except grpc.RpcError:
                time.sleep(0.1)
    raise AssertionError(f"{address} never served TLS\n{proc.output()}")


def test_loom_started_with_tls_variables_serves_tls_and_says_so(
    ferretdb: FerretDB, pki: Pki, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = clean_env(
        LOOM_MONGODB_URI=ferretdb.uri,
        LOOM_MONGODB_DB="loom_transport",
        LOOM_DATA_DIR=str(tmp_path / "data"),
        LOOM_EMBEDDING_MODEL_DIR=str(MODEL_DIR),
        LOOM_LISTEN=address,
        LOOM_TLS_CERT=str(pki.server.cert),
        LOOM_TLS_KEY=str(pki.server.key),
    )
    proc = LoomProcess(env, tmp_path, "loom-tls")
    try:
        _wait_tls(address, _tls(pki), proc)
        assert health_status(address) is None, "a plaintext client was served"
        assert proc.terminate() == 0
    finally:
        proc.kill()
    output = proc.stderr_path.read_text().splitlines()
    lines = [json.loads(line) for line in output if line.startswith("{")]  # not grpc core's
    started = [line for line in lines if line["message"].startswith("loom listening on")]
    assert [(line["level"], line["message"]) for line in started] == [
        ("INFO", f"loom listening on {address} (TLS)")
    ]


@pytest.mark.parametrize(
    ("listen", "level", "words"),
    [
        ("127.0.0.1", logging.INFO, "(plaintext, loopback only; set LOOM_TLS_CERT"),
        ("0.0.0.0", logging.WARNING, "in PLAINTEXT on the network (LOOM_ALLOW_PLAINTEXT=true)"),
    ],
)
async def test_plaintext_is_said_at_start(
    ferretdb: FerretDB,
    llm: ScriptedLLM,
    caplog: pytest.LogCaptureFixture,
    listen: str,
    level: int,
    words: str,
) -> None:
    settings = make_settings(
        ferretdb, llm, listen=f"{listen}:0", allow_plaintext=listen != "127.0.0.1"
    )
    with caplog.at_level(logging.INFO, logger="service.server"):
        loom = await start_loom(settings)
    await loom.stop(0)
    started = [r for r in caplog.records if r.getMessage().startswith("loom listening on")]
    assert [(r.levelno, words in r.getMessage()) for r in started] == [(level, True)], [
        r.getMessage() for r in started
    ]


def _readme_block(marker: str) -> str:
    readme = (REPO / "README.md").read_text()
    return next(b for b in re.findall(r"```sh\n(.*?)```", readme, re.DOTALL) if marker in b)


async def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_readme_commands_make_a_ca_and_certificates_loom_serves_mtls_with(
    ferretdb: FerretDB, llm: ScriptedLLM, tmp_path: Path
) -> None:
    made = await _bash(_readme_block("openssl req -x509"), tmp_path)
    assert made.returncode == 0, made.stderr
    loom = await start_loom(
        make_settings(
            ferretdb,
            llm,
            tls_cert=tmp_path / "server.crt",
            tls_key=tmp_path / "server.key",
            tls_client_ca=tmp_path / "ca.crt",
        )
    )
    try:
        mtls = _readme_block("LOOM_TLS_CLIENT_CA=ca.crt make run").split("make run\n", 1)[1]
        command = (
            mtls.replace("grpcurl", grpcurl_bin(), 1)
            .replace("127.0.0.1:50051", f"127.0.0.1:{loom.port}")
            .replace("x-api-key: dev-key", f"x-api-key: {DEV_KEY}")
        )
        called = await _bash(command, tmp_path)
        assert called.returncode == 0, called.stderr
        assert isinstance(json.loads(called.stdout), dict)
        refused = await _bash(command.replace("-cert client.crt -key client.key", ""), tmp_path)
        assert refused.returncode != 0
    finally:
        await loom.stop(0)


# ------------------------------------------------------------ HTTP/2 limits


def test_receive_limit_follows_the_longest_text_field() -> None:
    assert receive_limit(100_000) == receive_limit(1000)  # instructions (256,000) dominate
    assert receive_limit(1_000_000) == 4 * 1_000_000 + 1024 * 1024
    assert receive_limit(10**9) == 2**31 - 1  # gRPC's largest


async def test_request_size_over_loom_limit_is_invalid_argument_and_over_grpc_limit_exhausted(
    small_loom: Loom, llm: ScriptedLLM
) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{small_loom.port}") as channel:
        api = Api(channel, await new_tenant_key(small_loom))
        llm.set_default(Reply(text="ok"))
        # The limit in characters, each at UTF-8's worst (4 bytes): accepted.
        events = await api.send(content="\U0001d11e" * MAX_CHARS)
        assert events[-1].HasField("completed")
        error = await expect_error(
            api.send(content="x" * (MAX_CHARS + 1)), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert f"{MAX_CHARS:,}" in (error.details() or "")
        too_big = "x" * (receive_limit(MAX_CHARS) + 1)
        await expect_error(api.send(content=too_big), grpc.StatusCode.RESOURCE_EXHAUSTED)
        # The connection survives a refused request.
        assert (await api.send(content="still here"))[-1].HasField("completed")


def _watch(
    channel: aio.Channel,
) -> aio.UnaryStreamCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]:
    """A stream that stays open without data after its first message."""
    return health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))


async def test_streams_past_the_cap_wait_for_a_free_slot_on_their_connection(
    small_loom: Loom,
) -> None:
    address = f"127.0.0.1:{small_loom.port}"
    # Channels to one address share a connection unless told otherwise.
    own = [("grpc.use_local_subchannel_pool", 1)]
    async with (
        aio.insecure_channel(address, options=own) as busy,
        aio.insecure_channel(address, options=own) as other,
    ):
        held = [_watch(busy) for _ in range(2)]
        for call in held:
            assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVING
        # A third call on the same connection waits for a slot ...
        with pytest.raises(aio.AioRpcError) as caught:
            await _health(busy, timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # ... while another connection is served at once,
        assert await _health(other) == health_pb2.HealthCheckResponse.SERVING
        # and it is served once a stream ends.
        held[0].cancel()
        assert await _health(busy) == health_pb2.HealthCheckResponse.SERVING
        held[1].cancel()


async def test_a_client_pinging_too_often_is_disconnected_and_a_polite_one_is_not(
    small_loom: Loom,
) -> None:
    address = f"127.0.0.1:{small_loom.port}"
    eager = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    polite = [("grpc.keepalive_time_ms", 120_000), ("grpc.keepalive_permit_without_calls", 1)]
    async with (
        aio.insecure_channel(address, options=eager) as pinging,
        aio.insecure_channel(address, options=polite) as quiet,
    ):
        cut, kept = _watch(pinging), _watch(quiet)
        await cut.read()
        await kept.read()
        with pytest.raises(aio.AioRpcError) as caught:
            await asyncio.wait_for(cut.read(), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "ping" in (caught.value.details() or "").lower(), caught.value.details()
        assert not kept.done()
        kept.cancel()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("keepalive_seconds", float("inf")),
        ("keepalive_seconds", 0),
        ("keepalive_timeout_seconds", 3_000_000),  # past gRPC's int of milliseconds
        ("keepalive_min_ping_seconds", float("nan")),
        ("max_concurrent_streams", 0),
        ("keepalive_max_ping_strikes", -1),
        ("rate_limit_per_key", float("nan")),
        ("rate_limit_per_key", -1),
        ("rate_limit_burst", 0),
        ("max_streams_per_tenant", -1),
    ],
)
def test_limit_settings_refuse_values_grpc_or_the_limiter_cannot_take(
    field: str, value: float
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**{field: value})
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]
