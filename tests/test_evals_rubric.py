"""The Rubric benchmark: its data file (30 prompts written by us, their input images drawn in code), loading into
requests, tool accuracy on constructed documents, the rubric judge over HTTP (a fake server with scripted
answers), honest "not scored", and aggregation."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from evals.base import Item, Judges, SampleScore, aggregate
from evals.data.build_rubric_images import build
from evals.rubric import DATA_FILE, METRICS, NO_VISION_JUDGE, RubricBenchmark, tool_accuracy
from judges._endpoint import JudgeEndpoint
from llmi_graph.state import Figure, ImageResult, Request, State
from llmi_graph.store import ImageStore
from llmi_graph.tags import SOURCES, TextSegment, parse_tags
from tests.fakes import FakeOpenAIServer, png
from tests.test_graph import tag

bench = RubricBenchmark()
ROWS = [json.loads(line) for line in DATA_FILE.read_text(encoding="utf-8").splitlines()]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
NUMBER = re.compile(r"(?<![A-Za-z\d.])\d+(?:\.\d+)?")


def finished_state(draft: str, store: ImageStore, *, failed: tuple[int, ...] = (), image_num: int = 0) -> State:
    """A finished state as the graph assembles it: every valid call not in `failed` made an image."""
    parsed = parse_tags(draft)
    results, figures = [], {}
    for call in parsed.calls:
        ok = call.valid and call.index not in failed
        ref = store.put(png((40 * call.index % 256, 90, 160))) if ok else None
        error = None if ok else (call.error or "the backend failed")
        results.append(ImageResult(index=call.index, source=call.source, status="ok" if ok else "failed", image=ref,
                                   error=error))  # fmt: skip
        figures[call.index] = Figure(index=call.index, source=call.source, description=call.description,
                                     status="ok" if ok else "failed", image=ref, error=error)  # fmt: skip
    document = [s if isinstance(s, TextSegment) else figures[s.index] for s in parsed.segments]
    return State(prompt="p", image_num=image_num, draft=draft, segments=parsed.segments, calls=parsed.calls,
                 results=results, document=document)  # fmt: skip


def item(tools: list[str], criteria: list[str] | None = None, image_num: int | None = None) -> Item:
    requirements = [{"text": f"an image by {t}", "tool": t} for t in tools]
    return Item(
        id="x",
        request={"prompt": "A report.", "image_num": len(tools) if image_num is None else image_num, "images": []},
        meta={"requirements": requirements, "criteria": criteria or ["has a chart"], "tools": sorted(set(tools))},
    )


# A draft for requirements [search, search, code, edit]: one search made, one search failed, a code chart made,
# a diffusion picture made instead of the edit, and an edit tag that is invalid (nothing to edit).
DRAFT = (
    f"Intro. {tag('search', query='reef')} More. {tag('search', query='bleached reef')} "
    f"{tag('code', code='plt.plot([1, 2])')} {tag('diffusion', prompt='a polyp')} "
    f"{tag('edit', img_index=9, prompt='x')}"
)
REQUIRED = ["search", "search", "code", "edit"]


def endpoint(url: str, **kw) -> JudgeEndpoint:
    return JudgeEndpoint(base_url=url, model="vision-judge", **kw)


# --- the data file --------------------------------------------------------------------------------------


def test_data_file_has_thirty_well_formed_rows():
    assert len(ROWS) == 30
    assert len({r["id"] for r in ROWS}) == 30
    for row in ROWS:
        requirements, tools = row["requirements"], [r["tool"] for r in row["requirements"]]
        assert 2 <= len(requirements) <= 5, row["id"]
        assert 1 <= len(row["criteria"]) <= 10, row["id"]
        assert len(set(row["criteria"])) == len(row["criteria"]), row["id"]
        assert set(tools) <= set(SOURCES) and set(row["tools"]) == set(tools), row["id"]
        assert all(r["text"].strip() for r in requirements), row["id"]
        if row["image_num"] == 99:
            assert "at least" in row["prompt"], row["id"]
        else:  # the prompt says how many images, and that is the number of requirements
            assert row["image_num"] == len(requirements), row["id"]
            assert f"exactly {NUMBER_WORDS[len(requirements)]} images" in row["prompt"], row["id"]


def test_every_tool_is_needed_across_the_set_and_a_quarter_edit_an_input():
    rows_per_tool = Counter(t for row in ROWS for t in set(row["tools"]))
    assert set(rows_per_tool) == set(SOURCES) and min(rows_per_tool.values()) >= 8, rows_per_tool
    with_inputs = [row for row in ROWS if row["images"]]
    assert 6 <= len(with_inputs) <= 9
    assert all("edit" in row["tools"] for row in with_inputs)  # an input image is there to be edited
    edits_of_made_images = [row for row in ROWS if "edit" in row["tools"] and not row["images"]]
    assert all("diffusion" in row["tools"] for row in edits_of_made_images) and edits_of_made_images
    assert Counter(len(row["tools"]) for row in ROWS)[1] == 0  # every prompt needs at least two tools


def test_chart_requirements_use_numbers_given_in_the_prompt():
    for row in ROWS:
        in_prompt = {float(n) for n in NUMBER.findall(row["prompt"])}
        for requirement in row["requirements"]:
            if requirement["tool"] != "code":
                continue
            needed = {float(n) for n in NUMBER.findall(requirement["text"])}
            assert needed, (row["id"], requirement["text"])
            assert needed <= in_prompt, (row["id"], sorted(needed - in_prompt))


def test_input_images_exist_are_small_and_are_what_the_script_draws(tmp_path):
    folder = DATA_FILE.parent / "images"
    used = {Path(p).name for row in ROWS for p in row["images"]}
    assert used == {p.name for p in folder.glob("*.png")}  # each is used, none is stray
    rebuilt = {p.name: p for p in build(tmp_path)}
    for name in used:
        shipped = folder / name
        assert shipped.stat().st_size <= 8 * 1024, name
        with Image.open(shipped) as img, Image.open(rebuilt[name]) as again:
            assert img.size == (320, 240) and img.format == "PNG"
            assert img.tobytes() == again.tobytes(), f"{name} differs from what build_rubric_images.py draws"


# --- loading --------------------------------------------------------------------------------------------


def test_load_makes_requests_with_input_images_as_data_urls():
    items = bench.load()
    assert [i.id for i in items] == [r["id"] for r in ROWS]
    for it, row in zip(items, ROWS, strict=True):
        Request.model_validate(it.request)  # a valid graph input as it is
        assert set(it.request) == {"prompt", "image_num", "images"} and it.skip is None
        assert it.meta == {"requirements": row["requirements"], "criteria": row["criteria"], "tools": row["tools"]}
        assert len(it.request["images"]) == len(row["images"])
        for url, path in zip(it.request["images"], row["images"], strict=True):
            header, _, payload = url.partition(",")
            assert header == "data:image/png;base64"
            assert base64.b64decode(payload) == (DATA_FILE.parent / path).read_bytes()


def test_load_limit_options_and_bad_rows(tmp_path):
    assert [i.id for i in bench.load(limit=3)] == [r["id"] for r in ROWS[:3]]
    assert bench.load(limit=0) == []
    with pytest.raises(ValueError, match="limit must be >= 0"):
        bench.load(limit=-1)
    with pytest.raises(TypeError, match="takes no options"):
        bench.load(subtasks="x")
    bad = dict(ROWS[0], image_num=7)
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[2]) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows.jsonl line 2: image_num must be the number of requirements \(3\)"):
        bench.load(path)
    path.write_text(json.dumps(dict(ROWS[0], images=["images/missing.png"])) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"input image images/missing\.png not found"):
        bench.load(path)
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[0]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="used twice"):
        bench.load(path)


# --- tool accuracy --------------------------------------------------------------------------------------


def test_tool_accuracy_matches_requirements_to_images_by_tool():
    assert tool_accuracy(["search", "search", "code"], {"search": 2, "code": 1}) == 1.0
    assert tool_accuracy(["search", "search", "code"], {"search": 1, "code": 5}) == pytest.approx(2 / 3)
    assert tool_accuracy(["code", "edit"], {"diffusion": 3}) == 0.0  # images of the wrong tool meet nothing
    with pytest.raises(ValueError, match="at least one requirement"):
        tool_accuracy([], {"code": 1})


async def test_rule_metrics_on_a_document_without_a_judge(tmp_path):
    state = finished_state(DRAFT, ImageStore(tmp_path), failed=(1,), image_num=4)
    score = await bench.score(item(REQUIRED), state, Judges())
    assert score.metrics["tool_accuracy"] == pytest.approx(2 / 4)  # search 1 of 2, code 1 of 1, edit 0 of 1
    assert score.metrics["tool_choice_accuracy"] == pytest.approx(3 / 4)  # the failed search was still chosen
    assert score.metrics["images_made"] == 3.0
    assert score.metrics["image_num_score"] == 0.0  # 3 made, exactly 4 asked
    assert score.metrics["tag_validity"] == pytest.approx(4 / 5)
    assert score.details["tools"] == {
        "search": {"required": 2, "attempted": 2, "made": 1},
        "diffusion": {"required": 0, "attempted": 1, "made": 1},
        "code": {"required": 1, "attempted": 1, "made": 1},
        "edit": {"required": 1, "attempted": 0, "made": 0},
    }
    assert score.metrics["rubric"] is None and score.reasons["rubric"] == NO_VISION_JUDGE
    assert score.details["unscored_criteria"] == ["has a chart"] and "rubric" not in score.judged_by


async def test_exact_image_count_and_a_draft_without_tags(tmp_path):
    full = finished_state(f"{tag('code', code='a')} and {tag('search', query='b')}", ImageStore(tmp_path))
    score = await bench.score(item(["code", "search"]), full, Judges())
    assert (score.metrics["tool_accuracy"], score.metrics["image_num_score"]) == (1.0, 1.0)
    plain = await bench.score(item(["code", "search"], image_num=99), State(prompt="p", draft="Only text."), Judges())
    assert plain.metrics["tool_accuracy"] == 0.0 and plain.metrics["image_num_score"] == 0.0
    assert plain.metrics["tag_validity"] is None and plain.reasons["tag_validity"] == "the draft has no <imgen> tags"


# --- the rubric judge -----------------------------------------------------------------------------------


async def test_a_text_judge_alone_does_not_score_the_rubric(tmp_path):
    state = finished_state(DRAFT, ImageStore(tmp_path))
    with FakeOpenAIServer([json.dumps({"justification": "x", "score": 2})]) as server:
        score = await bench.score(item(REQUIRED), state, Judges(text=endpoint(server.url)))
    assert score.metrics["rubric"] is None and "multimodal judge" in score.reasons["rubric"]
    assert server.requests == []  # the text judge was not asked to guess at images
    assert score.metrics["tool_accuracy"] == pytest.approx(0.75)


async def test_rubric_from_the_multimodal_judge_with_per_criterion_details(tmp_path):
    store = ImageStore(tmp_path / "store")
    state = finished_state(DRAFT, store, failed=(1,))
    criteria = ["has a chart of the figures given", "has a photo of a reef", "explains bleaching"]
    answers = [json.dumps({"justification": "A line chart.", "score": 2}),
               json.dumps({"justification": "One photo; the second failed.", "score": 1}), "no idea"]  # fmt: skip
    with FakeOpenAIServer(answers) as server:
        judges = Judges(vision=endpoint(server.url, attempts=1, concurrency=1), image_roots=[tmp_path / "store"])
        score = await bench.score(item(REQUIRED, criteria), state, judges)
    assert score.metrics["rubric"] == pytest.approx(10 * 3 / 4)  # (2 + 1) / (2 x 2 scored), reported 0-10
    assert score.judged_by["rubric"] == {"model": "vision-judge", "prompt_version": "rubric-judge/2"}
    details = score.details["rubric"]
    assert [c["score"] for c in details["criteria"]] == [2, 1, None]
    assert details["criteria"][0]["justification"] == "A line chart."
    assert score.details["unscored_criteria"] == ["explains bleaching"]
    assert len(server.requests) == 3  # one request per criterion
    parts = server.requests[0]["messages"][1]["content"]
    assert sum(p["type"] == "image_url" for p in parts) == 3  # the judge sees the images that were made
    assert any("could not be made" in p.get("text", "") for p in parts)
    assert "has a chart of the figures given" in parts[-1]["text"]


async def test_judge_outage_leaves_the_rubric_unscored_with_the_reason(tmp_path):
    state = finished_state(DRAFT, ImageStore(tmp_path))
    judges = Judges(vision=endpoint("http://127.0.0.1:9/v1", attempts=1), image_roots=[tmp_path])
    score = await bench.score(item(REQUIRED, ["a", "b"]), state, judges)
    assert score.metrics["rubric"] is None and score.reasons["rubric"].startswith("no score")
    assert score.details["unscored_criteria"] == ["a", "b"]
    assert score.metrics["tool_accuracy"] == pytest.approx(0.75)  # rules are scored whatever the judge does


# --- aggregation ----------------------------------------------------------------------------------------


def test_aggregate_over_rubric_scores():
    scores = []
    for rubric, accuracy in ((7.5, 1.0), (5.0, 0.5), (None, 0.0)):
        s = SampleScore()
        s.set("rubric", rubric, NO_VISION_JUDGE)
        s.set("tool_accuracy", accuracy)
        if rubric is not None:
            s.judged_by["rubric"] = {"model": "vision-judge", "prompt_version": "rubric-judge/2"}
        scores.append(s)
    summary = aggregate(METRICS, scores)
    rubric = summary["rubric"]
    assert (rubric.mean, rubric.n, rubric.not_scored) == (6.25, 2, 1)
    assert rubric.stderr == pytest.approx(1.25) and rubric.reasons == {NO_VISION_JUDGE: 1}
    assert rubric.judge and rubric.judged_by == [{"model": "vision-judge", "prompt_version": "rubric-judge/2"}]
    accuracy = summary["tool_accuracy"]
    assert (accuracy.mean, accuracy.n, accuracy.not_scored, accuracy.judge) == (0.5, 3, 0, False)
    assert summary["images_made"].n == 0 and summary["images_made"].mean is None
