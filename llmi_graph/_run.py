"""What one run of the graph shares between its nodes outside the state: live objects, not data.

- The result board lets an edit wait for exactly the image it depends on. All of a draft's calls are sent to
  the tool nodes in one step, so independent calls run concurrently and an edit starts as soon as its own
  source image exists (not when the whole step ends). Futures are thread-safe: any event loop can wait.
- The run's toolbox (backends with per-run state, such as an E2B sandbox, are closed when the run ends).
- The run's tool cache (identical calls within a run execute once).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from llmi_graph.cache import ToolCache
from llmi_graph.state import ImageResult
from llmi_graph.toolbox import Toolbox

_MAX_RUNS = 10_000


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


@dataclass
class RunContext:
    toolbox: Toolbox
    cache: ToolCache
    owns_toolbox: bool
    board: ResultBoard = field(default_factory=ResultBoard)


_runs: dict[str, RunContext] = {}
_runs_lock = threading.Lock()


def open_run(run_key: str, context: RunContext) -> RunContext:
    with _runs_lock:
        while len(_runs) >= _MAX_RUNS:  # runs that crashed before assemble never close theirs
            _runs.pop(next(iter(_runs)))
        return _runs.setdefault(run_key, context)


def get_run(run_key: str) -> RunContext | None:
    with _runs_lock:
        return _runs.get(run_key)


async def close_run(run_key: str) -> None:
    with _runs_lock:
        context = _runs.pop(run_key, None)
    if context is not None and context.owns_toolbox:
        await context.toolbox.aclose()
