"""The LLM judge: reads the request and the raw draft (tags, not images) and scores Text and Image, 1 to 5."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from judges._endpoint import JudgeEndpoint, JudgeResult, ask_for_scores, gather_bounded

PROMPT_VERSION = "llm-judge/1"

RUBRIC = """You grade answers written by an assistant that makes documents mixing text and images. Where the
assistant wants an image it writes a tag: <imgen>{'source': ..., 'description': ..., 'params': {...}}</imgen>.
The sources are 'search' (a real photo found online), 'diffusion' (a newly generated picture), 'code' (a chart
drawn by Python code) and 'edit' (a change to an earlier image). You see the tags, not the images.

Give two scores from 1 (worst) to 5 (best).

Text: the quality of the writing and how well it does what the user asked: correct, complete, well organised,
the requested length, format and tone. Give 1 if the answer is only tags, or if images are introduced with
filler such as "Here is an image:" instead of flowing from the text.

Image: the plan for the images, judged tag by tag, with the weakest tag deciding the score. A good tag is
relevant to the text around it, specific (its description and params say exactly what to show), uses the right
source (search for real things, code for data and exact plots, diffusion for imagined scenes, edit to change an
earlier image), and sits where the reader needs it. If the answer has no tags, give 5 when the request needs no
images and 1 when it does.

Answer with the two scores and a short explanation."""


class LLMJudgement(BaseModel):
    """The LLM judge's structured answer (scores first, so a truncated answer still holds them)."""

    text: int = Field(ge=1, le=5, description="Writing quality and instruction following, 1-5.")
    image: int = Field(ge=1, le=5, description="Quality of the image plan (tags), weakest tag dominating, 1-5.")
    explanation: str = Field(description="Two or three sentences on the strengths and weaknesses.")


class LLMJudge:
    """Scores Text and Image for a draft at an OpenAI-compatible endpoint."""

    names = ("text", "image")

    def __init__(self, endpoint: JudgeEndpoint):
        self.endpoint = endpoint

    def messages(self, prompt: str, draft: str) -> list:
        user = f"User request:\n{prompt}\n\nAssistant answer (raw, with tags):\n{draft}\n\nGive Text and Image scores."
        return [SystemMessage(content=RUBRIC), HumanMessage(content=user)]

    async def judge(self, prompt: str, draft: str) -> JudgeResult:
        return await ask_for_scores(
            self.endpoint, self.messages(prompt, draft), LLMJudgement, self.names, PROMPT_VERSION
        )

    async def judge_many(self, items: Sequence[tuple[str, str]]) -> list[JudgeResult]:
        """(prompt, draft) pairs, at most `endpoint.concurrency` at once, in order."""
        return await gather_bounded([self.judge(p, d) for p, d in items], self.endpoint.concurrency)
