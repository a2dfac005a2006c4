"""A span per embedding batch: a proxy around the memory index's
``Embedder`` (``model_name``, ``dim``, ``async embed(texts)``).

Spans follow the GenAI conventions for embeddings: ``embeddings {model}``,
``gen_ai.operation.name`` ``embeddings``, ``gen_ai.request.model``,
``gen_ai.provider.name``, ``gen_ai.embeddings.dimension.count``, and the
batch size as ``loom.embeddings.batch_size``. A remote model's span is a
CLIENT span; the local ONNX model's is INTERNAL. Texts are never recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from service.telemetry.spans import record_error, tracer

__all__ = ["TracedEmbedder"]

_tracer = tracer("loom.embeddings")


class TracedEmbedder:
    """``embedder`` with a span around each ``embed`` call; ``provider`` is
    the ``gen_ai.provider.name`` (``onnxruntime`` for the local model)."""

    def __init__(self, embedder: Any, *, provider: str, remote: bool = False) -> None:
        self._embedder = embedder
        self._kind = SpanKind.CLIENT if remote else SpanKind.INTERNAL
        self._attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "embeddings",
            "gen_ai.provider.name": provider,
        }

    @property
    def model_name(self) -> str:
        """The wrapped embedder's model."""
        name: str = self._embedder.model_name
        return name

    @property
    def dim(self) -> int:
        """The wrapped embedder's vector size."""
        dim: int = self._embedder.dim
        return dim

    async def embed(self, texts: Sequence[str]) -> Any:
        """Embed ``texts`` with the wrapped embedder, in a span."""
        model = self.model_name
        attributes = dict(self._attributes)
        attributes["gen_ai.request.model"] = model
        attributes["loom.embeddings.batch_size"] = len(texts)
        with _tracer.start_as_current_span(
            f"embeddings {model}",
            kind=self._kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                vectors = await self._embedder.embed(texts)
            except BaseException as exc:
                record_error(span, exc)
                raise
            if span.is_recording() and self.dim:
                span.set_attribute("gen_ai.embeddings.dimension.count", self.dim)
            return vectors

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)
