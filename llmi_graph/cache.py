"""Content-addressed tool-call cache: an identical call is executed once.

The key is the source, the backend (and its settings), the params, and the SHA-256 of any input image, so
"the same edit of the same picture" hits and anything else misses. Identical calls in flight at the same time
share one execution (a GRPO group of eight drafts pays for each distinct search once). Successful results are
kept in memory and, when the cache has a directory, on disk (the image bytes already live in the image store).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from llmi_graph.state import ImageResult

_MAX_MEMORY = 4096


def cache_key(source: str, backend_id: str, params: dict[str, Any], inputs: Sequence[bytes]) -> str:
    """A stable key for one tool call. An edit's `img_index` is positional: the input image's hash stands in."""
    payload = {
        "source": source,
        "backend": backend_id,
        "params": {k: v for k, v in params.items() if not (k == "img_index" and inputs)},
        "inputs": [hashlib.sha256(data).hexdigest() for data in inputs],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ToolCache:
    """Results by key, in memory (and on disk with a directory); identical in-flight calls run once."""

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = Path(directory).expanduser() if directory else None
        self._memory: OrderedDict[str, ImageResult] = OrderedDict()
        self._inflight: dict[str, Future[ImageResult]] = {}
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.json"

    def lookup(self, key: str) -> ImageResult | None:
        """A stored successful result whose image still exists."""
        with self._lock:
            result = self._memory.get(key)
            if result is not None:
                self._memory.move_to_end(key)
        if result is None and self.directory is not None:
            path = self._path(key)
            if path.is_file():
                try:
                    result = ImageResult.model_validate_json(path.read_text())
                except ValueError:
                    result = None
        if result is None or result.image is None or not Path(result.image.path).is_file():
            return None
        self._remember(key, result)
        return result

    def _remember(self, key: str, result: ImageResult) -> None:
        with self._lock:
            self._memory[key] = result
            self._memory.move_to_end(key)
            while len(self._memory) > _MAX_MEMORY:
                self._memory.popitem(last=False)

    def store(self, key: str, result: ImageResult) -> None:
        if result.status != "ok":
            return
        self._remember(key, result)
        if self.directory is not None:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "w") as fh:
                fh.write(result.model_dump_json())
            os.replace(tmp, path)

    async def run(self, key: str, execute: Callable[[], Awaitable[ImageResult]]) -> tuple[ImageResult, bool]:
        """The stored result or one shared with an identical call in flight (hit=True), else a new one."""
        with self._lock:
            shared = self._inflight.get(key)
            if shared is None:
                mine: Future[ImageResult] = Future()
                self._inflight[key] = mine
        if shared is not None:
            return await asyncio.wrap_future(shared), True
        try:
            stored = await asyncio.to_thread(self.lookup, key)
            if stored is not None:
                mine.set_result(stored)
                return stored, True
            result = await execute()
            await asyncio.to_thread(self.store, key, result)  # stored before the in-flight entry goes
            mine.set_result(result)
            return result, False
        except BaseException as exc:
            if not mine.done():
                mine.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)


_shared: dict[Path, ToolCache] = {}
_shared_lock = threading.Lock()


def shared_cache(directory: Path) -> ToolCache:
    """The process-wide cache for a directory (used when `Config.tool_cache` is on)."""
    with _shared_lock:
        return _shared.setdefault(directory, ToolCache(directory))
