"""Tracer and meter providers from the standard environment variables.

``setup()`` is called once per process (the OpenTelemetry API keeps one
global tracer provider and one meter provider): by ``serve()`` in
production, by a session fixture in tests, which pass an in-memory span
exporter and metric reader instead of the configured exporters. With both
exporters ``none`` (the default) nothing is installed and every span is the
API's no-op span, so tracing costs next to nothing when it is off.

The exporter classes, the OTLP protocol (``OTEL_EXPORTER_OTLP_PROTOCOL``),
endpoint and headers, the resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``), the sampler (``OTEL_TRACES_SAMPLER``) and the
metric export interval are all left to the SDK, read the way every
OpenTelemetry SDK reads them. MongoDB commands are traced by
opentelemetry-instrumentation-pymongo, whose command listener covers
``AsyncMongoClient`` too (the driver's monitoring is shared by both APIs);
it only sees clients created after ``setup()``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from importlib import metadata

from opentelemetry import metrics, trace
from opentelemetry.sdk._configuration import _get_exporter_entry_point, _import_exporters
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

from service.telemetry.config import TelemetryConfig

__all__ = ["DEFAULT_SERVICE_NAME", "Telemetry", "resource", "setup"]

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "loom"


@dataclass(slots=True)
class Telemetry:
    """The providers Loom reports to; ``None`` where a signal is off."""

    config: TelemetryConfig = field(default_factory=TelemetryConfig)
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None

    @property
    def tracing(self) -> bool:
        """True when spans are recorded and exported."""
        return self.tracer_provider is not None

    @property
    def metrics(self) -> bool:
        """True when metrics are collected and exported."""
        return self.meter_provider is not None

    @property
    def capture_content(self) -> bool:
        """True when prompt and completion text may be recorded."""
        return self.config.capture_content

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporters."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def resource() -> Resource:
    """The SDK's resource from the environment, with ``service.name`` ``loom``
    and ``service.version`` unless the environment names them."""
    given = OTELResourceDetector().detect().attributes
    defaults: dict[str, str] = {}
    if SERVICE_NAME not in given:
        defaults[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    if SERVICE_VERSION not in given:
        with contextlib.suppress(metadata.PackageNotFoundError):  # a bare checkout
            defaults[SERVICE_VERSION] = metadata.version("loom")
    return Resource.create(defaults)


def _span_exporters(names: tuple[str, ...]) -> list[SpanExporter]:
    """The SDK's exporters for ``names`` (``otlp`` follows the OTLP protocol variable)."""
    entry_points = [_get_exporter_entry_point(n, "traces") for n in names]
    found, _, _ = _import_exporters(entry_points, [], [])
    return [exporter_class() for exporter_class in found.values()]


def _metric_readers(names: tuple[str, ...]) -> list[MetricReader]:
    """Readers for ``names``; push exporters are read periodically
    (``OTEL_METRIC_EXPORT_INTERVAL``), as the SDK's own configurator does."""
    entry_points = [_get_exporter_entry_point(n, "metrics") for n in names]
    _, found, _ = _import_exporters([], entry_points, [])
    readers: list[MetricReader] = []
    for reader_class in found.values():
        if issubclass(reader_class, MetricReader):
            readers.append(reader_class())
        else:
            readers.append(PeriodicExportingMetricReader(reader_class()))
    return readers


def setup(
    config: TelemetryConfig | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> Telemetry:
    """Build the providers ``config`` (default: the environment) asks for and
    install them as the process's global providers; ``span_exporter`` (sent
    spans one by one) and ``metric_reader`` are added for tests.

    Raises:
        TelemetryConfigError: bad OTEL_ variables (when ``config`` is None).
        RuntimeError: providers were installed in this process already.
    """
    config = config or TelemetryConfig.from_env()
    telemetry = Telemetry(config)
    tracing = bool(config.traces) or span_exporter is not None
    metering = bool(config.metrics) or metric_reader is not None
    if not tracing and not metering:
        return telemetry
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        raise RuntimeError("OpenTelemetry providers are already installed in this process")
    res = resource()
    if tracing:
        provider = TracerProvider(resource=res)  # the sampler comes from OTEL_TRACES_SAMPLER
        for exporter in _span_exporters(config.traces):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        if span_exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        trace.set_tracer_provider(provider)
        from opentelemetry.instrumentation.pymongo import PymongoInstrumentor

        PymongoInstrumentor().instrument(tracer_provider=provider)
        telemetry.tracer_provider = provider
    if metering:
        readers = _metric_readers(config.metrics)
        if metric_reader is not None:
            readers.append(metric_reader)
        meters = MeterProvider(metric_readers=readers, resource=res)
        metrics.set_meter_provider(meters)
        telemetry.meter_provider = meters
    log.debug("telemetry: traces %s, metrics %s", config.traces, config.metrics)
    return telemetry
