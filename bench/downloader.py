"""Benchmark: the search tool's hardened downloader, on good images and on hostile servers, against references.

Every server is a raw HTTP server on 127.0.0.1 in a child process started here; a test resolver calls it
`public.test`, and a test policy treats exactly 127.0.0.1 as public (everything else gets the production checks).
It prints, each the median of --repeats runs, a fresh client per fetch (the downloader makes one per call):
- the limits in force (the `DownloadLimits` defaults), and what making a new httpx client costs (mostly loading
  the CA bundle), which every call pays before anything else;
- a normal download of a ~1 MP PNG and a ~1 MP JPEG by `download_image` (the reference), against the same bytes
  fetched by plain httpx with no checks, and by plain httpx plus a PIL decode: the downloader's overhead as ratios;
- the time to refuse, with the reason the downloader gave, as a ratio to the normal PNG download: hosts that
  resolve to private and metadata addresses (production policy, no connection made), redirects to loopback and
  metadata addresses, too many redirects, a 1 GiB body against the byte cap (with the bytes read), a lying
  Content-Length (over the cap; longer than the body), a decompression bomb, an image over the pixel cap, one
  under the minimum size, bytes that are not an image, and servers that stall (before the headers, mid-body)
  under a short read timeout; and a server that drips a byte at half the read timeout, which no read timeout
  catches (the bench stops it at three read timeouts).

Run: .venv/bin/python bench/downloader.py [--repeats 5] [--read-timeout 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import statistics
import struct
import sys
import time
import zlib
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.search import AddressPolicy, DownloadLimits, DownloadRefused, IPAddress, address_problem, download_image

HOSTS = {"public.test": ["127.0.0.1"], "intranet.test": ["10.0.0.1"], "metadata.test": ["169.254.169.254"]}
ENDLESS_BYTES = 1024**3


# --- the images -------------------------------------------------------------------------------------


def photo(fmt: str, size: tuple[int, int] = (1280, 800)) -> bytes:
    """A photo-like image (smooth colour fields plus sensor-like noise), so it compresses like a real one."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    channels = [np.sin(6 * x + 2 * k) * np.cos(4 * y - k) for k in range(3)]
    pixels = 127 + 100 * np.stack(channels, axis=-1) + rng.normal(0, 6, (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, format=fmt, quality=90)
    return buf.getvalue()


def one_colour_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of one colour: a few hundred KB on the wire for any number of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def small_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (100, 100), (30, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


# --- the test host (child process) ------------------------------------------------------------------


def _head(status: str, *headers: str) -> bytes:
    return "\r\n".join([f"HTTP/1.1 {status}", *headers, "Connection: close", "", ""]).encode()


async def _respond(files: dict[str, bytes], path: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Write the response for `path`; a hostile one where the path asks for it."""
    if path in files:
        body = files[path]
        w.write(_head("200 OK", "Content-Type: image/png", f"Content-Length: {len(body)}") + body)
    elif path.startswith("/to/"):
        w.write(_head("302 Found", f"Location: {path.removeprefix('/to/')}", "Content-Length: 0"))
    elif path == "/loop":
        w.write(_head("302 Found", "Location: /loop", "Content-Length: 0"))
    elif path == "/endless":  # no Content-Length: the body ends when the connection does
        w.write(_head("200 OK", "Content-Type: image/png"))
        block = b"\x00" * (1024 * 1024)
        for _ in range(ENDLESS_BYTES // len(block)):
            w.write(block)
            await w.drain()
    elif path == "/declared-huge":
        w.write(_head("200 OK", "Content-Type: image/png", f"Content-Length: {ENDLESS_BYTES}") + b"\x00" * 1024)
    elif path == "/short-body":  # claims the whole photo, sends half of it and hangs up
        body = files["/photo.png"]
        w.write(_head("200 OK", "Content-Type: image/png", f"Content-Length: {len(body)}") + body[: len(body) // 2])
    elif path == "/stall-headers":
        await reader.read()  # until the client gives up
    elif path == "/stall-body":
        body = files["/photo.png"]
        w.write(_head("200 OK", "Content-Type: image/png", f"Content-Length: {len(body)}") + body[: len(body) // 2])
        await w.drain()
        await reader.read()
    elif path.startswith("/drip/"):  # one byte every so often, forever
        every_s = float(path.removeprefix("/drip/"))
        body = files["/photo.png"]
        w.write(_head("200 OK", "Content-Type: image/png", f"Content-Length: {len(body)}"))
        for byte in body:
            w.write(bytes([byte]))
            await w.drain()
            await asyncio.sleep(every_s)
    else:
        w.write(_head("404 Not Found", "Content-Length: 0"))


async def _serve(files: dict[str, bytes], ready: Connection) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0]
            await _respond(files, request_line.split(b" ")[1].decode(), reader, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: what a refusal looks like from here
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    ready.send(server.sockets[0].getsockname()[1])
    await server.serve_forever()


def serve(files: dict[str, bytes], ready: Connection) -> None:
    """The test host: serves `files` by path, and the hostile paths in `_respond`."""
    asyncio.run(_serve(files, ready))


# --- the client side --------------------------------------------------------------------------------


async def resolver(host: str, port: int) -> list[str]:
    if host not in HOSTS:
        raise OSError(f"unknown test host {host}")
    return HOSTS[host]


def test_policy(ip: IPAddress) -> str | None:
    """The production policy, except that the loopback test host counts as public."""
    return None if str(ip) == "127.0.0.1" else address_problem(ip)


async def attempt(url: str, limits: DownloadLimits, policy: AddressPolicy) -> tuple[float, str]:
    """Seconds for one `download_image` call, and what came of it."""
    start = time.perf_counter()
    try:
        image = await download_image(url, limits=limits, resolver=resolver, policy=policy)
        outcome = f"downloaded {image.width}x{image.height} {image.mime}"
    except DownloadRefused as exc:
        outcome = f"refused: {exc.reason}"
    except Exception as exc:  # not a refusal: the caller would see a raw error, so say so
        outcome = f"NOT A REFUSAL: raised {type(exc).__module__}.{type(exc).__name__}: {exc}"
    return time.perf_counter() - start, outcome


async def plain_httpx(url: str, decode: bool) -> float:
    """Seconds to fetch `url` with plain httpx and no checks (and decode it with PIL, if asked)."""
    start = time.perf_counter()
    async with httpx.AsyncClient(trust_env=False) as client:  # the downloader's own client settings
        response = await client.get(url)
        response.raise_for_status()
        if decode:
            with Image.open(io.BytesIO(response.content)) as img:
                img.load()
    return time.perf_counter() - start


async def new_client_seconds() -> float:
    """Seconds to make and close an httpx client (most of it is loading the CA bundle into an SSL context)."""
    start = time.perf_counter()
    async with httpx.AsyncClient(trust_env=False):
        pass
    return time.perf_counter() - start


async def bytes_read_before_cutoff(url: str, limits: DownloadLimits) -> int:
    """How many body bytes the downloader read from `url` before it refused (one extra, instrumented run)."""
    responses: list[httpx.Response] = []

    async def record(response: httpx.Response) -> None:
        responses.append(response)

    timeout = httpx.Timeout(limits.read_timeout_s, connect=limits.connect_timeout_s)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False, event_hooks={"response": [record]}) as client:
        try:
            await download_image(url, limits=limits, resolver=resolver, policy=test_policy, client=client)
        except DownloadRefused:
            pass
    return sum(r.num_bytes_downloaded for r in responses)


async def main_async(port: int, files: dict[str, bytes], repeats: int, read_timeout_s: float) -> None:
    limits = DownloadLimits()
    short = DownloadLimits(read_timeout_s=read_timeout_s)
    public = f"http://public.test:{port}"
    print(
        f"limits (DownloadLimits defaults): max {limits.max_bytes:,} bytes, max {limits.max_pixels:,} pixels, "
        f"min {limits.min_width}x{limits.min_height}, connect timeout {limits.connect_timeout_s:g} s, "
        f"read timeout {limits.read_timeout_s:g} s, max {limits.max_redirects} redirects"
    )
    print(f"test host: 127.0.0.1:{port} (a child process), called public.test; median of {repeats} runs\n")

    construction = statistics.median([await new_client_seconds() for _ in range(repeats)])
    print(f"a new httpx client, made and closed   {1000 * construction:8.2f} ms  (every call below pays this first)")
    reference = 0.0
    for name, path in (("PNG", "/photo.png"), ("JPEG", "/photo.jpg")):
        with Image.open(io.BytesIO(files[path])) as img:
            size = f"{img.width}x{img.height}"
        direct = f"http://127.0.0.1:{port}{path}"
        await attempt(public + path, limits, test_policy)  # warm-up: imports, first connections
        await plain_httpx(direct, decode=True)
        plain, decoded, runs = [], [], []
        for _ in range(repeats):  # interleaved, so that drift on a busy machine hits all three alike
            plain.append(await plain_httpx(direct, decode=False))
            decoded.append(await plain_httpx(direct, decode=True))
            runs.append(await attempt(public + path, limits, test_policy))
        plain_s, decoded_s = statistics.median(plain), statistics.median(decoded)
        vetted_s = statistics.median(s for s, _ in runs)
        reference = reference or vetted_s
        print(f"normal download, {name} {size} ({len(files[path]):,} bytes): {runs[-1][1]}")
        print(f"  plain httpx, no checks               {1000 * plain_s:8.2f} ms")
        print(f"  plain httpx + PIL decode             {1000 * decoded_s:8.2f} ms  ({decoded_s / plain_s:.2f}x plain)")
        print(f"  download_image                       {1000 * vetted_s:8.2f} ms  ({vetted_s / plain_s:.2f}x plain, "
              f"{vetted_s / decoded_s:.2f}x plain + decode)")  # fmt: skip

    drip = 0.5 * read_timeout_s
    guard = 3 * read_timeout_s
    kib = {path: f"{len(body) / 1024:,.0f} KiB" for path, body in files.items()}
    cases: list[tuple[str, str, DownloadLimits, AddressPolicy]] = [
        ("host resolves to 10.0.0.1", "http://intranet.test/x.png", limits, address_problem),
        ("host resolves to 169.254.169.254", "http://metadata.test/latest/meta-data/", limits, address_problem),
        ("redirect to 127.0.0.2 (loopback)", f"{public}/to/http://127.0.0.2:{port}/photo.png", limits, test_policy),
        ("redirect to 169.254.169.254", f"{public}/to/http://169.254.169.254/latest/", limits, test_policy),
        (f"redirect loop (> {limits.max_redirects})", f"{public}/loop", limits, test_policy),
        ("1 GiB body, no Content-Length", f"{public}/endless", limits, test_policy),
        ("Content-Length: 1 GiB (1 KiB sent)", f"{public}/declared-huge", limits, test_policy),
        ("Content-Length over the body", f"{public}/short-body", limits, test_policy),
        (f"bomb, 30000x30000, {kib['/bomb.png']}", f"{public}/bomb.png", limits, test_policy),
        (f"over pixel cap, 6000x6000, {kib['/over-cap.png']}", f"{public}/over-cap.png", limits, test_policy),
        ("under the minimum, 100x100", f"{public}/small.png", limits, test_policy),
        ("HTML served as image/png", f"{public}/not-an-image.png", limits, test_policy),
        ("stall before the headers", f"{public}/stall-headers", short, test_policy),
        ("stall mid-body", f"{public}/stall-body", short, test_policy),
        (f"drip, 1 byte / {drip:g} s", f"{public}/drip/{drip}", short, test_policy),
    ]
    print(f"\nrefusals (ratio: to the normal PNG download; stalls and drip with a {read_timeout_s:g} s read timeout)")
    for name, url, case_limits, policy in cases:
        runs = []
        for _ in range(repeats):
            try:
                runs.append(await asyncio.wait_for(attempt(url, case_limits, policy), guard))
            except TimeoutError:
                runs.append((guard, f"still downloading after {guard:g} s: no read timeout fires, and no overall "
                                    "deadline in the downloader (the bench stopped it)"))  # fmt: skip
        seconds = statistics.median(s for s, _ in runs)
        print(f"  {name:36s} {1000 * seconds:8.2f} ms  ({seconds / reference:6.2f}x)  {runs[-1][1]}")
        if url.endswith("/endless"):
            read = await bytes_read_before_cutoff(url, limits)
            print(f"  {'':36s} bytes read before the cut-off: {read:,} of {ENDLESS_BYTES:,} "
                  f"(cap {limits.max_bytes:,})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (the median is printed)")
    parser.add_argument("--read-timeout", type=float, default=1.0, help="read timeout (s) for the stalling servers")
    args = parser.parse_args()
    files = {
        "/photo.png": photo("PNG"),
        "/photo.jpg": photo("JPEG"),
        "/bomb.png": one_colour_png(30_000, 30_000),
        "/over-cap.png": one_colour_png(6_000, 6_000),
        "/small.png": small_png(),
        "/not-an-image.png": b"<html><body>Not found</body></html>" * 10,
    }
    context = multiprocessing.get_context("spawn")
    ready, child_end = context.Pipe()
    host = context.Process(target=serve, args=(files, child_end), daemon=True)
    host.start()
    try:
        if not ready.poll(30):
            sys.exit("the test host did not start within 30 s")
        asyncio.run(main_async(ready.recv(), files, args.repeats, args.read_timeout))
    finally:
        host.terminate()
        host.join(10)


if __name__ == "__main__":
    main()
