"""What one run of the graph shares between its nodes outside the state: live objects, not data.

- The result board lets an edit wait for exactly the image it depends on. All of a draft's calls are sent to
  the tool nodes in one step, so independent calls run concurrently and an edit starts as soon as its own
  source image exists (not when the whole step ends). With a checkpointer, each result is also written to the
  run's folder, so a run resumed in a new process finds the results that finished before the crash (LangGraph
  does not run those calls again, and their edits still need them).
- Per-run backends (an E2B sandbox) are made for the run and closed when it ends; shared backends live in the
  process-wide toolbox (`llmi_graph.toolbox.toolbox_for`).
- The run's tool cache (identical calls within a run execute once).

Run contexts are reference-counted by the tool nodes using them; one that no node has touched for an hour
(its run crashed or was abandoned) is closed by the next run that opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from llmi_graph.cache import ToolCache, watch
from llmi_graph.state import ImageResult
from llmi_graph.toolbox import Toolbox
from tools.base import ImageBackend

T = TypeVar("T")

IDLE_CLOSE_S = 3600.0
"""A run context no tool node has used for this long is closed (its run crashed or was abandoned)."""
STALE_RUN_DIR_S = 7 * 24 * 3600.0
"""Result folders of runs that never finished are removed after this long (a resume after that re-runs)."""


class ResultBoard:
    """Results of one run's calls, by image index: in memory for waiters, and in `directory` for resumes."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._results: dict[int, Future[ImageResult]] = {}
        self._started: dict[int, Future[float]] = {}

    def _future(self, table: dict[int, Future[Any]], index: int) -> Future[Any]:
        with self._lock:
            return table.setdefault(index, Future())

    def _path(self, index: int) -> Path:
        assert self.directory is not None
        return self.directory / f"{index}.json"

    async def publish(self, result: ImageResult) -> None:
        """Record a call's final result (the first one wins); written to disk before waiters wake.

        A call that is cancelled publishes nothing: its waiters belong to the same run and are cancelled with
        it, and a resumed run executes the call again."""
        future = self._future(self._results, result.index)
        if future.done():
            return
        if self.directory is not None:
            await asyncio.to_thread(_write_atomic, self._path(result.index), result.model_dump_json())
        with contextlib.suppress(Exception):  # InvalidStateError: another thread won
            future.set_result(result)

    def mark_started(self, index: int) -> None:
        """The call for `index` began executing (it is no longer queued behind a concurrency limit)."""
        future = self._future(self._started, index)
        with contextlib.suppress(Exception):
            future.set_result(time.monotonic())

    def stored(self, index: int) -> ImageResult | None:
        """A result written by an earlier process for this run (does IO)."""
        if self.directory is None:
            return None
        try:
            return ImageResult.model_validate_json(self._path(index).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    async def wait(self, index: int, budget_s: float) -> ImageResult:
        """The result for `index`. Time the call spends queued does not count; once it has started, it has
        `budget_s` to finish (its own timeouts and retries end it well before that), else `TimeoutError`.
        A waiter that gives up or is cancelled never cancels the result for other waiters."""
        done = self._future(self._results, index)
        if not done.done():
            earlier = await asyncio.to_thread(self.stored, index)
            if earlier is not None:
                with contextlib.suppress(Exception):
                    done.set_result(earlier)
        result = watch(done)
        started = watch(self._future(self._started, index))
        try:
            await asyncio.wait({result, started}, return_when=asyncio.FIRST_COMPLETED)
            if not result.done():
                remaining = budget_s - (time.monotonic() - started.result())
                await asyncio.wait_for(asyncio.shield(result), max(0.0, remaining))
            return result.result()
        finally:
            result.cancel()
            started.cancel()


@dataclass
class RunContext:
    """One run's board, cache and per-run backends, on top of the process-wide toolbox."""

    toolbox: Toolbox
    cache: ToolCache
    board: ResultBoard
    directory: Path | None = None
    scoped: dict[str, ImageBackend] = field(default_factory=dict)
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def backend(self, source: str) -> ImageBackend | None:
        """The backend for `source`: a per-run instance when the shared one holds per-run resources."""
        shared = self.toolbox.backend(source)
        for_run = getattr(shared, "for_run", None)
        if for_run is None:
            return shared
        with _runs_lock:
            if source not in self.scoped:
                self.scoped[source] = for_run()
            return self.scoped[source]

    async def aclose(self, *, keep_results: bool = False) -> None:
        """Release per-run resources; remove the result folder unless asked to keep it."""
        with _runs_lock:
            scoped, self.scoped = list(self.scoped.values()), {}
        for backend in scoped:
            closer = getattr(backend, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        if self.directory is not None and not keep_results:
            await asyncio.to_thread(shutil.rmtree, self.directory, True)


_runs: dict[str, RunContext] = {}
_runs_lock = threading.RLock()
_last_sweep = 0.0
_closing: set[asyncio.Task[None]] = set()


def runs_root(cache_path: Path) -> Path:
    """Where runs keep their results until they finish."""
    return cache_path / "runs"


def open_run(run_key: str, make: Any) -> RunContext:
    """The context of run `run_key`, made with `make()` if this process has none (a new run, or a run
    resumed here after a crash), with one more active user. Pair with `release_run`."""
    with _runs_lock:
        context = _runs.get(run_key)
        if context is None:
            context = _runs[run_key] = make()
        context.active += 1
        context.last_used = time.monotonic()
    _sweep(context.directory.parent if context.directory else None)
    return context


def release_run(context: RunContext) -> None:
    with _runs_lock:
        context.active -= 1
        context.last_used = time.monotonic()


def open_runs() -> int:
    """How many run contexts this process holds (for tests and diagnostics)."""
    with _runs_lock:
        return len(_runs)


async def close_run(run_key: str) -> None:
    """The run finished: close its per-run backends and remove its stored results."""
    with _runs_lock:
        context = _runs.pop(run_key, None)
    if context is not None:
        await context.aclose()


def _sweep(root: Path | None) -> None:
    """Close contexts idle for an hour; now and then, remove result folders of runs that never finished."""
    global _last_sweep
    now = time.monotonic()
    with _runs_lock:
        idle = [k for k, c in _runs.items() if c.active <= 0 and now - c.last_used > IDLE_CLOSE_S]
        stale = [_runs.pop(k) for k in idle]
        sweep_disk = now - _last_sweep > 600.0
        if sweep_disk:
            _last_sweep = now
    if stale:
        loop = asyncio.get_running_loop()
        for context in stale:  # keep their results: a resume may still come
            task = loop.create_task(context.aclose(keep_results=True))
            _closing.add(task)
            task.add_done_callback(_closing.discard)
    if sweep_disk and root is not None:
        threading.Thread(target=_remove_stale_dirs, args=(root,), daemon=True).start()


def _remove_stale_dirs(root: Path) -> None:
    cutoff = time.time() - STALE_RUN_DIR_S
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)  # no fsync: this survives the process dying, which is what a resume recovers from
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_metadata(directory: Path, data: dict[str, Any]) -> None:
    """Note what a run folder belongs to (for people cleaning up caches)."""
    with contextlib.suppress(OSError):
        _write_atomic(directory / "run.json", json.dumps(data))
