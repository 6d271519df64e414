"""Judges as selectors for test-time scaling (`llmi_graph.scaling.DraftScorer`): the app that composes the scaled
graph passes them in by name, so the graph never imports `judges`.

- `JudgeSelector` (`judge`): the LLM judge (`judges.llm.LLMJudge`) scores each draft on its own; a draft's score is
  the mean of its Text and Image scores (1-5), and 0 when the judge gave none.
- `RelativeSelector` (`relative`): one call shows the judge all K drafts and asks for a 0-10 score of each against
  the others, as RULER does for GRPO groups: comparing is easier than grading alone, and one call costs less than K.
  A failed call gives every draft 0, so the rules decide (the scaled graph breaks ties with the rules score).
- `MLLMImageChooser` (`llmi_graph.toolbox.ImageChooser`): search enhancement. One call shows the multimodal judge
  the top search results for a tag's description and asks for a 0-10 score of each; a failed call gives every
  image 0, so the rank order decides.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field, create_model

from judges._endpoint import JudgeEndpoint, JudgeResult, ask_for_scores
from judges.llm import PROMPT_VERSION, RUBRIC, LLMJudge
from judges.mllm import image_part

RELATIVE_PROMPT_VERSION = "relative-judge/1"
CHOOSER_PROMPT_VERSION = "image-chooser/1"

CHOOSER_RUBRIC = """You choose pictures for documents. You see what a picture should show, then several candidate
pictures, numbered. Score each from 0 (does not show it) to 10 (shows exactly that, clearly): the right subject,
the details the description names, and a clear, well-made picture. Answer with one score per picture."""

RELATIVE_RUBRIC = (
    RUBRIC.split("Give two scores")[0]
    + """You see several answers to the same request. Score each from 0 (worst) to 10 (best) against the others:
how well its text does what the user asked, and how good its image plan is (relevant, specific tags with the right
source, where the reader needs them; tags that cannot work, such as code that does not compile, count against it).
Different answers may share a score. Answer with one score per answer and a short explanation."""
)


class JudgeSelector:
    """The `judge` selector: each draft scored by the LLM judge on its own (mean of Text and Image, 1-5)."""

    def __init__(self, judge: LLMJudge):
        self.judge = judge
        self.last: list[JudgeResult] = []

    def describe(self) -> dict[str, str]:
        """What chose the drafts, for a batch's settings.json."""
        endpoint = self.judge.endpoint
        return {"selector": "judge", "model": endpoint.model, "url": endpoint.base_url, "prompt": PROMPT_VERSION}

    async def score(self, prompt: str, drafts: Sequence[str]) -> list[float]:
        self.last = await self.judge.judge_many([(prompt, d) for d in drafts])
        return [sum(r.scores.values()) / len(r.scores) if r.scores else 0.0 for r in self.last]


class RelativeSelector:
    """The `relative` selector: one judge call ranks the K drafts against each other (0-10 each)."""

    def __init__(self, endpoint: JudgeEndpoint):
        self.endpoint = endpoint
        self.last: JudgeResult | None = None

    def describe(self) -> dict[str, str]:
        return {
            "selector": "relative",
            "model": self.endpoint.model,
            "url": self.endpoint.base_url,
            "prompt": RELATIVE_PROMPT_VERSION,
        }

    @staticmethod
    def names(k: int) -> list[str]:
        return [f"answer_{i + 1}" for i in range(k)]

    def messages(self, prompt: str, drafts: Sequence[str]) -> list:
        shown = "\n\n".join(f"=== Answer {i + 1} ===\n{d}" for i, d in enumerate(drafts))
        user = f"User request:\n{prompt}\n\n{shown}\n\nScore each answer from 0 to 10 against the others."
        return [SystemMessage(content=RELATIVE_RUBRIC), HumanMessage(content=user)]

    async def score(self, prompt: str, drafts: Sequence[str]) -> list[float]:
        names = self.names(len(drafts))
        fields: dict = {n: (int, Field(ge=0, le=10, description=f"Score of answer {n[7:]}")) for n in names}
        schema: type[BaseModel] = create_model("RelativeJudgement", **fields, explanation=(str, Field(default="")))
        self.last = await ask_for_scores(
            self.endpoint, self.messages(prompt, drafts), schema, names, RELATIVE_PROMPT_VERSION, low=0, high=10
        )
        scores = self.last.scores
        return [scores[n] for n in names] if scores else [0.0] * len(drafts)


class MLLMImageChooser:
    """The search enhancement's chooser: the multimodal judge scores the top results against the description."""

    def __init__(self, endpoint: JudgeEndpoint):
        self.endpoint = endpoint
        self.last: JudgeResult | None = None

    def describe(self) -> dict[str, str]:
        return {
            "chooser": "mllm",
            "model": self.endpoint.model,
            "url": self.endpoint.base_url,
            "prompt": CHOOSER_PROMPT_VERSION,
        }

    def messages(self, description: str, images: Sequence[bytes]) -> list:
        parts: list = [{"type": "text", "text": f"The picture should show: {description}"}]
        for i, data in enumerate(images):
            parts += [{"type": "text", "text": f"Picture {i + 1}:"}, image_part(data)]
        parts.append({"type": "text", "text": "Score each picture from 0 to 10."})
        return [SystemMessage(content=CHOOSER_RUBRIC), HumanMessage(content=parts)]

    async def scores(self, description: str, images: Sequence[bytes]) -> list[float]:
        names = [f"picture_{i + 1}" for i in range(len(images))]
        fields: dict = {n: (int, Field(ge=0, le=10, description=f"Score of picture {n[8:]}")) for n in names}
        schema: type[BaseModel] = create_model("ImageChoice", **fields, explanation=(str, Field(default="")))
        self.last = await ask_for_scores(
            self.endpoint, self.messages(description, images), schema, names, CHOOSER_PROMPT_VERSION, low=0, high=10
        )
        scores = self.last.scores
        return [scores[n] for n in names] if scores else [0.0] * len(images)


def selectors_for(judge: JudgeEndpoint) -> dict[str, JudgeSelector | RelativeSelector]:
    """The scorers the scaled graph's `judge` and `relative` selectors use, both asking `judge`."""
    return {"judge": JudgeSelector(LLMJudge(judge)), "relative": RelativeSelector(judge)}


class AppJudging:
    """The judges an app passes to llmi_graph's verbs (`llmi_graph.cli.Judging`; the `llmi` root command does):
    the draft selectors at an LLM judge, and the chooser of search results at a multimodal judge."""

    def scorers(self, url: str, model: str) -> dict[str, JudgeSelector | RelativeSelector]:
        return selectors_for(JudgeEndpoint(base_url=url, model=model))

    def chooser(self, url: str, model: str) -> MLLMImageChooser:
        return MLLMImageChooser(JudgeEndpoint(base_url=url, model=model, api_key_env="LLMI_MLLM_JUDGE_API_KEY"))
