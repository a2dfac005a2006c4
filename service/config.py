"""Settings from the environment, validated at start."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.core.limits import MIN_CONTEXT_WINDOW

__all__ = ["Settings", "is_loopback"]


def is_loopback(listen: str) -> bool:
    """Whether a ``host:port`` address only accepts connections from this
    machine (``localhost``, 127.0.0.0/8, ``[::1]``)."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _pem_file(path: Path, what: str) -> str:
    """The text of a PEM file, or a ValueError a person can act on."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {what} file {str(path)!r}: {exc}") from None
    if "-----BEGIN " not in text:
        raise ValueError(f"{str(path)!r} is not a PEM file (no -----BEGIN line); expected {what}")
    return text


def _certificates(path: Path, what: str) -> None:
    """Check that a PEM file holds certificates OpenSSL can parse."""
    _pem_file(path, what)
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(f"{str(path)!r} holds no PEM certificate ({exc.reason or exc})") from None


def _host_port(value: str, example: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port, e.g. {example}")
    return value


# gRPC takes its channel arguments as C ints (milliseconds for times).
_INT32 = 2**31 - 1
_MAX_MS_SECONDS = _INT32 // 1000


class Settings(BaseSettings):
    """Every setting Loom reads; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="LOOM_", extra="ignore", frozen=True, populate_by_name=True
    )

    listen: str = Field("127.0.0.1:50051", description="host:port the gRPC server binds")
    http_listen: str | None = Field(
        None, description="host:port of the OpenAI-shaped HTTP door (unset: off)"
    )
    mongodb_uri: SecretStr = Field(SecretStr("mongodb://127.0.0.1:27017"))
    mongodb_db: str = "loom"
    mongodb_timeout: float = Field(
        2.0,
        gt=0,
        le=600,
        description="seconds to find the database or connect to it before a call fails",
    )
    mongodb_max_pool: int = Field(
        100,
        ge=1,
        le=10_000,
        description="connections to the database each replica keeps at most",
    )
    data_dir: Path = Path("./.data")
    llm_base_url: str | None = Field(
        None, validation_alias=AliasChoices("LOOM_LLM_BASE_URL", "OPENAI_BASE_URL")
    )
    llm_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LOOM_LLM_API_KEY", "OPENAI_API_KEY")
    )
    llm_model: str = "gpt-4o-mini"
    llm_timeout: float = Field(60.0, gt=0, description="seconds to wait for the model to answer")
    llm_max_retries: int = Field(2, ge=0, le=10)
    llm_retry_delay: float = Field(0.5, ge=0, description="first retry back-off, seconds")
    llm_max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = Field(
        "max_completion_tokens",
        description="request field for a reply's output limit (max_tokens for older servers)",
    )
    dev_api_key: SecretStr | None = None
    max_message_chars: int = Field(100_000, gt=0)
    lease_seconds: float = Field(30.0, gt=0)
    max_queued_per_thread: int = Field(
        8, ge=1, description="messages that may wait for a busy thread (on_busy ENQUEUE/INTERRUPT)"
    )
    context_cache_chars: int = Field(
        400_000, gt=0, description="characters of recent history cached on each thread"
    )
    context_window: int | None = Field(
        None,
        ge=MIN_CONTEXT_WINDOW,
        description="context window for every model, overriding the registry",
    )
    summary_model: str = Field("", description="model that writes thread summaries")
    chroma_url: str | None = Field(
        None, description="Chroma server (http://host:port); unset: embedded under data_dir"
    )
    embedding: str = Field("default", description="'default' (all-MiniLM-L6-v2) or openai:MODEL")
    embedding_model_dir: Path | None = Field(
        None, description="folder with all-MiniLM-L6-v2's model.onnx and tokenizer files"
    )
    memory_recall_limit: int = Field(8, ge=1, le=100)
    memory_min_score: float = Field(0.05, ge=0, le=1)
    memory_cache_mb: int = Field(
        512,
        ge=1,
        le=1_048_576,
        description="memory each replica's search caches may hold, MB (LRU by bytes)",
    )
    memory_extraction_model: str = ""
    max_tool_rounds: int = Field(8, ge=1, le=100, description="tool rounds allowed per reply")
    run_expiry_seconds: float = Field(
        600.0, gt=0, description="how long a run waits for tool outputs"
    )
    job_poll_seconds: float = Field(1.0, gt=0)
    job_max_attempts: int = Field(5, ge=1, le=100)
    job_retry_delay: float = Field(2.0, ge=0)
    job_max_retry_delay: float = Field(
        60.0, gt=0, description="longest back-off of a job waiting for a dependency, seconds"
    )
    job_concurrency: int = Field(4, ge=1, le=256, description="jobs run at once per replica")
    job_tenant_concurrency: int = Field(
        2, ge=1, le=256, description="jobs of one tenant run at once per replica"
    )
    job_lease_seconds: float = Field(
        60.0, gt=0, description="how long a dead replica can hold a background job"
    )
    shutdown_grace: float = Field(10.0, ge=0)
    log_level: str = "INFO"
    # uvloop's event loop costs the service about a quarter less CPU per
    # message than asyncio's (docs/benchmarks.md); grpc.aio runs on either.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Transport (service/transport.py). The TLS fields are validated even
    # when unset, so that a key without a certificate is reported.
    tls_cert: Path | None = Field(None, validate_default=True, description="PEM certificate chain")
    tls_key: Path | None = Field(None, validate_default=True, description="PEM private key")
    tls_client_ca: Path | None = Field(
        None, validate_default=True, description="PEM CA bundle: require client certificates"
    )
    allow_plaintext: bool = Field(
        False, validate_default=True, description="serve plaintext on a non-loopback address"
    )
    # The health probe (`python -m service health`, service/probe.py) speaks
    # TLS when LOOM_TLS_CERT is set: what it trusts, and what it shows an
    # mTLS server.
    probe_ca: Path | None = Field(
        None, description="PEM CA bundle the probe trusts Loom with (default: the system's)"
    )
    probe_cert: Path | None = Field(None, description="PEM client certificate chain for mTLS")
    probe_key: Path | None = Field(
        None, validate_default=True, description="PEM private key of LOOM_PROBE_CERT"
    )
    probe_server_name: str = Field(
        "", description="name Loom's certificate is checked for (default: the address's host)"
    )
    max_concurrent_streams: int = Field(
        100, ge=1, le=_INT32, description="concurrent calls per connection"
    )
    keepalive_seconds: float = Field(
        120.0,
        gt=0,
        le=_MAX_MS_SECONDS,
        allow_inf_nan=False,
        description="ping a connection idle this long, to find dead peers",
    )
    keepalive_timeout_seconds: float = Field(
        20.0,
        gt=0,
        le=_MAX_MS_SECONDS,
        allow_inf_nan=False,
        description="close a connection whose ping is not answered in this time",
    )
    keepalive_min_ping_seconds: float = Field(
        10.0,
        ge=0,
        le=_MAX_MS_SECONDS,
        allow_inf_nan=False,
        description="shortest interval between a client's pings without data",
    )
    keepalive_max_ping_strikes: int = Field(
        2, ge=0, le=_INT32, description="pings too soon before the connection is closed (0: never)"
    )
    # Limits per key and per tenant (service/core/limits.py); 0 is unlimited.
    rate_limit_per_key: float = Field(
        100.0, ge=0, allow_inf_nan=False, description="calls per second per API key"
    )
    rate_limit_burst: int = Field(200, ge=1, description="calls a key may make at once")
    max_streams_per_tenant: int = Field(
        100, ge=0, description="concurrent SendMessage/SubmitToolOutputs streams per tenant"
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _host_port(value, "127.0.0.1:50051 or [::]:50051")

    @field_validator("http_listen")
    @classmethod
    def _check_http_listen(cls, value: str | None) -> str | None:
        return _host_port(value, "127.0.0.1:8080 or [::]:8080") if value else None

    @field_validator("mongodb_uri")
    @classmethod
    def _check_uri(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value

    @field_validator("llm_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://localhost:11434/v1")
        return value or None

    @field_validator("chroma_url")
    @classmethod
    def _check_chroma(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8000")
        return value or None

    @field_validator("embedding")
    @classmethod
    def _check_embedding(cls, value: str) -> str:
        if value != "default" and not (value.startswith("openai:") and len(value) > 7):
            raise ValueError(
                "must be 'default' or 'openai:MODEL', e.g. openai:text-embedding-3-small"
            )
        return value

    @field_validator("tls_cert")
    @classmethod
    def _check_cert(cls, value: Path | None) -> Path | None:
        if value is not None:
            _certificates(value, "a certificate")
        return value

    @field_validator("tls_key")
    @classmethod
    def _check_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "tls_cert" not in info.data:
            return value  # the certificate's own error is reported
        cert = info.data["tls_cert"]
        if (value is None) != (cert is None):
            raise ValueError("LOOM_TLS_CERT and LOOM_TLS_KEY must be set together (or neither)")
        if value is not None and cert is not None:
            _pem_file(value, "a private key")
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, value)
            except ssl.SSLError as exc:
                raise ValueError(
                    f"{str(value)!r} is not the unencrypted PEM private key of LOOM_TLS_CERT "
                    f"({exc.reason or exc})"
                ) from None
        return value

    @field_validator("tls_client_ca")
    @classmethod
    def _check_client_ca(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None or "tls_key" not in info.data:
            return value
        if info.data["tls_key"] is None:
            raise ValueError(
                "requires LOOM_TLS_CERT and LOOM_TLS_KEY (mTLS is TLS plus a client CA)"
            )
        _certificates(value, "a CA certificate")
        return value

    @field_validator("probe_ca", "probe_cert")
    @classmethod
    def _check_probe_pem(cls, value: Path | None) -> Path | None:
        if value is not None:
            _certificates(value, "a certificate")
        return value

    @field_validator("probe_key")
    @classmethod
    def _check_probe_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "probe_cert" not in info.data:
            return value  # the certificate's own error is reported
        if (value is None) != (info.data["probe_cert"] is None):
            raise ValueError("LOOM_PROBE_CERT and LOOM_PROBE_KEY must be set together (or neither)")
        if value is not None:
            _pem_file(value, "a private key")
        return value

    @field_validator("allow_plaintext")
    @classmethod
    def _check_plaintext(cls, value: bool, info: ValidationInfo) -> bool:
        if value or "listen" not in info.data or "tls_key" not in info.data:
            return value
        if info.data["tls_key"] is not None:
            return value
        addresses = {
            "LOOM_LISTEN": info.data["listen"],
            "LOOM_HTTP_LISTEN": info.data.get("http_listen"),
        }
        for name, listen in addresses.items():
            if listen and not is_loopback(listen):
                raise ValueError(
                    f"{name}={listen} is not a loopback address and LOOM_TLS_CERT/LOOM_TLS_KEY "
                    "are not set: set them to serve TLS, or set LOOM_ALLOW_PLAINTEXT=true to "
                    "serve plaintext on the network anyway"
                )
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()
