"""Batch samples on Ray: actors that each run the llmi graph with their own concurrency (`llmi batch --ray-address`).

The `llmi batch` process stays the driver and keeps the output contract: it writes every report, results.jsonl,
the summary and the index. Ray is the engine: it places the workers on the cluster's nodes, queues the calls
sent to each, and restarts a worker that dies (its calls are retried and resume from their checkpoints).

- Address: `local` starts a Ray instance on this machine for the batch (loopback only, no dashboard) and stops
  it at the end; `auto` joins the cluster this machine is part of (`ray start --head` ran here), `HOST:PORT` the
  cluster whose head is there. A process already connected to Ray (`ray.init` in embedding code) keeps its
  connection.
- Workers: `--ray-workers N` actors (default: one per CPU of the cluster, at most `--concurrency`), spread over
  the nodes. `--concurrency` stays the number of samples in flight over the whole batch: each worker runs up to
  ceil(concurrency / N) at once on its own event loop (an async actor), and the driver sends each sample to the
  worker with the fewest in flight; Ray queues the calls.
- Checkpoints: every worker opens the batch's checkpointer. The default SQLite file (DIR/checkpoints.sqlite,
  WAL with a busy timeout) can be shared by the workers of one machine only: a cluster of several machines needs
  `--checkpoint-url postgresql://...`, and a batch without one is refused there.
- Results: a worker sends back the final state with the bytes of its images (inputs and made figures); the
  driver puts them into its own image store and points the state's references there. `PolicyError` and
  `InputError` (an unusable request) come back as data and are raised again in the driver as those types.
- Every node needs llmi installed (the same version) and must reach the policy and image servers in the
  config; API keys come from the environment of the worker processes, as in `llmi run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from llmi_graph._checkpoint import open_checkpointer
from llmi_graph._extras import require
from llmi_graph.batch import BatchError, BatchSample, BatchSettings, run_sample
from llmi_graph.config import Config
from llmi_graph.graph import InputError, PolicyError, image_store
from llmi_graph.state import Figure, ImageRef, State
from llmi_graph.store import ImageStore
from llmi_graph.toolbox import close_toolboxes

_RESTARTS = 2  # a worker process that dies is started again this often; its calls are retried as often
_START_TIMEOUT_S = 300.0  # workers waiting for room on the cluster, or stuck starting
_CLOSE_TIMEOUT_S = 30.0


def connect(address: str, *, num_cpus: int | None = None) -> bool:
    """Connect this process to Ray: `local` starts an instance here (`num_cpus`, default all), anything else is
    passed to `ray.init(address=...)`. Whether this call connected (its caller then calls `ray.shutdown()`);
    False when the process already was. Raises `ConnectionError` when nothing answers at a HOST:PORT address
    (Ray itself would retry for minutes)."""
    require("batch", "ray", what="running samples on Ray (--ray-address)")
    host, colon, port = address.rpartition(":")
    if colon and port.isdigit() and "://" not in address:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                pass
        except OSError as exc:
            raise ConnectionError(
                f"nothing answers at {address} ({exc}): is a Ray head running there (`ray start --head`)?"
            ) from None
    if address == "local":
        # Read by Ray when it is imported: an instance of one machine then binds its servers to loopback (the
        # variable's name is historical), and sends no usage statistics.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return True


async def _setup_sqlite(saver: Any, attempts: int = 8) -> None:
    """`saver.setup()`, retried with backoff while another worker holds the SQLite file's lock."""
    import sqlite3

    for attempt in range(attempts):
        try:
            await saver.setup()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1 * 2**attempt + random.random() * 0.1)


class GraphWorker:
    """A Ray actor running samples through its own llmi graph and checkpointer, many at once on one event loop."""

    def __init__(
        self,
        cfg: Config,
        checkpoint_url: str | None,
        sqlite_path: str,
        scorers: dict[str, Any] | None = None,
        chooser: Any = None,
    ):
        self.cfg = cfg
        self.scorers = scorers  # the scaled graph's judges, pickled to the worker (endpoints are plain data)
        self.chooser = chooser
        self.checkpoint_url = checkpoint_url
        self.sqlite_path = Path(sqlite_path)
        self._stack = contextlib.AsyncExitStack()
        self._opening = asyncio.Lock()
        self._graph: Any = None
        self._saver: Any = None

    async def _open(self) -> Any:
        async with self._opening:
            if self._graph is None:
                self._saver = await self._stack.enter_async_context(
                    open_checkpointer(self.checkpoint_url, self.sqlite_path)
                )
                if not (self.checkpoint_url or "").startswith(("postgresql://", "postgres://")):
                    # SQLite, one file for the workers of this machine: a writer waits its turn (30 s) rather
                    # than failing at once, then WAL and the tables before they all write. Workers start together,
                    # and switching to WAL takes the file's lock: a worker that still finds it locked retries.
                    await self._saver.conn.execute("PRAGMA busy_timeout = 30000")
                    await _setup_sqlite(self._saver)
                from llmi_graph.scaling import graph_for

                self._graph = graph_for(self.cfg, checkpointer=self._saver, scorers=self.scorers, chooser=self.chooser)
        return self._graph

    async def ready(self) -> None:
        """Open the checkpointer and build the graph (so a worker that cannot start says so at once)."""
        await self._open()

    async def run(self, sample: BatchSample) -> dict[str, Any]:
        """Run (or resume) one sample: `{"state": JSON, "images": {sha256: bytes}}`, or `{"error": "policy" |
        "input", "message": ...}` for the errors the driver handles."""
        graph = await self._open()
        try:
            state = await run_sample(graph, sample)
        except PolicyError as exc:
            return {"error": "policy", "message": str(exc)}
        except (InputError, ValueError) as exc:  # the request itself, validation included
            return {"error": "input", "message": str(exc)}
        images = await asyncio.to_thread(_image_bytes, state, image_store(self.cfg))
        return {"state": state.model_dump_json(), "images": images}

    async def forget(self, thread_id: str) -> None:
        """Drop a finished sample's checkpoints."""
        await self._open()
        with contextlib.suppress(Exception):
            await self._saver.adelete_thread(thread_id)

    async def close(self) -> None:
        """Close the checkpointer and the tools' clients."""
        await close_toolboxes()
        await self._stack.aclose()


class RayExecutor:
    """Samples run on Ray workers; each goes to the worker with the fewest samples in flight (Ray queues)."""

    def __init__(self, workers: list[Any], store: ImageStore):
        self.workers = workers
        self.store = store
        self.in_flight = [0] * len(workers)

    def _pick(self) -> int:
        return min(range(len(self.workers)), key=self.in_flight.__getitem__)

    async def run(self, sample: BatchSample) -> State:
        i = self._pick()
        self.in_flight[i] += 1
        try:
            reply = await self.workers[i].run.remote(sample)
        finally:
            self.in_flight[i] -= 1
        if reply.get("error") == "policy":
            raise PolicyError(reply["message"])
        if reply.get("error") == "input":
            raise InputError(reply["message"])
        return await asyncio.to_thread(adopt, reply["state"], reply["images"], self.store)

    async def forget(self, sample: BatchSample) -> None:
        with contextlib.suppress(Exception):  # as in the local executor: a leftover checkpoint is harmless
            await self.workers[self._pick()].forget.remote(sample.thread_id)


def _image_bytes(state: State, store: ImageStore) -> dict[str, bytes]:
    """The bytes of every image a state refers to, by SHA-256 (read from the worker's store)."""
    return {ref.sha256: store.get(ref) for ref in _refs(state)}


def _refs(state: State) -> list[ImageRef]:
    made = [r.image for r in state.results if r.image is not None]
    shown = [s.image for s in state.document if isinstance(s, Figure) and s.image is not None]
    return [*state.input_images, *made, *shown]


def adopt(state_json: str, images: dict[str, bytes], store: ImageStore) -> State:
    """A worker's final state, its images put into `store` and its references pointing there."""
    for sha256, data in images.items():
        if store.put(data).sha256 != sha256:
            raise RuntimeError(f"image {sha256[:12]} changed on its way from a Ray worker")
    state = State.model_validate_json(state_json)

    def here(ref: ImageRef | None) -> ImageRef | None:
        if ref is None:
            return None
        if ref.sha256 not in images:
            raise RuntimeError(f"a Ray worker's state refers to image {ref.sha256[:12]} but did not send it")
        return ref.model_copy(update={"path": str(store.path_for(ref.sha256, ref.mime))})

    return state.model_copy(
        update={
            "input_images": [here(r) for r in state.input_images],
            "results": [r.model_copy(update={"image": here(r.image)}) for r in state.results],
            "document": [
                s.model_copy(update={"image": here(s.image)}) if isinstance(s, Figure) else s for s in state.document
            ],
        }
    )


@contextlib.asynccontextmanager
async def ray_executor(
    settings: BatchSettings,
    out: Path,
    cfg: Config,
    *,
    scorers: Mapping[str, Any] | None = None,
    chooser: Any = None,
) -> AsyncIterator[RayExecutor]:
    """Ray workers for a batch (see the module's docstring), stopped at the end; a `SampleExecutor`."""
    if settings.ray_workers is not None and settings.ray_workers < 1:
        raise BatchError("--ray-workers must be at least 1")
    assert settings.ray_address is not None
    try:
        connected_here = connect(settings.ray_address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BatchError(f"cannot connect to Ray at {settings.ray_address!r}: {exc}") from exc
    import ray  # after `connect`, which sets what Ray reads when imported
    from ray.exceptions import RayError

    workers: list[Any] = []
    finished = False
    try:
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        url = settings.checkpoint_url or ""
        if nodes > 1 and not url.startswith(("postgresql://", "postgres://")):
            raise BatchError(
                f"the Ray cluster has {nodes} nodes, and a SQLite checkpoint file lives on one machine: "
                "use --checkpoint-url postgresql://... (a server every node reaches)"
            )
        cpus = ray.cluster_resources().get("CPU", 1.0)
        count = settings.ray_workers or max(1, min(int(cpus), settings.concurrency))
        per_worker = math.ceil(settings.concurrency / count)
        actor = ray.remote(GraphWorker).options(
            # One slot more than the samples it is sent, so a `forget` never waits behind them.
            max_concurrency=per_worker + 1,
            num_cpus=min(1.0, cpus / count),
            max_restarts=_RESTARTS,
            max_task_retries=_RESTARTS,
            scheduling_strategy="SPREAD",
        )
        sqlite_path = str(out / "checkpoints.sqlite")
        judges = dict(scorers) if scorers else None
        workers = [actor.remote(cfg, settings.checkpoint_url, sqlite_path, judges, chooser) for _ in range(count)]
        try:
            await asyncio.wait_for(asyncio.gather(*(w.ready.remote() for w in workers)), _START_TIMEOUT_S)
        except RayError as exc:
            raise BatchError(f"the Ray workers could not start: {exc}") from exc
        except TimeoutError:
            raise BatchError(
                f"{count} Ray worker(s) did not start within {_START_TIMEOUT_S:g} s: does the cluster have room "
                f"for them ({cpus:g} CPUs)? Try fewer --ray-workers"
            ) from None
        yield RayExecutor(workers, image_store(cfg))
        finished = True
    finally:
        if finished:  # nothing in flight: let the workers close their connections (else they are just killed)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(w.close.remote() for w in workers), return_exceptions=True), _CLOSE_TIMEOUT_S
                )
        for worker in workers:
            with contextlib.suppress(Exception):
                ray.kill(worker)
        if connected_here:
            ray.shutdown()
