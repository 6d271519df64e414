"""The rubric judge for benchmarks (LLMI-Bench style): each criterion of a prompt scored 0, 1 or 2.

A prompt's score is the sum of the criteria that were scored over 2 x their number, reported 0-10. A criterion
the judge could not score is reported as such and left out of the sum, never counted as 0.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from judges._endpoint import JudgeEndpoint, JudgeResult, ask_for_scores, gather_bounded
from judges.mllm import ImageReadError, document_parts
from llmi_graph.state import Figure
from llmi_graph.tags import TextSegment

PROMPT_VERSION = "rubric-judge/2"  # 2: failed slots numbered as the report numbers figures

RUBRIC = """You check one criterion of a benchmark item. You see the user's request, the document that was made
for it (text and images in reading order; notes mark images that could not be made) and one criterion.

Score the criterion: 2 if the document fully meets it, 1 if it meets it in part, 0 if it does not. Justify the
score in one or two sentences that point at the text or image concerned."""


class CriterionJudgement(BaseModel):
    score: int = Field(ge=0, le=2, description="2 fully met, 1 partly, 0 not met.")
    justification: str = Field(description="One or two sentences pointing at the evidence.")


@dataclass
class CriterionResult:
    criterion: str
    score: int | None
    justification: str | None
    reason: str | None = None  # why it was not scored


@dataclass
class RubricResult:
    criteria: list[CriterionResult]
    model: str
    prompt_version: str = PROMPT_VERSION
    unscored: list[str] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """0-10 over the scored criteria; None when none could be scored."""
        scored = [c.score for c in self.criteria if c.score is not None]
        if not scored:
            return None
        return 10.0 * sum(scored) / (2 * len(scored))

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "criteria": [c.__dict__ for c in self.criteria],
            "unscored": self.unscored,
        }


class RubricJudge:
    """Scores a document against a prompt's criteria, one request per criterion, bounded concurrency."""

    def __init__(self, endpoint: JudgeEndpoint, image_roots: Sequence[str | os.PathLike[str]] | None = None):
        self.endpoint = endpoint
        self.image_roots = image_roots  # where images may be read from (default: the image store)

    def messages(self, prompt: str, parts: list[dict[str, Any]], criterion: str) -> list:
        content = [
            {"type": "text", "text": f"User request:\n{prompt}\n\nThe document:"},
            *parts,
            {"type": "text", "text": f"Criterion: {criterion}\nScore it 0, 1 or 2 and justify."},
        ]
        return [SystemMessage(content=RUBRIC), HumanMessage(content=content)]

    async def _criterion(self, prompt: str, parts: list[dict[str, Any]], criterion: str) -> CriterionResult:
        messages = self.messages(prompt, parts, criterion)
        result: JudgeResult = await ask_for_scores(
            self.endpoint, messages, CriterionJudgement, ("score",), PROMPT_VERSION, low=0, high=2
        )
        if result.scores is None:
            return CriterionResult(criterion, None, None, result.reason)
        return CriterionResult(criterion, int(result.scores["score"]), result.explanation or result.raw)

    async def judge(
        self, prompt: str, document: Sequence[TextSegment | Figure], criteria: Sequence[str]
    ) -> RubricResult:
        try:
            parts = await asyncio.to_thread(document_parts, document, self.image_roots)  # reads image files once
        except ImageReadError as exc:  # an image it may not read: no criterion is scored, and nothing is sent
            reason = f"no score: {exc}"[:1000]
            results = [CriterionResult(c, None, None, reason) for c in criteria]
        else:
            results = await gather_bounded(
                [self._criterion(prompt, parts, c) for c in criteria], self.endpoint.concurrency
            )
        return RubricResult(
            criteria=results, model=self.endpoint.model, unscored=[r.criterion for r in results if r.score is None]
        )
