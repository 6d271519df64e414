"""The Rubric benchmark (LLMI-Bench style, written by us): 30 long report-like prompts, each with explicit image
requirements (what an image must show and the tool it needs) and up to 10 checkable criteria.

Data: `evals/data/rubric.jsonl`, one row per prompt:
`id`, `prompt`, `image_num` (the number of required images, or 99 for "at least these"), `tools` (the tools the
requirements need), `images` (input images, paths relative to the data file), `requirements` (a list of
{"text", "tool"}) and `criteria` (strings). Input images are drawn by `evals/data/build_rubric_images.py`.

Metrics (`METRICS`):
- `rubric` (0-10, judge): each criterion scored 0/1/2 by `judges.rubric.RubricJudge` on the finished document,
  the scored ones summed over 2 x their number. Criteria are about what the images show, so this needs the
  multimodal judge (`Judges.vision`); with only a text judge it is not scored, never guessed from the tags.
  The judge sees the request's text and the document, not the input images (`RubricJudge` takes none).
- `tool_accuracy` (0-1, rule): requirements met by an image made with the tool they need. Requirements are
  matched to images by tool only: per tool t, min(required_t, made_t); summed over tools; divided by the number
  of requirements. made_t counts the document's images made by t. Surplus images of a tool earn nothing, and an
  image of the wrong tool (a diffusion picture where a chart is required) meets no requirement. Whether an image
  shows the right thing is for the `rubric` judge.
- `tool_choice_accuracy` (0-1, rule): the same with attempted_t (the draft's valid tags asking for t, made or
  failed) in place of made_t: did the policy choose the right tools, whatever the backends did.
- `images_made` (count, rule): images the document holds (figures whose tool call produced one).
- `image_num_score` (0-1, rule): `judges.rule.image_num_score` on images_made, evaluation split (1 only at
  exactly image_num; for 99, at least one).
- `tag_validity` (0-1, rule): the share of the draft's tags that parse and validate; not scored without tags.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from evals.base import Item, Judges, Metric, SampleScore, safe_id
from judges.rubric import RubricJudge
from judges.rule import image_num_score, tag_validity
from llmi_graph.state import Figure, State
from llmi_graph.store import data_url
from llmi_graph.tags import SOURCES

DATA_FILE = Path(__file__).resolve().parent / "data" / "rubric.jsonl"
MAX_CRITERIA = 10

METRICS = (
    Metric(
        "rubric",
        "Criteria met, 0/1/2 each by the multimodal rubric judge, over the scored ones.",
        judge=True,
        scale="0-10",
    ),
    Metric("tool_accuracy", "Share of image requirements met by an image made with the tool they need.", scale="0-1"),
    Metric(
        "tool_choice_accuracy",
        "Share of image requirements for which the draft asked for the tool they need (made or failed).",
        scale="0-1",
    ),
    Metric("images_made", "Images the document holds (figures whose tool call produced one).", scale="count"),
    Metric("image_num_score", "1 if images_made meets image_num exactly (99: at least one), else 0.", scale="0-1"),
    Metric("tag_validity", "Share of the draft's <imgen> tags that parse and validate.", scale="0-1"),
)

NO_VISION_JUDGE = (
    "needs a multimodal judge (Judges.vision): the criteria include what the images show, which a text judge cannot see"
)


def _item(raw: Any, base: Path, where: str) -> Item:
    """One checked row as an Item; errors name the row and say what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a row must be a JSON object")
    row_id, prompt = raw.get("id"), raw.get("prompt")
    if not isinstance(row_id, str) or safe_id(row_id) != row_id:
        raise ValueError(f"{where}: id must be letters, digits, '.', '-' or '_', got {row_id!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: empty prompt")
    requirements = raw.get("requirements")
    if not isinstance(requirements, list) or not requirements:
        raise ValueError(f"{where}: requirements must be a non-empty list of {{'text', 'tool'}}")
    for requirement in requirements:
        if not isinstance(requirement, dict) or not isinstance(requirement.get("text"), str):
            raise ValueError(f"{where}: each requirement needs a 'text' and a 'tool', got {requirement!r}")
        if requirement.get("tool") not in SOURCES:
            raise ValueError(f"{where}: requirement tool {requirement.get('tool')!r} is not one of {list(SOURCES)}")
    image_num = raw.get("image_num")
    if image_num not in (99, len(requirements)):
        raise ValueError(f"{where}: image_num must be the number of requirements ({len(requirements)}) or 99")
    tools = raw.get("tools")
    if not isinstance(tools, list) or set(tools) != {r["tool"] for r in requirements}:
        raise ValueError(f"{where}: tools must list the tools of the requirements, got {tools!r}")
    criteria = raw.get("criteria")
    if not isinstance(criteria, list) or not 1 <= len(criteria) <= MAX_CRITERIA:
        raise ValueError(f"{where}: criteria must be a list of 1 to {MAX_CRITERIA} strings")
    if not all(isinstance(c, str) and c.strip() for c in criteria):
        raise ValueError(f"{where}: every criterion must be non-empty text")
    images = []
    for image in raw.get("images") or []:
        path = base / image
        if not path.is_file():
            raise ValueError(f"{where}: input image {image} not found (looked at {path})")
        images.append(data_url(path.read_bytes()))
    return Item(
        id=row_id,
        request={"prompt": prompt, "image_num": image_num, "images": images},
        meta={"requirements": requirements, "criteria": criteria, "tools": tools},
    )


def tools_attempted(state: State) -> Counter[str]:
    """Per tool, the draft's valid tags that ask for it (whether or not they produced an image)."""
    return Counter(c.source for c in state.calls if c.valid and c.source in SOURCES)


def tools_made(state: State) -> Counter[str]:
    """Per tool, the document's figures that hold an image made by it."""
    return Counter(f.source for f in state.document if isinstance(f, Figure) and f.status == "ok" and f.source)


def tool_accuracy(required: Iterable[str], used: Mapping[str, int]) -> float:
    """The share of requirements met when they are matched to images by tool: sum over tools t of
    min(required_t, used_t), divided by the number of requirements.

    >>> tool_accuracy(["search", "search", "code"], {"search": 1, "code": 3, "diffusion": 2})
    0.6666666666666666
    """
    needed = Counter(required)
    total = sum(needed.values())
    if total == 0:
        raise ValueError("tool_accuracy needs at least one requirement")
    return sum(min(count, used.get(tool, 0)) for tool, count in needed.items()) / total


class RubricBenchmark:
    """The Rubric benchmark adapter (see the module docstring for its data and metrics)."""

    name = "rubric"
    metrics = METRICS
    main = "rubric"
    group_key = None

    def load(self, source: Path | str | None = None, *, limit: int | None = None, **options: Any) -> list[Item]:
        """The benchmark's items from `source` (default: the shipped `evals/data/rubric.jsonl`), the first `limit`.

        Each item's request is a graph input ({"prompt", "image_num", "images"}, input images as data: URLs); its
        meta holds the requirements, criteria and tools. Raises ValueError naming the row for a malformed one.
        """
        if options:
            raise TypeError(f"the rubric benchmark takes no options, got {', '.join(sorted(options))}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        path = Path(source) if source is not None else DATA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"rubric data {path} not found")
        items: list[Item] = []
        seen: set[str] = set()
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if limit is not None and len(items) >= limit:
                    break
                if not line.strip():
                    continue
                where = f"{path.name} line {number}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: not valid JSON ({exc})") from None
                item = _item(raw, path.parent, where)
                if item.id in seen:
                    raise ValueError(f"{where}: the id {item.id!r} is used twice")
                seen.add(item.id)
                items.append(item)
        return items

    async def score(self, item: Item, state: State, judges: Judges) -> SampleScore:
        """Score one finished sample: the rule metrics always, `rubric` when a multimodal judge is configured.

        Never raises for a judge's failure: the criteria it could not score are listed, and `rubric` is not scored
        when none was."""
        result = SampleScore()
        required = [r["tool"] for r in item.meta["requirements"]]
        attempted, made = tools_attempted(state), tools_made(state)
        result.set("tool_accuracy", tool_accuracy(required, made))
        result.set("tool_choice_accuracy", tool_accuracy(required, attempted))
        images = sum(made.values())
        result.set("images_made", float(images))
        result.set("image_num_score", image_num_score(images, item.request["image_num"], split="eval"))
        validity = tag_validity(state.draft, len(item.request.get("images", [])))
        result.set("tag_validity", validity, "the draft has no <imgen> tags")
        result.details["tools"] = {
            tool: {"required": required.count(tool), "attempted": attempted[tool], "made": made[tool]}
            for tool in SOURCES
            if required.count(tool) or attempted[tool] or made[tool]
        }
        if judges.vision is None:
            result.set("rubric", None, NO_VISION_JUDGE)
            result.details["unscored_criteria"] = list(item.meta["criteria"])
            return result
        judge = RubricJudge(judges.vision, image_roots=judges.image_roots or None)
        rubric = await judge.judge(state.prompt, state.document, item.meta["criteria"])
        reasons = [c.reason for c in rubric.criteria if c.score is None and c.reason]
        result.set("rubric", rubric.score, reasons[0] if reasons else "the judge scored no criterion")
        result.judged_by["rubric"] = {"model": rubric.model, "prompt_version": rubric.prompt_version}
        result.details["rubric"] = rubric.as_dict()
        result.details["unscored_criteria"] = rubric.unscored
        return result
