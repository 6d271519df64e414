"""The OpenING adapter: loading the official row format, rule metrics, the seven-criteria judge over HTTP (a fake
server with scripted answers), honest "not scored", and the authors' reference scores.

The rows under tests/data are invented in OpenING's format: the benchmark itself has no license and is never copied
here. One test reads the real file from the shared folder and skips when it is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evals.base import Item, Judges, SampleScore, aggregate
from evals.opening import (
    CRITERIA,
    IMAGE_NUM,
    NO_JUDGE,
    PROMPT_VERSION,
    RUBRIC,
    OpeningBenchmark,
    reference_scores,
)
from judges._endpoint import JudgeEndpoint
from llmi_graph.state import Figure, ImageRef, State
from llmi_graph.store import ImageStore
from llmi_graph.tags import TextSegment
from tests.fakes import FakeOpenAIServer, png
from tests.test_graph import tag

DATA = Path(__file__).parent / "data"
ROWS = DATA / "opening_rows.jsonl"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "opening"
STORY, GARDEN, KITE = "Bedtime Story Writing", "Balcony Garden Guide", "Kite Tutorial"
JUDGE_ANSWER = {
    "correctness": 8,
    "image_text_coherency": 7,
    "multi_step_consistency": 6,
    "content_quality": 9,
    "human_preference_alignment": 10,
    "completeness": 5,
    "content_richness": 4,
    "explanation": "Two clear pictures; the second step is thin.",
}

bench = OpeningBenchmark()


# --- loading ------------------------------------------------------------------------------------------


def test_full_load_keeps_every_row_and_skips_those_needing_input_images():
    items = bench.load(ROWS)
    assert [i.id for i in items] == ["0101001", "0101002", "0101003", "0201001", "0201002", "0202001", "0202002"]
    skipped = {i.id: i.skip for i in items if i.skip}
    assert skipped == {
        "0101002": "needs input images that are not available",
        "0201002": "needs input images that are not available",
    }
    first = items[0]
    assert first.request == {
        "prompt": "Write a two-part bedtime story about a lighthouse keeper's cat, with a picture for each part.",
        "image_num": IMAGE_NUM,
        "images": [],
    }
    assert first.meta["subtask"] == STORY and first.meta["subtask_key"] == "1.1"
    assert first.meta["meta_task"] == "Invented Storytelling"
    assert (first.meta["gold_num_images"], first.meta["gold_num_steps"]) == (2, 2)
    assert first.meta["gold_text"].startswith("Every night, Pip") and first.meta["gold_text"].count("<image>") == 2


def test_prompt_drops_the_begin_marker_and_numbers_input_images():
    items = {i.id: i for i in bench.load(ROWS)}
    assert items["0201001"].request["prompt"] == (
        "You are a patient gardening assistant. How do I start growing herbs on a small balcony?"
    )
    assert items["0201002"].request["prompt"] == "What is wrong with these two plants? [image 0]\n\n[image 1]"
    assert items["0201002"].meta["num_input_images"] == 2


def test_subtask_filter_by_name_or_key_and_stratified_sample():
    assert [i.id for i in bench.load(ROWS, subtasks="kite tutorial")] == ["0202001", "0202002"]
    by_key_and_name = bench.load(ROWS, subtasks=["2.2", STORY])
    assert [i.id for i in by_key_and_name] == ["0101001", "0101002", "0101003", "0202001", "0202002"]
    sample = bench.load(ROWS, limit_per_subtask=1)
    assert [(i.id, i.meta["subtask"]) for i in sample] == [("0101001", STORY), ("0201001", GARDEN), ("0202001", KITE)]
    assert all(i.skip is None for i in sample)  # a sample holds runnable items only
    assert [i.id for i in bench.load(ROWS, limit=3)] == ["0101001", "0101003", "0201001"]
    assert [i.id for i in bench.load(ROWS, limit_per_subtask=2, limit=3)] == ["0101001", "0101003", "0201001"]
    assert bench.load(ROWS, limit=0) == []
    with pytest.raises(ValueError, match=r"unknown OpenING subtask\(s\) \['Origami'\].*1.1 Bedtime Story Writing"):
        bench.load(ROWS, subtasks="Origami")
    with pytest.raises(ValueError, match="limit_per_subtask must be >= 0"):
        bench.load(ROWS, limit_per_subtask=-1)


def test_rows_with_input_images_run_when_asked_and_the_files_exist(tmp_path):
    data = tmp_path / "test_data.jsonl"
    shutil.copy(ROWS, data)
    for name in ("2-i-1.jpg", "2-i-2.jpg"):
        (tmp_path / "images" / GARDEN).mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / GARDEN / name).write_bytes(png())
    by_default = {i.id: i.skip for i in bench.load(tmp_path)}
    assert by_default["0201002"] == "needs input images (a text-only run: pass text_only=False to use them)"
    assert by_default["0101002"] == "needs input images that are not available"  # its drawing is still missing
    items = {i.id: i for i in bench.load(tmp_path, text_only=False)}
    garden = items["0201002"]
    assert garden.skip is None and len(garden.request["images"]) == 2
    assert all(url.startswith("data:image/png;base64,") for url in garden.request["images"])
    assert items["0101002"].skip == "needs input images that are not available"
    assert [i.id for i in bench.load(tmp_path, text_only=False, subtasks=GARDEN, limit=5)] == ["0201001", "0201002"]


def test_source_comes_from_the_environment_or_a_clear_error(tmp_path, monkeypatch):
    shutil.copy(ROWS, tmp_path / "test_data.jsonl")
    monkeypatch.setenv("LLMI_OPENING_DIR", str(tmp_path))
    assert len(bench.load()) == 7
    monkeypatch.setenv("LLMI_OPENING_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"LLMI_OPENING_DIR=.*put OpenING-benchmark/test_data\.jsonl"):
        bench.load()
    with pytest.raises(FileNotFoundError, match=r"pass test_data\.jsonl or the folder"):
        bench.load(tmp_path / "nowhere.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"total_uid": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not an OpenING row"):
        bench.load(bad)


# --- scoring ------------------------------------------------------------------------------------------


def story_item() -> Item:
    return next(i for i in bench.load(ROWS) if i.id == "0101001")  # gold: 2 images


def story_state(store: ImageStore, *, failed_second: bool = True) -> State:
    ok = store.put(png((20, 120, 200)))
    second = (
        Figure(index=1, source="search", status="failed", error="no results")
        if failed_second
        else Figure(index=1, source="diffusion", status="ok", image=store.put(png((200, 120, 20))))
    )
    draft = f"Pip climbs.\n{tag('diffusion', prompt='a cat')}\nThe fog.\n{tag('search', query='fog')}"
    document = [
        TextSegment(text="Pip climbs.\n"),
        Figure(index=0, source="diffusion", status="ok", image=ok),
        TextSegment(text="\nThe fog.\n"),
        second,
    ]
    return State(prompt=story_item().request["prompt"], image_num=IMAGE_NUM, draft=draft, document=document)


async def test_rule_metrics_always_and_judge_metrics_not_scored_without_a_judge(tmp_path):
    score = await bench.score(story_item(), story_state(ImageStore(tmp_path)), Judges())
    assert score.metrics["images_made"] == 1.0 and score.metrics["gold_images"] == 2.0
    assert score.metrics["image_count_match"] == 0.0 and score.metrics["image_count_error"] == 1.0
    assert score.metrics["tag_validity"] == 1.0
    for name in [*CRITERIA, "overall"]:
        assert score.metrics[name] is None and score.reasons[name] == NO_JUDGE
    assert score.judged_by == {}
    no_tags = await bench.score(story_item(), State(prompt="p", draft="Just text."), Judges())
    assert (
        no_tags.metrics["tag_validity"] is None and no_tags.reasons["tag_validity"] == "the draft has no <imgen> tags"
    )
    assert no_tags.metrics["image_count_error"] == 2.0


def judges_at(url: str, roots: list[Path], **kw) -> Judges:
    return Judges(vision=JudgeEndpoint(base_url=url, model="vision-judge", **kw), image_roots=roots)


async def test_judge_scores_the_seven_criteria_and_their_mean(tmp_path):
    state = story_state(ImageStore(tmp_path), failed_second=False)
    with FakeOpenAIServer([json.dumps(JUDGE_ANSWER)]) as server:
        score = await bench.score(story_item(), state, judges_at(server.url, [tmp_path]))
    assert {name: score.metrics[name] for name in CRITERIA} == {n: float(JUDGE_ANSWER[n]) for n in CRITERIA}
    assert score.metrics["overall"] == pytest.approx(49 / 7)
    assert score.metrics["image_count_match"] == 1.0
    expected = {"model": "vision-judge", "prompt_version": PROMPT_VERSION}
    assert all(score.judged_by[name] == expected for name in [*CRITERIA, "overall"])
    assert score.details["judge"]["explanation"].startswith("Two clear pictures")
    request = server.requests[0]
    schema = request["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"])[-1] == "explanation" and schema["properties"]["completeness"]["maximum"] == 10
    parts = request["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "text", "text", "image_url", "text", "image_url", "text"]
    assert parts[0]["text"].startswith("The request:\nWrite a two-part bedtime story")
    assert parts[2]["text"] == "Pip climbs.\n" and parts[4]["text"] == "\nThe fog.\n"
    assert request["messages"][0] == {"role": "system", "content": RUBRIC}


async def test_failed_slots_are_shown_to_the_judge_and_a_bad_answer_is_not_scored(tmp_path):
    state = story_state(ImageStore(tmp_path))
    with FakeOpenAIServer(["I would rather not grade this."]) as server:
        score = await bench.score(story_item(), state, judges_at(server.url, [tmp_path], attempts=1))
    parts = server.requests[0]["messages"][1]["content"]
    assert parts[-2]["text"] == "[Figure 2 could not be made: no results]"
    for name in [*CRITERIA, "overall"]:
        assert score.metrics[name] is None and score.reasons[name].startswith("no score: no valid correctness")
        assert score.judged_by[name]["prompt_version"] == PROMPT_VERSION
    assert score.metrics["images_made"] == 1.0  # rule metrics stand whatever the judge does


async def test_an_unreadable_image_means_not_scored_and_no_judge_call(tmp_path):
    state = story_state(ImageStore(tmp_path / "store"), failed_second=False)
    ghost = ImageRef(sha256="0" * 64, path=str(tmp_path / "gone.png"), mime="image/png", width=1, height=1)
    missing = State(prompt="p", document=[Figure(index=0, status="ok", image=ghost)])
    with FakeOpenAIServer([json.dumps(JUDGE_ANSWER)]) as server:
        outside = await bench.score(story_item(), state, judges_at(server.url, [tmp_path / "elsewhere"]))
        gone = await bench.score(story_item(), missing, judges_at(server.url, [tmp_path]))
    assert server.requests == []
    assert outside.metrics["correctness"] is None and "image 0:" in outside.reasons["correctness"]
    assert "outside the folders a judge may read" in outside.reasons["overall"]
    assert gone.metrics["completeness"] is None and "cannot be read" in gone.reasons["completeness"]


def test_aggregate_over_scored_and_unscored_samples():
    scored = [SampleScore(), SampleScore(), SampleScore()]
    for s, value in zip(scored, (6.0, 8.0, None), strict=True):
        s.set("overall", value, "no score: timeout")
        s.set("image_count_match", 1.0 if value else 0.0)
        if value is not None:
            s.judged_by["overall"] = {"model": "vision-judge", "prompt_version": PROMPT_VERSION}
    summary = aggregate(bench.metrics, scored)
    overall = summary["overall"]
    assert (overall.mean, overall.n, overall.not_scored) == (7.0, 2, 1)
    assert overall.stderr == pytest.approx(1.0) and overall.reasons == {"no score: timeout": 1}
    assert overall.judge and overall.judged_by == [{"model": "vision-judge", "prompt_version": PROMPT_VERSION}]
    assert summary["image_count_match"].mean == pytest.approx(2 / 3) and not summary["image_count_match"].judge
    assert summary["correctness"].n == 0 and summary["correctness"].mean is None


# --- reference scores -----------------------------------------------------------------------------------


def test_reference_scores_by_our_metric_names_labelled_with_their_judge(tmp_path):
    header = "Rank,Model_ID,Model_Name," + ",".join(CRITERIA.values()) + ",Overall\n"
    (tmp_path / "model_score_summaries_gpt_score.csv").write_text(
        header + "2,4,Made-up B,1,2,3,4,5,6,7,4.0\n1,9,Made-up A,9,9,9,9,9,9,9,9.0\n"
    )
    scores = reference_scores(tmp_path)
    assert list(scores) == ["Made-up A", "Made-up B"]
    b = scores["Made-up B"]
    assert b.scores["correctness"] == 1.0 and b.scores["content_richness"] == 7.0 and b.scores["overall"] == 4.0
    assert b.judge == "GPT-4o, by the OpenING authors" and b.rank == 2
    with pytest.raises(FileNotFoundError, match="model_score_summaries"):
        reference_scores(tmp_path / "nothing-here")


# --- the real data, where this machine has it ---------------------------------------------------------------


def test_real_test_data_matches_the_derived_text_only_prompts():
    if not (SHARED / "test_data.jsonl").is_file():
        pytest.skip(f"OpenING's test data is not at {SHARED}")
    items = bench.load(SHARED)
    runnable = {i.id: i for i in items if i.skip is None}
    assert len(items) == 2160 and len(runnable) == 997
    derived = [json.loads(line) for line in (SHARED / "test_textonly_prompts.jsonl").open()]
    for row in derived:
        item = runnable[row["total_uid"]]
        assert item.request["prompt"] == row["prompt"]
        assert (item.meta["gold_num_images"], item.meta["gold_num_steps"]) == (
            row["gold_num_images"],
            row["gold_num_steps"],
        )
    sample = bench.load(SHARED, limit_per_subtask=2)
    assert len(sample) == 64 and len({i.meta["subtask"] for i in sample}) == 32
    human = reference_scores(SHARED)["Human"]
    assert human.scores["overall"] == pytest.approx(sum(human.scores[n] for n in CRITERIA) / 7, abs=0.01)
