"""Content-addressed tool-call cache: an identical call is executed once.

The key is the source, the backend (and its settings), the params, and the SHA-256 of any input image, so
"the same edit of the same picture" hits and anything else misses. Identical calls in flight at the same time
share one execution (a GRPO group of eight drafts pays for each distinct search once). Successful results are
kept in memory and, when the cache has a directory, on disk (the image bytes already live in the image store).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from llmi_graph.state import ImageResult

_MAX_MEMORY = 4096
T = TypeVar("T")


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
        self._inflight: dict[str, _InFlight] = {}
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
        """The stored result or one shared with an identical call in flight (hit=True), else a new one.

        The execution runs as its own task that every waiter shares: a waiter that is cancelled or gives up
        leaves it running for the others; it is cancelled only when no waiter is left. Raises
        `SharedCallCancelled` if it was cancelled under a waiter all the same (its event loop shut down).
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._inflight.get(key)
            owner = entry is None
            if entry is None:
                entry = self._inflight[key] = _InFlight(loop=loop)
            entry.waiters += 1
        if owner:
            entry.task = loop.create_task(self._fill(key, execute, entry))
        waiter = watch(entry.future)
        try:
            result, hit = await waiter
            return result, hit or not owner
        finally:
            waiter.cancel()
            with self._lock:
                entry.waiters -= 1
                abandoned = entry.waiters == 0 and not entry.future.done()
            if abandoned and entry.task is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed: the task is gone already
                    entry.loop.call_soon_threadsafe(entry.task.cancel)

    async def _fill(self, key: str, execute: Callable[[], Awaitable[ImageResult]], entry: _InFlight) -> None:
        try:
            stored = await asyncio.to_thread(self.lookup, key)
            if stored is not None:
                outcome = (stored, True)
            else:
                result = await execute()
                await asyncio.to_thread(self.store, key, result)  # stored before the in-flight entry goes
                outcome = (result, False)
        except asyncio.CancelledError:
            self._forget(key, entry)
            entry.future.set_exception(SharedCallCancelled("the shared tool call was cancelled"))
            raise
        except BaseException as exc:
            self._forget(key, entry)
            entry.future.set_exception(exc)
            return
        self._forget(key, entry)
        entry.future.set_result(outcome)

    def _forget(self, key: str, entry: _InFlight) -> None:
        with self._lock:
            if self._inflight.get(key) is entry:
                del self._inflight[key]


class SharedCallCancelled(Exception):
    """The execution a waiter shared was cancelled (only when its event loop shut down under it)."""


@dataclass(eq=False)
class _InFlight:
    loop: asyncio.AbstractEventLoop
    future: Future[tuple[ImageResult, bool]] = field(default_factory=Future)
    task: asyncio.Task[None] | None = None
    waiters: int = 0


def watch(future: Future[T]) -> asyncio.Future[T]:
    """An asyncio future on the running loop that follows a thread-safe `future`.

    Unlike `asyncio.wrap_future`, cancelling the returned future (a waiter's timeout or cancellation) does not
    cancel `future`, which other waiters share.
    """
    loop = asyncio.get_running_loop()
    mine: asyncio.Future[T] = loop.create_future()

    def settle(source: Future[T]) -> None:
        if mine.done():
            return
        if source.cancelled():
            mine.cancel()
        elif source.exception() is not None:
            mine.set_exception(source.exception())  # type: ignore[arg-type]
        else:
            mine.set_result(source.result())

    def copy(source: Future[T]) -> None:
        with contextlib.suppress(RuntimeError):  # the waiter's loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, source)

    future.add_done_callback(copy)
    return mine


_shared: dict[Path, ToolCache] = {}
_shared_lock = threading.Lock()


def shared_cache(directory: Path) -> ToolCache:
    """The process-wide cache for a directory (used when `Config.tool_cache` is on)."""
    with _shared_lock:
        return _shared.setdefault(directory, ToolCache(directory))
