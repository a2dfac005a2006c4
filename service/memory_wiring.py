"""How the server and the commands open memory, one way: the embedder the
settings name (``embedder_of``) and, for the server, the index over Chroma
with a span per call when tracing, the assistant memory replies use and
the MemoryService use cases over it (``build_memory``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from service.config import Settings
from service.core.jobs import JobRunner
from service.llm import OpenAIChatModel
from service.memory.domain import AssistantMemory
from service.memory.embeddings import Embedder, embedder_from_settings
from service.memory.history import History
from service.memory.index import ChromaMemoryIndex, open_index
from service.memory.memories import Memories
from service.memory.sharing import SharedEmbedder
from service.store import MongoStore
from service.telemetry import Telemetry
from service.telemetry.chroma import TracedChromaClient
from service.telemetry.embeddings import TracedEmbedder

__all__ = ["build_memory", "embedder_of"]


def embedder_of(settings: Settings) -> Embedder:
    """The embedder ``LOOM_EMBEDDING`` names, neither traced nor shared.

    Raises:
        EmbeddingError: the embedding model cannot be loaded.
    """
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return embedder_from_settings(
        settings.embedding,
        str(settings.embedding_model_dir) if settings.embedding_model_dir else None,
        openai_base_url=settings.llm_base_url,
        openai_api_key=key,
    )


def build_memory(
    settings: Settings,
    telemetry: Telemetry,
    *,
    store: MongoStore,
    jobs: JobRunner,
    llm: OpenAIChatModel,
) -> tuple[ChromaMemoryIndex, AssistantMemory, Memories]:
    """The memory index (Chroma, with spans per call when tracing), the
    assistant memory over it (what replies use) and the MemoryService use
    cases.

    Raises:
        EmbeddingError: the embedding model cannot be loaded.
    """
    embedder: Embedder = embedder_of(settings)
    batch, flight = getattr(embedder, "batch_size", 32), getattr(embedder, "concurrency", 1)
    if telemetry.tracing:
        remote = settings.embedding.startswith("openai:")
        embedder = TracedEmbedder(
            embedder, provider="openai" if remote else "onnxruntime", remote=remote
        )
    embedder = SharedEmbedder(embedder, max_batch=batch, concurrency=flight)  # outside the spans
    chroma_server = _chroma_server(settings.chroma_url)
    index = open_index(
        settings.data_dir,
        settings.chroma_url,
        embedder,
        versions=store.memory_versions,
        max_cached_bytes=settings.memory_cache_mb * 2**20,
        # A span per Chroma call, when tracing.
        wrap_client=(lambda client: TracedChromaClient(client, chroma_server))
        if telemetry.tracing
        else None,
    )
    history = History(index, store.memory_history)
    memory = AssistantMemory(
        index=index,
        history=history,
        jobs=jobs,
        messages=store.messages,
        llm=llm,
        default_model=settings.llm_model,
        extraction_model=settings.memory_extraction_model,
        recall_limit=settings.memory_recall_limit,
        recall_min_score=settings.memory_min_score,
    )
    memories = Memories(
        index=index,
        history=history,
        assistants=store.assistants,
        job_store=store.jobs,
        requests=store.requests,
    )
    return index, memory, memories


def _chroma_server(url: str | None) -> tuple[str, int] | None:
    if not url:
        return None
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 8000)
