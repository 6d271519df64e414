"""The In-domain benchmark: the RL held-out set (`rl/data/heldout.jsonl`) scored with the hybrid reward.

R is the reward the policy is trained on (`judges.hybrid`, the paper's weights, `split="train"`, no anti-hack
options), so held-out R is comparable with the training curves. It needs both judges: with either missing it is
not scored (`missing="unscored"`), never renormalised over the judges that happen to be there.

Item ids are the row's own `id` where it has one, else `<file stem>-<10 hex>` (`heldout-...` for the shipped
set, whose rows have none): a hash of the row's content (prompt, image_num, tools and the input images' bytes),
so an id names the same prompt in every run, whatever the order of the file, and a changed row gets a new id.

Metrics (`METRICS`): `hybrid` (R, 0-1, both judges), `image_num_score` (0-1, rule, the same count and split
as R), `llm_text` and `llm_image` (1-5, the LLM judge on the raw draft), `mllm_quality`, `mllm_task` and
`mllm_text_image` (1-5, the multimodal judge on the document; only asked when an image was made), `tool_score`
(0-1, rule: `judges.rule.tool_score` of the row's tools; not scored for rows that need none), `tag_validity`
(0-1, rule), `made_image` (0-1: at least one image made; rows that want images) and `chart_numbers` (0-1,
`rl.content.chart_numbers_score`: the prompt's numbers in working chart code; prompts that give numbers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from evals.base import Item, Judges, Metric, SampleScore, safe_id
from judges._endpoint import JudgeResult
from judges.hybrid import HybridOptions, score_state
from judges.llm import PROMPT_VERSION as LLM_PROMPT_VERSION
from judges.llm import LLMJudge
from judges.mllm import PROMPT_VERSION as MLLM_PROMPT_VERSION
from judges.mllm import MLLMJudge
from judges.rule import tag_validity, tool_score
from llmi_graph.state import State
from llmi_graph.tags import SOURCES
from rl.content import chart_numbers_score, succeeded_indices
from rl.data import HELDOUT_FILE, Row, load_rows

DATA_FILE = HELDOUT_FILE
OPTIONS = HybridOptions(missing="unscored")
"""The training reward as it is, except that a missing judge leaves R unscored."""

METRICS = (
    Metric(
        "hybrid", "The hybrid reward R = 0.2 n + 0.3 m n + 0.5 l from rules and both judges.", judge=True, scale="0-1"
    ),
    Metric("image_num_score", "n: how well the number of images made meets image_num (training split).", scale="0-1"),
    Metric("llm_text", "The LLM judge's Text score: writing and instruction following.", judge=True, scale="1-5"),
    Metric("llm_image", "The LLM judge's Image score: the plan of image tags.", judge=True, scale="1-5"),
    Metric("mllm_quality", "The multimodal judge's image Quality.", judge=True, scale="1-5"),
    Metric("mllm_task", "The multimodal judge's Task relevance of the images.", judge=True, scale="1-5"),
    Metric("mllm_text_image", "The multimodal judge's Text-image relevance.", judge=True, scale="1-5"),
    Metric("tool_score", "Did the draft use (and succeed with) the tools the prompt needs, weighted.", scale="0-1"),
    Metric("tag_validity", "Share of the draft's <imgen> tags that parse and validate.", scale="0-1"),
    Metric("made_image", "Did the draft make at least one image (rows that want images).", scale="0-1"),
    Metric(
        "chart_numbers",
        "Share of the prompt's numbers, names and labels in working chart code (prompts that give numbers).",
        scale="0-1",
    ),
)

NO_NUMBERS = "the prompt gives no numbers for a chart (or wants no images, or no chart)"
NOT_ASKED = "no image was made, so the multimodal judge was not asked (R counts it 5, 5, 5, as in the paper)"
LLM_METRICS = {"text": "llm_text", "image": "llm_image"}
MLLM_METRICS = {"quality": "mllm_quality", "task_relevance": "mllm_task", "text_image_relevance": "mllm_text_image"}


def row_id(row: Row, prefix: str) -> str:
    """A stable id for a row: its own `id` when it has one, else `prefix-` and 10 hex digits of a hash of its
    prompt, image_num, tools and the bytes of its input images (not their paths, which differ between machines)."""
    if row.id is not None:
        return safe_id(row.id)
    images = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in row.images]
    content = json.dumps([row.prompt, row.image_num, sorted(row.tools), images], ensure_ascii=False)
    return f"{prefix}-{hashlib.sha256(content.encode()).hexdigest()[:10]}"


def _judge_result(judged: dict[str, Any]) -> JudgeResult:
    """A judge's result back from `HybridReward.judges` (where it is kept as a dict)."""
    return JudgeResult(
        scores=judged["scores"], model=judged["model"], prompt_version=judged["prompt_version"],
        reason=judged["reason"], explanation=judged["explanation"],
    )  # fmt: skip


class IndomainBenchmark:
    """The In-domain benchmark adapter (see the module docstring for its data and metrics)."""

    name = "indomain"
    metrics = METRICS
    main = "hybrid"
    group_key = None

    def load(self, source: Path | str | None = None, *, limit: int | None = None, **options: Any) -> list[Item]:
        """The held-out rows as items (or those of `source`, an LLM-I row file), the first `limit` of them.

        Each item's request is a graph input ({"prompt", "image_num", "images"}, input images as data: URLs); its
        meta holds the tools the row needs."""
        if options:
            raise TypeError(f"the in-domain benchmark takes no options, got {', '.join(sorted(options))}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        path = Path(source) if source is not None else DATA_FILE
        items: list[Item] = []
        seen: dict[str, int] = {}
        for number, row in enumerate(load_rows(path)[:limit], start=1):
            item_id = row_id(row, safe_id(path.stem))
            if item_id in seen:
                raise ValueError(f"{path.name}: rows {seen[item_id]} and {number} have the same id {item_id!r}")
            seen[item_id] = number
            items.append(Item(id=item_id, request=row.request(), meta={"tools": list(row.tools)}))
        return items

    async def score(self, item: Item, state: State, judges: Judges) -> SampleScore:
        """Score one finished sample: the rule metrics always, the judges' scores and R when they are configured.

        Never raises for a judge's failure: its metrics and R are then not scored, with the judge's reason."""
        result = SampleScore()
        roots = judges.image_roots or None
        llm = LLMJudge(judges.text) if judges.text is not None else None
        mllm = MLLMJudge(judges.vision, image_roots=roots) if judges.vision is not None else None
        # The row's image_num is the target, whatever the run recorded in its state.
        state = state.model_copy(update={"image_num": item.request["image_num"]})
        reward = await score_state(state, llm, mllm, OPTIONS)
        result.set("image_num_score", reward.image_num_score)

        if judges.text is not None and judges.vision is not None:
            result.set("hybrid", reward.reward, reward.unscored_reason)
            result.judged_by["hybrid"] = {
                "model": f"{judges.text.model} + {judges.vision.model}",
                "prompt_version": f"{LLM_PROMPT_VERSION} + {MLLM_PROMPT_VERSION}",
            }
        else:
            absent = " and ".join(
                n for n, e in (("Judges.text", judges.text), ("Judges.vision", judges.vision)) if e is None
            )
            result.set("hybrid", None, f"needs both the LLM and the multimodal judge: {absent} not configured")

        if reward.judges["llm"] is None:
            for metric in LLM_METRICS.values():
                result.set(metric, None, "no LLM judge is configured (Judges.text)")
        else:
            result.from_judge(LLM_METRICS, _judge_result(reward.judges["llm"]))

        if mllm is None:
            for metric in MLLM_METRICS.values():
                result.set(metric, None, "no multimodal judge is configured (Judges.vision)")
        elif reward.judges["mllm"] is None:
            for metric in MLLM_METRICS.values():
                result.set(metric, None, NOT_ASKED)
        else:
            result.from_judge(MLLM_METRICS, _judge_result(reward.judges["mllm"]))

        tools = item.meta.get("tools") or []
        if tools:
            attempted = {c.source for c in state.calls if c.valid and c.source in SOURCES}
            succeeded = {r.source for r in state.results if r.status == "ok" and r.source in SOURCES}
            result.set("tool_score", tool_score(tools, attempted, succeeded))
        else:
            result.set("tool_score", None, "the prompt needs no tool")
        dumped = state.model_dump(mode="json")
        if item.request["image_num"] == -1:
            result.set("made_image", None, "the prompt wants no images")
        else:
            result.set("made_image", float(bool(succeeded_indices(dumped))))
        numbers = chart_numbers_score(dumped, tools or None)
        result.set("chart_numbers", numbers, None if numbers is not None else NO_NUMBERS)
        validity = tag_validity(state.draft, len(item.request.get("images", [])))
        result.set("tag_validity", validity, "the draft has no <imgen> tags")
        result.details["hybrid"] = {key: value for key, value in reward.as_dict().items() if key != "judges"}
        result.details["judges"] = reward.judges
        return result
