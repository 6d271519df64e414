"""The search tool: the safe downloader, SerpAPI (real client, fake server), and the local image library."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from PIL import Image

from tests.fakes import LoopbackApp, png
from tools.base import ToolError
from tools.library import LocalImageLibrary
from tools.search import DownloadLimits, DownloadRefused, SerpApiSearch, download_image, parse_serpapi_images

FIXTURES = Path(__file__).parent / "fixtures" / "serpapi"


def big_png(color=(10, 120, 200), size=(500, 420)) -> bytes:
    return png(color, size)


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A PNG whose header claims 3.6 gigapixels behind a few bytes of data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )


def image_host_app() -> FastAPI:
    """A fake public image host: good images, redirects, lies about content types, endless bodies."""
    app = FastAPI()
    good, good2 = big_png(), big_png((200, 40, 40))

    @app.get("/good.png")
    @app.get("/good-thumb.png")
    async def good_image() -> Response:
        return Response(good, media_type="image/png")

    @app.get("/good2.png")
    async def good_image2() -> Response:
        return Response(good2, media_type="image/png")

    @app.get("/tiny.png")
    async def tiny() -> Response:
        return Response(png(size=(100, 100)), media_type="image/png")

    @app.get("/html-as-png")
    async def html() -> Response:
        return Response(b"<html><body>Hello</body></html>" * 10, media_type="image/png")

    @app.get("/bomb.png")
    async def bomb() -> Response:
        return Response(bomb_png(), media_type="image/png")

    @app.get("/bomb-small.png")
    async def bomb_small() -> Response:
        return Response(bomb_png(6000, 6000), media_type="image/png")

    @app.get("/endless")
    async def endless() -> StreamingResponse:
        async def body():
            chunk = b"\x00" * 65536
            for _ in range(16384):  # 1 GiB if nobody stops reading
                yield chunk

        return StreamingResponse(body(), media_type="image/png")

    @app.get("/declared-huge")
    async def declared_huge() -> Response:
        return Response(b"x", headers={"Content-Length": str(1024**3)}, media_type="image/png")

    @app.get("/slow")
    async def slow() -> Response:
        await asyncio.sleep(5)
        return Response(good, media_type="image/png")

    @app.get("/drip")
    async def drip() -> StreamingResponse:
        async def body():
            for _ in range(200):  # a byte every 0.2 s: no single read ever times out
                await asyncio.sleep(0.2)
                yield b"\x00"

        return StreamingResponse(body(), media_type="image/png")

    @app.get("/short-body")
    async def short_body() -> StreamingResponse:
        async def body():
            yield good[: len(good) // 2]  # then the server hangs up: half of what it declared

        return StreamingResponse(body(), headers={"Content-Length": str(len(good))}, media_type="image/png")

    @app.get("/to/{target:path}")
    async def redirect(target: str) -> RedirectResponse:
        return RedirectResponse(target if "://" in target else f"/{target}", status_code=302)

    @app.get("/loop")
    async def loop() -> RedirectResponse:
        return RedirectResponse("/loop", status_code=302)

    return app


@pytest.fixture(scope="module")
def host():
    with LoopbackApp(image_host_app()) as server:
        yield server


def network(port: int):
    """A test resolver and address policy: public.test is the loopback test host, treated as public for
    exactly that address; everything else goes through the production checks."""
    names = {"public.test": ["127.0.0.1"], "intranet.test": ["10.1.2.3"], "mixed.test": ["127.0.0.1", "192.168.0.9"]}

    async def resolver(host: str, port_: int) -> list[str]:
        if host not in names:
            raise OSError(f"unknown test host {host}")
        return names[host]

    from tools.search import address_problem

    def policy(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        return None if str(ip) == "127.0.0.1" else address_problem(ip)

    return {"resolver": resolver, "policy": policy}


async def test_a_public_image_downloads(host):
    image = await download_image(f"http://public.test:{host.port}/good.png", **network(host.port))
    assert (image.mime, image.width, image.height) == ("image/png", 500, 420)
    via = await download_image(f"http://public.test:{host.port}/to/good2.png", **network(host.port))
    assert via.final_url == f"http://public.test:{host.port}/good2.png"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "a loopback address"),
        ("http://[::1]/", "a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://10.0.0.1/", "a private address"),
        ("http://192.168.1.1/", "a private address"),
        ("http://100.100.100.200/", "a cloud metadata address"),
        ("http://0.0.0.0/", "address"),
        ("http://224.0.0.1/", "a multicast address"),
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/x.png", "only http and https"),
        ("gopher://example.com/", "only http and https"),
        ("http://user:pw@example.com/x.png", "credentials"),
        ("http:///nohost", "no host"),
    ],
)
async def test_the_production_check_refuses(url, reason):
    with pytest.raises(DownloadRefused, match=reason):
        await download_image(url)


async def test_production_check_refuses_loopback_even_when_a_server_answers(host):
    with pytest.raises(DownloadRefused, match="loopback"):
        await download_image(f"http://127.0.0.1:{host.port}/good.png")
    with pytest.raises(DownloadRefused, match="loopback"):
        await download_image(f"http://localhost:{host.port}/good.png")  # the real resolver


async def test_hostnames_resolving_to_private_addresses_are_refused(host):
    net = network(host.port)
    with pytest.raises(DownloadRefused, match=r"intranet.test resolves to 10.1.2.3, a private address"):
        await download_image("http://intranet.test/x.png", **net)
    with pytest.raises(DownloadRefused, match=r"192\.168\.0\.9, a private address"):  # any address counts
        await download_image(f"http://mixed.test:{host.port}/good.png", **net)


async def test_every_redirect_is_checked(host):
    net = network(host.port)
    with pytest.raises(DownloadRefused, match=r"intranet\.test resolves to 10\.1\.2\.3"):
        await download_image(f"http://public.test:{host.port}/to/http://intranet.test/secret.png", **net)
    with pytest.raises(DownloadRefused, match="a loopback address"):
        await download_image(f"http://public.test:{host.port}/to/http://127.0.0.2:{host.port}/good.png", **net)
    with pytest.raises(DownloadRefused, match="metadata"):
        await download_image(f"http://public.test:{host.port}/to/http://169.254.169.254/", **net)
    with pytest.raises(DownloadRefused, match="more than 5 redirects"):
        await download_image(f"http://public.test:{host.port}/loop", **net)


async def test_a_1gb_body_is_cut_off(host):
    net = network(host.port)
    limits = DownloadLimits(max_bytes=2 * 1024 * 1024)
    started = time.perf_counter()
    with pytest.raises(DownloadRefused, match="more than 2,097,152 bytes; stopped reading"):
        await download_image(f"http://public.test:{host.port}/endless", limits=limits, **net)
    assert time.perf_counter() - started < 10
    with pytest.raises(DownloadRefused, match="1,073,741,824 bytes is over"):
        await download_image(f"http://public.test:{host.port}/declared-huge", limits=limits, **net)


async def test_bytes_must_be_an_image_within_the_window(host):
    net = network(host.port)
    with pytest.raises(DownloadRefused, match="not a readable image"):
        await download_image(f"http://public.test:{host.port}/html-as-png", **net)
    with pytest.raises(DownloadRefused, match="a decompression bomb"):
        await download_image(f"http://public.test:{host.port}/bomb.png", **net)
    with pytest.raises(DownloadRefused, match="6000x6000 is over the 25,000,000-pixel limit"):
        await download_image(f"http://public.test:{host.port}/bomb-small.png", **net)
    with pytest.raises(DownloadRefused, match="100x100 is under the minimum 400x400"):
        await download_image(f"http://public.test:{host.port}/tiny.png", **net)


async def test_a_server_dripping_bytes_meets_the_overall_deadline(host):
    limits = DownloadLimits(read_timeout_s=1.0, total_timeout_s=1.5)
    started = time.perf_counter()
    with pytest.raises(DownloadRefused, match=r"took more than 1\.5 s in all") as info:
        await download_image(f"http://public.test:{host.port}/drip", limits=limits, **network(host.port))
    assert info.value.transient and time.perf_counter() - started < 4


async def test_a_body_shorter_than_declared_is_a_refusal(host):
    with pytest.raises(DownloadRefused, match="while reading") as info:
        await download_image(f"http://public.test:{host.port}/short-body", **network(host.port))
    assert info.value.transient


async def test_read_timeout(host):
    limits = DownloadLimits(read_timeout_s=0.5)
    with pytest.raises(DownloadRefused, match="timed out") as info:
        await download_image(f"http://public.test:{host.port}/slow", limits=limits, **network(host.port))
    assert info.value.transient


# --- SerpAPI ----------------------------------------------------------------------------------------


def fixture(name: str, port: int | None = None) -> dict:
    text = (FIXTURES / f"{name}.json").read_text()
    return json.loads(text.replace("PORT", str(port or 0)))


def test_parse_recorded_responses():
    candidates = parse_serpapi_images(fixture("ok"), top_k=5)
    assert [c.rank for c in candidates] == [1, 2, 3, 4, 5]
    assert candidates[2].original is None and candidates[2].urls() == [candidates[2].thumbnail]
    assert candidates[0].urls() == [candidates[0].original, candidates[0].thumbnail]
    assert len(parse_serpapi_images(fixture("ok"), top_k=2)) == 2
    with pytest.raises(ToolError, match="no image results") as info:
        parse_serpapi_images(fixture("error_200"), top_k=5)
    assert not info.value.transient
    with pytest.raises(ToolError, match="no image results"):
        parse_serpapi_images(fixture("empty"), top_k=5)
    with pytest.raises(ToolError, match="SerpAPI: Invalid API key"):
        parse_serpapi_images(
            {"error": "Invalid API key. Your API key should be here: https://serpapi.com/manage-api-key"}, 5
        )


def serpapi_app(image_port: int, seen: list[dict]) -> FastAPI:
    """A fake SerpAPI: answers /search with the recorded fixture chosen by the query."""
    app = FastAPI()

    @app.get("/search")
    async def search(request: Request) -> JSONResponse:
        params = dict(request.query_params)
        seen.append(params)
        if params["q"] == "rate limited":
            return JSONResponse({"error": "Your account has run out of searches."}, status_code=429)
        name = {"nothing at all": "error_200", "empty": "empty"}.get(params["q"], "ok")
        return JSONResponse(fixture(name, image_port))

    return app


async def test_serpapi_backend_returns_the_first_valid_result_in_rank_order(host):
    seen: list[dict] = []
    with LoopbackApp(serpapi_app(host.port, seen)) as serp:
        backend = SerpApiSearch(api_key="test-key", base_url=serp.url, **network(host.port))
        out = await backend({"query": "eiffel tower"})
    assert seen[0]["engine"] == "google_images" and seen[0]["q"] == "eiffel tower" and seen[0]["api_key"] == "test-key"
    # rank 1 is a 404, rank 2 is HTML and a too-small thumbnail, rank 3 has only a thumbnail: it wins.
    assert out.provenance["rank"] == 3 and out.provenance["used_thumbnail"] is True
    assert out.provenance["page_url"] == "https://www.photos.example.test/eiffel-dusk"
    assert out.provenance["source_domain"] == "photos.example.test"
    assert out.provenance["title"] == "Eiffel Tower at dusk"
    assert out.provenance["image_url"].endswith("/good-thumb.png")
    assert Image.open(io.BytesIO(out.image)).size == (500, 420)


async def test_serpapi_candidates_are_every_usable_result_in_rank_order(host):
    with LoopbackApp(serpapi_app(host.port, [])) as serp:
        backend = SerpApiSearch(api_key="test-key", base_url=serp.url, **network(host.port))
        found = await backend.candidates({"query": "eiffel tower"}, 5)
        first = await backend({"query": "eiffel tower"})
        with pytest.raises(ToolError, match="none of the top 2 results could be used"):
            await backend.candidates({"query": "eiffel tower"}, 2)  # ranks 1 and 2 are unusable
    ranks = [o.provenance["rank"] for o in found]
    assert ranks[0] == 3 and ranks == sorted(ranks) and found[0].image == first.image  # the first is __call__'s


async def test_serpapi_errors(host):
    with LoopbackApp(serpapi_app(host.port, [])) as serp:
        backend = SerpApiSearch(api_key="k", base_url=serp.url, **network(host.port))
        with pytest.raises(ToolError, match="no image results") as info:
            await backend({"query": "nothing at all"})
        assert not info.value.transient
        with pytest.raises(ToolError, match="SerpAPI request failed \\(429\\)") as info:
            await backend({"query": "rate limited"})
        assert info.value.transient
    dead = SerpApiSearch(api_key="k", base_url="http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(ToolError, match="SerpAPI request failed") as info:
        await dead({"query": "x"})
    assert info.value.transient


# --- the local library ------------------------------------------------------------------------------


@pytest.fixture
def library_folder(tmp_path) -> Path:
    folder = tmp_path / "assets"
    (folder / "travel").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 0, 0)).save(folder / "travel" / "IMG_0001.png")
    (folder / "travel" / "IMG_0001.txt").write_text("The Eiffel Tower in Paris lit up at night")
    Image.new("RGB", (64, 64), (0, 200, 0)).save(folder / "IMG_0002.png")
    (folder / "IMG_0002.json").write_text(json.dumps({"caption": "A golden retriever puppy playing on grass"}))
    exif_image = Image.new("RGB", (64, 64), (0, 0, 200))
    exif = exif_image.getexif()
    exif[0x010E] = "A steaming bowl of ramen noodles with a soft-boiled egg"
    exif_image.save(folder / "IMG_0003.jpg", exif=exif)
    Image.new("RGB", (64, 64), (90, 90, 90)).save(folder / "red_sports_car_on_a_racetrack.png")
    return folder


async def test_library_ranks_the_right_image_first(library_folder, tmp_path):
    library = LocalImageLibrary(library_folder, tmp_path / "cache")
    for query, expected in [
        ("famous landmark in France", "travel/IMG_0001.png"),
        ("a young dog", "IMG_0002.png"),
        ("Japanese noodle soup", "IMG_0003.jpg"),
        ("fast automobile", "red_sports_car_on_a_racetrack.png"),
    ]:
        assert library.search(query, 1)[0][0] == expected, query
    out = await library({"query": "Japanese noodle soup"})
    assert out.provenance["library_path"] == "IMG_0003.jpg"
    assert out.image == (library_folder / "IMG_0003.jpg").read_bytes()
    with pytest.raises(ToolError, match="matches 'quantum chromodynamics lecture' well enough"):
        await library({"query": "quantum chromodynamics lecture"})


def test_library_index_is_cached_and_refreshed(library_folder, tmp_path, monkeypatch):
    LocalImageLibrary(library_folder, tmp_path / "cache").index()
    calls = []
    import tools.library

    real_embed = tools.library.embed
    monkeypatch.setattr(tools.library, "embed", lambda texts: calls.append(list(texts)) or real_embed(texts))
    fresh = LocalImageLibrary(library_folder, tmp_path / "cache")  # a new process would do this
    fresh.index()
    assert calls == []  # loaded from the disk cache, nothing re-embedded
    Image.new("RGB", (64, 64)).save(library_folder / "hot_air_balloons_over_cappadocia.png")
    index = fresh.index()
    assert len(calls) == 1 and "hot_air_balloons_over_cappadocia.png" in index.paths
    assert fresh.search("balloons floating over Turkey", 1)[0][0] == "hot_air_balloons_over_cappadocia.png"
    assert isinstance(index.vectors, np.ndarray) and index.vectors.shape == (5, 384)
