"""The multimodal judge: sees the request and the finished document (text and images in order) and scores
Image Quality, Task Relevance and Text-Image Relevance, 1 to 5, weighted toward the weakest image."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from PIL import Image
from pydantic import BaseModel, Field

from judges._endpoint import JudgeEndpoint, JudgeResult, ask_for_scores, gather_bounded
from llmi_graph.state import Figure, State
from llmi_graph.tags import TextSegment

PROMPT_VERSION = "mllm-judge/1"
MAX_SIDE = 768

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


def document_parts(document: Sequence[TextSegment | Figure]) -> list[dict[str, Any]]:
    """The document as ordered content parts: text, images, and a note for each failed slot."""
    parts: list[dict[str, Any]] = []
    for item in document:
        if isinstance(item, TextSegment):
            if item.text.strip():
                parts.append({"type": "text", "text": item.text})
        elif item.status == "ok" and item.image is not None:
            parts.append(image_part(Path(item.image.path).read_bytes()))
        else:
            parts.append({"type": "text", "text": f"[Image {item.index} could not be made: {item.error}]"})
    return parts


class MLLMJudge:
    """Scores a finished document at an OpenAI-compatible endpoint serving a vision-language model."""

    names = ("quality", "task_relevance", "text_image_relevance")

    def __init__(self, endpoint: JudgeEndpoint):
        self.endpoint = endpoint

    def messages(self, prompt: str, document: Sequence[TextSegment | Figure]) -> list:
        content = [
            {"type": "text", "text": f"User request:\n{prompt}\n\nThe document:"},
            *document_parts(document),
            {"type": "text", "text": "Give the Quality, Task relevance and Text-image relevance scores."},
        ]
        return [SystemMessage(content=RUBRIC), HumanMessage(content=content)]

    async def judge(self, prompt: str, document: Sequence[TextSegment | Figure]) -> JudgeResult:
        import asyncio

        messages = await asyncio.to_thread(self.messages, prompt, document)  # reads image files
        return await ask_for_scores(self.endpoint, messages, MLLMJudgement, self.names, PROMPT_VERSION)

    async def judge_state(self, state: State) -> JudgeResult:
        return await self.judge(state.prompt, state.document)

    async def judge_many(self, states: Sequence[State]) -> list[JudgeResult]:
        return await gather_bounded([self.judge_state(s) for s in states], self.endpoint.concurrency)
