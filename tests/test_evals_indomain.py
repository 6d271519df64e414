"""The In-domain benchmark: the RL held-out set as requests with stable ids, the hybrid reward from both judges
(fake servers with scripted answers), never an R without them, and the rule metrics always."""

from __future__ import annotations

import json
import re

import pytest

from evals.base import Item, Judges, SampleScore, aggregate
from evals.indomain import METRICS, IndomainBenchmark
from judges._endpoint import JudgeEndpoint
from llmi_graph.state import Request, State
from llmi_graph.store import ImageStore
from rl.data import HELDOUT_FILE, load_rows
from tests.fakes import FakeOpenAIServer
from tests.test_evals_rubric import finished_state
from tests.test_graph import tag

bench = IndomainBenchmark()
LLM_ANSWER = json.dumps({"text": 4, "image": 3, "explanation": "Clear; one vague tag."})
MLLM_ANSWER = json.dumps({"quality": 4, "task_relevance": 4, "text_image_relevance": 4, "explanation": "Fine."})
TWO_CHARTS = f"Sales rose. {tag('code', code='plt.bar([1], [2])')} Then fell. {tag('code', code='plt.plot([1])')}"


def item(tools: list[str], image_num: int = 2) -> Item:
    return Item(id="heldout-x", request={"prompt": "p", "image_num": image_num, "images": []}, meta={"tools": tools})


def judges_at(llm_url: str | None, vision_url: str | None, roots: list) -> Judges:
    return Judges(
        text=JudgeEndpoint(base_url=llm_url, model="text-judge", attempts=1) if llm_url else None,
        vision=JudgeEndpoint(base_url=vision_url, model="vision-judge", attempts=1) if vision_url else None,
        image_roots=roots,
    )


# --- loading --------------------------------------------------------------------------------------------


def test_load_gives_the_heldout_rows_with_stable_content_ids():
    rows = load_rows(HELDOUT_FILE)
    items = bench.load()
    assert len(items) == len(rows) == 59
    assert [i.request["prompt"] for i in items] == [r.prompt for r in rows]
    assert all(re.fullmatch(r"heldout-[0-9a-f]{10}", i.id) for i in items)
    assert len({i.id for i in items}) == 59
    assert [i.id for i in bench.load()] == [i.id for i in items]  # the same ids on every load
    for it, row in zip(items, rows, strict=True):
        Request.model_validate(it.request)
        assert it.meta == {"tools": list(row.tools)} and it.request["image_num"] == row.image_num
        assert len(it.request["images"]) == len(row.images)
        assert all(url.startswith("data:image/png;base64,") for url in it.request["images"])
    assert any(i.request["images"] for i in items)  # the edit rows carry their pictures as data
    assert [i.id for i in bench.load(limit=4)] == [i.id for i in items[:4]]


def test_ids_follow_the_content_not_the_order(tmp_path):
    raw = [json.loads(line) for line in HELDOUT_FILE.read_text(encoding="utf-8").splitlines()[:6]]
    for row in raw:  # the copy lives elsewhere: point at the same pictures
        row["images"] = [str(HELDOUT_FILE.parent / p) for p in row["images"]]
    copy = tmp_path / "heldout.jsonl"
    copy.write_text("".join(json.dumps(r) + "\n" for r in reversed(raw)), encoding="utf-8")
    original = [i.id for i in bench.load(limit=6)]
    assert [i.id for i in bench.load(copy)] == original[::-1]
    raw[0]["id"] = "my row/1"
    copy.write_text(json.dumps(raw[0]) + "\n", encoding="utf-8")
    assert [i.id for i in bench.load(copy)] == ["my-row-1"]  # a row's own id wins, made safe
    copy.write_text(json.dumps(raw[1]) + "\n" + json.dumps(raw[1]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="rows 1 and 2 have the same id"):
        bench.load(copy)
    with pytest.raises(TypeError, match="takes no options"):
        bench.load(split="train")


# --- scoring --------------------------------------------------------------------------------------------


async def test_without_judges_the_rules_are_scored_and_the_reward_is_not(tmp_path):
    state = finished_state(TWO_CHARTS, ImageStore(tmp_path), image_num=2)
    score = await bench.score(item(["code"]), state, Judges())
    assert score.metrics["image_num_score"] == 1.0
    assert score.metrics["tool_score"] == 1.0 and score.metrics["tag_validity"] == 1.0
    assert score.metrics["hybrid"] is None
    assert score.reasons["hybrid"] == (
        "needs both the LLM and the multimodal judge: Judges.text and Judges.vision not configured"
    )
    for name in ("llm_text", "llm_image", "mllm_quality", "mllm_task", "mllm_text_image"):
        assert score.metrics[name] is None and "configured" in score.reasons[name]
    assert score.judged_by == {} and score.details["hybrid"]["image_count"] == 2
    half = await bench.score(item(["code"], image_num=4), state, Judges())
    assert half.metrics["image_num_score"] == 0.5  # the training split's partial credit, as in R


async def test_rows_that_need_no_tool_and_drafts_without_tags():
    score = await bench.score(item([], image_num=-1), State(prompt="p", image_num=-1, draft="Just text."), Judges())
    assert score.metrics["image_num_score"] == 1.0
    assert score.metrics["tool_score"] is None and score.reasons["tool_score"] == "the prompt needs no tool"
    assert score.metrics["tag_validity"] is None and score.reasons["tag_validity"] == "the draft has no <imgen> tags"


async def test_hybrid_reward_from_both_judges(tmp_path):
    state = finished_state(TWO_CHARTS, ImageStore(tmp_path / "store"), image_num=2)
    with FakeOpenAIServer([LLM_ANSWER]) as llm, FakeOpenAIServer([MLLM_ANSWER]) as vision:
        score = await bench.score(item(["code"]), state, judges_at(llm.url, vision.url, [tmp_path / "store"]))
    # l = ((1.4 x 4 + 0.6 x 3) / 2 - 1) / 4 = 0.675; m = (4 - 1) / 4 = 0.75; n = 1: R = 0.2 + 0.225 + 0.3375
    assert score.metrics["hybrid"] == pytest.approx(0.7625)
    assert (score.metrics["llm_text"], score.metrics["llm_image"]) == (4.0, 3.0)
    assert [score.metrics[k] for k in ("mllm_quality", "mllm_task", "mllm_text_image")] == [4.0, 4.0, 4.0]
    assert score.judged_by["hybrid"] == {
        "model": "text-judge + vision-judge",
        "prompt_version": "llm-judge/1 + mllm-judge/2",
    }
    assert score.judged_by["llm_text"] == {"model": "text-judge", "prompt_version": "llm-judge/1"}
    assert score.judged_by["mllm_task"] == {"model": "vision-judge", "prompt_version": "mllm-judge/2"}
    assert score.details["hybrid"]["llm"] == pytest.approx(0.675)
    parts = vision.requests[0]["messages"][1]["content"]
    assert sum(p["type"] == "image_url" for p in parts) == 2  # the multimodal judge saw both charts


async def test_one_judge_alone_gives_its_scores_but_no_reward(tmp_path):
    state = finished_state(TWO_CHARTS, ImageStore(tmp_path), image_num=2)
    with FakeOpenAIServer([LLM_ANSWER]) as llm:
        score = await bench.score(item(["code"]), state, judges_at(llm.url, None, [tmp_path]))
    assert score.metrics["llm_text"] == 4.0
    assert score.metrics["hybrid"] is None and score.reasons["hybrid"].endswith("Judges.vision not configured")
    assert score.metrics["mllm_quality"] is None and "Judges.vision" in score.reasons["mllm_quality"]


async def test_a_judge_failure_leaves_the_reward_unscored_with_its_reason(tmp_path):
    state = finished_state(TWO_CHARTS, ImageStore(tmp_path), image_num=2)
    with FakeOpenAIServer(["I cannot grade this."]) as llm, FakeOpenAIServer([MLLM_ANSWER]) as vision:
        score = await bench.score(item(["code"]), state, judges_at(llm.url, vision.url, [tmp_path]))
    assert score.metrics["hybrid"] is None and score.reasons["hybrid"].startswith("no score from the llm judge")
    assert score.metrics["llm_text"] is None and "no valid text, image scores" in score.reasons["llm_text"]
    assert score.metrics["mllm_quality"] == 4.0 and score.metrics["image_num_score"] == 1.0


async def test_without_images_the_multimodal_judge_is_not_asked(tmp_path):
    state = State(prompt="p", image_num=2, draft="No pictures, only words.")
    with FakeOpenAIServer([LLM_ANSWER]) as llm, FakeOpenAIServer([MLLM_ANSWER]) as vision:
        score = await bench.score(item(["search"]), state, judges_at(llm.url, vision.url, [tmp_path]))
    assert vision.requests == []
    assert score.metrics["mllm_quality"] is None and "no image was made" in score.reasons["mllm_quality"]
    assert score.metrics["image_num_score"] == 0.0 and score.metrics["tool_score"] == 0.0
    assert score.metrics["hybrid"] == pytest.approx(0.5 * 0.675)  # the paper's reward: only the LLM term is left


def test_aggregate_over_indomain_scores():
    scores = []
    for reward, n in ((0.8, 1.0), (0.4, 0.5), (None, 0.0)):
        s = SampleScore()
        s.set("hybrid", reward, "needs both the LLM and the multimodal judge: Judges.vision not configured")
        s.set("image_num_score", n)
        scores.append(s)
    summary = aggregate(METRICS, scores)
    assert (summary["hybrid"].mean, summary["hybrid"].n, summary["hybrid"].not_scored) == (pytest.approx(0.6), 2, 1)
    assert summary["hybrid"].reasons == {"needs both the LLM and the multimodal judge: Judges.vision not configured": 1}
    assert summary["image_num_score"].mean == pytest.approx(0.5) and summary["image_num_score"].stderr is not None
    assert summary["llm_text"].n == 0 and summary["llm_text"].mean is None and summary["llm_text"].judge


# --- content metrics: made_image and chart_numbers ------------------------------------------------------

SHOP = "Our shop sold 120, 225, 200 and 95 books last year; chart the sales."
SHOP_CHART = f"Sales by quarter. {tag('code', code='plt.bar(range(4), [120, 225, 200, 95])')}"


def prompt_item(prompt: str, tools: list[str], image_num: int = 1) -> Item:
    return Item(id="heldout-y", request={"prompt": prompt, "image_num": image_num, "images": []}, meta={"tools": tools})


def charted(draft: str, store: ImageStore, prompt: str = SHOP, **kwargs) -> State:
    return finished_state(draft, store, **kwargs).model_copy(update={"prompt": prompt})


async def test_made_image_is_one_when_a_wanted_image_was_made(tmp_path):
    store = ImageStore(tmp_path)
    made = await bench.score(item(["code"], image_num=1), finished_state(SHOP_CHART, store, image_num=1), Judges())
    assert made.metrics["made_image"] == 1.0 and "made_image" not in made.reasons
    failed = await bench.score(item(["code"], image_num=1), finished_state(SHOP_CHART, store, failed=(0,)), Judges())
    assert failed.metrics["made_image"] == 0.0  # a tag whose tool failed made nothing
    words = await bench.score(item(["code"], image_num=99), State(prompt="p", draft="Only words."), Judges())
    assert words.metrics["made_image"] == 0.0
    one_of_two = finished_state(TWO_CHARTS, store, failed=(1,), image_num=2)
    assert (await bench.score(item(["code"]), one_of_two, Judges())).metrics["made_image"] == 1.0


async def test_made_image_is_not_scored_for_rows_that_want_no_images(tmp_path):
    state = finished_state(SHOP_CHART, ImageStore(tmp_path))  # a chart was made, but the row wants none
    score = await bench.score(item([], image_num=-1), state, Judges())
    assert score.metrics["made_image"] is None and score.reasons["made_image"] == "the prompt wants no images"


@pytest.mark.parametrize(
    ("code", "failed", "expected"),
    [
        ("plt.bar(range(4), [120, 225, 200, 95])", (), 1.0),
        ("plt.bar(range(2), [120, 225])", (), 0.5),
        ("plt.bar(range(4), [1, 2, 3, 4])", (), 0.0),  # range(4) is no number of the prompt's
        ("plt.bar(range(4), [120, 225, 200, 95])", (0,), 0.0),  # the chart failed
    ],
)
async def test_chart_numbers_is_the_share_of_the_prompt_numbers_in_working_chart_code(tmp_path, code, failed, expected):
    state = charted(f"Sales. {tag('code', code=code)}", ImageStore(tmp_path), failed=failed)
    score = await bench.score(prompt_item(SHOP, ["code"]), state, Judges())
    assert score.metrics["chart_numbers"] == expected and "chart_numbers" not in score.reasons


async def test_chart_numbers_is_not_scored_without_numbers_a_chart_or_wanted_images(tmp_path):
    store = ImageStore(tmp_path)
    reason = "the prompt gives no numbers for a chart (or wants no images, or no chart)"
    rainbow = "Explain how rainbows form, with a diagram."
    cases = [
        (prompt_item(rainbow, ["code"]), charted(SHOP_CHART, store, prompt=rainbow)),  # no numbers in the prompt
        (prompt_item(SHOP, ["search"]), charted(SHOP_CHART, store)),  # the row needs a search, not a chart
        (prompt_item(SHOP, ["code"], image_num=-1), charted(SHOP_CHART, store)),  # the row wants no images
    ]
    for it, state in cases:
        score = await bench.score(it, state, Judges())
        assert score.metrics["chart_numbers"] is None and score.reasons["chart_numbers"] == reason
    # A row that names no tools is scored: its chart may still plot the numbers.
    assert (await bench.score(prompt_item(SHOP, []), charted(SHOP_CHART, store), Judges())).metrics[
        "chart_numbers"
    ] == 1.0
