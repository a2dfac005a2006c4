"""Settings from the environment, validated at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.core.limits import MIN_CONTEXT_WINDOW

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every setting Loom reads; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="LOOM_", extra="ignore", frozen=True, populate_by_name=True
    )

    listen: str = Field("127.0.0.1:50051", description="host:port the gRPC server binds")
    mongodb_uri: SecretStr = Field(SecretStr("mongodb://127.0.0.1:27017"))
    mongodb_db: str = "loom"
    mongodb_timeout: float = Field(
        2.0,
        gt=0,
        le=600,
        description="seconds to find the database or connect to it before a call fails",
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
    dev_api_key: SecretStr | None = None
    max_message_chars: int = Field(100_000, gt=0)
    lease_seconds: float = Field(30.0, gt=0)
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

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 127.0.0.1:50051 or [::]:50051")
        return value

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

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()
