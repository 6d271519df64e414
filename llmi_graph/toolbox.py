"""Which backend serves each tool, built from the config; and how one tool call is executed.

A toolbox is built once per process for an operator configuration (`toolbox_for`): an in-process diffusers
pipeline loads once, and an image-server pool keeps its least-busy and cool-down state across runs.
`close_toolboxes()` releases them at shutdown. Per-run resources (an E2B sandbox) are not held here: a
backend that needs them offers `for_run()`, and the run context makes and closes one per run.

`execute_call` is where the guarantees live: a timeout per attempt, retries with backoff for transient
errors only, a concurrency limit per backend, and every failure turned into a failed `ImageResult`
with its reason, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from llmi_graph._extras import MissingExtra, require
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
    """The backend for each tool (None: none configured, with the reason) and each one's concurrency limit."""

    backends: dict[str, ImageBackend | None]
    concurrency: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Config) -> Toolbox:
        """Backends chosen by the config (and the env vars it names); see README "Tools"."""
        backends: dict[str, ImageBackend | None] = {}
        reasons: dict[str, str] = {}
        for source, choose in (("search", _search), ("diffusion", _diffusion), ("code", _code), ("edit", _edit)):
            try:
                backends[source] = choose(cfg)
            except _Unconfigured as exc:
                backends[source], reasons[source] = None, str(exc)
        concurrency = {
            "search": cfg.search_concurrency,
            "diffusion": cfg.diffusion_concurrency,
            "code": cfg.code_concurrency,
            "edit": cfg.edit_concurrency,
        }
        return cls(backends=backends, concurrency=concurrency, reasons=reasons)

    def available(self) -> list[str]:
        """Tools that have a backend, in protocol order."""
        return [s for s in SOURCES if self.backends.get(s) is not None]

    def backend(self, source: str) -> ImageBackend | None:
        return self.backends.get(source)

    def missing_reason(self, source: str) -> str:
        return self.reasons.get(source) or f"no backend configured for the {source} tool"

    async def aclose(self) -> None:
        """Release what the backends hold (HTTP clients of this event loop, sandboxes)."""
        for backend in self.backends.values():
            closer = getattr(backend, "aclose", None) or getattr(getattr(backend, "pool", None), "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()


_toolboxes: dict[str, Toolbox] = {}
_toolboxes_lock = threading.Lock()


def toolbox_for(cfg: Config) -> Toolbox:
    """The process-wide toolbox for an operator configuration, built on first use (this may load models).

    Keyed by every config field and by a hash of the key variables it names, so a changed setting or a
    rotated key gets a new toolbox."""
    key = _toolbox_key(cfg)
    with _toolboxes_lock:
        toolbox = _toolboxes.get(key)
    if toolbox is not None:
        return toolbox
    built = Toolbox.from_config(cfg)
    with _toolboxes_lock:
        return _toolboxes.setdefault(key, built)


async def close_toolboxes() -> None:
    """Close every process-wide toolbox (at shutdown; a later run builds new ones)."""
    with _toolboxes_lock:
        toolboxes = list(_toolboxes.values())
        _toolboxes.clear()
    for toolbox in toolboxes:
        await toolbox.aclose()


def _toolbox_key(cfg: Config) -> str:
    fields = dataclasses.asdict(cfg)
    secrets = {name: v for name, v in fields.items() if name.endswith("_env") and isinstance(v, str)}
    names = [*secrets.values(), "OPENAI_API_KEY"]
    keyed = hashlib.sha256("\0".join(os.environ.get(n, "") for n in names).encode()).hexdigest()
    return json.dumps({"config": fields, "keys": keyed}, sort_keys=True, default=str)


class _Unconfigured(Exception):
    """A tool has no usable backend; the message says what to set."""


def _needs(extra: str) -> None:
    """A backend whose extra is not installed is no backend, with the reason (`pip install llmi[extra]`)."""
    try:
        require(extra)
    except MissingExtra as exc:
        raise _Unconfigured(str(exc)) from None


def _urls(value: str | None) -> list[str]:
    return [u.strip() for u in (value or "").split(",") if u.strip()]


def _key(env: str, *fallbacks: str) -> str | None:
    for name in (env, *fallbacks):
        if os.environ.get(name):
            return os.environ[name]
    return None


def _check_choice(source: str, choice: str, allowed: tuple[str, ...]) -> None:
    if choice not in allowed:
        raise ValueError(f"LLMI_{source.upper()}_BACKEND={choice!r}: expected one of {', '.join(allowed)}")


def _search(cfg: Config) -> ImageBackend | None:
    from tools.search import DownloadLimits, SerpApiSearch

    choice = cfg.search_backend
    _check_choice("search", choice, ("auto", "serpapi", "library", "none"))
    key = _key(cfg.serpapi_api_key_env)
    if choice == "none":
        raise _Unconfigured("the search tool is turned off (LLMI_SEARCH_BACKEND=none)")
    if choice == "serpapi" or (choice == "auto" and key):
        if not key:
            raise _Unconfigured(
                f"{cfg.serpapi_api_key_env} is not set: set it, or use the library backend "
                "(LLMI_SEARCH_BACKEND=library with LLMI_SEARCH_LIBRARY_DIR)"
            )
        limits = DownloadLimits(
            max_bytes=int(cfg.download_max_mb * 1024 * 1024),
            max_pixels=cfg.download_max_pixels,
            min_width=cfg.download_min_side,
            min_height=cfg.download_min_side,
        )
        return SerpApiSearch(api_key=key, top_k=cfg.search_top_k, limits=limits)
    if choice == "library" or (choice == "auto" and cfg.search_library_dir):
        if not cfg.search_library_dir:
            raise _Unconfigured("LLMI_SEARCH_LIBRARY_DIR is not set: point it at a folder of images")
        _needs("library")
        from tools.library import LocalImageLibrary

        return LocalImageLibrary(cfg.search_library_dir, cfg.cache_path)
    raise _Unconfigured(
        f"no backend configured for the search tool: set {cfg.serpapi_api_key_env} (SerpAPI) or "
        "LLMI_SEARCH_LIBRARY_DIR (a local image library)"
    )


def _pool(urls: list[str], cfg: Config) -> Any:
    from tools.image_client import ImageServerPool

    return ImageServerPool(urls, token=_key(cfg.image_server_token_env), timeout_s=cfg.tool_timeout_s)


def _images_api_key(cfg: Config) -> str | None:
    return _key(cfg.images_api_key_env, "OPENAI_API_KEY")


def _diffusion(cfg: Config) -> ImageBackend | None:
    from tools.diffusion import DiffusersDiffusion, ImageServerDiffusion, OpenAIImagesDiffusion

    choice = cfg.diffusion_backend
    _check_choice("diffusion", choice, ("auto", "server", "diffusers", "openai", "none"))
    urls = _urls(cfg.image_server_urls)
    if choice == "none":
        raise _Unconfigured("the diffusion tool is turned off (LLMI_DIFFUSION_BACKEND=none)")
    if choice == "server" or (choice == "auto" and urls):
        if not urls:
            raise _Unconfigured(
                "LLMI_IMAGE_SERVER_URLS is not set: list the Qwen-Image server URLs (llmi serve-images)"
            )
        return ImageServerDiffusion(_pool(urls, cfg), width=cfg.image_width, height=cfg.image_height,
                                    steps=cfg.image_steps)  # fmt: skip
    if choice == "openai" or (choice == "auto" and cfg.images_api_url):
        key = _images_api_key(cfg)
        if not key:
            raise _Unconfigured(f"{cfg.images_api_key_env} (or OPENAI_API_KEY) is not set: set it for the images API")
        return OpenAIImagesDiffusion(cfg.images_api_url, cfg.images_api_model, key,
                                     size=f"{cfg.image_width}x{cfg.image_height}")  # fmt: skip
    if choice == "diffusers" or (choice == "auto" and cfg.diffusers_model):
        if not cfg.diffusers_model:
            raise _Unconfigured("LLMI_DIFFUSERS_MODEL is not set: point it at a diffusers model folder")
        _needs("diffusers")
        return DiffusersDiffusion(cfg.diffusers_model, device=cfg.diffusers_device, dtype=cfg.diffusers_dtype,
                                  width=cfg.image_width, height=cfg.image_height, steps=cfg.image_steps,
                                  trust_remote_code=cfg.diffusers_trust_remote_code)  # fmt: skip
    raise _Unconfigured(
        "no backend configured for the diffusion tool: set LLMI_IMAGE_SERVER_URLS (Qwen-Image servers), "
        "LLMI_IMAGES_API_URL (an images API) or LLMI_DIFFUSERS_MODEL (in-process diffusers)"
    )


def _code(cfg: Config) -> ImageBackend | None:
    choice = cfg.code_backend
    _check_choice("code", choice, ("auto", "local", "e2b"))
    key = _key(cfg.e2b_api_key_env)
    if choice == "e2b" or (choice == "auto" and key):
        if not key:
            raise _Unconfigured(f"{cfg.e2b_api_key_env} is not set: set it, or use LLMI_CODE_BACKEND=local")
        from tools.code import E2BSandbox

        return E2BSandbox(key, timeout_s=cfg.code_timeout_s)
    return LocalSandbox(
        SandboxLimits(
            timeout_s=cfg.code_timeout_s,
            memory_mb=cfg.code_memory_mb,
            total_memory_mb=cfg.code_total_memory_mb,
            disk_mb=cfg.code_disk_mb,
        ),
        allow_unsandboxed=cfg.allow_unsandboxed_code,
        cache_dir=cfg.cache_path,
    )


def _edit(cfg: Config) -> ImageBackend | None:
    from tools.edit import DiffusersEdit, ImageServerEdit, LocalEditor, OpenAIImagesEdit

    choice = cfg.edit_backend
    _check_choice("edit", choice, ("auto", "server", "diffusers", "openai", "local", "none"))
    urls = _urls(cfg.edit_server_urls)
    if choice == "none":
        raise _Unconfigured("the edit tool is turned off (LLMI_EDIT_BACKEND=none)")
    if choice == "server" or (choice == "auto" and urls):
        if not urls:
            raise _Unconfigured("LLMI_EDIT_SERVER_URLS is not set: list the Qwen-Image-Edit server URLs")
        return ImageServerEdit(_pool(urls, cfg), steps=cfg.image_steps)
    if choice == "openai" or (choice == "auto" and cfg.images_api_url and _images_api_key(cfg)):
        key = _images_api_key(cfg)
        if not key:
            raise _Unconfigured(f"{cfg.images_api_key_env} (or OPENAI_API_KEY) is not set: set it for the images API")
        return OpenAIImagesEdit(cfg.images_api_url, cfg.images_api_model, key)
    if choice == "diffusers" or (choice == "auto" and cfg.diffusers_edit_model):
        if not cfg.diffusers_edit_model:
            raise _Unconfigured("LLMI_DIFFUSERS_EDIT_MODEL is not set: point it at a diffusers edit model folder")
        _needs("diffusers")
        return DiffusersEdit(cfg.diffusers_edit_model, device=cfg.diffusers_device, dtype=cfg.diffusers_dtype,
                             steps=cfg.image_steps, trust_remote_code=cfg.diffusers_trust_remote_code)  # fmt: skip
    return LocalEditor()


def failed(call: ToolCall, reason: str, **extra: Any) -> ImageResult:
    return ImageResult(index=call.index, source=call.source, status="failed", error=reason, **extra)


_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _limiter(name: str, size: int) -> asyncio.Semaphore:
    """A semaphore per backend, shared by every run on this event loop."""
    per_loop = _limiters.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault((name, size), asyncio.Semaphore(size))


class ImageChooser(Protocol):
    """Picks the image that best shows a description among several (test-time scaling's search enhancement; an
    MLLM judge in `judges.select`). Returns one score per image, higher is better."""

    async def scores(self, description: str, images: Sequence[bytes]) -> list[float]: ...


class ChoosingBackend:
    """A ranked backend (`tools.base.RankedBackend`) whose result is the candidate the chooser scores highest (rank
    order breaks ties), with every candidate's score in the provenance. It keeps the backend's name, so it shares
    its concurrency limit; timeouts, retries and storing are `execute_call`'s, as for any backend."""

    def __init__(self, backend: Any, chooser: ImageChooser, description: str, k: int):
        self.backend, self.chooser, self.description, self.k = backend, chooser, description, k
        self.name = getattr(backend, "name", type(backend).__name__)

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        found = await self.backend.candidates(params, self.k)
        if len(found) == 1:
            return found[0]
        scores = [float(x) for x in await self.chooser.scores(self.description, [o.image for o in found])]
        if len(scores) != len(found):
            raise ToolError(f"the image chooser scored {len(scores)} of {len(found)} search results")
        best = max(range(len(found)), key=lambda i: (scores[i], -i))
        chosen = found[best]
        chosen.provenance = {**chosen.provenance, "chosen_from": len(found), "choice_scores": scores}
        return chosen


async def execute_call(
    call: ToolCall,
    backend: ImageBackend,
    inputs: Sequence[bytes],
    *,
    store: ImageStore,
    cfg: Config,
    concurrency: int | None = None,
    on_start: Callable[[], None] | None = None,
) -> ImageResult:
    """Run one valid call on its backend and store the image; never raises (but for cancellation).

    `on_start` is called once the call holds its backend's concurrency slot, when its time starts to count."""
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
            if on_start is not None:
                on_start()
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


def tool_metrics(results: list[ImageResult]) -> dict[str, dict[str, float]]:
    """Per tool: calls, successes, failures, cache hits, attempts, total and slowest latency."""
    metrics: dict[str, dict[str, float]] = {}
    for r in results:
        m = metrics.setdefault(
            r.source or "invalid",
            {"calls": 0, "ok": 0, "failed": 0, "cache_hits": 0, "attempts": 0, "latency_s": 0.0, "max_latency_s": 0.0},
        )
        m["calls"] += 1
        m["ok" if r.status == "ok" else "failed"] += 1
        m["cache_hits"] += int(r.cache_hit)
        m["attempts"] += r.attempts
        m["latency_s"] = round(m["latency_s"] + r.latency_s, 4)
        m["max_latency_s"] = round(max(m["max_latency_s"], r.latency_s), 4)
    return metrics
