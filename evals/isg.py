"""ISG-Bench (ICLR 2025, arXiv 2411.17188): interleaved generation whose answers must follow a set layout of text
and image blocks, 21 categories in 8 task groups.

Data, in either of the official formats (github.com/Dongping-Chen/ISG, `ISG_eval/`), read from `LLMI_ISG_DIR`, else
`../shared/benchmarks/isg-bench` next to this repository:

- `ISG-Bench.jsonl`, the benchmark: `id`, `Category`, `Query` and `Golden` (lists of `{"type": "text" | "image",
  "content": text or an image path relative to the file's folder}`), and `predict` (the evaluator's scene graph:
  `structural`, `block_tuple`, `block_qa`, `image_tuple`, `image_qa`). `id` repeats across categories, so an
  item's id is `<Category>-<id>`.
- `task_few_shot.json`, the evaluator's exemplars (category -> list of `input`, `sequence` {`Query`, `Answer`: block
  names like `<query_img1>`, `<gen_text1>`, `<gen_img1>`}, `relation`, `tuple`, `relation_qa`, `attribute_qa`), for
  development; and the flat form of the same (`category`, `idx`, `prompt`, `num_query_images`, `answer_structure`).
  Exemplars carry no images and no golden text, only the golden layout.

Requests. The prompt is the query's text (blocks joined by a blank line; an image block becomes `[image k]`,
counting input images from 0). Items whose query needs images are skipped unless `text_only=False` and the files
exist. `image_num` is 99 ("at least one image"): every ISG answer has images and the prompts state how many, so
the request adds nothing the benchmark does not say (0 would have the planner ask for one to three images).

Structural score, as ISG's evaluator computes it (`evaluate_structure` in `ISG-eval.py`): 1 when the answer's
blocks, each reduced to text or image, equal the golden answer's blocks in count and order, else 0. The answer's
blocks come from the finished document the way ISG's own generation pipeline splits a draft: whitespace-only text
is dropped, text between two images is one block, and every image slot is an image block, failed ones included
(ISG records a failed generation as an image block with no file). `structural_made` leaves failed slots out (the
layout a reader actually sees). Golden blocks come from `Golden` (as the evaluator does), else from the exemplar's
`sequence.Answer`. ISG's summary (`calculate_performance.py`) reports the share of structural matches per group.

Holistic score: a multimodal judge, 1 to 10 (ISG's holistic level asks for an overall 1-10 score, with the golden
answer shown), with our own rubric. The judge sees the request, the answer, and the golden answer's text with its
images as placeholders (ISG shows the golden images too; they are seldom available, and leaving them out keeps the
judge's input the same everywhere). ISG's block and image levels (VQA over its scene graph) are not computed here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
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
from llmi_graph.tags import TextSegment

DATA_ENV = "LLMI_ISG_DIR"
DATA_FILES = ("ISG-Bench.jsonl", "task_few_shot.json")
PROMPT_VERSION = "isg-holistic/2"  # 2: failed slots numbered as the report numbers figures
IMAGE_NUM = 99
NO_JUDGE = "no multimodal judge configured"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".PNG", ".JPG", ".JPEG")

TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "Style Transfer": ("Art Style Transfer", "Scene Attribute Transfer", "Photo Variation", "Portrait Variation"),
    "Progressive": ("Animation Images", "Animation Text-Image", "Attribute Transfer"),
    "3D Scene": ("3D_object", "multi-Perspective Scene Generation"),
    "Image Decomposition": ("Realistic Object Detection", "Imaginary Object Detection"),
    "Image-Text Complementation": ("HowTo", "Scientific"),
    "Temporal Prediction": ("Prediction", "painting"),
    "Visual Story Telling": ("visual storytelling text-image", "visual storytelling image", "visual storytelling text"),
    "VQA": ("Object_VQA", "Historical"),
}
"""ISG's task groups and their categories, as its summary script reports them."""

_GROUP_OF = {category: group for group, categories in TASK_GROUPS.items() for category in categories}

RUBRIC = """You grade answers that mix text and images, made for a request that asks for a particular sequence of
text and images (a story, a step-by-step guide, variations of a picture, views of a scene, ...). You see the
request (with its images, if it has any), then the answer in reading order (a note marks each image the system
failed to make: count it as missing), then a reference answer written by a person, its images shown as
placeholders.

Judge the answer as a whole, from 1 (useless) to 10 (as good as the reference or better), weighing:
- whether text and images tell one coherent story;
- whether the text is accurate and the images show the right things;
- whether it does what the request asks, including how many images and texts it gives, in what order;
- whether each image matches the text that goes with it;
- how original and well made the content is.

Give the score first, then a short explanation."""


class ISGJudgement(BaseModel):
    """The holistic judge's structured answer (score first, so a truncated answer still holds it)."""

    holistic: int = Field(ge=1, le=10, description="The answer as a whole, 1-10.")
    explanation: str = Field(description="Two or three sentences on the strengths and weaknesses.")


METRICS: tuple[Metric, ...] = (
    Metric("structural", "1 when the answer's text/image blocks equal the golden layout (ISG's).", False, "0-1"),
    Metric("structural_made", "As structural, failed image slots left out (what a reader sees).", False, "0-1"),
    Metric("images_made", "Images in the finished document (failed slots not counted).", False, "count"),
    Metric("gold_images", "Image blocks in the golden answer.", False, "count"),
    Metric("image_count_match", "1 when images made equals the golden image count, else 0.", False, "0-1"),
    Metric("tag_validity", "Share of the draft's <imgen> tags that are valid (no tags: not scored).", False, "0-1"),
    Metric("holistic", "The answer as a whole, against the request and the golden answer (ISG's).", True, "1-10"),
)


def data_dir() -> Path:
    """The folder holding ISG's `ISG-Bench.jsonl` or `task_few_shot.json`: `$LLMI_ISG_DIR`, else
    `../shared/benchmarks/isg-bench` beside this repository. Raises `FileNotFoundError` saying where to put them."""
    how = (
        "put ISG_eval/ISG-Bench.jsonl (with its images/ folder) or ISG_eval/task_few_shot.json from "
        "https://github.com/Dongping-Chen/ISG in a folder"
    )
    return _data.benchmark_dir(DATA_ENV, "isg-bench", DATA_FILES, how)


def data_file(source: Path | str | None = None) -> Path:
    """The data file: `source` (a file, or a folder holding `ISG-Bench.jsonl` or else `task_few_shot.json`), else
    the one in `data_dir()`."""
    folder = data_dir() if source is None else Path(source).expanduser()
    if folder.is_dir():
        for name in DATA_FILES:
            if (folder / name).is_file():
                return folder / name
        raise FileNotFoundError(f"no {' or '.join(DATA_FILES)} in {folder}")
    if not folder.is_file():
        raise FileNotFoundError(f"ISG-Bench data not found at {folder}: pass ISG-Bench.jsonl or the folder holding it")
    return folder


def blocks(document: Sequence[TextSegment | Figure], *, drop_failed: bool = False) -> list[str]:
    """The document as ISG's evaluator sees it: "text" and "image" blocks in order. Whitespace-only text is
    dropped, text between two images is one block, and every image slot is a block (failed ones too, unless
    `drop_failed`)."""
    out: list[str] = []
    for part in document:
        if isinstance(part, TextSegment):
            if part.text.strip() and (not out or out[-1] != "text"):
                out.append("text")
        elif part.status == "ok" or not drop_failed:
            out.append("image")
    return out


def structural_score(answer: Sequence[str], golden: Sequence[str]) -> float:
    """ISG's structural level for one answer: 1.0 when the block kinds match the golden ones in count and order."""
    return 1.0 if list(answer) == list(golden) else 0.0


@dataclass(frozen=True)
class _Row:
    id: str
    category: str
    prompt: str
    images: list[str | None]  # the query's images: a path relative to the data file, or None when not given
    gold_blocks: list[str]
    gold_texts: list[str]
    format: str


def _kind(name: str, where: str) -> str:
    if "gen_text" in name:
        return "text"
    if "gen_img" in name:
        return "image"
    raise ValueError(f"{where}: {name!r} in the answer layout is neither <gen_textN> nor <gen_imgN>")


def _query_prompt(query: list[dict[str, Any]]) -> tuple[str, list[str | None]]:
    count = itertools.count()
    parts: list[str] = []
    images: list[str | None] = []
    for block in query:
        if block["type"] == "text":
            parts.append(str(block["content"]).strip())
        else:
            parts.append(f"[image {next(count)}]")
            images.append(str(block["content"]) if block.get("content") else None)
    return "\n\n".join(p for p in parts if p), images


def _benchmark_row(row: dict[str, Any], where: str) -> _Row:
    prompt, images = _query_prompt(row["Query"])
    golden = row.get("Golden")
    if golden:
        gold_blocks = ["text" if b["type"] == "text" else "image" for b in golden]
        gold_texts = [str(b["content"]) for b in golden if b["type"] == "text"]
    else:
        gold_blocks = [_kind(name, where) for name in row["predict"]["structural"]["Answer"]]
        gold_texts = []
    return _Row(str(row["id"]), str(row["Category"]), prompt, images, gold_blocks, gold_texts, "ISG-Bench")


def _exemplar_row(category: str, idx: int, prompt: str, num_images: int, layout: list[str], where: str) -> _Row:
    gold = [_kind(name, where) for name in layout]
    return _Row(str(idx), category, prompt.strip(), [None] * num_images, gold, [], "few-shot")


def _read_rows(path: Path) -> Iterator[_Row]:
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected ISG's task_few_shot.json (category -> exemplars)")
        for category, exemplars in data.items():
            for idx, ex in enumerate(exemplars):
                yield _parse(f"{path}:{category}[{idx}]", _exemplar, category, idx, ex)
        return
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield _parse(f"{path}:{number}", _line_row, line)


def _exemplar(category: str, idx: int, ex: dict[str, Any], where: str) -> _Row:
    layout = ex["sequence"]
    num_images = sum(1 for name in layout["Query"] if "query_img" in name)
    return _exemplar_row(category, idx, ex["input"], num_images, layout["Answer"], where)


def _line_row(line: str, where: str) -> _Row:
    row = json.loads(line)
    if "Query" in row:
        return _benchmark_row(row, where)
    if "answer_structure" in row:
        layout = row["answer_structure"]
        return _exemplar_row(row["category"], row["idx"], row["prompt"], row["num_query_images"], layout, where)
    raise KeyError("Query")


def _parse(where: str, parse: Callable[..., _Row], *args: Any) -> _Row:
    """`parse(*args, where)`, its errors turned into one that names the row and the formats expected."""
    try:
        return parse(*args, where)
    except (KeyError, TypeError, IndexError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{where}: not an ISG row ({type(exc).__name__}: {exc}); expected an ISG-Bench row (id, Category, Query, "
            "Golden) or a few-shot exemplar (input, sequence)"
        ) from None


def _find_image(base: Path, name: str) -> Path | None:
    """The query image's file, relative to the data file's folder; ISG's paths sometimes differ in the case of the
    extension (.JPG for .jpg), so other image extensions are tried too."""
    path = Path(name) if Path(name).is_absolute() else base / name
    if path.is_file():
        return path
    return next((p for p in (path.with_suffix(s) for s in _IMAGE_SUFFIXES) if p.is_file()), None)


def _query_files(row: _Row, base: Path) -> list[Path] | None:
    """The query's image files, or None when any of them is not available."""
    files: list[Path] = []
    for image in row.images:
        found = _find_image(base, image) if image else None
        if found is None:
            return None
        files.append(found)
    return files


def _skip_reason(row: _Row, files: list[Path] | None, text_only: bool) -> str | None:
    n = len(row.images)
    needs = f"needs {n} input image{'s' if n != 1 else ''}"
    if not n:
        return None
    if files is None:
        return f"{needs} that {'are' if n != 1 else 'is'} not available"
    if text_only:
        return f"{needs} (a text-only run: pass text_only=False to use them)"
    return None


def _item(row: _Row, files: list[Path] | None, skip: str | None, image_num: int) -> Item:
    images = [data_url(f.read_bytes()) for f in files or ()] if skip is None else []
    return Item(
        id=safe_id(f"{row.category}-{row.id}"),
        request={"prompt": row.prompt, "image_num": image_num, "images": images},
        meta={
            "isg_id": row.id,
            "category": row.category,
            "task": _GROUP_OF.get(row.category),
            "format": row.format,
            "num_query_images": len(row.images),
            "gold_structure": row.gold_blocks,
            "gold_num_images": row.gold_blocks.count("image"),
            "gold_text": row.gold_texts,
        },
        skip=skip,
    )


class ISGBenchmark:
    """The ISG-Bench adapter (see the module docstring for the choices it makes)."""

    name = "isg"
    metrics = METRICS
    main = "holistic"
    group_key = "category"

    def load(
        self,
        source: Path | str | None = None,
        *,
        limit: int | None = None,
        categories: str | Iterable[str] | None = None,
        limit_per_category: int | None = None,
        text_only: bool = True,
        image_num: int = IMAGE_NUM,
    ) -> list[Item]:
        """ISG's items in file order.

        `categories`: category names ("visual storytelling text") or task groups ("Visual Story Telling"), any
        case; an unknown one is an error. `limit_per_category`: the first N runnable items of each category (a
        deterministic stratified sample); `limit`: the first N runnable items overall, after that. Items that cannot
        run come back with `skip` set, but only in a full load: a sample (either limit set) holds runnable items only.
        """
        _data.check_limit("limit", limit)
        _data.check_limit("limit_per_category", limit_per_category)
        path = data_file(source)
        rows = list(_read_rows(path))
        wanted = _data.names(categories)
        if wanted is not None:
            groups = {g.casefold(): {c.casefold() for c in cs} for g, cs in TASK_GROUPS.items()}
            known = {r.category.casefold() for r in rows}
            unknown = [name for name in wanted if name.casefold() not in known | groups.keys()]
            if unknown:
                raise ValueError(
                    f"unknown ISG categor(ies) {unknown}; the data has: {', '.join(sorted({r.category for r in rows}))}"
                    f"; task groups: {', '.join(TASK_GROUPS)}"
                )
            chosen = set().union(*({n.casefold()} | groups.get(n.casefold(), set()) for n in wanted))
            rows = [r for r in rows if r.category.casefold() in chosen]
        files = {id(row): _query_files(row, path.parent) for row in rows}
        return _data.sample(
            rows,
            limit=limit,
            per_group=limit_per_category,
            group=lambda row: row.category,
            skip_reason=lambda row: _skip_reason(row, files[id(row)], text_only),
            item=lambda row, skip: _item(row, files[id(row)], skip, image_num),
        )

    async def score(self, item: Item, state: State, judges: Judges) -> SampleScore:
        """The structural and rule metrics always; the holistic score when a multimodal judge is configured."""
        score = SampleScore()
        golden = list(item.meta["gold_structure"])
        answer = blocks(state.document)
        seen = blocks(state.document, drop_failed=True)
        score.set("structural", structural_score(answer, golden))
        score.set("structural_made", structural_score(seen, golden))
        made = seen.count("image")
        gold = golden.count("image")
        score.set("images_made", float(made))
        score.set("gold_images", float(gold))
        score.set("image_count_match", 1.0 if made == gold else 0.0)
        score.set("tag_validity", tag_validity(state.draft, len(state.input_images)), "the draft has no <imgen> tags")
        score.details["blocks"] = {"answer": answer, "seen": seen, "golden": golden}
        if judges.vision is None:
            score.set("holistic", None, NO_JUDGE)
            return score
        result = await _judge(item, state, judges)
        score.from_judge({"holistic": "holistic"}, result)
        score.details["judge"] = result.as_dict()
        return score


def reference_parts(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The golden answer for the judge: its text blocks, and a placeholder for each image; its layout alone when
    the data has no golden text (the exemplars)."""
    layout: list[str] = list(meta["gold_structure"])
    texts: list[str] = list(meta.get("gold_text") or [])
    if not texts:
        shown = ", ".join(layout)
        return [{"type": "text", "text": f"(Only the reference's layout is known: {shown}.)"}]
    parts: list[dict[str, Any]] = []
    text_blocks = iter(texts)
    images = itertools.count(1)
    for kind in layout:
        text = next(text_blocks, "") if kind == "text" else f"[reference image {next(images)}]"
        parts.append({"type": "text", "text": text})
    return parts


def judge_messages(item: Item, state: State, image_roots: list[Path] | None) -> list:
    """The judge's chat: the rubric, the request (and its images), the answer in reading order, and the golden
    answer. Raises `ImageReadError` for an image the judge may not read."""
    inputs = [Figure(index=i, status="ok", image=ref) for i, ref in enumerate(state.input_images)]
    answer = document_parts(state.document, image_roots) or [{"type": "text", "text": "[The answer is empty.]"}]
    content = [
        {"type": "text", "text": f"The request:\n{state.prompt}"},
        *document_parts(inputs, image_roots),
        {"type": "text", "text": "\nThe answer, in reading order:"},
        *answer,
        {"type": "text", "text": "\nThe reference answer:"},
        *reference_parts(item.meta),
        {"type": "text", "text": "\nGive the holistic score, 1 to 10."},
    ]
    return [SystemMessage(content=RUBRIC), HumanMessage(content=content)]


async def _judge(item: Item, state: State, judges: Judges) -> JudgeResult:
    assert judges.vision is not None
    roots = judges.image_roots or None  # none given: the configured image store, as the MLLM judge does
    try:
        messages = await asyncio.to_thread(judge_messages, item, state, roots)  # reads image files
    except ImageReadError as exc:
        reason = f"no score: {exc}"[:1000]
        return JudgeResult(scores=None, model=judges.vision.model, prompt_version=PROMPT_VERSION, reason=reason)
    return await ask_for_scores(judges.vision, messages, ISGJudgement, ["holistic"], PROMPT_VERSION, low=1, high=10)
