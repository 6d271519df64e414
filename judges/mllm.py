"""The multimodal judge: sees the request and the finished document (text and images in order) and scores
Image Quality, Task Relevance and Text-Image Relevance, 1 to 5, weighted toward the weakest image."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from PIL import Image
from pydantic import BaseModel, Field

from judges._endpoint import JudgeEndpoint, JudgeResult, ask_for_scores, gather_bounded
from llmi_graph.config import Config
from llmi_graph.state import Figure, ImageRef, State
from llmi_graph.store import InvalidImageError, inspect_image
from llmi_graph.tags import TextSegment

PROMPT_VERSION = "mllm-judge/2"  # 2: failed slots are "Figure N" in reading order, as in the report
MAX_SIDE = 768
MAX_IMAGE_BYTES = 64 * 1024 * 1024

RUBRIC = """You grade documents that mix text and images, made for a user's request. You see the request, then
the document in reading order: text, images, and notes where an image could not be made (count those as missing
images). Give three scores from 1 (worst) to 5 (best); for each, the weakest image weighs most.

Quality: are the images clear, well made and free of defects (garbled text, broken shapes, unreadable charts)?
Task relevance: do the images show what the request needs: the right subjects, the requested number of images,
the requested style?
Text-image relevance: does each image match the text around it, so that text and images tell one story?

Answer with the three scores and a short explanation."""


class MLLMJudgement(BaseModel):
    """The multimodal judge's structured answer (scores first, so a truncated answer still holds them)."""

    quality: int = Field(ge=1, le=5, description="Image quality, weakest image weighing most, 1-5.")
    task_relevance: int = Field(ge=1, le=5, description="Right subjects, count and style for the request, 1-5.")
    text_image_relevance: int = Field(ge=1, le=5, description="Images match the surrounding text, 1-5.")
    explanation: str = Field(description="Two or three sentences on the strengths and weaknesses.")


class ImageReadError(ValueError):
    """An image the judge will not read: missing, outside the allowed folders, not a plain file, too big,
    not its hash, or not an image."""


def default_image_roots() -> list[Path]:
    """Where judges read images unless told otherwise: the configured image store (`LLMI_IMAGE_DIR`)."""
    return [Config().image_path]


def read_image(ref: ImageRef, roots: Sequence[str | os.PathLike[str]]) -> bytes:
    """The bytes of `ref` for a judge: a regular file inside one of `roots` whose SHA-256 is `ref.sha256`.

    The path is resolved first, so `..` and symlinks that lead outside the roots are refused, and the file is
    opened without following a link, so one swapped in afterwards is refused too. Raises `ImageReadError`
    with the reason.
    """
    try:
        path = Path(ref.path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ImageReadError(f"{ref.path} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    allowed = [Path(root).resolve() for root in roots]
    if not any(path != root and path.is_relative_to(root) for root in allowed):
        where = " or ".join(str(root) for root in allowed) or "nowhere"
        raise ImageReadError(f"{ref.path} is outside the folders a judge may read images from ({where})")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)  # NONBLOCK: a FIFO won't hang
    except OSError as exc:
        raise ImageReadError(f"{ref.path} cannot be opened ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageReadError(f"{ref.path} is not a regular file")
        if info.st_size > MAX_IMAGE_BYTES:
            raise ImageReadError(f"{ref.path} is over the {MAX_IMAGE_BYTES // 2**20} MB limit for judged images")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_IMAGE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageReadError(f"{ref.path} is over the {MAX_IMAGE_BYTES // 2**20} MB limit for judged images")
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ImageReadError(f"{ref.path} does not match the SHA-256 the document records for it")
    return data


def image_part(data: bytes) -> dict[str, Any]:
    """An image as an OpenAI content part (PNG, longest side at most 768 px)."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img.thumbnail((MAX_SIDE, MAX_SIDE))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()},
    }


def document_parts(
    document: Sequence[TextSegment | Figure], image_roots: Sequence[str | os.PathLike[str]] | None = None
) -> list[dict[str, Any]]:
    """The document as ordered content parts: text, images, and a note for each failed slot (numbered as the report
    numbers its figures, so a judge's explanation and the report agree).

    Images are read with `read_image` from `image_roots` (default: the configured image store); an image that
    cannot be read raises `ImageReadError`, since judging the document without it would be unfair.
    """
    roots = default_image_roots() if image_roots is None else image_roots
    parts: list[dict[str, Any]] = []
    number = 0  # the figure's number as the report gives it: 1, 2, ... in reading order
    for item in document:
        if not isinstance(item, TextSegment):
            number += 1
        if isinstance(item, TextSegment):
            if item.text.strip():
                parts.append({"type": "text", "text": item.text})
        elif item.status == "ok" and item.image is not None:
            try:
                data = read_image(item.image, roots)
                inspect_image(data)  # the pixel limit and a full decode check, before PIL converts it
                parts.append(image_part(data))
            except ImageReadError as exc:
                raise ImageReadError(f"image {item.index}: {exc}") from None
            except (InvalidImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
                raise ImageReadError(f"image {item.index}: {item.image.path} is not a usable image ({exc})") from None
        else:
            parts.append({"type": "text", "text": f"[Figure {number} could not be made: {item.error}]"})
    return parts


class MLLMJudge:
    """Scores a finished document at an OpenAI-compatible endpoint serving a vision-language model."""

    names = ("quality", "task_relevance", "text_image_relevance")

    def __init__(self, endpoint: JudgeEndpoint, image_roots: Sequence[str | os.PathLike[str]] | None = None):
        """`image_roots`: the folders images may be read from (default: the configured image store); `llmi
        score` adds the report's images/ folder."""
        self.endpoint = endpoint
        self.image_roots = default_image_roots() if image_roots is None else [Path(r) for r in image_roots]

    def messages(self, prompt: str, document: Sequence[TextSegment | Figure]) -> list:
        content = [
            {"type": "text", "text": f"User request:\n{prompt}\n\nThe document:"},
            *document_parts(document, self.image_roots),
            {"type": "text", "text": "Give the Quality, Task relevance and Text-image relevance scores."},
        ]
        return [SystemMessage(content=RUBRIC), HumanMessage(content=content)]

    async def judge(self, prompt: str, document: Sequence[TextSegment | Figure]) -> JudgeResult:
        """Scores for the document, or no score with the reason (an image it may not read, an endpoint
        failure); never raises for either."""
        try:
            messages = await asyncio.to_thread(self.messages, prompt, document)  # reads image files
        except ImageReadError as exc:
            reason = f"no score: {exc}"[:1000]
            return JudgeResult(scores=None, model=self.endpoint.model, prompt_version=PROMPT_VERSION, reason=reason)
        return await ask_for_scores(self.endpoint, messages, MLLMJudgement, self.names, PROMPT_VERSION)

    async def judge_state(self, state: State) -> JudgeResult:
        return await self.judge(state.prompt, state.document)

    async def judge_many(self, states: Sequence[State]) -> list[JudgeResult]:
        return await gather_bounded([self.judge_state(s) for s in states], self.endpoint.concurrency)
