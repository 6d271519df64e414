"""Writing a finished run: a self-contained HTML report, Markdown with an images folder, and trajectory.json.

Model text is untrusted. In report.html its Markdown is rendered with raw HTML disabled, the result is
sanitised with nh3, and the page's Content-Security-Policy forbids scripts and remote loads. In report.md the
same text keeps its Markdown, but raw HTML, images and links that are not http(s) or mailto are made literal
text (`markdown_text`), so a Markdown viewer shows them instead of running or fetching them.

A report never replaces or deletes files llmi did not write: `write_report` takes a new or empty folder only.
Everything is written to a staging folder first and moved into place at the end, so a failure leaves the
folder as it was.
"""

from __future__ import annotations

import base64
import errno
import html
import json
import os
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import nh3
from markdown_it import MarkdownIt, rules_inline
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token

from llmi_graph.config import Config
from llmi_graph.state import (
    Candidate,
    Enhancement,
    Figure,
    ImageRef,
    ImageResult,
    PolicyOutput,
    Polish,
    Repair,
    State,
    cost,
)
from llmi_graph.store import ImageStore
from llmi_graph.tags import SOURCES, ImageSlot, TextSegment, ToolCall

TRAJECTORY_VERSION = 1
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif", "image/bmp": "bmp"}
# Raw HTML off; Markdown images off too (a report is self-contained: only our own tool images appear).
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table").disable("image")
_TEXT_TAGS = nh3.ALLOWED_TAGS - {"img"}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 52rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.6; color: #1d1d1f; }
figure { margin: 1.5rem 0; text-align: center; }
figure img { max-width: 100%; height: auto; border-radius: 4px; }
figcaption { font-size: 0.9rem; color: #555; margin-top: 0.4rem; }
figure.failed { border: 1px dashed #c33; border-radius: 4px; padding: 0.8rem; color: #922; background: #fff6f6; }
pre, code { background: #f4f4f6; border-radius: 3px; } pre { padding: 0.7rem; overflow-x: auto; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 0.3rem 0.6rem; }
footer { margin-top: 3rem; font-size: 0.8rem; color: #888; }
"""


@dataclass
class ReportPaths:
    """Where a run's outputs were written."""

    out_dir: Path
    html: Path
    markdown: Path
    trajectory: Path
    images: Path


def render_text_html(text: str) -> str:
    """Model Markdown to safe HTML: raw HTML is escaped by the renderer, then the output is sanitised."""
    return nh3.clean(_markdown.render(text), tags=_TEXT_TAGS, url_schemes={"http", "https", "mailto"})


def image_filename(figure: Figure) -> str:
    """The figure's file name in the report's images/ folder, e.g. 00-code.png."""
    assert figure.image is not None
    source = figure.source if figure.source in SOURCES else "image"  # a loaded trajectory may say anything
    return f"{figure.index:02d}-{source}.{_EXT.get(figure.image.mime, 'png')}"


def render_html(state: State, store: ImageStore) -> str:
    """The report as one self-contained HTML page (images inline as data: URLs)."""
    body: list[str] = []
    for item in state.document:
        if isinstance(item, TextSegment):
            body.append(render_text_html(item.text))
        elif item.status == "ok" and item.image is not None:
            data = base64.b64encode(store.get(item.image)).decode("ascii")
            caption = html.escape(item.description or "")
            body.append(
                f'<figure data-index="{item.index}" data-source="{html.escape(item.source or "")}">'
                f'<img src="data:{item.image.mime};base64,{data}" alt="{caption}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        else:
            body.append(
                f'<figure class="failed" data-index="{item.index}"><strong>Image {item.index} '
                f"({html.escape(item.source or 'invalid tag')}) could not be made:</strong> "
                f"{html.escape(item.error or 'unknown error')}"
                + (f"<figcaption>{html.escape(item.description)}</figcaption>" if item.description else "")
                + "</figure>"
            )
    title = html.escape(_title(state))
    model = html.escape(state.policy.model if state.policy else "unknown")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head><body>\n<main>\n"
        + "\n".join(body)
        + f"\n</main>\n<footer>Made by llmi with {model}.</footer>\n</body></html>\n"
    )


def render_markdown(state: State) -> str:
    """The report as Markdown; images are referenced as images/NN-source.ext.

    Model text keeps its Markdown but loses raw HTML, images and script links (`markdown_text`), like the
    HTML report; captions and failure reasons are always literal text.
    """
    nonce = secrets.token_hex(8)
    parts: list[str] = []
    figures: dict[str, str] = {}
    for item in state.document:
        if isinstance(item, TextSegment):
            parts.append(_close_open_fence(item.text))
            continue
        # A placeholder while the model text is checked as one document (link references cross segments).
        key = f"llmi-figure-{nonce}-{len(figures)}"
        if item.status == "ok" and item.image is not None:
            figures[key] = f"![{_md_literal(item.description or '')}](images/{image_filename(item)})"
        else:
            source = _md_literal(item.source or "invalid tag")
            reason = _md_literal(item.error or "unknown error")
            figures[key] = f"> **Image {item.index} ({source}) could not be made:** {reason}"
        parts.append(f"\n\n{key}\n\n")
    text = markdown_text("".join(parts))
    for key, figure in figures.items():
        text = text.replace(key, figure, 1)
    return text.strip() + "\n"


# --- Model Markdown for report.md ---------------------------------------------------------------------------
# Many Markdown viewers render inline HTML and fetch images, so the model's raw HTML, images and links with
# other schemes than http(s)/mailto are turned into literal text, the rest of its Markdown is left exactly as
# written. What is HTML, an image or a link is decided by markdown-it's own parse (CommonMark, with and
# without GFM tables), not by patterns: every such construct is escaped where it starts, the text is parsed
# again, until a parse finds none. Text that cannot be checked that way becomes one literal code block.

_SAFE_SCHEMES = {"http", "https", "mailto"}
_ESCAPES = {"<": "&lt;", "!": "\\!", "[": "\\["}  # an entity for "<": some dialects do not take \<
_MD_LITERAL = str.maketrans({"&": "&amp;", "<": "&lt;", **{c: "\\" + c for c in "\\`*_[]!"}})
_MAX_ROUNDS = 8


def markdown_text(text: str) -> str:
    """Model Markdown made safe to view: raw HTML, images and non-web links become literal text.

    Legitimate Markdown (headings, lists, emphasis, tables, links, code spans and fenced code, with `<`
    inside them) comes back unchanged. For example `Hi <b>x</b> ![t](https://e/p.png)` becomes
    `Hi &lt;b>x&lt;/b> \\![t](https://e/p.png)`: the tags show as text and the image as a plain link.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")  # as markdown-it sees it
    checked = text
    for _ in range(_MAX_ROUNDS):
        spots = _unsafe_spots(checked)
        if spots is None:
            break
        if not spots:
            return checked
        for pos in sorted(spots, reverse=True):
            checked = checked[:pos] + _ESCAPES[checked[pos]] + checked[pos + 1 :]
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    body = text if text.endswith("\n") else text + "\n"
    return f"{fence}text\n{body}{fence}\n"  # cannot be checked (nested too deep): show it all literally


def _md_literal(text: str) -> str:
    """Plain text as Markdown that shows exactly that text, on one line (for captions and reasons)."""
    return " ".join(text.split()).translate(_MD_LITERAL)


def _close_open_fence(text: str) -> str:
    """Close a fenced code block left open at the end of a text segment, so it cannot swallow the next
    figure and segment (the HTML report renders each segment on its own)."""
    try:
        tokens = _CHECKERS[0].parse(text)
    except RecursionError:
        return text  # markdown_text shows such text literally anyway
    last = tokens[-1] if tokens else None
    if last is None or last.type != "fence" or last.level != 0 or last.map is None:
        return text
    closing = text.replace("\r\n", "\n").split("\n")[last.map[1] - 1].strip()
    if last.map[1] - last.map[0] > 1 and closing.startswith(last.markup) and set(closing) == {last.markup[0]}:
        return text
    return text + ("" if text.endswith("\n") else "\n") + last.markup + "\n"


def _remember_start(rule: Callable[[StateInline, bool], bool]) -> Callable[[StateInline, bool], bool]:
    """An inline rule whose tokens record where they start in their block's inline source."""

    def tracked(state: StateInline, silent: bool) -> bool:
        start, count = state.pos, len(state.tokens)
        if not rule(state, silent):
            return False
        for token in state.tokens[count:]:
            token.meta.setdefault("start", start)  # the innermost rule's start wins for nested tokens
        return True

    return tracked


def _checker(tables: bool) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True})
    if tables:
        md.enable("table")
    md.validateLink = lambda url: True  # type: ignore[method-assign]  # see every link; _safe_href judges
    for name, rule in (("link", rules_inline.link), ("image", rules_inline.image),
                       ("autolink", rules_inline.autolink), ("html_inline", rules_inline.html_inline)):  # fmt: skip
        md.inline.ruler.at(name, _remember_start(rule))
    return md


# A viewer with GFM tables splits a row into cells before it finds code spans; one without does not.
_CHECKERS = (_checker(tables=False), _checker(tables=True))


def _safe_href(href: str) -> bool:
    """Whether a link target is http(s), mailto or relative, read the way a browser reads it."""
    url = re.sub(r"[\t\n\r]", "", unquote(href)).strip("".join(map(chr, range(33))))
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    return scheme is None or scheme.group(1).lower() in _SAFE_SCHEMES


def _unsafe_char(token: Token) -> str | None:
    """The character where an unsafe inline construct starts ("<", "!" or "["), or None if it is safe."""
    if token.type == "html_inline":
        return "<"
    if token.type == "image":
        return "!"
    if token.type == "link_open" and not _safe_href(str(token.attrGet("href") or "")):
        return "<" if token.markup == "autolink" else "["
    return None


def _unsafe_spots(text: str) -> set[int] | None:
    """Offsets in `text` of the "<", "!" and "[" that start raw HTML, images or unsafe links in any checker's
    parse; None when the parse cannot be trusted to have seen everything (nesting past markdown-it's limit)."""
    lines = text.split("\n")
    line_starts = [0]
    for line in lines:
        line_starts.append(line_starts[-1] + len(line) + 1)

    def nth(block: list[int], char: str, n: int) -> int | None:
        # Container markers, indentation, heading marks and table pipes never hold "<", "!" or "[", so the
        # n-th such character of a block's inline source is the n-th one of its lines.
        begin, end = line_starts[block[0]], line_starts[block[1]] - 1
        pos = begin - 1
        for _ in range(n + 1):
            pos = text.find(char, pos + 1, end)
            if pos < 0:
                return None
        return pos

    spots: set[int] = set()
    for md in _CHECKERS:
        try:
            tokens = md.parse(text)
        except RecursionError:
            return None
        limit = md.options["maxNesting"] - 1
        before: dict[tuple[int, int], Counter[str]] = {}  # table cells share their row's lines
        for token in tokens:
            if token.level >= limit or any(c.level >= limit for c in token.children or []):
                return None
            if token.map is None:
                continue
            if token.type == "html_block":
                found = [nth(token.map, "<", 0)]
            elif token.type == "inline":
                seen = before.setdefault((token.map[0], token.map[1]), Counter())
                found = []
                for child in token.children or []:
                    char = _unsafe_char(child)
                    if char is not None:
                        start = child.meta.get("start", -1)
                        if token.content[start : start + 1] != char:
                            return None
                        found.append(nth(token.map, char, seen[char] + token.content.count(char, 0, start)))
                seen.update(c for c in token.content if c in _ESCAPES)
            else:
                continue
            if None in found:
                return None
            spots.update(p for p in found if p is not None)
    return spots


def trajectory(state: State, cfg: Config | None = None, image_paths: dict[int, str] | None = None) -> dict[str, Any]:
    """Everything a run did, as JSON-ready data: request, draft, calls with statuses, timings, token ids."""
    results: dict[int, ImageResult] = {r.index: r for r in state.results}
    calls = []
    for call in state.calls:
        result = results.get(call.index)
        status = "invalid" if not call.valid else (result.status if result else "failed")
        entry: dict[str, Any] = {
            "index": call.index,
            "source": call.source,
            "description": call.description,
            "params": call.params,
            "status": status,
            "reason": call.error if not call.valid else (result.error if result else "no result"),
            "raw": call.raw,
        }
        if result is not None:
            entry.update(
                backend=result.backend,
                latency_s=round(result.latency_s, 4),
                attempts=result.attempts,
                cache_hit=result.cache_hit,
                provenance=result.provenance,
                logs=result.logs,
                image=(image_paths or {}).get(call.index) or (result.image.path if result.image else None),
                sha256=result.image.sha256 if result.image else None,
                mime=result.image.mime if result.image else None,
                size=[result.image.width, result.image.height] if result.image else None,
            )
        calls.append(entry)
    policy = state.policy.model_dump(mode="json") if state.policy else None
    return {
        "version": TRAJECTORY_VERSION,
        "prompt": state.prompt,
        "image_num": state.image_num,
        "allowed_tools": state.allowed_tools,
        "input_images": [ref.model_dump(mode="json") for ref in state.input_images],
        "system_prompt": state.system_prompt,
        "draft": state.draft,
        "calls": calls,
        "summary": {
            "tags": len(state.calls),
            "valid": sum(c.valid for c in state.calls),
            "images_ok": sum(1 for r in state.results if r.status == "ok"),
            "images_failed": sum(1 for c in calls if c["status"] != "ok"),
            "cache_hits": sum(1 for r in state.results if r.cache_hit),
            "repairs": len(state.repairs),
            **cost(state),
            "repaired": sum(1 for c in calls if c["status"] == "ok" and c["index"] in {r.index for r in state.repairs}),
        },
        # every repair turn: the failed call and why, the policy's reply (tokens, logprobs) and the call it gave
        "repairs": [r.model_dump(mode="json") for r in state.repairs],
        "segments": [s.model_dump(mode="json") for s in state.segments],
        "timings": {k: round(v, 4) for k, v in state.timings.items()},
        "tool_metrics": state.tool_metrics,
        "policy": policy,
        "config": _public_config(cfg) if cfg else None,
        **_scaling(state),
    }


def _scaling(state: State) -> dict[str, Any]:
    """The scaled graph's record (every candidate with its validation and score, the choice, enhancements, polish);
    nothing for a run of the llmi graph alone."""
    if not state.drafts:
        return {}
    return {
        "candidates": [c.model_dump(mode="json") for c in state.drafts],
        "selected": state.selected,
        "selector": state.selector,
        "enhancements": [e.model_dump(mode="json") for e in state.enhancements],
        "polish": state.polish_turn.model_dump(mode="json") if state.polish_turn else None,
    }


def load_state(path: str | os.PathLike[str]) -> State:
    """Rebuild a finished State from a trajectory.json (or the folder holding one), e.g. to score it later.

    Image paths are taken as written (relative ones from the trajectory's folder) and not trusted: whoever
    reads an image checks where it is and its hash (see `judges.mllm.read_image`).
    """
    path = Path(path).absolute()
    if path.is_dir():
        path = path / "trajectory.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("version") != TRAJECTORY_VERSION:
        raise ValueError(f"{path}: trajectory version {data.get('version')} is not {TRAJECTORY_VERSION}")
    calls, results, figures = [], [], {}
    for c in data["calls"]:
        image = None
        if c.get("image") and c.get("sha256"):
            image_path = Path(c["image"]) if Path(c["image"]).is_absolute() else path.parent / c["image"]
            width, height = c.get("size") or (0, 0)
            image = ImageRef(sha256=c["sha256"], path=str(image_path), mime=c.get("mime") or "image/png",
                             width=width, height=height)  # fmt: skip
        invalid = c["status"] == "invalid"
        call = ToolCall(index=c["index"], source=c["source"], description=c["description"], params=c["params"] or {},
                        error=c["reason"] if invalid else None, raw=c.get("raw", ""))  # fmt: skip
        status = "ok" if c["status"] == "ok" else "failed"
        reason = f"invalid tag: {c['reason']}" if invalid else c["reason"]
        calls.append(call)
        results.append(ImageResult(index=c["index"], source=c["source"], status=status, image=image,
                                   error=None if status == "ok" else reason, backend=c.get("backend"),
                                   provenance=c.get("provenance") or {}, latency_s=c.get("latency_s") or 0.0,
                                   attempts=c.get("attempts") or 0, cache_hit=bool(c.get("cache_hit"))))  # fmt: skip
        figures[c["index"]] = Figure(index=c["index"], source=c["source"], description=c["description"],
                                     status=status, image=image, error=None if status == "ok" else reason)  # fmt: skip
    segments = [TextSegment(**s) if s["kind"] == "text" else ImageSlot(**s) for s in data["segments"]]
    document = [s if isinstance(s, TextSegment) else figures[s.index] for s in segments]
    return State(
        prompt=data["prompt"], image_num=data.get("image_num", 0), allowed_tools=data.get("allowed_tools"),
        input_images=[ImageRef(**r) for r in data.get("input_images", [])], system_prompt=data.get("system_prompt", ""),
        draft=data["draft"], policy=PolicyOutput(**data["policy"]) if data.get("policy") else None, segments=segments,
        calls=calls, results=results, document=document, timings=data.get("timings", {}),
        tool_metrics=data.get("tool_metrics", {}), repairs=[Repair(**r) for r in data.get("repairs", [])],
        drafts=[Candidate(**c) for c in data.get("candidates", [])], selected=data.get("selected"),
        selector=data.get("selector", ""), enhancements=[Enhancement(**e) for e in data.get("enhancements", [])],
        polish_turn=Polish(**data["polish"]) if data.get("polish") else None,
    )  # fmt: skip


def _public_config(cfg: Config) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if "key" not in k}


def _title(state: State) -> str:
    for item in state.document:
        if isinstance(item, TextSegment):
            for line in item.text.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()[:120]
    return state.prompt.strip().splitlines()[0][:120]


def write_report(state: State, out_dir: Path, store: ImageStore, cfg: Config | None = None) -> ReportPaths:
    """Write report.html, report.md, images/ and trajectory.json into `out_dir`, all or nothing.

    `out_dir` must be new or an empty folder (else `FileExistsError`): a report never replaces or deletes
    files llmi did not write. A new folder is staged beside it and appears whole, by one rename. In an
    existing empty folder each entry is moved in only where nothing exists yet, and all are taken back out
    if one fails. Either way a failure leaves `out_dir` as it was.
    """
    out_dir = Path(out_dir).resolve()
    existing = _is_empty_folder(out_dir)
    if not existing:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_folder(out_dir if existing else out_dir.parent)
    try:
        images = staging / "images"
        images.mkdir()
        image_paths: dict[int, str] = {}
        for item in state.document:
            if isinstance(item, Figure) and item.status == "ok" and item.image is not None:
                name = image_filename(item)
                (images / name).write_bytes(store.get(item.image))
                image_paths[item.index] = f"images/{name}"
        (staging / "report.html").write_text(render_html(state, store), encoding="utf-8")
        (staging / "report.md").write_text(render_markdown(state), encoding="utf-8")
        data = trajectory(state, cfg, image_paths)
        (staging / "trajectory.json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        try:
            if existing:
                _move_into(staging, out_dir, ("images", "report.md", "trajectory.json", "report.html"))
            else:
                os.rename(staging, out_dir)  # fails if a folder with anything in it appeared meanwhile
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(_not_empty(out_dir)) from None
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ReportPaths(
        out_dir=out_dir,
        html=out_dir / "report.html",
        markdown=out_dir / "report.md",
        trajectory=out_dir / "trajectory.json",
        images=out_dir / "images",
    )


def _not_empty(folder: Path) -> str:
    return f"{folder} is not empty: pick a new folder (llmi never overwrites files it did not write)"


def _is_empty_folder(path: Path) -> bool:
    """True for an empty folder, False when nothing is there; raises if something else is there."""
    if not os.path.lexists(path):
        return False
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if any(path.iterdir()):
        raise FileExistsError(_not_empty(path))
    return True


def _new_folder(parent: Path) -> Path:
    """A staging folder in `parent`, made with the usual permissions (it may become the report folder)."""
    folder = parent / f".llmi-staging-{secrets.token_hex(6)}"
    folder.mkdir()
    return folder


def _move_into(staging: Path, out_dir: Path, names: tuple[str, ...]) -> None:
    """Move staged entries into `out_dir`, never replacing anything; on failure take back what was moved."""
    placed: list[Path] = []
    try:
        for name in names:
            source, target = staging / name, out_dir / name
            # Claim the name first (this fails if anything is there, even a file that appeared a moment ago),
            # then rename onto our own claim.
            if source.is_dir():
                target.mkdir()
            else:
                target.touch(exist_ok=False)
            placed.append(target)
            os.replace(source, target)
    except BaseException:
        for target in reversed(placed):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        raise
