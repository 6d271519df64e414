"""Writing a finished run: a self-contained HTML report, Markdown with an images folder, and trajectory.json.

Model text is untrusted: Markdown is rendered with raw HTML disabled, the result is sanitised with nh3,
and the page's Content-Security-Policy forbids scripts and remote loads. Everything is written to a
staging folder first and moved into place at the end, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nh3
from markdown_it import MarkdownIt

from llmi_graph.config import Config
from llmi_graph.state import Figure, ImageRef, ImageResult, PolicyOutput, State
from llmi_graph.store import ImageStore
from llmi_graph.tags import ImageSlot, TextSegment, ToolCall

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
    assert figure.image is not None
    return f"{figure.index:02d}-{figure.source or 'image'}.{_EXT.get(figure.image.mime, 'png')}"


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
    """The report as Markdown; images are referenced as images/NN-source.ext."""
    parts: list[str] = []
    for item in state.document:
        if isinstance(item, TextSegment):
            parts.append(item.text)
        elif item.status == "ok" and item.image is not None:
            alt = (item.description or "").replace("]", "\\]").replace("\n", " ")
            parts.append(f"\n\n![{alt}](images/{image_filename(item)})\n\n")
        else:
            reason = (item.error or "unknown error").replace("\n", " ")
            parts.append(
                f"\n\n> **Image {item.index} ({item.source or 'invalid tag'}) could not be made:** {reason}\n\n"
            )
    return "".join(parts).strip() + "\n"


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
        },
        "segments": [s.model_dump(mode="json") for s in state.segments],
        "timings": {k: round(v, 4) for k, v in state.timings.items()},
        "tool_metrics": state.tool_metrics,
        "policy": policy,
        "config": _public_config(cfg) if cfg else None,
    }


def load_state(path: str | os.PathLike[str]) -> State:
    """Rebuild a finished State from a trajectory.json (or the folder holding one), e.g. to score it later."""
    path = Path(path)
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
        tool_metrics=data.get("tool_metrics", {}),
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
    """Write report.html, report.md, images/ and trajectory.json into `out_dir`, all or nothing."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".llmi-staging-"))
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
        # Move into place: files replace their old versions; the images folder is swapped whole.
        if (out_dir / "images").exists():
            shutil.rmtree(out_dir / "images")
        os.replace(images, out_dir / "images")
        for name in ("report.md", "trajectory.json", "report.html"):
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ReportPaths(
        out_dir=out_dir,
        html=out_dir / "report.html",
        markdown=out_dir / "report.md",
        trajectory=out_dir / "trajectory.json",
        images=out_dir / "images",
    )
