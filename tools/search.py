"""The search tool: real images for facts, places and products.

Backends:
- `SerpApiSearch`: Google Images through the `serpapi` package; downloads the top results concurrently and
  returns the first valid one in rank order (`original`, falling back to `thumbnail`).
- `LocalImageLibrary`: a folder of images, searched semantically (see `tools.library`).

`download_image` is the only way search fetches a URL. It takes http(s) only; resolves the host and refuses
it if any address is not public (private, loopback, link-local, multicast, reserved, cloud metadata), again on
every redirect, and connects to the address it checked (no DNS rebinding); it streams with a byte cap, checks
that the bytes decode as an image with a pixel cap (decompression bombs) inside a resolution window, and has
separate connect and read timeouts. Every refusal is a `DownloadRefused` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from PIL import Image, UnidentifiedImageError

from tools.base import ToolError, ToolOutput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves (host, port) to IP address strings."""

METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
}
_REDIRECTS = {301, 302, 303, 307, 308}


class DownloadRefused(ToolError):
    """A URL the downloader will not fetch, or bytes it will not accept; the message says which and why."""


@dataclass(frozen=True)
class DownloadLimits:
    """What a downloaded image may be."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000
    min_width: int = 400
    min_height: int = 400
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0  # between two reads
    total_timeout_s: float = 60.0  # the whole download, redirects included (a server dripping bytes)
    max_redirects: int = 5


@dataclass
class DownloadedImage:
    """Image bytes that passed every check, with where they came from."""

    data: bytes
    mime: str
    width: int
    height: int
    url: str
    final_url: str


def address_problem(ip: IPAddress) -> str | None:
    """Why an address may not be fetched from (None: it is public)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_problem(ip.ipv4_mapped)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for label, flag in (
        ("loopback", ip.is_loopback),
        ("private", ip.is_private),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("unspecified", ip.is_unspecified),
    ):
        if flag:
            return f"a {label} address"
    if not ip.is_global:
        return "not a public address"
    return None


AddressPolicy = Callable[[IPAddress], str | None]
"""Returns why an address is refused, or None. The production policy is `address_problem`."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.to_thread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def _vet(url: str, resolver: Resolver, policy: AddressPolicy) -> tuple[httpx.URL, str]:
    """Check a URL; return it re-pointed at a vetted IP, and the original host (for Host and SNI)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DownloadRefused(f"{url[:200]}: only http and https URLs are fetched, not {parts.scheme or 'none'}")
    host = parts.hostname
    if not host:
        raise DownloadRefused(f"{url[:200]}: no host")
    if parts.username or parts.password:
        raise DownloadRefused(f"{url[:200]}: URLs with credentials are not fetched")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    try:
        addresses = [host] if literal else await resolver(host, port)
    except OSError as exc:
        raise DownloadRefused(f"{host}: cannot resolve ({exc})", transient=True) from None
    if not addresses:
        raise DownloadRefused(f"{host}: resolves to no address")
    for address in addresses:
        problem = policy(ipaddress.ip_address(address))
        if problem:
            raise DownloadRefused(f"{host} resolves to {address}, {problem}: refused")
    ip = ipaddress.ip_address(addresses[0])
    netloc = f"[{ip}]" if ip.version == 6 else str(ip)
    if parts.port:
        netloc += f":{parts.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return httpx.URL(pinned), host


async def download_image(
    url: str,
    *,
    limits: DownloadLimits | None = None,
    resolver: Resolver | None = None,
    policy: AddressPolicy | None = None,
    client: httpx.AsyncClient | None = None,
) -> DownloadedImage:
    """Fetch an image from a public address, within limits; raise `DownloadRefused` with the reason otherwise."""
    limits = limits or DownloadLimits()
    resolver = resolver or system_resolver
    policy = policy or address_problem
    timeout = httpx.Timeout(limits.read_timeout_s, connect=limits.connect_timeout_s)
    owned = client is None
    client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)
    try:
        async with asyncio.timeout(limits.total_timeout_s):
            return await _follow(url, limits, resolver, policy, client, timeout)
    except TimeoutError:
        raise DownloadRefused(
            f"{url[:200]}: took more than {limits.total_timeout_s:g} s in all; stopped", transient=True
        ) from None
    finally:
        if owned:
            await client.aclose()


async def _follow(
    url: str,
    limits: DownloadLimits,
    resolver: Resolver,
    policy: AddressPolicy,
    client: httpx.AsyncClient,
    timeout: httpx.Timeout,
) -> DownloadedImage:
    """Fetch `url`, vetting and pinning every hop of its redirects."""
    current = url
    for _ in range(limits.max_redirects + 1):
        pinned, host = await _vet(current, resolver, policy)
        request = client.build_request(
            "GET",
            pinned,
            headers={"Host": _host_header(current), "User-Agent": "llmi/0.1 (image search)", "Accept": "image/*"},
            extensions={"sni_hostname": host, "timeout": timeout.as_dict()},
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise DownloadRefused(f"{current[:200]}: timed out ({type(exc).__name__})", transient=True) from None
        except httpx.HTTPError as exc:
            raise DownloadRefused(f"{current[:200]}: {type(exc).__name__}: {exc}", transient=True) from None
        try:
            if response.status_code in _REDIRECTS and "location" in response.headers:
                current = urljoin(current, response.headers["location"])
                continue
            if response.status_code != 200:
                transient = response.status_code == 429 or response.status_code >= 500
                raise DownloadRefused(f"{current[:200]}: HTTP {response.status_code}", transient=transient)
            data = await _read_capped(response, limits.max_bytes, current)
        finally:
            await response.aclose()
        mime, width, height = check_image_bytes(data, limits, current)
        return DownloadedImage(data=data, mime=mime, width=width, height=height, url=url, final_url=current)
    raise DownloadRefused(f"{url[:200]}: more than {limits.max_redirects} redirects")


def _host_header(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1]


async def _read_capped(response: httpx.Response, max_bytes: int, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise DownloadRefused(f"{url[:200]}: {int(declared):,} bytes is over the {max_bytes:,}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise DownloadRefused(f"{url[:200]}: more than {max_bytes:,} bytes; stopped reading")
            chunks.append(chunk)
    except httpx.TimeoutException:
        raise DownloadRefused(f"{url[:200]}: timed out while reading", transient=True) from None
    except httpx.HTTPError as exc:  # a body shorter than its Content-Length, a reset mid-body
        raise DownloadRefused(f"{url[:200]}: {type(exc).__name__} while reading: {exc}"[:500], transient=True) from None
    return b"".join(chunks)


_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}


def check_image_bytes(data: bytes, limits: DownloadLimits, url: str = "image") -> tuple[str, int, int]:
    """(mime, width, height) of bytes that decode as an image inside the limits; else `DownloadRefused`."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > limits.max_pixels:
                raise DownloadRefused(f"{url[:200]}: {width}x{height} is over the {limits.max_pixels:,}-pixel limit")
            if width < limits.min_width or height < limits.min_height:
                raise DownloadRefused(
                    f"{url[:200]}: {width}x{height} is under the minimum {limits.min_width}x{limits.min_height}"
                )
            fmt = img.format or ""
            img.load()  # decode for real: a truncated or disguised file fails here
    except DownloadRefused:
        raise
    except Image.DecompressionBombError:
        raise DownloadRefused(f"{url[:200]}: a decompression bomb (claims far more pixels than allowed)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DownloadRefused(f"{url[:200]}: not a readable image ({type(exc).__name__})") from None
    if fmt not in _FORMATS:
        raise DownloadRefused(f"{url[:200]}: unsupported image format {fmt or 'unknown'}")
    return _FORMATS[fmt], width, height


# --- SerpAPI ----------------------------------------------------------------------------------------


@dataclass
class ImageCandidate:
    """One Google Images result, as SerpAPI reports it."""

    rank: int
    original: str | None
    thumbnail: str | None
    page_url: str | None
    source: str | None
    title: str | None

    def urls(self) -> list[str]:
        return [u for u in (self.original, self.thumbnail) if u]


def parse_serpapi_images(data: Mapping[str, Any], top_k: int) -> list[ImageCandidate]:
    """The top-k image results of a SerpAPI google_images response; `ToolError` if it reports an error."""
    if data.get("error"):
        message = str(data["error"])
        no_results = "hasn't returned any results" in message
        raise ToolError(f"SerpAPI: {message}" if not no_results else f"no image results ({message})")
    results = data.get("images_results") or []
    candidates = []
    for i, item in enumerate(results[:top_k]):
        candidates.append(
            ImageCandidate(
                rank=int(item.get("position") or i + 1),
                original=item.get("original"),
                thumbnail=item.get("thumbnail"),
                page_url=item.get("link"),
                source=item.get("source"),
                title=item.get("title"),
            )
        )
    if not any(c.urls() for c in candidates):
        raise ToolError("no image results for this query")
    return candidates


@dataclass
class SerpApiSearch:
    """Google Images through SerpAPI; the first downloadable result in rank order wins."""

    api_key: str
    top_k: int = 5
    limits: DownloadLimits = field(default_factory=DownloadLimits)
    timeout_s: float = 20.0
    downloads_at_once: int = 4
    base_url: str | None = None  # tests point this at a loopback server
    resolver: Resolver | None = None
    policy: AddressPolicy | None = None
    name: str = "serpapi"

    @property
    def cache_id(self) -> str:
        return f"serpapi:{self.top_k}:{self.limits.min_width}x{self.limits.min_height}"

    def _search(self, query: str) -> dict[str, Any]:
        import serpapi

        client = serpapi.Client(api_key=self.api_key, timeout=self.timeout_s)
        if self.base_url:
            client.BASE_DOMAIN = self.base_url
        try:
            return dict(client.search(engine="google_images", q=query))
        except serpapi.HTTPError as exc:
            status = getattr(exc, "status_code", -1)
            detail = getattr(exc, "error", None) or str(exc)
            transient = status in (-1, 429) or status >= 500
            raise ToolError(f"SerpAPI request failed ({status}): {detail}", transient=transient) from None
        except serpapi.SerpApiError as exc:  # timeouts and connection errors
            raise ToolError(f"SerpAPI request failed: {type(exc).__name__}: {exc}", transient=True) from None

    async def candidates(self, params: Mapping[str, Any], k: int) -> list[ToolOutput]:
        """Every usable result of the top `k` (all downloaded, concurrently), in rank order."""
        query = str(params["query"])
        data = await asyncio.to_thread(self._search, query)
        found = parse_serpapi_images(data, min(k, self.top_k))
        gate = asyncio.Semaphore(self.downloads_at_once)

        async def fetch(candidate: ImageCandidate) -> DownloadedImage:
            async with gate:
                return await self._download(candidate)

        images = await asyncio.gather(*(fetch(c) for c in found), return_exceptions=True)
        usable = [
            self._output(c, image) for c, image in zip(found, images, strict=True) if isinstance(image, DownloadedImage)
        ]
        reasons = [
            f"#{c.rank}: {e.reason}" for c, e in zip(found, images, strict=True) if isinstance(e, DownloadRefused)
        ]
        for error in images:
            if isinstance(error, BaseException) and not isinstance(error, DownloadRefused):
                raise error
        if not usable:
            raise ToolError(f"none of the top {len(found)} results could be used: " + " | ".join(reasons)[:1500])
        return usable

    async def _download(self, candidate: ImageCandidate) -> DownloadedImage:
        """The candidate's original, else its thumbnail; `DownloadRefused` with every URL's reason."""
        errors = []
        for url in candidate.urls():
            try:
                return await download_image(url, limits=self.limits, resolver=self.resolver, policy=self.policy)
            except DownloadRefused as exc:
                errors.append(exc.reason)
        raise DownloadRefused("; ".join(errors) or "no URL")

    def _output(self, candidate: ImageCandidate, image: DownloadedImage) -> ToolOutput:
        return ToolOutput(
            image=image.data,
            backend=self.name,
            provenance={
                "image_url": image.final_url,
                "page_url": candidate.page_url,
                "source_domain": _domain(candidate.page_url) or candidate.source,
                "title": candidate.title,
                "rank": candidate.rank,
                "used_thumbnail": image.url != candidate.original,
            },
        )

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        query = str(params["query"])
        data = await asyncio.to_thread(self._search, query)
        candidates = parse_serpapi_images(data, self.top_k)
        gate = asyncio.Semaphore(self.downloads_at_once)

        async def fetch(candidate: ImageCandidate) -> DownloadedImage:
            async with gate:
                return await self._download(candidate)

        tasks = [asyncio.create_task(fetch(c)) for c in candidates]
        reasons = []
        try:
            for candidate, task in zip(candidates, tasks, strict=True):  # rank order, downloads concurrent
                try:
                    image = await task
                except DownloadRefused as exc:
                    reasons.append(f"#{candidate.rank}: {exc.reason}")
                    continue
                return self._output(candidate, image)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
        raise ToolError(f"none of the top {len(candidates)} results could be used: " + " | ".join(reasons)[:1500])


def _domain(url: str | None) -> str | None:
    if not url:
        return None
    host = urlsplit(url).hostname
    return host.removeprefix("www.") if host else None
