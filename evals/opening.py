"""OpenING (CVPR 2025, arXiv 2411.18499): open-ended interleaved image-text generation, 56 subtasks.

Data. The official `test_data.jsonl` (github.com/LanceZPF/OpenING, `OpenING-benchmark/`): one row per instance with
`total_uid`, `meta_task_id`, `meta_task_name`, `subtask_id`, `subtask_name`, `data_id` and `conversations` =
`[{"input": [step, ...]}, {"output": [step, ...]}]`, each step `{"image": path | null, "text": str}`. The input text
holds one `<BEGIN>` marker (text before it is a task instruction) and one `<image>` per input image; the output is
the human-written gold answer, one `<image>` placeholder per gold image. The repository has no license, so the data
is never copied here: it is read from `LLMI_OPENING_DIR`, else `../shared/benchmarks/opening` next to this
repository. Image paths (`./images/<subtask>/<id>-i-k.jpg`) are relative to the data file's folder.

Requests. The prompt is the input text with `<BEGIN>` removed (steps joined by a blank line; each `<image>`
placeholder becomes `[image k]`, counting input images from 0 as edits do). Rows with input images are skipped
unless `text_only=False` and the images are on disk (997 of the 2,160 rows need none).

`image_num` is 99 ("at least one image"), not the gold count and not 0. Every OpenING task asks for interleaved
output and every gold answer has at least one image, so 99 says only what the benchmark itself says. The gold
count would leak the answer's shape, which none of the systems in the authors' table were told (LLM-I's own
evaluation scripts send the question with no image count either). And 0 here is not "no constraint": the planner
turns it into "use one to three images", which would cap answers whose gold has up to ten (a quarter of the rows
have more than three). How close the count comes to the gold is measured instead (`image_count_match`,
`image_count_error`).

Scores. The seven OpenING criteria, 0 to 10 each, by a multimodal judge with our own rubric, plus their mean
(`overall`, as the authors' summary computes it). As in the authors' GPT-4o scoring, the judge sees the request
and the answer, not the gold answer (its text stays in `meta` for reports). Rule metrics are always computed.
`reference_scores` gives the authors' GPT-4o scores of other systems for a comparison table; they were judged
with the authors' prompt and GPT-4o, on all task types, so a comparison with our judge and subset is indicative.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from evals import _data
from evals.base import Item, Judges, Metric, SampleScore, safe_id
from judges._endpoint import JudgeResult, ask_for_scores
from judges.mllm import ImageReadError, document_parts
from judges.rule import tag_validity
from llmi_graph.state import Figure, State
from llmi_graph.store import data_url

DATA_ENV = "LLMI_OPENING_DIR"
DATA_FILE = "test_data.jsonl"
REFERENCE_FILES = ("model_score_summaries_gpt_score.csv", "model_score_summaries.csv")
REFERENCE_JUDGE = "GPT-4o, by the OpenING authors"
PROMPT_VERSION = "opening-judge/2"  # 2: failed slots numbered as the report numbers figures
IMAGE_NUM = 99
NO_JUDGE = "no multimodal judge configured"

CRITERIA: dict[str, str] = {
    "correctness": "Correctness",
    "image_text_coherency": "Image-Text Coherency",
    "multi_step_consistency": "Multi-step Consistency",
    "content_quality": "Content Quality",
    "human_preference_alignment": "Human Preference Alignment",
    "completeness": "Completeness",
    "content_richness": "Content Richness",
}
"""Our metric name -> OpenING's criterion name (the authors' order: most important first)."""

RUBRIC = """You grade answers that mix text and images, written for a user's request: stories, guides, reports,
tutorials, designs, conversations, often in several steps with an image each. You see the request (with its
images, if it has any), then the answer in reading order. A note marks each image the system failed to make:
count it as missing.

Score each criterion from 0 to 10: 0-2 fails, 3-5 clear problems, 6-8 good with small flaws, 9-10 excellent.

correctness: is the content right for the request? Facts and reasoning in the text; images that are plausible and
faithful to what they should show.
image_text_coherency: does each image show what the text beside it says, so that the two support each other?
multi_step_consistency: across steps, do the images keep one style and the same people, places and objects, and
does the text carry on from step to step?
content_quality: are the images clear, well made and free of defects, and is the text well written?
human_preference_alignment: is the answer free of harmful or unwanted content, and pleasant to look at?
completeness: does the answer deliver every step and part the request asks for, leaving nothing out?
content_richness: are the images varied and the text detailed, without padding?

Give the seven scores first, then a short explanation."""


class OpeningJudgement(BaseModel):
    """The judge's structured answer (scores first, so a truncated answer still holds them)."""

    correctness: int = Field(ge=0, le=10, description="Accurate, sensible text and faithful images, 0-10.")
    image_text_coherency: int = Field(ge=0, le=10, description="Images match the text beside them, 0-10.")
    multi_step_consistency: int = Field(ge=0, le=10, description="Consistent style, entities and flow, 0-10.")
    content_quality: int = Field(ge=0, le=10, description="Clear, defect-free images; well-written text, 0-10.")
    human_preference_alignment: int = Field(ge=0, le=10, description="Nothing harmful; pleasing to see, 0-10.")
    completeness: int = Field(ge=0, le=10, description="Every requested step and part is there, 0-10.")
    content_richness: int = Field(ge=0, le=10, description="Varied images, detailed text, 0-10.")
    explanation: str = Field(description="Two or three sentences on the strengths and weaknesses.")


METRICS: tuple[Metric, ...] = (
    Metric("correctness", "Content right for the request: text facts and reasoning, faithful images.", True, "0-10"),
    Metric("image_text_coherency", "Each image shows what the text beside it says.", True, "0-10"),
    Metric("multi_step_consistency", "One style and the same entities across images; text flows.", True, "0-10"),
    Metric("content_quality", "Clear, defect-free images and well-written text.", True, "0-10"),
    Metric("human_preference_alignment", "No harmful or unwanted content; pleasing to look at.", True, "0-10"),
    Metric("completeness", "Every step and part the request asks for is delivered.", True, "0-10"),
    Metric("content_richness", "Varied images and detailed, meaningful text.", True, "0-10"),
    Metric("overall", "Mean of the seven criteria (the OpenING authors' overall).", True, "0-10"),
    Metric("images_made", "Images in the finished document (failed slots not counted).", False, "count"),
    Metric("gold_images", "Images in the human-written gold answer.", False, "count"),
    Metric("image_count_match", "1 when images made equals the gold count, else 0.", False, "0-1"),
    Metric("image_count_error", "|images made - gold images|.", False, "count", higher_is_better=False),
    Metric("tag_validity", "Share of the draft's <imgen> tags that are valid (no tags: not scored).", False, "0-1"),
)

_BEGIN = re.compile(r"[ \t]*<BEGIN>[ \t]*")


def data_dir() -> Path:
    """The folder holding OpenING's `test_data.jsonl`: `$LLMI_OPENING_DIR`, else `../shared/benchmarks/opening`
    beside this repository. Raises `FileNotFoundError` saying where to put the data."""
    how = f"put OpenING-benchmark/{DATA_FILE} from https://github.com/LanceZPF/OpenING in a folder"
    return _data.benchmark_dir(DATA_ENV, "opening", [DATA_FILE], how)


def data_file(source: Path | str | None = None) -> Path:
    """The data file: `source` (a file, or a folder holding `test_data.jsonl`), else the one in `data_dir()`."""
    if source is None:
        return data_dir() / DATA_FILE
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"OpenING data not found at {path}: pass test_data.jsonl or the folder holding it")
    return path


def prompt_text(steps: list[dict[str, Any]]) -> str:
    """The request text of an input: `<BEGIN>` removed, steps joined by a blank line, each `<image>` placeholder
    replaced by `[image k]` (input images counted from 0)."""
    text = "\n\n".join(str(step.get("text") or "").strip() for step in steps)
    text = _BEGIN.sub(" ", text).strip()
    count = itertools.count()
    return re.sub(r"<image>", lambda _: f"[image {next(count)}]", text)


@dataclass(frozen=True)
class _Row:
    uid: str
    subtask: str
    subtask_key: str
    meta_task: str
    prompt: str
    input_images: list[str]
    gold_steps: list[dict[str, Any]]


def _read_rows(path: Path) -> Iterator[_Row]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                inputs = row["conversations"][0]["input"]
                parsed = _Row(
                    uid=str(row["total_uid"]),
                    subtask=str(row["subtask_name"]),
                    subtask_key=f"{int(row['meta_task_id'])}.{int(row['subtask_id'])}",
                    meta_task=str(row["meta_task_name"]),
                    prompt=prompt_text(inputs),
                    input_images=[str(step["image"]) for step in inputs if step.get("image")],
                    gold_steps=list(row["conversations"][1]["output"]),
                )
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{number}: not an OpenING row ({type(exc).__name__}: {exc}); expected total_uid, "
                    "meta_task_id, meta_task_name, subtask_id, subtask_name and conversations [input, output]"
                ) from None
            yield parsed


def _skip_reason(row: _Row, base: Path, text_only: bool) -> str | None:
    if not row.input_images:
        return None
    if any(not (base / image).is_file() for image in row.input_images):
        return "needs input images that are not available"
    if text_only:
        return "needs input images (a text-only run: pass text_only=False to use them)"
    return None


def _item(row: _Row, base: Path, skip: str | None, image_num: int) -> Item:
    images = [] if skip else [data_url((base / image).read_bytes()) for image in row.input_images]
    gold_texts = [str(step.get("text") or "").strip() for step in row.gold_steps]
    return Item(
        id=safe_id(row.uid),
        request={"prompt": row.prompt, "image_num": image_num, "images": images},
        meta={
            "uid": row.uid,
            "subtask": row.subtask,
            "subtask_key": row.subtask_key,
            "meta_task": row.meta_task,
            "num_input_images": len(row.input_images),
            "gold_num_images": sum(1 for step in row.gold_steps if step.get("image")),
            "gold_num_steps": len(row.gold_steps),
            "gold_text": "\n\n".join(gold_texts),
        },
        skip=skip,
    )


def _key_order(key: str) -> tuple[int, ...]:
    return tuple(int(part) for part in key.split("."))


class OpeningBenchmark:
    """The OpenING adapter (see the module docstring for the choices it makes)."""

    name = "opening"
    metrics = METRICS
    main = "overall"
    group_key = "subtask"

    def load(
        self,
        source: Path | str | None = None,
        *,
        limit: int | None = None,
        subtasks: str | Iterable[str] | None = None,
        limit_per_subtask: int | None = None,
        text_only: bool = True,
        image_num: int = IMAGE_NUM,
    ) -> list[Item]:
        """OpenING's items in file order.

        `subtasks`: names ("Fiction Writing", any case) or keys "meta.subtask" ("1.1"); an unknown one is an error.
        `limit_per_subtask`: the first N runnable items of each subtask (a deterministic stratified sample);
        `limit`: the first N runnable items overall, after that. Rows that cannot run come back with `skip` set,
        but only in a full load: a sample (either limit set) holds runnable items only.

        >>> items = OpeningBenchmark().load(limit_per_subtask=2)  # doctest: +SKIP
        """
        _data.check_limit("limit", limit)
        _data.check_limit("limit_per_subtask", limit_per_subtask)
        path = data_file(source)
        rows = list(_read_rows(path))
        wanted = _data.names(subtasks)
        if wanted is not None:
            known = {r.subtask.casefold() for r in rows} | {r.subtask_key for r in rows}
            unknown = [name for name in wanted if name.casefold() not in known]
            if unknown:
                listed = sorted({(r.subtask_key, r.subtask) for r in rows}, key=lambda kv: _key_order(kv[0]))
                names = ", ".join(f"{key} {name}" for key, name in listed)
                raise ValueError(f"unknown OpenING subtask(s) {unknown}; the data has: {names}")
            chosen = {name.casefold() for name in wanted}
            rows = [r for r in rows if r.subtask.casefold() in chosen or r.subtask_key in chosen]
        return _data.sample(
            rows,
            limit=limit,
            per_group=limit_per_subtask,
            group=lambda row: row.subtask,
            skip_reason=lambda row: _skip_reason(row, path.parent, text_only),
            item=lambda row, skip: _item(row, path.parent, skip, image_num),
        )

    async def score(self, item: Item, state: State, judges: Judges) -> SampleScore:
        """Rule metrics always; the seven criteria and their mean when a multimodal judge is configured."""
        score = SampleScore()
        made = sum(1 for f in state.document if isinstance(f, Figure) and f.status == "ok")
        gold = int(item.meta["gold_num_images"])
        score.set("images_made", float(made))
        score.set("gold_images", float(gold))
        score.set("image_count_match", 1.0 if made == gold else 0.0)
        score.set("image_count_error", float(abs(made - gold)))
        validity = tag_validity(state.draft, len(state.input_images))
        score.set("tag_validity", validity, "the draft has no <imgen> tags")
        if judges.vision is None:
            for name in [*CRITERIA, "overall"]:
                score.set(name, None, NO_JUDGE)
            return score
        result = await _judge(state, judges)
        score.from_judge({name: name for name in CRITERIA}, result)
        if result.scores is not None:
            score.set("overall", sum(result.scores[name] for name in CRITERIA) / len(CRITERIA))
        else:
            score.set("overall", None, result.reason or "the judge gave no score")
        score.judged_by["overall"] = {"model": result.model, "prompt_version": result.prompt_version}
        score.details["judge"] = result.as_dict()
        return score


def judge_messages(state: State, image_roots: list[Path] | None) -> list:
    """The judge's chat: the rubric, then the request (and its images) and the answer in reading order. Raises
    `ImageReadError` for an image the judge may not read."""
    inputs = [Figure(index=i, status="ok", image=ref) for i, ref in enumerate(state.input_images)]
    answer = document_parts(state.document, image_roots) or [{"type": "text", "text": "[The answer is empty.]"}]
    content = [
        {"type": "text", "text": f"The request:\n{state.prompt}"},
        *document_parts(inputs, image_roots),
        {"type": "text", "text": "\nThe answer, in reading order:"},
        *answer,
        {"type": "text", "text": "\nScore the answer on the seven criteria, 0 to 10 each."},
    ]
    return [SystemMessage(content=RUBRIC), HumanMessage(content=content)]


async def _judge(state: State, judges: Judges) -> JudgeResult:
    assert judges.vision is not None
    roots = judges.image_roots or None  # none given: the configured image store, as the MLLM judge does
    try:
        messages = await asyncio.to_thread(judge_messages, state, roots)  # reads image files
    except ImageReadError as exc:
        reason = f"no score: {exc}"[:1000]
        return JudgeResult(scores=None, model=judges.vision.model, prompt_version=PROMPT_VERSION, reason=reason)
    return await ask_for_scores(
        judges.vision, messages, OpeningJudgement, list(CRITERIA), PROMPT_VERSION, low=0, high=10
    )


@dataclass(frozen=True)
class ReferenceScores:
    """One system's published OpenING scores (0-10), by our metric names, with who judged them."""

    system: str
    rank: int
    scores: dict[str, float] = field(default_factory=dict)  # the seven criteria and "overall"
    judge: str = REFERENCE_JUDGE


def reference_scores(source: Path | str | None = None) -> dict[str, ReferenceScores]:
    """The OpenING authors' GPT-4o scores of other systems (and of the human answers), by system name, best first.

    Read from `model_score_summaries_gpt_score.csv` (or the original `model_score_summaries.csv`) in `source` (a
    folder, or the CSV itself), else in `data_dir()`. Those scores cover the authors' sampled pairs over all task
    types, judged by their prompt and GPT-4o: a comparison with our judge and subset is indicative only.
    """
    folder_or_file = data_dir() if source is None else Path(source).expanduser()
    if folder_or_file.is_dir():
        candidates = [folder_or_file / name for name in REFERENCE_FILES]
        path = next((p for p in candidates if p.is_file()), candidates[0])
    else:
        path = folder_or_file
    if not path.is_file():
        raise FileNotFoundError(
            f"OpenING reference scores not found at {path}: copy Interleaved_Arena/model_score_summaries.csv from "
            "https://github.com/LanceZPF/OpenING next to test_data.jsonl"
        )
    out: dict[str, ReferenceScores] = {}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for number, row in enumerate(csv.DictReader(fh), 2):
            try:
                scores = {name: float(row[column]) for name, column in CRITERIA.items()}
                scores["overall"] = float(row["Overall"])
                out[row["Model_Name"]] = ReferenceScores(row["Model_Name"], int(row["Rank"]), scores)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: not an OpenING score summary row ({exc!r})") from None
    return dict(sorted(out.items(), key=lambda kv: kv[1].rank))
