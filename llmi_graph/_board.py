"""Per-run result board: lets an edit wait for exactly the image it depends on.

All of a draft's calls are sent to the tool nodes in one step, so independent calls run concurrently
and an edit starts as soon as its own source image exists (not when the whole step ends). Results are
published here as each call finishes; futures are thread-safe, so any event loop can wait on them.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

from llmi_graph.state import ImageResult

_MAX_BOARDS = 10_000


class ResultBoard:
    """Results of one run's calls, by image index."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[int, Future[ImageResult]] = {}

    def _future(self, index: int) -> Future[ImageResult]:
        with self._lock:
            return self._futures.setdefault(index, Future())

    def publish(self, result: ImageResult) -> None:
        future = self._future(result.index)
        if not future.done():
            future.set_result(result)

    async def wait(self, index: int, timeout: float) -> ImageResult:
        return await asyncio.wait_for(asyncio.wrap_future(self._future(index)), timeout)


_boards: dict[str, ResultBoard] = {}
_boards_lock = threading.Lock()


def open_board(run_key: str) -> ResultBoard:
    with _boards_lock:
        while len(_boards) >= _MAX_BOARDS:  # runs that crashed before assemble never close theirs
            _boards.pop(next(iter(_boards)))
        return _boards.setdefault(run_key, ResultBoard())


def get_board(run_key: str) -> ResultBoard | None:
    with _boards_lock:
        return _boards.get(run_key)


def close_board(run_key: str) -> None:
    with _boards_lock:
        _boards.pop(run_key, None)
