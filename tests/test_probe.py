"""``python -m service health``, the container probe, against replicas that
serve TLS and mutual TLS: it trusts the CA it is given (``LOOM_PROBE_CA``),
shows a client certificate when the replica asks for one
(``LOOM_PROBE_CERT``/``LOOM_PROBE_KEY``), checks the name it is told
(``LOOM_PROBE_SERVER_NAME``), and says what to set when the handshake
fails."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

import pytest

from service.config import Settings
from service.server import Loom
from tests.conftest import make_settings, start_loom
from tests.scripted_llm import ScriptedLLM
from tests.support.certs import Pki, make_pki
from tests.support.ferretdb import FerretDB
from tests.support.process import clean_env, run_cli


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _serving(settings: Settings) -> AsyncIterator[Loom]:
    loom = await start_loom(settings)
    yield loom
    await loom.stop(0)


@pytest.fixture(scope="module")
async def tls_loom(ferretdb: FerretDB, llm: ScriptedLLM, pki: Pki) -> AsyncIterator[Loom]:
    settings = make_settings(ferretdb, llm, tls_cert=pki.server.cert, tls_key=pki.server.key)
    async for loom in _serving(settings):
        yield loom


@pytest.fixture(scope="module")
async def mtls_loom(ferretdb: FerretDB, llm: ScriptedLLM, pki: Pki) -> AsyncIterator[Loom]:
    settings = make_settings(
        ferretdb,
        llm,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert,
    )
    async for loom in _serving(settings):
        yield loom


async def _health(
    loom: Loom, pki: Pki, args: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    """The probe as a container runs it, with the replica's own TLS
    variables; in a thread, so that the in-process server keeps serving."""
    values = {
        "LOOM_LISTEN": f"0.0.0.0:{loom.port}",  # as in a container: a wildcard host
        "LOOM_ALLOW_PLAINTEXT": "false",
        "LOOM_TLS_CERT": str(pki.server.cert),
        "LOOM_TLS_KEY": str(pki.server.key),
        **env,
    }
    return await asyncio.to_thread(run_cli, ["health", *args], clean_env(**values), 60)


async def test_the_probe_speaks_tls_trusting_the_ca_it_is_given(tls_loom: Loom, pki: Pki) -> None:
    done = await _health(tls_loom, pki, LOOM_PROBE_CA=str(pki.ca.cert))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SERVING"


async def test_the_probe_without_the_ca_fails_and_names_the_variable(
    tls_loom: Loom, pki: Pki
) -> None:
    done = await _health(tls_loom, pki)
    assert done.returncode == 1, done.stdout
    assert "over TLS" in done.stderr, done.stderr
    assert "LOOM_PROBE_CA" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


async def test_the_probe_checks_the_server_name_it_is_told(tls_loom: Loom, pki: Pki) -> None:
    ca = str(pki.ca.cert)
    good = await _health(tls_loom, pki, ("--server-name", "localhost"), LOOM_PROBE_CA=ca)
    assert good.returncode == 0, good.stderr
    bad = await _health(tls_loom, pki, LOOM_PROBE_CA=ca, LOOM_PROBE_SERVER_NAME="elsewhere.test")
    assert bad.returncode == 1, bad.stdout


async def test_the_probe_shows_its_client_certificate_to_an_mtls_replica(
    mtls_loom: Loom, pki: Pki
) -> None:
    env = {"LOOM_TLS_CLIENT_CA": str(pki.ca.cert), "LOOM_PROBE_CA": str(pki.ca.cert)}
    done = await _health(
        mtls_loom, pki, ("--cert", str(pki.client.cert), "--key", str(pki.client.key)), **env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SERVING"
    via_env = await _health(
        mtls_loom,
        pki,
        LOOM_PROBE_CERT=str(pki.client.cert),
        LOOM_PROBE_KEY=str(pki.client.key),
        **env,
    )
    assert via_env.returncode == 0, via_env.stderr


async def test_an_mtls_replica_refuses_a_probe_without_a_certificate_it_trusts(
    mtls_loom: Loom, pki: Pki
) -> None:
    env = {"LOOM_TLS_CLIENT_CA": str(pki.ca.cert), "LOOM_PROBE_CA": str(pki.ca.cert)}
    bare = await _health(mtls_loom, pki, **env)
    assert bare.returncode == 1, bare.stdout
    assert "LOOM_PROBE_CERT" in bare.stderr, bare.stderr
    stranger = await _health(
        mtls_loom,
        pki,
        LOOM_PROBE_CERT=str(pki.stranger.cert),
        LOOM_PROBE_KEY=str(pki.stranger.key),
        **env,
    )
    assert stranger.returncode == 1, stranger.stdout


def test_probe_cert_without_its_key_stops_the_probe_naming_the_variables(pki: Pki) -> None:
    env = clean_env(
        LOOM_LISTEN="127.0.0.1:1",
        LOOM_TLS_CERT=str(pki.server.cert),
        LOOM_TLS_KEY=str(pki.server.key),
        LOOM_PROBE_CERT=str(pki.client.cert),
    )
    done = run_cli(["health"], env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "LOOM_PROBE_KEY" in done.stderr, done.stderr
