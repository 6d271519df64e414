"""Report output: self-contained HTML that model text cannot script, Markdown with images, trajectory.json."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from markdown_it import MarkdownIt

from llmi_graph import ChatModelPolicy, State, Toolbox, build_graph, image_store
from llmi_graph.report import render_html, render_markdown, render_text_html, write_report
from llmi_graph.state import Figure
from llmi_graph.tags import TextSegment
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
    assert '<span class="credit">Found by image search (fake)</span>' in body  # which tool made the figure
    imgs = [attrs for tag, attrs in tags_of(body) if tag == "img"]
    assert len(imgs) == 1 and imgs[0]["src"].startswith("data:image/png;base64,")

    paths = write_report(state, tmp_path / "out", image_store(cfg), cfg)
    assert paths.html.read_text() == html
    md = paths.markdown.read_text()
    assert "![" in md and "(images/00-search.png)" in md
    assert (paths.images / "00-search.png").read_bytes()[:4] == b"\x89PNG"
    assert "**Figure 2 (diffusion) could not be made:** &lt;b>boom&lt;/b>\\\n> It was to show: fails" in md
    assert '**Figure 1.** ">&lt;script>alert(6)&lt;/script>\\\n*Found by image search (fake)*' in md
    traj = json.loads(paths.trajectory.read_text())
    assert [c["status"] for c in traj["calls"]] == ["ok", "failed"]
    assert traj["calls"][0]["image"] == "images/00-search.png"
    assert traj["calls"][1]["reason"] == "<b>boom</b>"
    assert traj["draft"] == draft
    assert traj["summary"] == {
        "tags": 2, "valid": 2, "images_ok": 1, "images_failed": 1, "cache_hits": 0, "repairs": 0, "repaired": 0,
        "policy_turns": 1, "policy_tokens": 0, "prompt_tokens": 0, "tool_calls": 2,
    }  # fmt: skip
    assert traj["repairs"] == []
    assert traj["tool_metrics"]["search"]["ok"] == 1 and traj["tool_metrics"]["diffusion"]["failed"] == 1
    assert "policy_api_key_env" not in traj["config"]


async def test_a_second_report_into_the_same_folder_is_refused(cfg, tmp_path):
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=["v1", "v2"])), toolbox=Toolbox(backends={}))
    out = tmp_path / "out"
    state = State.model_validate(await graph.ainvoke({"prompt": "p"}, context=cfg))
    write_report(state, out, image_store(cfg), cfg)
    again = State.model_validate(await graph.ainvoke({"prompt": "p"}, context=cfg))
    with pytest.raises(FileExistsError, match="is not empty: pick a new folder"):
        write_report(again, out, image_store(cfg), cfg)
    assert sorted(p.name for p in out.iterdir()) == ["images", "report.html", "report.md", "trajectory.json"]
    assert json.loads((out / "trajectory.json").read_text())["draft"] == "v1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".llmi-staging")]  # none left beside it


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


# --- report.md: what a Markdown viewer that renders inline HTML would show ---------------------------


def viewer(tables: bool) -> MarkdownIt:
    """A permissive viewer: inline HTML on, every link kept whatever its scheme, deep nesting followed."""
    md = MarkdownIt("commonmark", {"html": True, "maxNesting": 100})
    if tables:
        md.enable("table")
    md.validateLink = lambda url: True
    return md


VIEWERS = (viewer(tables=False), viewer(tables=True))
MARKDOWN_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "code", "pre", "a", "ul", "ol", "li",
                 "blockquote", "table", "thead", "tbody", "tr", "th", "td", "hr", "br", "img"}  # fmt: skip


def assert_safe_to_view(markdown: str, images: tuple[str, ...] = ()) -> None:
    """Only Markdown's own tags, web links, and only our images/ files, in every viewer."""
    for md in VIEWERS:
        html = md.render(markdown)
        assert "<!--" not in html
        for tag, attrs in tags_of(html):
            assert tag in MARKDOWN_TAGS, (tag, attrs)
            assert not any(name.startswith("on") for name in attrs), (tag, attrs)
            if tag == "a":  # web or relative links only, the target read as a browser reads it
                target = re.sub(r"[\x00-\x20]", "", unquote(attrs["href"] or ""))
                scheme = re.match(r"([a-z][a-z0-9+.-]*):", target, re.IGNORECASE)
                assert scheme is None or scheme.group(1).lower() in {"http", "https", "mailto"}, attrs
            if tag == "img":
                assert attrs["src"] in images, attrs


def document(*items: TextSegment | Figure) -> State:
    return State(prompt="p", document=list(items))


HOSTILE_MARKDOWN = [
    HOSTILE,
    "<!-- hidden --> and <div>\n*md* <script>alert(1)</script>\n</div>\n",
    "<details open ontoggle=alert(1)>\n\ntext\n",
    "| a | b |\n|---|---|\n| `x | <img src=x onerror=alert(1)> | y` |\n",  # a code span only without tables
    "`a\n\n<img src=x onerror=alert(1)>`\n",  # a code span cannot cross paragraphs
    "[x][r] and [r]\n\n[r]: javascript:alert(1)\n",
    "![pixel][i]\n\n[i]: https://evil.example/p.png\n",
    "[tab](java&#x09;script:alert(1)) [pct](java%0Ascript:alert(1)) [pointy](<javascript:alert(1)>)\n",
    "<javascript:alert(1)> <data:text/html,<script>x</script>> [d](data:text/html;base64,PHNjcmlwdD4=)\n",
    "[![img](https://evil.example/p.png)](javascript:alert(1)) [<img src=x onerror=alert(1)>](https://ok.example)\n",
    "Setext <i onmouseover=alert(1)>\n===\n\n- 1. > <b>nested</b>\n",
    ">" * 30 + " <script>alert(1)</script>\n",  # past markdown-it's nesting limit: shown literally
    "\\\\<b>escaped backslash, real tag</b> &lt;entity&gt; stays text\n",
]


@pytest.mark.parametrize("text", HOSTILE_MARKDOWN)
def test_model_markdown_cannot_script_or_fetch_in_a_markdown_viewer(text):
    assert_safe_to_view(render_markdown(document(TextSegment(text=text))))


LEGITIMATE = """# A heading with `<code>`

Some *emphasis*, **strong**, `a <b> code span`, a [link](https://example.com "title"), a relative
[note](notes.md), <https://example.org> and <mailto:a@example.com>; 3 < 5 and x<y, a -> b.

- one
- two with `<script>` shown literally
  1. nested

> a quote

| col `<td>` | b |
|:--|--:|
| `<i>` | 2 |

```html
<script>alert("shown, not run")</script>
```

    <indented> code
"""


def test_legitimate_markdown_is_kept_and_only_raw_html_is_made_text():
    hostile = "Then <img src=x onerror=alert(1)> and ![t](https://evil.example/p.png).\n"
    md = render_markdown(document(TextSegment(text=LEGITIMATE + "\n" + hostile)))
    assert md == LEGITIMATE + "\nThen &lt;img src=x onerror=alert(1)> and \\![t](https://evil.example/p.png).\n"
    rendered = VIEWERS[1].render(md)
    assert "<code>&lt;script&gt;</code>" in rendered and "<code>&lt;i&gt;</code></td>" in rendered
    assert '<a href="notes.md">note</a>' in rendered and '<a href="mailto:a@example.com">' in rendered
    assert "&lt;script&gt;alert(&quot;shown, not run&quot;)&lt;/script&gt;\n</code></pre>" in rendered
    assert 'Then &lt;img src=x onerror=alert(1)&gt; and !<a href="https://evil.example/p.png">t</a>' in rendered
    assert_safe_to_view(md)


def test_captions_reasons_and_open_fences_stay_in_their_place(tmp_path):
    from llmi_graph.state import ImageRef

    ref = ImageRef(sha256="0" * 64, path=str(tmp_path / "x.png"), mime="image/png", width=1, height=1)
    md = render_markdown(
        document(
            TextSegment(text="```python\nprint(1)\n"),  # left open by the model
            Figure(index=0, source="code", status="ok", image=ref,
                   description='chart"](javascript:alert(1)) <img src=x onerror=alert(2)> ![x](https://e/p.png)'),
            TextSegment(text="Between.\n"),
            Figure(index=1, source="search", status="failed", error="<script>alert(3)</script> [x](javascript:1)"),
            TextSegment(text="End."),
        )
    )  # fmt: skip
    assert_safe_to_view(md, images=("images/00-code.png",))
    html = VIEWERS[1].render(md)
    alt = "chart&quot;](javascript:alert(1)) &lt;img src=x onerror=alert(2)&gt; ![x](https://e/p.png)"
    assert f'<img src="images/00-code.png" alt="{alt}" />' in html
    assert "could not be made:</strong> &lt;script&gt;alert(3)&lt;/script&gt; [x](javascript:1)" in html
    assert '<pre><code class="language-python">print(1)\n</code></pre>' in html  # closed before the figure
    assert "<br />\n<em>Drawn by code</em>" in html  # the caption's credit line


async def test_a_near_miss_tag_is_a_failed_slot_in_the_report(cfg):
    # A scripted chat model (a fake) writes `<imagen>` where the protocol says `<imgen>`.
    draft = "Before. <imagen>{'source': 'search', 'description': 'a fox', 'params': {'query': 'fox'}}</imagen> After."
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft])), toolbox=Toolbox(backends={}))
    state = State.model_validate(await graph.ainvoke({"prompt": "p"}, context=cfg))
    html = render_html(state, image_store(cfg))
    assert '<figure id="figure-1" class="failed" role="note" data-index="0" data-source="search">' in html
    assert "unknown tag &lt;imagen&gt;: the tag is &lt;imgen&gt;" in html
    assert "<header><h1>p</h1></header>" in html  # the prompt heads a report whose text has no title
    assert "Before." in html and "After." in html and "{'source'" not in html
