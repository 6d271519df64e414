"""report.html in a real browser (Debian's headless Chromium, driven by Playwright): every image decodes and shows,
nothing logs an error, and a script the model writes never runs, neither through the sanitiser nor, were the
sanitiser to miss one, past the page's Content-Security-Policy. Also: light and dark themes, print, a phone.

Screenshots (light, dark, print) and a printed PDF are saved in the test's temp folder, for a person to look at.
"""

from __future__ import annotations

import asyncio
import io
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from PIL import Image, ImageDraw

from llmi_graph import ChatModelPolicy, Config, State, Toolbox, build_graph, image_store
from llmi_graph.report import ReportPaths, write_report
from tests.conftest import require
from tests.fakes import FakeBackend
from tools.base import ToolOutput
from tools.edit import LocalEditor

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
TITLE = "Tides of the North Sea"

# Every payload would set window.__pwned or the page title if it ran.
INJECTIONS = """\
<script>window.__pwned = 'script'; document.title = 'pwned'</script>
Inline: <img src=x onerror="window.__pwned = 'img onerror'"> and <svg onload="window.__pwned = 'svg'"></svg>
and <iframe srcdoc="<script>parent.__pwned = 'iframe'</script>"></iframe>
and <details open ontoggle="window.__pwned = 'ontoggle'">details</details>
and <body onload="window.__pwned = 'body'"> <object data="javascript:window.__pwned='object'"></object>
<meta http-equiv="refresh" content="0; url=javascript:window.__pwned='meta'">
<style>main { display: none }</style>

Links: [a markdown link](javascript:window.__pwned='md-link') and
<a href="javascript:window.__pwned='a-href'">a raw link</a> and [tab](java&#x09;script:window.__pwned='tab')
and ![a remote image](https://evil.example/pixel.png) and [a real link](https://example.com).
"""

CAPTION_INJECTION = "\\\"><img src=x onerror=window.__pwned='caption'>"

DRAFT = f"""# {TITLE}

The sea along the coast of Essex rises and falls **twice a day**. This short report shows a day of tides,
the harbour they fill, and what a model could not draw.

## Heights over a day

<imgen>{{'source': 'code', 'description': 'Tide height at Harwich in a day', 'params': {{'code': 'plot()'}}}}</imgen>

High water comes about every 12 hours 25 minutes:

| tide | time | height |
|---|---|---|
| high | 03:10 | 3.9 m |
| low | 09:25 | 0.4 m |
| high | 15:35 | 4.0 m |

## The harbour

<imgen>{{'source': 'search', 'description': 'Harwich harbour at dusk', 'params': {{'query': 'harwich'}}}}</imgen>

<imgen>{{'source': 'edit', 'description': 'The same harbour in black and white',
'params': {{'img_index': 1, 'prompt': 'make it black and white'}}}}</imgen>

## The Moon's pull

<imgen>{{'source': 'diffusion', 'description': 'The Moon pulling the sea', 'params': {{'prompt': 'moon, sea'}}}}</imgen>

- the Moon pulls the near side of the sea;
- the Earth is pulled away from the far side, so *two* bulges go round each day.

```python
period_h = 12 + 25 / 60  # one tidal cycle
```

## What else the model wrote

{INJECTIONS}
<imgen>{{'source': 'code', 'description': '{CAPTION_INJECTION}', 'params': {{'code': 'plot()'}}}}</imgen>

The end.
"""

FAILURE = "image server http://127.0.0.1:8001 did not answer within 60 s (connection refused)"


def tide_chart() -> bytes:
    """A line chart of a day of tides, as a PNG."""
    img = Image.new("RGB", (640, 360), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 50, 20, 620, 320
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=2)
    for hour in range(0, 25, 6):
        x = left + (right - left) * hour / 24
        draw.line([(x, bottom), (x, bottom + 6)], fill="black", width=2)
        draw.text((x - 8, bottom + 10), f"{hour:02d}h", fill="black")
    points = [
        (
            left + (right - left) * t / 240,
            bottom - 20 - 240 * (0.5 + 0.45 * math.cos((t / 10 - 3.2) * 2 * math.pi / 12.4)),
        )
        for t in range(241)
    ]
    draw.line(points, fill=(30, 90, 200), width=4)
    return _encode(img, "PNG")


def harbour_photo() -> bytes:
    """A harbour at dusk (sky, sea, a boat), as a JPEG: a second decoder in the browser."""
    img = Image.new("RGB", (800, 500))
    draw = ImageDraw.Draw(img)
    for y in range(300):
        draw.line([(0, y), (800, y)], fill=(250 - y // 3, 150 - y // 4, 90 + y // 3))
    for y in range(300, 500):
        draw.line([(0, y), (800, y)], fill=(20, 60 + (y - 300) // 8, 110 + (y - 300) // 6))
    draw.ellipse([560, 180, 660, 280], fill=(255, 220, 120))
    draw.polygon([(250, 330), (450, 330), (420, 370), (280, 370)], fill=(90, 40, 30))
    draw.line([(350, 330), (350, 200)], fill=(60, 30, 20), width=5)
    draw.polygon([(354, 205), (354, 320), (430, 320)], fill=(240, 240, 230))
    return _encode(img, "JPEG")


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@dataclass
class Drawing:
    """An image backend that returns a picture drawn with Pillow."""

    name: str
    picture: bytes
    provenance: dict[str, Any] = field(default_factory=dict)

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        return ToolOutput(image=self.picture, backend=self.name, provenance=self.provenance)


def make_report(out: Path, store_dir: Path) -> ReportPaths:
    """Run the graph on DRAFT (a scripted chat model, Pillow-drawn images, the real local editor) and write it."""
    cfg = Config(image_dir=str(store_dir), tool_attempts=1)
    toolbox = Toolbox(
        backends={
            "code": Drawing("local-sandbox", tide_chart()),
            "search": Drawing("library", harbour_photo(), {"source_domain": "example.org"}),
            "edit": LocalEditor(),
            "diffusion": FakeBackend("image-server", error=FAILURE),
        }
    )
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[DRAFT])), toolbox=toolbox)
    run = graph.ainvoke({"prompt": "Explain the tides."}, context=cfg)
    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API holds this thread's event loop
        state = State.model_validate(thread.submit(asyncio.run, run).result())
    assert [f.status for f in state.document if f.kind == "figure"] == ["ok", "ok", "ok", "failed", "ok"]
    return write_report(state, out, image_store(cfg), cfg)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> ReportPaths:
    folder = tmp_path_factory.mktemp("report")
    return make_report(folder / "out", folder / "store")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(CHROMIUM is not None, "chromium is not installed (apt-get install chromium; `make setup` tries to)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@dataclass
class Visit:
    """A page opened on a report, with the errors it logged and the requests it made (those the CSP blocked apart)."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def failed(self, request: Any) -> None:
        if request.failure == "csp":  # the browser refused it before it was sent
            self.requests.remove(request.url)
            self.blocked.append(request.url)


def visit(browser: Any, url: str, **context: Any) -> Visit:
    page = browser.new_context(**context).new_page()
    seen = Visit(page)
    page.on("console", lambda msg: seen.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: seen.errors.append(str(exc)))
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("requestfailed", seen.failed)
    page.goto(url, wait_until="load")
    return seen


IMAGES_JS = """() => Promise.all([...document.images].map(async (img) => {
    await img.decode();  // rejects for an image that does not decode
    const box = img.getBoundingClientRect(), style = getComputedStyle(img);
    return {width: img.naturalWidth, height: img.naturalHeight, shown: [box.width, box.height],
            display: style.display, visibility: style.visibility, opacity: style.opacity, alt: img.alt};
}))"""

COLOURS_JS = """(selector) => {
    const style = getComputedStyle(document.querySelector(selector));
    return [style.backgroundColor, style.color];
}"""


def luminance(css: str) -> float:
    """Relative luminance of an rgb()/rgba() colour; a transparent one counts as the white of paper."""
    parts = [float(p) for p in css[css.index("(") + 1 : -1].split(",")]
    if len(parts) == 4 and parts[3] == 0:
        return 1.0
    return sum(w * (c / 255) ** 2.2 for w, c in zip((0.2126, 0.7152, 0.0722), parts[:3], strict=False))


def assert_images_shown(page: Any) -> None:
    images = page.evaluate(IMAGES_JS)
    assert len(images) == 4, images
    for image in images:
        assert image["width"] > 0 and image["height"] > 0, image
        assert min(image["shown"]) > 0 and image["display"] != "none", image
        assert image["visibility"] == "visible" and float(image["opacity"]) > 0.5, image
        assert image["alt"], "every figure has alt text"
    for img in page.locator("img").all():
        assert img.is_visible()


def test_every_image_decodes_and_shows_without_errors(browser, report, screenshots):
    seen = visit(browser, report.html.as_uri(), viewport={"width": 1000, "height": 800})
    page = seen.page
    assert_images_shown(page)
    sizes = [(i["width"], i["height"]) for i in page.evaluate(IMAGES_JS)]
    assert sizes == [(640, 360), (800, 500), (800, 500), (640, 360)]  # as drawn (the edit keeps the size)
    assert seen.errors == []
    assert seen.requests == [report.html.as_uri()], "the page loads nothing but itself"

    assert page.title() == TITLE and page.locator("h1").inner_text() == TITLE
    assert page.locator("h2").all_inner_texts()[:3] == ["Heights over a day", "The harbour", "The Moon's pull"]
    captions = page.locator("figure:not(.failed) figcaption").all_inner_texts()
    for caption, tool in zip(captions, ["code", "search", "edit", "code"], strict=True):
        assert tool in caption.lower(), (caption, tool)
    assert "Tide height at Harwich in a day" in captions[0] and "local-sandbox" in captions[0]

    failed = page.locator("figure.failed")
    assert failed.count() == 1 and failed.is_visible()
    note = failed.inner_text()
    assert "could not be made" in note and FAILURE in note and "The Moon pulling the sea" in note
    page.screenshot(path=screenshots / "light.png", full_page=True)


def test_a_script_in_model_text_does_not_run(browser, report):
    seen = visit(browser, report.html.as_uri())
    page = seen.page
    # Web links stay links (the remote image becomes one); the tab-split "java\tscript:" is a harmless relative link.
    protocols = page.evaluate("() => [...document.links].map((a) => a.protocol)")
    assert protocols == ["file:", "https:", "https:"], protocols
    page.wait_for_timeout(300)  # time for any event a payload waits on (load, toggle, error)
    assert page.evaluate("() => window.__pwned") is None
    assert page.title() == TITLE
    assert (
        page.evaluate("""() => document.querySelectorAll(
        'main script, main iframe, main object, main embed, main svg, main meta, main style, main details').length""")
        == 0
    )
    handlers = page.evaluate("""() => [...document.querySelectorAll('*')].flatMap(
        (el) => [...el.attributes].filter((a) => a.name.startsWith('on')).map((a) => el.tagName + ' ' + a.name))""")
    assert handlers == []
    text = page.locator("main").inner_text()
    assert "<script>window.__pwned" in text and "<iframe srcdoc=" in text  # shown as text, not dropped silently
    assert page.locator("main").is_visible()  # the model's <style> hid nothing
    assert seen.errors == [] and seen.requests == [report.html.as_uri()]


def test_the_content_security_policy_holds_where_the_sanitiser_would_not(browser, report, tmp_path):
    # Splice scripts into the page past the sanitiser: the page's own CSP must stop every one.
    html = report.html.read_text(encoding="utf-8")
    tampered = tmp_path / "tampered.html"
    payload = (
        "<script>window.__pwned = 'inline script'</script>"
        "<img id=broken src=x onerror=\"window.__pwned = 'handler'\">"
        '<img id=remote src="https://evil.example/pixel.png">'
        "<a id=js href=\"javascript:window.__pwned = 'link'\">js</a>"
        "<iframe srcdoc=\"<script>parent.__pwned = 'frame'</script>\"></iframe>"
    )
    tampered.write_text(html.replace("<main>", "<main>" + payload, 1), encoding="utf-8")
    seen = visit(browser, tampered.as_uri())
    assert seen.page.locator("main script, #broken, #remote, #js, main iframe").count() == 5  # all in the page
    seen.page.locator("#js").click()
    seen.page.wait_for_timeout(300)
    assert seen.page.evaluate("() => window.__pwned") is None
    assert seen.requests == [tampered.as_uri()] and "https://evil.example/pixel.png" in seen.blocked
    assert seen.errors and all("Content Security Policy" in error for error in seen.errors), seen.errors


def test_dark_theme_print_and_a_narrow_screen(browser, report, screenshots):
    light = visit(browser, report.html.as_uri(), color_scheme="light").page
    dark_visit = visit(browser, report.html.as_uri(), color_scheme="dark", viewport={"width": 1000, "height": 800})
    dark = dark_visit.page
    light_bg, light_fg = light.evaluate(COLOURS_JS, "body")
    dark_bg, dark_fg = dark.evaluate(COLOURS_JS, "body")
    assert luminance(light_bg) > 0.8 and luminance(light_fg) < 0.1
    assert luminance(dark_bg) < 0.05 and luminance(dark_fg) > 0.5, (dark_bg, dark_fg)
    failed_bg, failed_fg = dark.evaluate(COLOURS_JS, "figure.failed")
    assert luminance(failed_bg) < 0.1 and luminance(failed_fg) > 0.3, "the failure note is readable in the dark"
    assert_images_shown(dark)
    assert dark_visit.errors == []
    dark.screenshot(path=screenshots / "dark.png", full_page=True)

    dark.emulate_media(media="print")  # print is on paper even from a dark screen
    paper_bg, ink = dark.evaluate(COLOURS_JS, "body")
    assert luminance(paper_bg) > 0.8 and luminance(ink) < 0.1, (paper_bg, ink)
    assert_images_shown(dark)
    assert dark.locator("figure.failed").is_visible()
    breaks = dark.evaluate("() => [...document.querySelectorAll('figure')].map((f) => getComputedStyle(f).breakInside)")
    assert breaks and set(breaks) == {"avoid"}, breaks
    heading_breaks = dark.evaluate(
        "() => [...document.querySelectorAll('h1, h2')].map((h) => getComputedStyle(h).breakAfter)"
    )
    assert set(heading_breaks) == {"avoid"}, heading_breaks
    dark.screenshot(path=screenshots / "print.png", full_page=True)
    dark.pdf(path=screenshots / "report.pdf")

    phone = visit(browser, report.html.as_uri(), viewport={"width": 390, "height": 844}).page
    assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390, "nothing is wider than a phone"
    assert_images_shown(phone)
