"""The ISG-Bench adapter: the benchmark's JSONL and the evaluator's few-shot formats, the structural score as ISG's
evaluator computes it, the holistic judge over HTTP (a fake server with scripted answers), honest "not scored".

The rows under tests/data are invented in ISG's formats; one test reads the real few-shot exemplars from the
shared folder and skips when it is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evals.base import Item, Judges, SampleScore, aggregate
from evals.isg import IMAGE_NUM, NO_JUDGE, PROMPT_VERSION, RUBRIC, ISGBenchmark, blocks, structural_score
from judges._endpoint import JudgeEndpoint
from llmi_graph.state import Figure, ImageRef, State
from llmi_graph.store import ImageStore
from llmi_graph.tags import TextSegment
from tests.fakes import FakeOpenAIServer, png
from tests.test_graph import tag

DATA = Path(__file__).parent / "data"
ROWS = DATA / "isg_rows.jsonl"
FEW_SHOT = DATA / "isg_few_shot.json"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "isg-bench"

bench = ISGBenchmark()


# --- loading ------------------------------------------------------------------------------------------


def test_benchmark_rows_become_items_with_their_golden_layout():
    items = bench.load(ROWS)
    assert [i.id for i in items] == [
        "visual-storytelling-text-0001",
        "HowTo-0002",
        "Prediction-0001",
        "Scientific-0003",
    ]
    story, howto, prediction, science = items
    assert story.skip is None and story.request == {
        "prompt": "A fox finds a lantern in the snow. Continue the story in 2 images, each followed by a sentence.",
        "image_num": IMAGE_NUM,
        "images": [],
    }
    assert story.meta["gold_structure"] == ["image", "text", "image", "text"] and story.meta["gold_num_images"] == 2
    assert story.meta["gold_text"] == ["The fox carries the lantern home.", "Its den glows warmly all night."]
    assert story.meta["task"] == "Visual Story Telling" and story.meta["format"] == "ISG-Bench"
    assert howto.skip == "needs 1 input image that is not available"
    assert howto.request["prompt"].endswith("how to fix its chain.\n\n[image 0]")
    assert prediction.meta["gold_structure"] == ["text", "image", "image", "image"]
    assert prediction.meta["isg_id"] == "0001" and prediction.meta["task"] == "Temporal Prediction"
    assert science.skip is None and science.meta["task"] == "Image-Text Complementation"


def test_query_images_are_sent_when_asked_and_found_whatever_the_extension_case(tmp_path):
    shutil.copy(ROWS, tmp_path / "ISG-Bench.jsonl")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0002_q1.png").write_bytes(png())
    (tmp_path / "images" / "0001_q1.jpg").write_bytes(png((0, 200, 0)))  # the row says 0001_q1.JPG
    by_default = {i.id: i.skip for i in bench.load(tmp_path)}
    assert by_default["HowTo-0002"] == "needs 1 input image (a text-only run: pass text_only=False to use them)"
    items = {i.id: i for i in bench.load(tmp_path, text_only=False)}
    assert all(i.skip is None for i in items.values())
    assert [len(items[k].request["images"]) for k in ("HowTo-0002", "Prediction-0001")] == [1, 1]
    assert items["HowTo-0002"].request["images"][0].startswith("data:image/png;base64,")


def test_few_shot_exemplars_in_both_forms(tmp_path):
    items = bench.load(FEW_SHOT)
    assert [(i.id, i.skip) for i in items] == [
        ("visual-storytelling-text-0", None),
        ("Photo-Variation-0", "needs 1 input image that is not available"),
        ("Photo-Variation-1", "needs 2 input images that are not available"),
    ]
    assert items[0].meta["gold_structure"] == ["image", "text", "image", "text"]
    assert items[0].meta["gold_text"] == [] and items[0].meta["format"] == "few-shot"
    assert items[1].meta["task"] == "Style Transfer" and items[2].meta["num_query_images"] == 2
    exemplars = json.loads(FEW_SHOT.read_text())
    flat = tmp_path / "flat.jsonl"
    with flat.open("w") as fh:
        for category, rows in exemplars.items():
            for idx, ex in enumerate(rows):
                n = sum("query_img" in name for name in ex["sequence"]["Query"])
                line = {"category": category, "idx": idx, "prompt": ex["input"], "num_query_images": n,
                        "answer_structure": ex["sequence"]["Answer"]}  # fmt: skip
                fh.write(json.dumps(line) + "\n")
    assert bench.load(flat) == items


def test_category_filter_by_name_or_task_group_and_stratified_sample():
    assert [i.id for i in bench.load(ROWS, categories="howto")] == ["HowTo-0002"]
    group = bench.load(ROWS, categories=["Image-Text Complementation"])
    assert [i.id for i in group] == ["HowTo-0002", "Scientific-0003"]
    assert [i.id for i in bench.load(ROWS, limit_per_category=1)] == [
        "visual-storytelling-text-0001",
        "Scientific-0003",
    ]
    assert [i.id for i in bench.load(ROWS, limit=1)] == ["visual-storytelling-text-0001"]
    with pytest.raises(ValueError, match=r"unknown ISG categor\(ies\) \['Origami'\].*task groups: Style Transfer"):
        bench.load(ROWS, categories="Origami")
    with pytest.raises(ValueError, match="limit must be >= 0"):
        bench.load(ROWS, limit=-2)


def test_source_comes_from_the_environment_or_a_clear_error(tmp_path, monkeypatch):
    shutil.copy(FEW_SHOT, tmp_path / "task_few_shot.json")
    monkeypatch.setenv("LLMI_ISG_DIR", str(tmp_path))
    assert [i.meta["format"] for i in bench.load()] == ["few-shot"] * 3
    shutil.copy(ROWS, tmp_path / "ISG-Bench.jsonl")
    assert bench.load()[0].meta["format"] == "ISG-Bench"  # the benchmark wins over the exemplars
    monkeypatch.setenv("LLMI_ISG_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"LLMI_ISG_DIR=.*put ISG_eval/ISG-Bench\.jsonl"):
        bench.load()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "Category": "HowTo", "Query": [{"type": "text"}]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not an ISG row \(KeyError"):
        bench.load(bad)


# --- the structural score -----------------------------------------------------------------------------------


def failed(index: int) -> Figure:
    return Figure(index=index, source="search", status="failed", error="no results")


def made(index: int, store: ImageStore) -> Figure:
    return Figure(index=index, source="diffusion", status="ok", image=store.put(png((index * 40, 90, 160))))


def test_blocks_follow_isgs_splitting(tmp_path):
    store = ImageStore(tmp_path)
    document = [
        TextSegment(text="  \n"),  # whitespace only: no block
        made(0, store),
        TextSegment(text="The fox."),
        TextSegment(text=" Walks home."),  # adjacent text: one block
        failed(1),  # a failed slot is still an image block
        TextSegment(text="\n"),
        made(2, store),
        TextSegment(text="End."),
    ]
    assert blocks(document) == ["image", "text", "image", "image", "text"]
    assert blocks(document, drop_failed=True) == ["image", "text", "image", "text"]
    assert blocks([TextSegment(text="a"), failed(0), TextSegment(text="b")], drop_failed=True) == ["text"]
    assert structural_score(["image", "text"], ["image", "text"]) == 1.0
    assert structural_score(["text", "image", "text"], ["image", "text"]) == 0.0  # an intro text breaks the layout
    assert structural_score([], ["image"]) == 0.0


def story_item() -> Item:
    return bench.load(ROWS)[0]  # golden: image, text, image, text


def story_state(store: ImageStore, second: Figure) -> State:
    draft = f"{tag('diffusion', prompt='fox')}\nThe fox.\n{tag('search', query='den')}\nThe den."
    document = [made(0, store), TextSegment(text="\nThe fox.\n"), second, TextSegment(text="\nThe den.")]
    return State(prompt=story_item().request["prompt"], image_num=IMAGE_NUM, draft=draft, document=document)


async def test_rule_metrics_always_and_holistic_not_scored_without_a_judge(tmp_path):
    store = ImageStore(tmp_path)
    score = await bench.score(story_item(), story_state(store, failed(1)), Judges())
    assert score.metrics["structural"] == 1.0 and score.metrics["structural_made"] == 0.0
    assert score.metrics["images_made"] == 1.0 and score.metrics["gold_images"] == 2.0
    assert score.metrics["image_count_match"] == 0.0 and score.metrics["tag_validity"] == 1.0
    assert score.metrics["holistic"] is None and score.reasons["holistic"] == NO_JUDGE and score.judged_by == {}
    assert score.details["blocks"]["seen"] == ["image", "text"]
    empty = await bench.score(story_item(), State(prompt="p"), Judges())
    assert empty.metrics["structural"] == 0.0 and empty.metrics["tag_validity"] is None


def judges_at(url: str, roots: list[Path], **kw) -> Judges:
    return Judges(vision=JudgeEndpoint(base_url=url, model="vision-judge", **kw), image_roots=roots)


async def test_holistic_judge_sees_request_answer_and_reference(tmp_path):
    store = ImageStore(tmp_path)
    answer = json.dumps({"holistic": 7, "explanation": "Follows the layout; the den is vague."})
    with FakeOpenAIServer([answer]) as server:
        score = await bench.score(story_item(), story_state(store, made(1, store)), judges_at(server.url, [tmp_path]))
    assert score.metrics["holistic"] == 7.0 and score.metrics["structural_made"] == 1.0
    assert score.judged_by["holistic"] == {"model": "vision-judge", "prompt_version": PROMPT_VERSION}
    assert score.details["judge"]["explanation"].startswith("Follows the layout")
    request = server.requests[0]
    assert request["messages"][0] == {"role": "system", "content": RUBRIC}
    schema = request["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["holistic"]["minimum"] == 1 and schema["properties"]["holistic"]["maximum"] == 10
    texts = [p.get("text", p["type"]) for p in request["messages"][1]["content"]]
    assert texts[0].startswith("The request:\nA fox finds a lantern")
    assert texts[1:7] == ["\nThe answer, in reading order:", "image_url", "\nThe fox.\n", "image_url", "\nThe den.",
                          "\nThe reference answer:"]  # fmt: skip
    assert texts[7:11] == [
        "[reference image 1]",
        "The fox carries the lantern home.",
        "[reference image 2]",
        "Its den glows warmly all night.",
    ]


async def test_exemplars_show_the_judge_only_the_reference_layout(tmp_path):
    item = bench.load(FEW_SHOT)[0]
    state = State(prompt="p", document=[TextSegment(text="Only text.")])
    with FakeOpenAIServer([json.dumps({"holistic": 3, "explanation": "Thin."})]) as server:
        score = await bench.score(item, state, judges_at(server.url, [tmp_path]))
    texts = [p["text"] for p in server.requests[0]["messages"][1]["content"]]
    assert "(Only the reference's layout is known: image, text, image, text.)" in texts
    assert score.metrics["holistic"] == 3.0 and score.metrics["structural"] == 0.0


async def test_out_of_range_or_unreadable_means_not_scored(tmp_path):
    store = ImageStore(tmp_path / "store")
    state = story_state(store, made(1, store))
    with FakeOpenAIServer([json.dumps({"holistic": 11, "explanation": "Too kind."})]) as server:
        high = await bench.score(story_item(), state, judges_at(server.url, [tmp_path / "store"], attempts=1))
    assert high.metrics["holistic"] is None and high.reasons["holistic"].startswith("no score: no valid holistic")
    ghost = ImageRef(sha256="0" * 64, path=str(tmp_path / "store" / "gone.png"), mime="image/png", width=1, height=1)
    missing = State(prompt="p", document=[Figure(index=0, status="ok", image=ghost)])
    with FakeOpenAIServer([json.dumps({"holistic": 5, "explanation": "ok"})]) as server:
        outside = await bench.score(story_item(), state, judges_at(server.url, [tmp_path / "elsewhere"]))
        gone = await bench.score(story_item(), missing, judges_at(server.url, [tmp_path / "store"]))
    assert server.requests == []
    assert outside.metrics["holistic"] is None and "outside the folders a judge may read" in outside.reasons["holistic"]
    assert gone.metrics["holistic"] is None and "image 0:" in gone.reasons["holistic"]
    assert gone.judged_by["holistic"]["prompt_version"] == PROMPT_VERSION
    assert outside.metrics["structural"] == 1.0  # rule metrics stand whatever the judge does


def test_aggregate_gives_the_share_of_structural_matches():
    scores = []
    for structural, holistic in ((1.0, 8.0), (0.0, None), (1.0, 4.0), (0.0, 6.0)):
        s = SampleScore()
        s.set("structural", structural)
        s.set("holistic", holistic, NO_JUDGE)
        scores.append(s)
    summary = aggregate(bench.metrics, scores)
    assert (summary["structural"].mean, summary["structural"].n) == (0.5, 4)
    assert (summary["holistic"].mean, summary["holistic"].n, summary["holistic"].not_scored) == (6.0, 3, 1)
    assert summary["holistic"].reasons == {NO_JUDGE: 1} and summary["holistic"].stderr == pytest.approx(2 / 3**0.5)


# --- the real exemplars, where this machine has them ---------------------------------------------------------


def test_real_few_shot_exemplars_agree_with_their_flat_form():
    if not (SHARED / "task_few_shot.json").is_file():
        pytest.skip(f"ISG's few-shot exemplars are not at {SHARED}")
    items = bench.load(SHARED / "task_few_shot.json")
    assert len(items) == 42 and len({i.meta["category"] for i in items}) == 21
    assert [i.id for i in items if i.skip is None] == ["visual-storytelling-text-0", "visual-storytelling-text-1"]
    if (SHARED / "few_shot_prompts_flat.jsonl").is_file():
        assert bench.load(SHARED / "few_shot_prompts_flat.jsonl") == items
    if not (SHARED / "ISG-Bench.jsonl").is_file():
        assert bench.load(SHARED) == items  # without the benchmark, the exemplars are the default
