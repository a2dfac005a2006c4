"""The embedders: MiniLM through onnxruntime equals Chroma's own MiniLM."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

from service.memory.embeddings import (
    EmbeddingError,
    OnnxMiniLM,
    OpenAIEmbedder,
    Vectors,
    default_model_dir,
    embedder_from_settings,
)
from service.memory.sharing import SharedEmbedder
from tests.scripted_llm import EMBEDDING_DIM, ScriptedLLM, embedding_of
from tests.support.embedding import model_dir

TEXTS = [
    "hello",
    "Caroline: I went to a LGBTQ support group yesterday and it was so powerful.",
    "The user is allergic to peanuts and prefers vegetarian restaurants.",
    "Unicode too: café, naïve, 東京, emoji 🎉.",
    " ".join(["a long text that goes past the 256 token truncation"] * 60),
    "",
]


@pytest.fixture
def chroma_minilm(monkeypatch: pytest.MonkeyPatch) -> ONNXMiniLM_L6_V2:
    # Chroma reads the model from DOWNLOAD_PATH/onnx; point it at ours.
    monkeypatch.setattr(ONNXMiniLM_L6_V2, "DOWNLOAD_PATH", model_dir().parent)
    return ONNXMiniLM_L6_V2(preferred_providers=["CPUExecutionProvider"])


async def test_same_vectors_as_chromas_minilm(
    embedder: OnnxMiniLM, chroma_minilm: ONNXMiniLM_L6_V2
) -> None:
    ours = await embedder.embed(TEXTS)
    theirs = np.asarray(chroma_minilm(TEXTS), dtype=np.float32)
    assert ours.shape == (len(TEXTS), 384)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = (ours * theirs).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine


async def test_batching_and_order_do_not_change_vectors(embedder: OnnxMiniLM) -> None:
    alone = np.vstack([await embedder.embed([t]) for t in TEXTS])
    together = await embedder.embed(TEXTS)
    np.testing.assert_allclose(alone, together, atol=1e-5)
    assert (await embedder.embed([])).shape == (0, 384)
    # Concurrent callers share one session.
    results = await asyncio.gather(*(embedder.embed([t]) for t in TEXTS))
    np.testing.assert_allclose(np.vstack(results), together, atol=1e-5)
    assert embedder.embed_sync(TEXTS[:2]) == pytest.approx(together[:2], abs=1e-5)


def test_model_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError, match="LOOM_EMBEDDING_MODEL_DIR"):
        OnnxMiniLM(tmp_path)


@pytest.mark.parametrize("floats", [False, True], ids=["base64", "floats-only server"])
async def test_openai_embedder_reads_base64_and_plain_answers(
    llm: ScriptedLLM, floats: bool
) -> None:
    llm.set_embedding_floats(floats)
    embedder = OpenAIEmbedder(llm.base_url, None, "scripted-embedding", batch_size=2)
    texts = ["the cat sat", "the cat sat down", "quarterly revenue report"]
    try:
        vectors = await embedder.embed(texts)
    finally:
        await embedder.aclose()
    expected = np.asarray([embedding_of(t) for t in texts], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, EMBEDDING_DIM)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_embedder_from_settings() -> None:
    default = embedder_from_settings("default", str(model_dir()))
    assert isinstance(default, OnnxMiniLM)
    assert (default.model_name, default.dim) == ("all-MiniLM-L6-v2", 384)
    default.close()
    remote = embedder_from_settings(
        "openai:text-embedding-3-small", None, openai_base_url="http://127.0.0.1:9/v1"
    )
    assert isinstance(remote, OpenAIEmbedder)
    assert (remote.model_name, remote.dim) == ("openai:text-embedding-3-small", 1536)
    with pytest.raises(ValueError, match="unknown embedding"):
        embedder_from_settings("bert", None)
    with pytest.raises(ValueError, match="unknown embedding"):
        embedder_from_settings("openai:", None)
    # Chroma's cache layout when no folder is configured.
    assert default_model_dir().parts[-4:] == ("chroma", "onnx_models", "all-MiniLM-L6-v2", "onnx")


class _Counted:
    """The real model, counting the texts it is asked to embed per call."""

    def __init__(self, model: OnnxMiniLM) -> None:
        self.model = model
        self.calls: list[int] = []
        self.called = asyncio.Event()
        self.model_name = model.model_name
        self.dim = model.dim

    async def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(len(texts))
        self.called.set()
        return await self.model.embed(texts)


async def test_shared_embedder_embeds_a_text_once_and_batches_callers(embedder: OnnxMiniLM) -> None:
    counted = _Counted(embedder)
    shared = SharedEmbedder(counted, recent=2)
    texts = TEXTS[:4]
    first = asyncio.ensure_future(shared.embed([texts[0]]))
    await counted.called.wait()  # the model is busy with the first text
    rest = [shared.embed([t]) for t in [*texts[1:], *texts]]
    got = [await first, *await asyncio.gather(*rest)]
    alone = await embedder.embed(texts)
    for i, vectors in enumerate(got):
        assert vectors.shape == (1, 384)
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(vectors[0], alone[[0, 1, 2, 3, 0, 1, 2, 3][i]], atol=1e-5)
    # The first caller ran at once; the three other texts asked for while
    # it ran went as one batch after it; the repeats shared those runs.
    assert counted.calls == [1, 3]
    await shared.embed([texts[3]])  # one of the two it keeps
    assert counted.calls == [1, 3]
    await shared.embed([texts[0]])  # pushed out by later ones: embedded again
    assert counted.calls == [1, 3, 1]


async def test_shared_embedder_passes_a_failure_to_every_caller_of_the_batch() -> None:
    class Failing:
        model_name = "failing"
        dim = 3

        async def embed(self, texts: Sequence[str]) -> Vectors:
            await asyncio.sleep(0)
            raise EmbeddingError("the model folder is gone")

    shared = SharedEmbedder(Failing())
    results = await asyncio.gather(
        shared.embed(["a"]), shared.embed(["b"]), shared.embed(["a"]), return_exceptions=True
    )
    assert all(isinstance(r, EmbeddingError) for r in results), results
    with pytest.raises(EmbeddingError):  # nothing kept from a failure
        await shared.embed(["a"])


async def test_shared_embedder_runs_an_endpoints_batches_side_by_side_in_order() -> None:
    class Slow:
        """An endpoint: each batch's answer takes a while; row i is [i]."""

        model_name = "slow"
        dim = 1

        def __init__(self) -> None:
            self.in_flight = 0
            self.most = 0

        async def embed(self, texts: Sequence[str]) -> Vectors:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            await asyncio.sleep(0.01)
            self.in_flight -= 1
            return np.array([[float(t)] for t in texts], dtype=np.float32)

    slow = Slow()
    shared = SharedEmbedder(slow, max_batch=2, concurrency=3)
    texts = [str(i) for i in range(11)]  # six batches: two rounds of three
    got = await shared.embed(texts)
    assert got[:, 0].tolist() == list(range(11))
    assert slow.most == 3
