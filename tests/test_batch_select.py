"""Judge selection in `llmi batch` and `llmi eval`: `--select judge|relative` with the judge the command is given,
through the scaled graph, recorded in settings.json; a judge selector without a judge is a clear error up front.

The policy and the judge are fakes, named as such: `FakeOpenAIServer`, a scripted OpenAI-compatible server on
loopback (the real judges are served models that cannot run on these machines)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from judges._endpoint import JudgeEndpoint
from judges.select import JudgeSelector, RelativeSelector, selectors_for
from llmi_graph.batch import BatchError, BatchItem, BatchSettings, run_batch
from tests.fakes import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
LLMI = str(Path(sys.executable).with_name("llmi"))
JUDGE_ENV = ("LLMI_JUDGE_URL", "LLMI_JUDGE_MODEL", "LLMI_MLLM_JUDGE_URL", "LLMI_MLLM_JUDGE_MODEL", "LLMI_SELECT")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in JUDGE_ENV}
    return {**env, "LLMI_CACHE_DIR": str(tmp_path / "cache"), **extra}


def test_llmi_batch_selects_with_the_judge_it_is_given_and_records_which(tmp_path):
    """Two drafts the rules cannot tell apart (no images wanted, none written): the rules keep the first; the relative
    judge prefers the second, and the batch keeps the second."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "only", "prompt": "Explain tides", "image_num": -1}) + "\n")
    drafts = ["Short.", "Tides follow the moon: two highs and two lows a day."]
    ranking = json.dumps({"answer_1": 2, "answer_2": 9, "explanation": "2 explains"})
    out = tmp_path / "out"
    with FakeOpenAIServer(drafts) as policy, FakeOpenAIServer([ranking]) as judge:
        command = [LLMI, "batch", str(rows), "--out", str(out), "--policy-url", policy.url, "--model", "fake",
                   "--candidates", "2", "--select", "relative", "--judge-url", judge.url,
                   "--judge-model", "fake-judge"]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert [r.get("n") for r in policy.requests] == [2]  # both drafts from one request
        assert len(judge.requests) == 1 and judge.requests[0]["model"] == "fake-judge"
        shown = judge.requests[0]["messages"][-1]["content"]
    assert "Short." in shown and "two highs and two lows" in shown
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    trajectory = json.loads((out / record["report"]).with_name("trajectory.json").read_text())
    assert trajectory["selector"] == "relative" and trajectory["selected"] == 1
    assert trajectory["draft"].startswith("Tides follow the moon")
    assert [c["score"] for c in trajectory["candidates"]] == [2, 9]
    scaling = json.loads((out / "settings.json").read_text())["scaling"]
    assert scaling["candidates"] == 2 and scaling["select"] == "relative"
    assert scaling["selector"] == {
        "selector": "relative", "model": "fake-judge", "url": judge.url, "prompt": "relative-judge/1",
    }  # fmt: skip
    assert scaling["search_chooser"] is None and scaling["repair_rounds"] == 0


def test_with_the_rules_the_batch_keeps_the_first_of_equal_drafts_and_asks_no_judge(tmp_path):
    """The control for the test above: the same drafts with the default selector."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "only", "prompt": "Explain tides", "image_num": -1}) + "\n")
    out = tmp_path / "out"
    with FakeOpenAIServer(["Short.", "Tides follow the moon."]) as policy:
        command = [LLMI, "batch", str(rows), "--out", str(out), "--policy-url", policy.url, "--model", "fake",
                   "--candidates", "2"]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    trajectory = json.loads((out / record["report"]).with_name("trajectory.json").read_text())
    assert trajectory["selector"] == "rules" and trajectory["selected"] == 0
    scaling = json.loads((out / "settings.json").read_text())["scaling"]
    assert scaling["select"] == "rules" and scaling["selector"] is None


@pytest.mark.parametrize(
    "command",
    [
        ["batch", "ROWS", "--out", "OUT", "--candidates", "2", "--select", "judge"],
        ["eval", "rubric", "--out", "OUT", "--candidates", "2", "--select", "relative"],
        ["batch", "ROWS", "--out", "OUT", "--select", "best", "--judge-url", "http://127.0.0.1:9/v1"],
    ],
    ids=["batch-judge-without-judge", "eval-relative-without-judge", "unknown-selector"],
)
def test_a_judge_selector_without_a_judge_is_refused_before_anything_runs(tmp_path, command):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "p"}) + "\n")
    out = tmp_path / "out"
    argv = [LLMI, *(str(rows) if a == "ROWS" else str(out) if a == "OUT" else a for a in command)]
    done = subprocess.run(argv, cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    said = " ".join((done.stdout + done.stderr).split())
    assert "needs a judge" in said or "expected rules, judge or relative" in said
    assert not out.exists()  # nothing ran, nothing written


async def test_run_batch_refuses_a_judge_selector_it_was_not_given_a_scorer_for(cfg, tmp_path):
    items = [BatchItem(row_id="r", request={"prompt": "p"})]
    settings = BatchSettings(out=tmp_path / "b")
    with pytest.raises(BatchError, match="the judge selector needs a judge"):
        await run_batch(items, settings, cfg.replace(candidates=2, select="judge"))
    with pytest.raises(BatchError, match="the relative selector needs a judge"):
        relative_only = {"judge": selectors_for(JudgeEndpoint(base_url="http://127.0.0.1:9/v1", model="m"))["judge"]}
        await run_batch(items, settings, cfg.replace(candidates=2, select="relative"), scorers=relative_only)
    assert not (tmp_path / "b" / "results.jsonl").exists()


def test_the_selectors_travel_to_ray_workers_and_describe_themselves():
    """Ray pickles the scorers to its workers: they must be plain data (an endpoint, no open client)."""
    endpoint = JudgeEndpoint(base_url="http://127.0.0.1:9/v1", model="judge-m")
    scorers = pickle.loads(pickle.dumps(selectors_for(endpoint)))
    assert isinstance(scorers["judge"], JudgeSelector) and isinstance(scorers["relative"], RelativeSelector)
    assert scorers["judge"].describe() == {
        "selector": "judge", "model": "judge-m", "url": "http://127.0.0.1:9/v1", "prompt": "llm-judge/1",
    }  # fmt: skip


def test_the_graph_verbs_get_their_judges_from_the_app_that_mounts_them(tmp_path, monkeypatch):
    """llmi_graph never imports judges: `llmi` hands its verbs `judges.select.AppJudging` as the click context's
    object. Invoked bare (no app around it), a judge selector is refused up front with what is missing; the app's
    judges are the real selectors, asking the URL given. (`llmi batch` with them, end to end: the first test.)"""
    from typer.testing import CliRunner

    from judges.select import AppJudging
    from llmi_graph.cli import _scorers, app

    for name in JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "p"}) + "\n")
    argv = ["batch", str(rows), "--out", str(tmp_path / "out"), "--candidates", "2", "--select", "judge",
            "--judge-url", "http://127.0.0.1:9/v1"]  # fmt: skip
    bare = CliRunner().invoke(app, argv, env={"LLMI_CACHE_DIR": str(tmp_path / "cache")})
    said = " ".join(bare.output.split())
    assert bare.exit_code == 2 and "needs the judges the `llmi` command passes to this verb" in said, said
    assert not (tmp_path / "out").exists()
    scorers = _scorers(AppJudging(), "judge", "http://127.0.0.1:9/v1", "m")
    assert isinstance(scorers["judge"], JudgeSelector) and isinstance(scorers["relative"], RelativeSelector)
    assert scorers["judge"].judge.endpoint.base_url == "http://127.0.0.1:9/v1"
