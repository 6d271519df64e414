"""A client for a pool of image servers: health-aware, least-busy first.

    pool = ImageServerPool(["http://127.0.0.1:8100", "http://127.0.0.1:8101"], token=...)
    result = await pool.generate("a lighthouse at dusk", width=1024, height=768, seed=7)
    png_bytes = result.images[0]

A server that refuses or drops the connection, or does not connect in time, is set aside for a cool-down and the
request moves on; a busy one (429) is skipped for this request. Errors carry `transient` so callers retry only
what may pass.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx


class ImageServerError(Exception):
    """An image request that failed; `transient` when a retry may succeed (busy, down, 5xx, timeout)."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None):
        super().__init__(message)
        self.transient, self.status = transient, status


@dataclass
class ImageServerResult:
    """What a server made."""

    images: list[bytes]
    seed: int
    url: str
    latency_s: float


@dataclass
class _Server:
    url: str
    in_flight: int = 0
    down_until: float = 0.0
    last_error: str | None = None


class ImageServerPool:
    """Send image requests to the least-busy healthy server of a pool."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        token: str | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        cooldown_s: float = 30.0,
    ):
        if not urls:
            raise ValueError("an image server pool needs at least one URL")
        self.servers = [_Server(url.rstrip("/")) for url in urls]
        self.token = token
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.cooldown_s = cooldown_s
        self._turn = itertools.count()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            client = self._clients[loop] = httpx.AsyncClient(timeout=self.timeout, headers=headers)
        return client

    def _order(self) -> list[_Server]:
        """Healthy servers least busy first (ties rotate), then the ones cooling down as a last resort."""
        now = time.monotonic()
        start = next(self._turn) % len(self.servers)
        rotated = self.servers[start:] + self.servers[:start]
        healthy = sorted((s for s in rotated if s.down_until <= now), key=lambda s: s.in_flight)
        cooling = sorted((s for s in rotated if s.down_until > now), key=lambda s: s.down_until)
        return healthy + cooling

    async def generate(self, prompt: str, **params: Any) -> ImageServerResult:
        """Text to image; `params` are the server's: negative_prompt, width, height, num_inference_steps,
        true_cfg_scale, seed, num_images."""
        return await self._request("/generate", {"prompt": prompt, **params})

    async def edit(self, images: Sequence[bytes], prompt: str, **params: Any) -> ImageServerResult:
        """Image(s) plus instruction to a changed image."""
        encoded = [base64.b64encode(img).decode("ascii") for img in images]
        return await self._request("/edit", {"images": encoded, "prompt": prompt, **params})

    async def health(self) -> dict[str, bool]:
        """Probe every server's /health now; mark the silent ones down."""

        async def probe(server: _Server) -> bool:
            try:
                ok = (await self._client().get(f"{server.url}/health", timeout=5.0)).status_code == 200
            except httpx.HTTPError as exc:
                ok, server.last_error = False, str(exc)
            if not ok:
                server.down_until = time.monotonic() + self.cooldown_s
            else:
                server.down_until = 0.0
            return ok

        results = await asyncio.gather(*(probe(s) for s in self.servers))
        return {s.url: ok for s, ok in zip(self.servers, results, strict=True)}

    async def _request(self, path: str, body: dict[str, Any]) -> ImageServerResult:
        body = {k: v for k, v in body.items() if v is not None}
        failures: list[str] = []
        busy = 0
        for server in self._order():
            server.in_flight += 1
            started = time.perf_counter()
            try:
                response = await self._client().post(f"{server.url}{path}", json=body)
            except (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                # refused, reset or hung up (a server that died, even mid-request): set it aside, try the next
                server.down_until = time.monotonic() + self.cooldown_s
                server.last_error = f"{type(exc).__name__}: {exc}"
                failures.append(f"{server.url}: unreachable ({type(exc).__name__})")
                continue
            except httpx.TimeoutException:
                raise ImageServerError(f"{server.url}{path} timed out", transient=True) from None
            finally:
                server.in_flight -= 1
            if response.status_code == 429:
                busy += 1
                failures.append(f"{server.url}: busy")
                continue
            if response.status_code >= 500:
                server.down_until = time.monotonic() + self.cooldown_s
                failures.append(f"{server.url}: {response.status_code}")
                continue
            if response.status_code != 200:
                raise ImageServerError(
                    f"{server.url}{path} refused the request ({response.status_code}): {_detail(response)}",
                    transient=False,
                    status=response.status_code,
                )
            data = response.json()
            return ImageServerResult(
                images=[base64.b64decode(img) for img in data["images"]],
                seed=int(data["seed"]),
                url=server.url,
                latency_s=time.perf_counter() - started,
            )
        what = "all image servers are busy" if busy == len(self.servers) else "no image server could take the request"
        raise ImageServerError(f"{what}: {'; '.join(failures)}", transient=True)

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            await client.aclose()
        self._clients.clear()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))[:500]
    except ValueError:
        return response.text[:500]
