"""`llmi eval`: a benchmark through the batch runner, scored, aggregated, resumable; compare; the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from evals.base import Judges
from evals.run import EvalSettings, compare, run_eval
from judges._endpoint import JudgeEndpoint
from llmi_graph import ChatModelPolicy, Toolbox
from llmi_graph.batch import BatchSettings
from tests.fakes import FakeBackend, FakeOpenAIServer

DATA = Path(__file__).parent / "data"
LLMI = str(Path(sys.executable).with_name("llmi"))


def tag(source: str, **params: object) -> str:
    return f"<imgen>{{'source': '{source}', 'description': 'd', 'params': {params!r}}}</imgen>"


DRAFT = f"# A report\nSome text. {tag('code', code='plt.bar([1], [2])')} And a photo {tag('search', query='cat')}."


def tools() -> Toolbox:
    return Toolbox(backends={"search": FakeBackend("s"), "code": FakeBackend("c"), "diffusion": None, "edit": None})


def policy(n: int = 40) -> ChatModelPolicy:
    return ChatModelPolicy(FakeListChatModel(responses=[DRAFT] * n))


def scores(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


async def test_rubric_without_a_judge_gives_rule_numbers_and_never_a_judge_number(cfg, tmp_path):
    out = tmp_path / "eval"
    settings = EvalSettings(benchmark="rubric", batch=BatchSettings(out=out, concurrency=2), limit=3)
    result = await run_eval(settings, cfg, policy=policy(), toolbox=tools())
    assert result.counts == {"items": 3, "samples": 3, "ok": 3, "failed": 0, "skipped": 0, "pending": 0}
    assert result.metrics["rubric"].mean is None and result.metrics["rubric"].not_scored == 3
    assert result.metrics["rubric"].reasons  # says why
    assert result.metrics["images_made"].mean == 2.0 and result.metrics["tag_validity"].mean == 1.0
    assert result.metrics["tool_accuracy"].n == 3 and result.metrics["tool_accuracy"].stderr is not None
    data = json.loads((out / "results.json").read_text())
    assert data["judges"] == {"text": None, "vision": None}
    assert data["metrics"]["rubric"]["mean"] is None and data["policy"]["model"] == "embedded"
    assert len(scores(out)) == 3 and all(s["score"] is None for s in scores(out))
    page = (out / "eval.html").read_text()
    assert "not scored" in page and page.count('href="samples/') == 3


async def test_a_judge_added_later_rescores_without_running_the_samples_again(cfg, tmp_path):
    out = tmp_path / "eval"
    draft_policy = policy()
    await run_eval(
        EvalSettings(benchmark="rubric", batch=BatchSettings(out=out), limit=2), cfg, policy=draft_policy,
        toolbox=tools(),
    )  # fmt: skip
    answers = [json.dumps({"justification": "Meets it.", "score": 2})] * 200
    with FakeOpenAIServer(answers) as judge:
        vision = JudgeEndpoint(base_url=judge.url, model="vision-judge-x", attempts=1)
        settings = EvalSettings(benchmark="rubric", batch=BatchSettings(out=out), judges=Judges(vision=vision), limit=2)
        result = await run_eval(settings, cfg, policy=draft_policy, toolbox=tools())
    assert result.batch.finished == 0  # nothing ran again
    assert result.metrics["rubric"].mean == 10.0 and result.metrics["rubric"].n == 2
    assert result.metrics["rubric"].judged_by[0]["model"] == "vision-judge-x"
    lines = scores(out)
    assert len(lines) == 4  # two without a judge, two with it: the newest per judge set counts
    assert {line["judges"]["vision"] for line in lines} == {None, "vision-judge-x"}
    index = (out / "index.html").read_text()
    assert "<th>score</th>" in index and "10.000" in index


async def test_scoring_resumes_after_a_crash(cfg, tmp_path):
    out = tmp_path / "eval"
    settings = EvalSettings(benchmark="rubric", batch=BatchSettings(out=out), limit=3)
    await run_eval(settings, cfg, policy=policy(), toolbox=tools())
    text = (out / "scores.jsonl").read_text().splitlines(keepends=True)
    (out / "scores.jsonl").write_text(text[0] + text[1][:20])  # one line kept, one torn
    result = await run_eval(settings, cfg, policy=policy(), toolbox=tools())
    assert len(scores(out)) == 3 and result.metrics["images_made"].n == 3


async def test_opening_rows_that_need_images_are_counted_as_skipped(cfg, tmp_path):
    out = tmp_path / "eval"
    settings = EvalSettings(benchmark="opening", batch=BatchSettings(out=out), source=DATA / "opening_rows.jsonl")
    result = await run_eval(settings, cfg, policy=policy(), toolbox=tools())
    assert result.counts["skipped"] >= 1 and result.counts["ok"] >= 1
    skipped = [s for s in scores(out) if s["status"] == "skipped"]
    assert skipped and all(v is None for v in skipped[0]["metrics"].values())
    assert "needs input images" in next(iter(skipped[0]["reasons"].values()))
    assert result.metrics["images_made"].n == result.counts["ok"]  # skipped rows are not averaged in
    assert result.groups  # broken down by subtask


async def test_compare_puts_two_evaluations_side_by_side(cfg, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        await run_eval(
            EvalSettings(benchmark="rubric", batch=BatchSettings(out=out), limit=2), cfg, policy=policy(),
            toolbox=tools(),
        )  # fmt: skip
    rows = {row["metric"]: row for row in compare([a, b])}
    assert rows["images_made"][str(a)]["mean"] == rows["images_made"][str(b)]["mean"] == 2.0
    with pytest.raises(FileNotFoundError, match=r"no results\.json"):
        compare([a, tmp_path / "nothing"])


def test_llmi_eval_cli_runs_isg_offline_and_compares(tmp_path):
    with FakeOpenAIServer([DRAFT] * 20) as server:
        command = [
            LLMI, "eval", "isg", "--out", str(tmp_path / "isg"), "--source", str(DATA / "isg_rows.jsonl"),
            "--limit", "2", "--policy-url", server.url, "--model", "fake", "--search-backend", "none",
        ]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no judge configured" in run.stderr and "structural" in run.stderr
    data = json.loads((tmp_path / "isg" / "results.json").read_text())
    assert data["metrics"]["structural"]["n"] == 2 and data["metrics"]["holistic"]["mean"] is None
    shown = subprocess.run([LLMI, "eval", "compare", str(tmp_path / "isg")], capture_output=True, text=True)
    assert shown.returncode == 0 and "structural" in shown.stderr


def test_langsmith_aevaluate_example_runs_offline(tmp_path):
    import os

    with FakeOpenAIServer([DRAFT] * 10) as server:
        env = {**os.environ, "LLMI_POLICY_URL": server.url, "LLMI_POLICY_MODEL": "fake",
               "LLMI_IMAGE_DIR": str(tmp_path / "store"), "LLMI_SEARCH_BACKEND": "none"}  # fmt: skip
        env.pop("LANGSMITH_API_KEY", None)
        example = Path(__file__).parents[1] / "examples" / "langsmith_eval.py"
        run = subprocess.run([sys.executable, str(example), "--limit", "2"], capture_output=True, text=True, env=env,
                             timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if "tool_accuracy" in line]
    assert len(lines) == 2 and all("'tag_validity': 1.0" in line for line in lines)
    assert "Failed" not in run.stderr  # nothing tried to reach LangSmith
