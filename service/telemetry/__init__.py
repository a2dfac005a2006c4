"""OpenTelemetry for Loom: traces, metrics and correlated JSON logs,
configured only by the standard ``OTEL_`` variables (``config.py``).

One trace per message: the gRPC server span (``rpc.py``) is the parent of
every MongoDB command (opentelemetry-instrumentation-pymongo), Chroma call
(``chroma.py``), embedding batch (``embeddings.py``), model call
(``genai.py``, GenAI semantic conventions) and the memory and summary steps,
and the background jobs a message queues are children of, and linked to, its
trace (``jobs.py``). ``setup()`` installs the providers; ``annotate()`` adds
a fact to the current span from anywhere.

Submodules: ``config`` (variables), ``setup`` (providers), ``logs`` (JSON
lines), ``rpc`` (interceptors), ``genai``, ``chroma``, ``embeddings``,
``jobs``, ``spans`` (tracer and helpers).
"""

from service.telemetry.config import CAPTURE_CONTENT_ENV, TelemetryConfig, TelemetryConfigError
from service.telemetry.logs import JsonFormatter, configure_logging
from service.telemetry.rpc import record_reason
from service.telemetry.setup import Telemetry, setup
from service.telemetry.spans import annotate, record_error, span, tracer

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "JsonFormatter",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryConfigError",
    "annotate",
    "configure_logging",
    "record_error",
    "record_reason",
    "setup",
    "span",
    "tracer",
]
