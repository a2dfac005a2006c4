"""Where tests find the offline embedding model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["model_dir"]

REPO = Path(__file__).resolve().parents[2]


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 onnx folder: ``LOOM_EMBEDDING_MODEL_DIR``, else
    ``../shared/models/all-MiniLM-L6-v2/onnx`` beside the repository. Fails
    the test (never skips it) when the model is not there."""
    folder = Path(
        os.environ.get("LOOM_EMBEDDING_MODEL_DIR")
        or REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2" / "onnx"
    )
    if not (folder / "model.onnx").is_file():
        pytest.fail(
            f"embedding model not found at {folder}: set LOOM_EMBEDDING_MODEL_DIR to the "
            "all-MiniLM-L6-v2 onnx folder",
            pytrace=False,
        )
    return folder
