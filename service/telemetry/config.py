"""The standard OpenTelemetry environment variables, checked at start.

Only the variables every OpenTelemetry SDK reads are used; there are no
``LOOM_`` copies of them. The SDK interprets them (exporter classes, OTLP
protocol, resource, sampler); this module only rejects values the SDK would
ignore with a log line or fail on later, so a typo stops Loom at start with
a message naming the variable, like the rest of Loom's configuration.

=============================================  ===========================================
``OTEL_SERVICE_NAME``                           service name (default ``loom``)
``OTEL_TRACES_EXPORTER``                        ``otlp``, ``console`` or ``none`` (default)
``OTEL_METRICS_EXPORTER``                       ``otlp``, ``console`` or ``none`` (default)
``OTEL_EXPORTER_OTLP_ENDPOINT``                 collector address (the exporter's default)
``OTEL_EXPORTER_OTLP_PROTOCOL``                 ``grpc`` (default) or ``http/protobuf``
``OTEL_RESOURCE_ATTRIBUTES``                    ``key=value,...`` added to every span/metric
``OTEL_TRACES_SAMPLER`` / ``_ARG``              e.g. ``parentbased_traceidratio`` / ``0.1``
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_   ``true``: record prompt and completion text
CONTENT``                                       on model spans (and allow it in debug logs)
=============================================  ===========================================

Errors: ``TelemetryConfigError`` (one per bad variable, all at once).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["CAPTURE_CONTENT_ENV", "TelemetryConfig", "TelemetryConfigError"]

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
_SIGNAL_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
_ENDPOINTS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


class TelemetryConfigError(ValueError):
    """Some OTEL_ variables have values Loom cannot use; ``problems`` holds
    ``(variable, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """What the environment asks for (the SDK reads the details itself)."""

    traces: tuple[str, ...] = ()
    """Trace exporters: a subset of ``otlp``, ``console``; empty means off."""
    metrics: tuple[str, ...] = ()
    """Metric exporters, likewise."""
    capture_content: bool = False
    """Prompt and completion text may be recorded (the GenAI opt-in)."""
    metric_interval: float = 60.0
    """Seconds between metric exports (``OTEL_METRIC_EXPORT_INTERVAL``)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TelemetryConfig:
        """Read and check the variables.

        Raises:
            TelemetryConfigError: a variable has a value the SDK cannot use.
        """
        env = os.environ if environ is None else environ
        problems: list[tuple[str, str]] = []
        traces = _exporters(env, "OTEL_TRACES_EXPORTER", problems)
        metrics = _exporters(env, "OTEL_METRICS_EXPORTER", problems)
        for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", *_SIGNAL_PROTOCOLS):
            value = env.get(name, "").strip()
            if value and value not in PROTOCOLS:
                problems.append((name, f"must be {' or '.join(PROTOCOLS)}, not {value!r}"))
        for name in _ENDPOINTS:
            value = env.get(name, "").strip()
            if value and urlsplit(value).scheme not in ("http", "https"):
                problems.append(
                    (name, f"must be an http:// or https:// URL (http://host:4317), not {value!r}")
                )
        _check_sampler(env, problems)
        _check_resource(env, problems)
        capture = env.get(CAPTURE_CONTENT_ENV, "").strip().lower()
        if capture not in ("", "true", "false"):
            problems.append((CAPTURE_CONTENT_ENV, f"must be true or false, not {capture!r}"))
        interval = 60.0
        raw_interval = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
        if raw_interval:
            try:
                interval = float(raw_interval) / 1000
                if interval <= 0:
                    raise ValueError
            except ValueError:
                problems.append(
                    ("OTEL_METRIC_EXPORT_INTERVAL", "must be a positive number of milliseconds")
                )
        if problems:
            raise TelemetryConfigError(problems)
        return cls(
            traces=traces,
            metrics=metrics,
            capture_content=capture == "true",
            metric_interval=interval,
        )


def _exporters(
    env: Mapping[str, str], name: str, problems: list[tuple[str, str]]
) -> tuple[str, ...]:
    raw = env.get(name, "").strip().lower()
    names = [n.strip() for n in raw.split(",") if n.strip()] if raw else []
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        problems.append((name, f"must be otlp, console or none (or a comma list), not {raw!r}"))
        return ()
    return tuple(dict.fromkeys(n for n in names if n != "none"))


def _check_sampler(env: Mapping[str, str], problems: list[tuple[str, str]]) -> None:
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in SAMPLERS:
        problems.append(("OTEL_TRACES_SAMPLER", f"must be one of {', '.join(SAMPLERS)}"))
        return
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if sampler in _RATIO_SAMPLERS and arg:
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            problems.append(
                ("OTEL_TRACES_SAMPLER_ARG", f"must be a ratio from 0 to 1 for {sampler}")
            )


def _check_resource(env: Mapping[str, str], problems: list[tuple[str, str]]) -> None:
    raw = env.get("OTEL_RESOURCE_ATTRIBUTES", "").strip()
    if not raw:
        return
    for item in raw.split(","):
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            problems.append(
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    f"must be key=value pairs separated by commas; {item.strip()!r} is not",
                )
            )
            return
