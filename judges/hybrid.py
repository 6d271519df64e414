"""The hybrid reward: rules, the LLM judge and the multimodal judge combined as in the LLM-I paper.

    l = ((1.4 Text + 0.6 Image)/2 - 1)/4          the LLM judge, in [0, 1]
    m = ((Quality + TaskRel + TextImgRel)/3 - 1)/4  the MLLM judge, in [0, 1]
    R = 0.2 n + 0.3 m n + 0.5 l                     n: the image-number score; the MLLM term is gated by n

`combine` is the arithmetic alone; `score_state` gathers the inputs from a finished graph state.

Missing judge scores are never the minimum. `missing="renormalize"` (default) drops the missing term and rescales
the weights of the others so R keeps its range; `missing="unscored"` returns R = None with the reason, so a
trainer can skip the sample.

Options that close the original's reward hacks, all off by default so the paper's numbers reproduce:
- `mllm_full_marks_only_if_unwanted`: the paper gives a document with no images the MLLM's (5, 5, 5); with this
  on, that happens only when images were not wanted (image_num -1); otherwise m = 0.
- `ignore_literal_image_markers`: the original counts literal `<image>` text as images; with this on, only made
  images count.
- `smooth_overflow`: the original gives R = 0 to documents with more than 10 images (a cliff); with this on, R
  tapers by 0.2 per image over 10.
- `tool_weight` > 0: R becomes (1 - w) R + w tool_score, rewarding the tools the prompt needs.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from judges._endpoint import JudgeResult
from judges.llm import LLMJudge
from judges.mllm import MLLMJudge
from judges.rule import image_num_score, literal_image_markers, tool_score
from llmi_graph.state import State

MAX_IMAGES = 10


@dataclass
class HybridReward:
    """R and every component, for logging."""

    reward: float | None
    image_num_score: float
    llm: float | None
    mllm: float | None
    weights: dict[str, float]
    unscored_reason: str | None = None
    tool_score: float | None = None
    image_count: int | None = None
    judges: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def combine(
    image_num_score: float,
    text: float | None,
    image: float | None,
    quality: float | None,
    task_relevance: float | None,
    text_image_relevance: float | None,
    *,
    w_rule: float = 0.2,
    w_mllm: float = 0.3,
    w_llm: float = 0.5,
    text_weight: float = 1.4,
    image_weight: float = 0.6,
    missing: Literal["renormalize", "unscored"] = "renormalize",
    tool_score: float | None = None,
    tool_weight: float = 0.0,
) -> HybridReward:
    """The paper's R from the image-number score and the judges' 1-5 scores (None: that judge gave no score)."""
    if not 0.0 <= image_num_score <= 1.0:
        raise ValueError(f"image_num_score must be in [0, 1], got {image_num_score}")
    for name, value in (("text", text), ("image", image), ("quality", quality), ("task_relevance", task_relevance),
                        ("text_image_relevance", text_image_relevance)):  # fmt: skip
        if value is not None and not 1.0 <= value <= 5.0:
            raise ValueError(f"{name} must be a 1-5 score or None, got {value}")
    n = image_num_score
    llm = (
        None
        if text is None or image is None
        else ((text_weight * text + image_weight * image) / (text_weight + image_weight) - 1) / 4
    )
    judged = (quality, task_relevance, text_image_relevance)
    mllm = None if any(v is None for v in judged) else (_mean([float(v) for v in judged]) - 1) / 4  # type: ignore[arg-type]
    weights = {"rule": w_rule, "mllm": w_mllm, "llm": w_llm, "text": text_weight, "image": image_weight,
               "tool": tool_weight}  # fmt: skip
    missing_terms = [name for name, value in (("llm", llm), ("mllm", mllm)) if value is None]
    if missing_terms and missing == "unscored":
        return HybridReward(None, n, llm, mllm, weights, f"no score from the {' and '.join(missing_terms)} judge",
                            tool_score=tool_score)  # fmt: skip
    terms = [(w_rule, n)]
    if mllm is not None:
        terms.append((w_mllm, mllm * n))
    if llm is not None:
        terms.append((w_llm, llm))
    present = sum(w for w, _ in terms)
    total = w_rule + w_mllm + w_llm
    reward = sum(w * v for w, v in terms) * (total / present if present else 0.0)
    if tool_weight:
        if tool_score is None:
            raise ValueError("tool_weight is set but tool_score is None")
        reward = (1 - tool_weight) * reward + tool_weight * tool_score
    return HybridReward(reward, n, llm, mllm, weights, tool_score=tool_score)


@dataclass(kw_only=True)
class HybridOptions:
    """Weights, the missing-score policy and the anti-hack options (all off: the paper's reward)."""

    w_rule: float = 0.2
    w_mllm: float = 0.3
    w_llm: float = 0.5
    text_weight: float = 1.4
    image_weight: float = 0.6
    missing: Literal["renormalize", "unscored"] = "renormalize"
    split: Literal["train", "eval"] = "train"
    mllm_full_marks_only_if_unwanted: bool = False
    ignore_literal_image_markers: bool = False
    smooth_overflow: bool = False
    tool_weight: float = 0.0

    def weights(self) -> dict[str, float]:
        return {"w_rule": self.w_rule, "w_mllm": self.w_mllm, "w_llm": self.w_llm, "text_weight": self.text_weight,
                "image_weight": self.image_weight, "tool_weight": self.tool_weight}  # fmt: skip


def image_count(state: State, options: HybridOptions) -> int:
    made = sum(1 for r in state.results if r.status == "ok")
    return made if options.ignore_literal_image_markers else made + literal_image_markers(state.draft)


def combine_state(
    state: State,
    llm: JudgeResult | None,
    mllm: JudgeResult | None,
    options: HybridOptions | None = None,
    required_tools: list[str] | None = None,
) -> HybridReward:
    """R for a finished state, given the judges' results (either may be None: not asked)."""
    options = options or HybridOptions()
    count = image_count(state, options)
    n = image_num_score(count, state.image_num, options.split)
    text = image = quality = task = text_image = None
    if llm is not None and llm.scores is not None:
        text, image = llm.scores["text"], llm.scores["image"]
    made = sum(1 for r in state.results if r.status == "ok")
    if made == 0 and (not options.mllm_full_marks_only_if_unwanted or state.image_num == -1):
        quality = task = text_image = 5.0  # the paper: a document without images is not marked down by the MLLM
    elif made == 0:
        quality = task = text_image = 1.0  # images were wanted and none were made: m = 0
    elif mllm is not None and mllm.scores is not None:
        quality, task, text_image = (mllm.scores[k] for k in ("quality", "task_relevance", "text_image_relevance"))
    tools = None
    if options.tool_weight:
        attempted = {c.source for c in state.calls if c.valid and c.source}
        succeeded = {r.source for r in state.results if r.status == "ok" and r.source}
        tools = tool_score(required_tools or [], attempted, succeeded)
    result = combine(n, text, image, quality, task, text_image, missing=options.missing, tool_score=tools,
                     **options.weights())  # fmt: skip
    if result.reward is not None and count > MAX_IMAGES:
        factor = max(0.0, 1 - 0.2 * (count - MAX_IMAGES)) if options.smooth_overflow else 0.0
        result.reward *= factor
    result.image_count = count
    result.judges = {"llm": llm.as_dict() if llm else None, "mllm": mllm.as_dict() if mllm else None}
    if result.reward is None and result.unscored_reason:
        reasons = [j.reason for j in (llm, mllm) if j is not None and j.reason]
        if reasons:
            result.unscored_reason += ": " + "; ".join(reasons)
    return result


async def score_state(
    state: State,
    llm_judge: LLMJudge | None,
    mllm_judge: MLLMJudge | None,
    options: HybridOptions | None = None,
    required_tools: list[str] | None = None,
) -> HybridReward:
    """Ask the judges (concurrently) about a finished state and combine their scores into R."""
    made = any(r.status == "ok" for r in state.results)

    async def none() -> None:
        return None

    llm, mllm = await asyncio.gather(
        llm_judge.judge(state.prompt, state.draft) if llm_judge else none(),
        mllm_judge.judge_state(state) if mllm_judge and made else none(),
    )
    return combine_state(state, llm, mllm, options, required_tools)
