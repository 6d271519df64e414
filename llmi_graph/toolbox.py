"""Which backend serves each tool, built from the config; and how one tool call is executed.

`execute_call` is where the guarantees live: a timeout per attempt, retries with backoff for transient
errors only, a concurrency limit per backend, and every failure turned into a failed `ImageResult`
with its reason, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from llmi_graph.config import Config
from llmi_graph.state import ImageResult
from llmi_graph.store import ImageStore, InvalidImageError
from llmi_graph.tags import SOURCES, ToolCall
from tools.base import ImageBackend, ToolError, ToolOutput
from tools.code import LocalSandbox, SandboxLimits

# Which params key each tool's provenance records.
_PROVENANCE_KEY = {"search": "query", "diffusion": "prompt", "code": "code", "edit": "prompt"}


@dataclass
class Toolbox:
    """The backend for each tool (None: no backend configured) and how many calls each may run at once."""

    backends: dict[str, ImageBackend | None]
    concurrency: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Config) -> Toolbox:
        code = LocalSandbox(
            SandboxLimits(timeout_s=cfg.code_timeout_s, memory_mb=cfg.code_memory_mb),
            allow_unsandboxed=cfg.allow_unsandboxed_code,
            cache_dir=cfg.cache_path,
        )
        return cls(
            backends={"search": None, "diffusion": None, "code": code, "edit": None},
            concurrency={"code": cfg.code_concurrency},
        )

    def available(self) -> list[str]:
        """Tools that have a backend, in protocol order."""
        return [s for s in SOURCES if self.backends.get(s) is not None]

    def backend(self, source: str) -> ImageBackend | None:
        return self.backends.get(source)


def failed(call: ToolCall, reason: str, **extra: Any) -> ImageResult:
    return ImageResult(index=call.index, source=call.source, status="failed", error=reason, **extra)


def no_backend_reason(source: str) -> str:
    return f"no backend configured for the {source} tool"


_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _limiter(name: str, size: int) -> asyncio.Semaphore:
    """A semaphore per backend, shared by every run on this event loop."""
    per_loop = _limiters.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault((name, size), asyncio.Semaphore(size))


async def execute_call(
    call: ToolCall,
    backend: ImageBackend,
    inputs: Sequence[bytes],
    *,
    store: ImageStore,
    cfg: Config,
    concurrency: int | None = None,
) -> ImageResult:
    """Run one valid call on its backend and store the image; never raises (but for cancellation)."""
    assert call.source is not None
    name = getattr(backend, "name", type(backend).__name__)
    attempts = 0
    start = time.perf_counter()
    provenance: dict[str, Any] = {_PROVENANCE_KEY[call.source]: call.params.get(_PROVENANCE_KEY[call.source])}
    if call.source == "edit":
        provenance["img_index"] = call.params["img_index"]

    async def attempt() -> ToolOutput:
        nonlocal attempts
        attempts += 1
        try:
            return await asyncio.wait_for(backend(call.params, inputs), timeout=cfg.tool_timeout_s)
        except TimeoutError as exc:
            raise ToolError(f"timed out after {cfg.tool_timeout_s:g} s", transient=True) from exc

    try:
        async with _limiter(name, concurrency) if concurrency else contextlib.nullcontext():
            retrying = AsyncRetrying(
                stop=stop_after_attempt(max(1, cfg.tool_attempts)),
                wait=wait_random_exponential(multiplier=0.5, max=8.0),
                retry=retry_if_exception(lambda e: isinstance(e, ToolError) and e.transient),
                reraise=True,
            )
            output = await retrying(attempt)
        image = await asyncio.to_thread(store.put, output.image)
    except ToolError as exc:
        reason = exc.reason if attempts <= 1 else f"{exc.reason} (after {attempts} attempts)"
        return failed(
            call,
            reason,
            backend=exc.backend or name,
            provenance=provenance,
            logs=exc.logs,
            attempts=attempts,
            latency_s=time.perf_counter() - start,
        )
    except InvalidImageError as exc:
        return failed(
            call,
            f"the {name} backend returned an unusable image: {exc}",
            backend=name,
            provenance=provenance,
            attempts=attempts,
            latency_s=time.perf_counter() - start,
        )
    except Exception as exc:  # a backend bug must not sink the document
        return failed(
            call,
            f"{name} failed unexpectedly: {type(exc).__name__}: {exc}",
            backend=name,
            provenance=provenance,
            attempts=attempts,
            latency_s=time.perf_counter() - start,
        )
    return ImageResult(
        index=call.index,
        source=call.source,
        status="ok",
        image=image,
        backend=output.backend,
        provenance={**provenance, **output.provenance},
        logs=output.logs,
        attempts=attempts,
        latency_s=time.perf_counter() - start,
    )
