"""Long-term memory of assistants: embeddings, the BM25 side and the Chroma
index (``index.py`` documents the collection layout and the ranking). The
memory domain (``domain.py``, ``jobs.py``, ``extraction.py``) is built on
this surface."""

from service.memory.embeddings import (
    Embedder,
    EmbeddingError,
    OnnxMiniLM,
    OpenAIEmbedder,
    Vectors,
    default_model_dir,
    embedder_from_settings,
    ensure_default_model,
)
from service.memory.index import (
    MODES,
    ChromaMemoryIndex,
    EmbeddingMismatch,
    MemoryHit,
    MemoryIndex,
    MemoryRecord,
    SearchTuning,
    VersionSource,
    collection_name,
    open_index,
    reindex_all,
)

__all__ = [
    "MODES",
    "ChromaMemoryIndex",
    "Embedder",
    "EmbeddingError",
    "EmbeddingMismatch",
    "MemoryHit",
    "MemoryIndex",
    "MemoryRecord",
    "OnnxMiniLM",
    "OpenAIEmbedder",
    "SearchTuning",
    "Vectors",
    "VersionSource",
    "collection_name",
    "default_model_dir",
    "embedder_from_settings",
    "ensure_default_model",
    "open_index",
    "reindex_all",
]
