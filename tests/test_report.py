"""Report output: self-contained HTML that model text cannot script, Markdown with images, trajectory.json."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from langchain_core.language_models.fake_chat_models import FakeListChatModel

from llmi_graph import ChatModelPolicy, State, Toolbox, build_graph, image_store
from llmi_graph.report import render_html, render_text_html, write_report
from tests.fakes import FakeBackend

HOSTILE = """# Title <script>alert('h1')</script>

Hello <script>alert(1)</script> and <img src=x onerror="alert(2)"> and <iframe src="https://evil"></iframe>.

[click me](javascript:alert(3)) [ok](https://example.com) <a href="javascript:alert(4)">raw</a>

![tracker](https://evil.example/pixel.png)

<svg onload=alert(5)></svg> <style>body{display:none}</style>
"""


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags_of(html: str) -> list[tuple[str, dict[str, str | None]]]:
    collector = _Collector()
    collector.feed(html)
    return collector.tags


def assert_cannot_script(html: str) -> None:
    for tag, attrs in tags_of(html):
        assert tag not in {"script", "iframe", "object", "embed", "svg", "form", "base"}, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in {"href", "src", "action", "formaction"}:
                assert value is not None
                assert value.startswith(("https:", "http:", "mailto:", "data:image/", "#")), (
                    tag,
                    name,
                    value,
                )
        if tag == "img":
            assert attrs["src"].startswith("data:image/"), "images must be inline, not fetched"
        if tag == "style":
            raise AssertionError("model text must not bring style elements")


def test_model_markdown_cannot_run_script():
    html = render_text_html(HOSTILE)
    assert_cannot_script(html.replace("<style>", "<x-style>"))  # (our page's own <style> is not in here)
    assert "<h1>" in html and "https://example.com" in html
    assert "alert(1)" not in html.replace("&lt;script&gt;alert(1)", "")  # only ever as escaped text


async def test_full_report_is_self_contained_and_safe(cfg, tmp_path):
    hostile_tag = (
        "<imgen>{'source': 'search', 'description': '\"><script>alert(6)</script>', 'params': {'query': 'x'}}</imgen>"
    )
    failing_tag = "<imgen>{'source': 'diffusion', 'description': 'fails', 'params': {'prompt': 'x'}}</imgen>"
    draft = f"{HOSTILE}\n{hostile_tag}\nMiddle\n{failing_tag}\nEnd"
    toolbox = Toolbox(backends={"search": FakeBackend(), "diffusion": FakeBackend(error="<b>boom</b>")})
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft])), toolbox=toolbox)
    state = State.model_validate(await graph.ainvoke({"prompt": "p"}, context=cfg))
    html = render_html(state, image_store(cfg))
    assert html.count("<style>") == 1  # ours, in <head>
    head, body = html.split("</head>", 1)
    assert "Content-Security-Policy" in head and "default-src 'none'" in head
    assert_cannot_script(body)
    assert "&lt;b&gt;boom&lt;/b&gt;" in body  # a tool's error text is escaped too
    imgs = [attrs for tag, attrs in tags_of(body) if tag == "img"]
    assert len(imgs) == 1 and imgs[0]["src"].startswith("data:image/png;base64,")

    paths = write_report(state, tmp_path / "out", image_store(cfg), cfg)
    assert paths.html.read_text() == html
    md = paths.markdown.read_text()
    assert "![" in md and "(images/00-search.png)" in md
    assert (paths.images / "00-search.png").read_bytes()[:4] == b"\x89PNG"
    assert "**Image 1 (diffusion) could not be made:** <b>boom</b>" in md
    traj = json.loads(paths.trajectory.read_text())
    assert [c["status"] for c in traj["calls"]] == ["ok", "failed"]
    assert traj["calls"][0]["image"] == "images/00-search.png"
    assert traj["calls"][1]["reason"] == "<b>boom</b>"
    assert traj["draft"] == draft
    assert traj["summary"] == {"tags": 2, "valid": 2, "images_ok": 1, "images_failed": 1, "cache_hits": 0}
    assert traj["tool_metrics"]["search"]["ok"] == 1 and traj["tool_metrics"]["diffusion"]["failed"] == 1
    assert "policy_api_key_env" not in traj["config"]


async def test_rewriting_an_output_folder_leaves_no_staging_behind(cfg, tmp_path):
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=["v1", "v2"])), toolbox=Toolbox(backends={}))
    out = tmp_path / "out"
    for _ in range(2):
        state = State.model_validate(await graph.ainvoke({"prompt": "p"}, context=cfg))
        write_report(state, out, image_store(cfg), cfg)
    assert sorted(p.name for p in out.iterdir()) == ["images", "report.html", "report.md", "trajectory.json"]
    assert json.loads((out / "trajectory.json").read_text())["draft"] == "v2"


async def test_a_trajectory_loads_back_into_the_same_state(cfg, tmp_path):
    draft = (
        "Intro <imgen>{'source': 'search', 'description': 'a', 'params': {'query': 'x'}}</imgen> mid "
        "<imgen>{'source': 'diffusion', 'description': 'b', 'params': {'prompt': 'y'}}</imgen> "
        "<imgen>{'source': 'bogus'}</imgen> end"
    )
    toolbox = Toolbox(backends={"search": FakeBackend(), "diffusion": FakeBackend(error="down")})
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft])), toolbox=toolbox)
    state = State.model_validate(await graph.ainvoke({"prompt": "p", "image_num": 2}, context=cfg))
    paths = write_report(state, tmp_path / "out", image_store(cfg), cfg)
    from llmi_graph.report import load_state

    loaded = load_state(paths.out_dir)
    assert loaded.draft == state.draft and loaded.image_num == 2 and loaded.segments == state.segments
    assert [c.error for c in loaded.calls] == [c.error for c in state.calls]
    assert [(f.kind, getattr(f, "status", None), getattr(f, "error", None)) for f in loaded.document] == [
        (f.kind, getattr(f, "status", None), getattr(f, "error", None)) for f in state.document
    ]
    ok = next(f for f in loaded.document if getattr(f, "status", None) == "ok")
    assert open(ok.image.path, "rb").read()[:4] == b"\x89PNG" and ok.image.path.startswith(str(paths.out_dir))
