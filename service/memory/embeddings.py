"""Text embeddings for the memory index.

``Embedder`` is the interface: ``embed`` returns a float32 matrix, one
L2-normalised row per text (numpy, because Chroma takes it as it is and the
index does its arithmetic on it). ``model_name`` names the vector space: the
index records it on each collection and refuses to mix spaces.

- ``OnnxMiniLM``: all-MiniLM-L6-v2 (Chroma's default model, 384 dimensions)
  run here with onnxruntime: one ``InferenceSession`` for the process,
  tokenised with HF ``tokenizers`` (truncated at 256 tokens as
  sentence-transformers does, padded to the longest text of each batch,
  texts sorted by length so a batch holds texts of similar length), mean
  pooled over the attention mask and normalised. Its vectors equal Chroma's
  ``ONNXMiniLM_L6_V2`` (cosine at least 0.9999; tested), so collections stay
  compatible with Chroma's own embedding function.
- ``OpenAIEmbedder``: any OpenAI-compatible ``/embeddings`` endpoint.

Why not fastembed (checked with fastembed 0.9.1): it loads this folder
offline (``TextEmbedding("sentence-transformers/all-MiniLM-L6-v2",
specific_model_path=...)``) and is as fast when handed length-sorted texts
(both about 400 LoCoMo turns/s on 2 cores; 2.1-2.3 ms per query; 175 vs 355
turns/s when fastembed gets them unsorted), but it truncates at the
tokenizer's ``model_max_length`` (512), not at the model's 256, so texts
longer than 256 tokens get other vectors than Chroma's and
sentence-transformers' (cosine 0.85 on a 1,429-token text); and it pins
huggingface-hub below 2 (downgrading the 2.4 that tokenizers brings) and adds
loguru, pillow and py-rust-stemmers, to do what 80 lines here do.

Errors: ``EmbeddingError`` (a ``FailedPrecondition``) when the model folder
is missing or incomplete; ``Unavailable`` when the OpenAI endpoint cannot be
reached.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from service.core.errors import FailedPrecondition, Unavailable

__all__ = [
    "MINILM_FILES",
    "Embedder",
    "EmbeddingError",
    "OnnxMiniLM",
    "OpenAIEmbedder",
    "Vectors",
    "default_model_dir",
    "embedder_from_settings",
    "ensure_default_model",
]

Vectors = npt.NDArray[np.float32]
"""A (len(texts), dim) float32 matrix whose rows have unit length."""

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_DIM = 384
MINILM_FILES = (
    "config.json",
    "model.onnx",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)


class EmbeddingError(FailedPrecondition):
    """The embedding model cannot be loaded or used as configured."""

    reason = "EMBEDDING_MODEL_UNAVAILABLE"


class Embedder(Protocol):
    """Turns texts into unit vectors of one vector space."""

    @property
    def model_name(self) -> str:
        """Names the vector space (recorded on every collection)."""

    @property
    def dim(self) -> int:
        """Vector length; 0 while unknown (an endpoint not asked yet)."""

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit row per text, in order; an empty input gives (0, dim)."""

    async def aclose(self) -> None:
        """Release what the embedder holds (its thread, its connections)."""


def _normalise(matrix: npt.NDArray[np.float32]) -> Vectors:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1e-12
    normalised: Vectors = (matrix / norms).astype(np.float32, copy=False)
    return normalised


def default_model_dir() -> Path:
    """Where Chroma keeps all-MiniLM-L6-v2:
    ``~/.cache/chroma/onnx_models/all-MiniLM-L6-v2/onnx``."""
    from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

    return Path(ONNXMiniLM_L6_V2.DOWNLOAD_PATH) / ONNXMiniLM_L6_V2.EXTRACTED_FOLDER_NAME


def ensure_default_model() -> Path:
    """The default model folder, downloaded first by Chroma's own code (its
    URL and SHA-256 check) when a file is missing.

    Raises:
        EmbeddingError: the download failed (no network, say).
    """
    folder = default_model_dir()
    if all((folder / name).is_file() for name in MINILM_FILES):
        return folder
    from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

    try:
        ONNXMiniLM_L6_V2()._download_model_if_not_exists()
    except Exception as exc:  # the download raises httpx, OS and tar errors alike
        raise EmbeddingError(
            f"cannot download {MINILM_NAME} to {folder} ({type(exc).__name__}); "
            "set LOOM_EMBEDDING_MODEL_DIR to a folder that holds model.onnx and tokenizer.json"
        ) from exc
    return folder


class OnnxMiniLM:
    """all-MiniLM-L6-v2 through onnxruntime; see the module docstring.

    Inference runs on one dedicated worker thread, batch by batch, so the
    event loop never waits on it and a query waits for at most one batch of
    a long ingest. The session is created once and uses ``threads``
    intra-op threads (default: every core, at most 4).

    Raises:
        EmbeddingError: the folder lacks ``model.onnx`` or ``tokenizer.json``.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        threads: int | None = None,
        batch_size: int = 32,
        max_tokens: int = 256,
    ) -> None:
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(model_dir)
        missing = [n for n in ("model.onnx", "tokenizer.json") if not (folder / n).is_file()]
        if missing:
            raise EmbeddingError(
                f"embedding model folder {folder} lacks {', '.join(missing)}; set "
                "LOOM_EMBEDDING_MODEL_DIR to the all-MiniLM-L6-v2 onnx folder"
            )
        self.model_dir = folder
        self.batch_size = batch_size
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # tokenizer.json ships with fixed padding to 128 and truncation at
        # 128; sentence-transformers (and Chroma) use 256 and no fixed length.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_tokens)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle pool threads sleep instead of spinning: a spinning pool holds
        # the cores for a while after each run, which on 2 cores slowed the
        # rest of a search (ranking, Chroma) by several milliseconds.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session: Any = ort.InferenceSession(
            str(folder / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loom-embed")

    @property
    def model_name(self) -> str:
        return MINILM_NAME

    @property
    def dim(self) -> int:
        return MINILM_DIM

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, MINILM_DIM), dtype=np.float32)
        loop = asyncio.get_running_loop()
        if len(texts) <= self.batch_size:
            # One batch (a search's query): one hop to the worker, not two.
            return await loop.run_in_executor(self._executor, self.embed_sync, texts)
        encoded = await loop.run_in_executor(self._executor, self._encode, list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        out = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = await loop.run_in_executor(
                self._executor, self._forward, [encoded[i] for i in rows]
            )
        return out

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """``embed`` for callers outside an event loop (benchmarks, tools)."""
        encoded = self._encode(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        out = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._forward([encoded[i] for i in rows])
        return out

    def close(self) -> None:
        """Stop the worker thread (pending calls finish first)."""
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        """``close`` without holding the event loop."""
        await asyncio.to_thread(self.close)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts)]

    def _forward(self, batch: list[list[int]]) -> Vectors:
        width = max(len(ids) for ids in batch)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        (hidden,) = self._session.run(
            ["last_hidden_state"],
            {
                "input_ids": input_ids,
                "attention_mask": mask,
                "token_type_ids": np.zeros_like(input_ids),
            },
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return _normalise(pooled.astype(np.float32))


_OPENAI_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible endpoint (``openai`` SDK, async),
    ``batch_size`` texts a request; rows are normalised here as well, since
    compatible servers do not all normalise. ``concurrency`` is how many
    requests its callers (``SharedEmbedder``) may have in flight at once.

    Raises (from ``embed``):
        Unavailable: the endpoint failed or could not be reached.
    """

    def __init__(
        self,
        client_base_url: str | None,
        api_key: str | None,
        model: str,
        *,
        batch_size: int = 256,
        concurrency: int = 4,
        timeout: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        import openai

        self._model = model
        self._dim = _OPENAI_DIMS.get(model, 0)
        self.batch_size = batch_size
        self.concurrency = concurrency
        self._client = openai.AsyncOpenAI(
            base_url=client_base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
            timeout=timeout,
            max_retries=max_retries,
        )

    @property
    def model_name(self) -> str:
        return f"openai:{self._model}"

    async def aclose(self) -> None:
        """Close the endpoint's connection pool."""
        await self._client.close()

    @property
    def dim(self) -> int:
        return self._dim

    async def embed(self, texts: Sequence[str]) -> Vectors:
        import httpx
        import openai

        rows: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            try:
                # base64, read raw: the SDK builds a Python float per number
                # of a "float" answer and a model per row, 70% and then 30%
                # of a 1,000-memory batch's time. Posted as the SDK's
                # documented raw request: its typed ``create`` also walks
                # every text through its parameter types, a seventh of what
                # a batch then cost Loom's event loop.
                response = await self._client.post(
                    "/embeddings",
                    cast_to=httpx.Response,
                    body={"model": self._model, "input": chunk, "encoding_format": "base64"},
                )
                data = json.loads(response.content)["data"]
                ordered = sorted(data, key=lambda item: int(item["index"]))
                if len(ordered) != len(chunk):
                    raise ValueError(f"{len(ordered)} embeddings for {len(chunk)} texts")
                rows.append(_rows([item["embedding"] for item in ordered]))
            except openai.APIError as exc:
                raise Unavailable(
                    f"embedding endpoint failed for model {self._model!r} ({type(exc).__name__})"
                ) from exc
            except (ValueError, KeyError, TypeError) as exc:
                raise Unavailable(
                    f"embedding endpoint for model {self._model!r} answered something that is "
                    f"not an embeddings list ({type(exc).__name__})"
                ) from exc
        if not rows:
            return np.zeros((0, self._dim), dtype=np.float32)
        matrix = _normalise(np.concatenate(rows))
        self._dim = matrix.shape[1]
        return matrix


def _rows(embeddings: list[Any]) -> npt.NDArray[np.float32]:
    """The vectors of an embeddings answer, one row each: base64 of
    little-endian float32 (decoded together, not a numpy array per row), or
    lists of numbers from a server that ignores ``encoding_format``.

    Raises:
        ValueError: rows of different lengths, or not vectors.
    """
    if all(isinstance(e, str) for e in embeddings):
        decoded = [binascii.a2b_base64(e) for e in embeddings]
        if len({len(d) for d in decoded}) != 1:
            raise ValueError("embeddings of different lengths")
        flat = np.frombuffer(b"".join(decoded), dtype="<f4").astype(np.float32)
        return flat.reshape(len(decoded), -1)
    return np.asarray(
        [
            np.frombuffer(binascii.a2b_base64(e), "<f4") if isinstance(e, str) else e
            for e in embeddings
        ],
        dtype=np.float32,
    )


def embedder_from_settings(
    spec: str,
    model_dir: str | None,
    *,
    openai_base_url: str | None = None,
    openai_api_key: str | None = None,
) -> Embedder:
    """The embedder that ``LOOM_EMBEDDING`` names.

    ``spec`` is ``"default"`` (all-MiniLM-L6-v2 from ``model_dir``, or from
    Chroma's cache folder, downloaded there if missing, when ``model_dir`` is
    None) or ``"openai:<model>"`` (that model at ``openai_base_url``).

    Raises:
        ValueError: ``spec`` is neither.
        EmbeddingError: the model folder is unusable.
    """
    if spec == "default":
        folder = Path(model_dir) if model_dir else ensure_default_model()
        return OnnxMiniLM(folder)
    prefix, _, model = spec.partition(":")
    if prefix == "openai" and model:
        return OpenAIEmbedder(openai_base_url, openai_api_key, model)
    raise ValueError(
        f"unknown embedding {spec!r}: use 'default' (all-MiniLM-L6-v2) or 'openai:<model>'"
    )
