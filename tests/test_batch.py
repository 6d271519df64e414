"""`llmi batch`: the output contract, durability (kill -9 and rerun), and clear errors."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi import FastAPI
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from llmi_graph import ChatModelPolicy, Toolbox
from llmi_graph.batch import BatchError, BatchItem, BatchSettings, Ledger, run_batch
from tests.fakes import FakeBackend, FakeOpenAIServer, LoopbackApp, png

ROOT = Path(__file__).resolve().parents[1]
LLMI = str(Path(sys.executable).with_name("llmi"))


def tag(source: str, **params: object) -> str:
    return f"<imgen>{{'source': '{source}', 'description': 'd', 'params': {params!r}}}</imgen>"


def items(n: int) -> list[BatchItem]:
    return [BatchItem(row_id=f"r{i}", request={"prompt": f"topic {i}", "image_num": 1}) for i in range(n)]


def toolbox(**backends: FakeBackend) -> Toolbox:
    return Toolbox(backends={s: backends.get(s) for s in ("search", "diffusion", "code", "edit")})


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


async def test_a_batch_writes_the_output_contract_and_a_rerun_does_nothing(cfg, tmp_path):
    out = tmp_path / "batch"
    draft = f"Text. {tag('diffusion', prompt='a lighthouse')} More."
    model = FakeListChatModel(responses=[draft] * 20)
    settings = BatchSettings(out=out, samples=2, concurrency=3)
    backend = FakeBackend("d")
    box = toolbox(diffusion=backend)
    outcome = await run_batch(items(3), settings, cfg, policy=ChatModelPolicy(model), toolbox=box)
    assert (outcome.total, outcome.finished, outcome.ok, outcome.pending) == (6, 6, 6, 0)
    records = lines(out)
    assert sorted(r["sample_id"] for r in records) == [f"r{i}--s{k}" for i in range(3) for k in range(2)]
    for r in records:
        assert r["status"] == "ok" and r["images_ok"] == 1 and r["images_failed"] == 0
        assert r["row_id"] == r["sample_id"].split("--")[0] and r["timings"]["total_s"] > 0
        sample = out / "samples" / r["sample_id"]
        assert {p.name for p in sample.iterdir()} == {"report.html", "report.md", "images", "trajectory.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 6 and summary["images_ok"] == 6 and summary["settings"]["samples"] == 2
    index = (out / "index.html").read_text()
    assert index.count('href="samples/') == 6 and "Content-Security-Policy" in index

    again = await run_batch(items(3), settings, cfg, policy=ChatModelPolicy(model), toolbox=box)
    assert (again.done_before, again.finished) == (6, 0) and len(lines(out)) == 6
    assert len(backend.calls) == 6  # one per sample, none again on the rerun


async def test_samples_of_a_row_get_their_own_seeds(cfg, tmp_path):
    with FakeOpenAIServer(["No tags."] * 10) as server:
        cfg = cfg.replace(policy_url=server.url, policy_model="m", seed=100)
        await run_batch(items(1), BatchSettings(out=tmp_path / "b", samples=3), cfg, toolbox=toolbox())
    assert sorted(r["seed"] for r in server.requests) == [100, 101, 102]


async def test_a_sample_whose_report_was_written_but_not_recorded_finishes_from_its_checkpoint(cfg, tmp_path):
    out = tmp_path / "b"
    model = FakeListChatModel(responses=["One."] * 10)
    policy = ChatModelPolicy(model)
    original = Ledger.append

    async def crash_on_r1(self, record):
        if record["sample_id"] == "r1--s0":
            raise RuntimeError("killed after the report, before the line")
        return await original(self, record)

    Ledger.append = crash_on_r1
    try:
        with pytest.raises(RuntimeError, match="killed after the report"):
            await run_batch(items(2), BatchSettings(out=out, concurrency=1), cfg, policy=policy, toolbox=toolbox())
    finally:
        Ledger.append = original
    assert (out / "samples" / "r1--s0" / "report.html").is_file() and len(lines(out)) == 1
    drafts_before = model.i if hasattr(model, "i") else None
    outcome = await run_batch(items(2), BatchSettings(out=out), cfg, policy=policy, toolbox=toolbox())
    assert outcome.finished == 1 and [r["sample_id"] for r in lines(out)] == ["r0--s0", "r1--s0"]
    if drafts_before is not None:
        assert model.i == drafts_before  # read back from the checkpoint: the policy was not asked again


async def test_checkpoints_a_kill_left_behind_a_finished_sample_are_forgotten_on_the_rerun(cfg, tmp_path):
    import sqlite3

    from llmi_graph.batch import LocalExecutor

    out = tmp_path / "b"
    policy = ChatModelPolicy(FakeListChatModel(responses=["One."] * 10))
    original = LocalExecutor.forget

    async def killed_before_forgetting_r0(self, sample):
        if not sample.id.endswith("r0--s0"):
            await original(self, sample)

    def threads() -> set[str]:
        with sqlite3.connect(out / "checkpoints.sqlite") as db:
            return {row[0].rsplit(":", 1)[1] for row in db.execute("SELECT DISTINCT thread_id FROM checkpoints")}

    LocalExecutor.forget = killed_before_forgetting_r0
    try:
        await run_batch(items(2), BatchSettings(out=out, concurrency=1), cfg, policy=policy, toolbox=toolbox())
    finally:
        LocalExecutor.forget = original
    assert [r["sample_id"] for r in lines(out)] == ["r0--s0", "r1--s0"] and threads() == {"r0--s0"}
    outcome = await run_batch(items(2), BatchSettings(out=out), cfg, policy=policy, toolbox=toolbox())
    assert (outcome.done_before, outcome.finished) == (2, 0) and threads() == set()  # nothing ran, r0's are gone


async def test_a_cancel_during_a_ledger_write_still_records_the_line_it_wrote(tmp_path, monkeypatch):
    """Ctrl-C while a line is being written: the thread finishes the line, and the ledger (hence summary.json's
    count) must say so too, not lag one behind the file (CI caught summary.json at 1 finished with 2 lines)."""
    import llmi_graph.batch as batch

    def slow_append(path, line):
        time.sleep(0.3)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)

    monkeypatch.setattr(batch, "_append_line", slow_append)
    ledger = Ledger(tmp_path / "results.jsonl")
    task = asyncio.create_task(ledger.append({"sample_id": "a", "status": "ok"}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(ledger.records) == ["a"]
    assert list(Ledger(tmp_path / "results.jsonl").records) == ["a"]  # what the file says


async def test_a_torn_last_line_is_cut_and_that_sample_runs_again(cfg, tmp_path):
    out = tmp_path / "b"
    policy = ChatModelPolicy(FakeListChatModel(responses=["One."] * 10))
    await run_batch(items(2), BatchSettings(out=out), cfg, policy=policy, toolbox=toolbox())
    text = (out / "results.jsonl").read_text()
    last = text.splitlines()[-1]
    (out / "results.jsonl").write_text(text[: len(text) - len(last) // 2 - 1])  # half a line, no newline
    outcome = await run_batch(items(2), BatchSettings(out=out), cfg, policy=policy, toolbox=toolbox())
    assert outcome.finished == 1
    assert Counter(r["sample_id"] for r in lines(out)) == {"r0--s0": 1, "r1--s0": 1}


async def test_changed_rows_and_foreign_folders_are_refused(cfg, tmp_path):
    out = tmp_path / "b"
    policy = ChatModelPolicy(FakeListChatModel(responses=["One."] * 10))
    await run_batch(items(2), BatchSettings(out=out), cfg, policy=policy, toolbox=toolbox())
    changed = [BatchItem(row_id="r0", request={"prompt": "something else", "image_num": 1})]
    with pytest.raises(BatchError, match="1 row\\(s\\) changed since this batch began"):
        await run_batch(changed, BatchSettings(out=out), cfg, policy=policy, toolbox=toolbox())
    more = await run_batch(items(3), BatchSettings(out=out, samples=2), cfg, policy=policy, toolbox=toolbox())
    assert (more.done_before, more.finished) == (2, 4)  # more rows and samples extend the batch
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BatchError, match="is not empty and not a batch folder"):
        await run_batch(items(1), BatchSettings(out=foreign), cfg, policy=policy, toolbox=toolbox())
    with pytest.raises(BatchError, match="cannot wait for a person's approval"):  # no one to ask: refused
        await run_batch(items(1), BatchSettings(out=tmp_path / "c"), cfg.replace(approve="code"), policy=policy)
    assert not (tmp_path / "c").exists()


async def test_unusable_requests_fail_with_the_reason_and_skips_are_recorded(cfg, tmp_path):
    out = tmp_path / "b"
    rows = [
        BatchItem(row_id="bad", request={"prompt": "x", "images": [base64.b64encode(b"not an image").decode()]}),
        BatchItem(row_id="skip", request={"prompt": "y"}, skip="needs input images that are not available"),
        BatchItem(row_id="good", request={"prompt": "z"}),
    ]
    policy = ChatModelPolicy(FakeListChatModel(responses=["One."] * 10))
    outcome = await run_batch(rows, BatchSettings(out=out), cfg, policy=policy, toolbox=toolbox())
    by_id = {r["row_id"]: r for r in lines(out)}
    assert (outcome.ok, outcome.failed, outcome.skipped) == (1, 1, 1)
    assert by_id["bad"]["status"] == "failed" and "input image 0 is unusable" in by_id["bad"]["reason"]
    assert by_id["skip"]["status"] == "skipped" and by_id["skip"]["reason"].startswith("needs input images")


async def test_a_policy_that_is_down_stops_the_batch_and_finishes_nothing(cfg, tmp_path):
    out = tmp_path / "b"
    down = cfg.replace(policy_url="http://127.0.0.1:9/v1", policy_model="m", policy_timeout_s=5)
    outcome = await run_batch(items(10), BatchSettings(out=out, concurrency=2), down, toolbox=toolbox())
    assert outcome.finished == 0 and outcome.stopped and "policy" in outcome.stopped
    assert 4 <= outcome.policy_errors <= 5  # twice the concurrency (and what was in flight), then it stops
    assert (out / "results.jsonl").read_text() == ""
    with FakeOpenAIServer(["Back."] * 20) as server:  # the policy is back: the same batch completes
        back = cfg.replace(policy_url=server.url)
        outcome = await run_batch(items(10), BatchSettings(out=out), back, toolbox=toolbox())
    assert outcome.finished == 10 and len(lines(out)) == 10


def image_server(delay_s: float, seen: Counter) -> FastAPI:
    """A fake Qwen-Image server (named as one): a solid PNG per prompt after `delay_s`, counting prompts."""
    app = FastAPI()
    lock = threading.Lock()

    @app.post("/generate")
    async def generate(body: dict) -> dict:
        with lock:
            seen[body["prompt"]] += 1
        await asyncio.sleep(delay_s)
        return {"images": [base64.b64encode(png((len(body["prompt"]) * 7 % 255, 40, 90))).decode()], "seed": 1}

    return app


def test_kill_9_mid_batch_then_the_same_command_completes_every_sample_once(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Topic {i}", "image_num": 1}) + "\n" for i in range(8)))
    drafts = [f"Part {n}. {tag('diffusion', prompt=f'picture {n}')} End." for n in range(200)]
    seen: Counter = Counter()
    out = tmp_path / "out"
    with FakeOpenAIServer(drafts, delay_s=0.3) as policy, LoopbackApp(image_server(0.6, seen)) as images:
        command = [
            LLMI, "batch", str(rows), "--out", str(out), "--samples", "2", "--concurrency", "4",
            "--policy-url", policy.url, "--model", "fake",
        ]  # fmt: skip
        env = {
            **os.environ,
            "LLMI_IMAGE_SERVER_URLS": images.url,
            "LLMI_CACHE_DIR": str(tmp_path / "cache"),
            "LLMI_TOOL_ATTEMPTS": "1",
        }
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        results = out / "results.jsonl"
        deadline = time.time() + 120
        while not (results.is_file() and len(results.read_text().splitlines()) >= 5):
            assert first.poll() is None, first.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "the batch made no progress"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        done_at_kill = len(results.read_text().splitlines())
        assert done_at_kill < 16, "the batch finished before it could be killed"
        requests_at_kill = len(policy.requests)

        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    records = lines(out)
    ids = Counter(r["sample_id"] for r in records)
    assert len(ids) == 16 and set(ids.values()) == {1}, ids  # every sample exactly once
    assert all(r["status"] == "ok" and r["images_ok"] == 1 for r in records), records
    assert f"{done_at_kill} already finished" in second.stderr
    # Only what was in flight at the kill ran again: the policy and the tools redid at most 4 samples.
    assert len(policy.requests) - requests_at_kill <= 16 - done_at_kill + 4
    # A call in flight at the kill runs again on resume (its result was never saved); no other call does.
    assert sum(seen.values()) <= 16 + 4 and max(seen.values()) <= 2, seen
    for r in records:
        trajectory = json.loads((out / r["report"]).with_name("trajectory.json").read_text())
        assert [c["status"] for c in trajectory["calls"]] == ["ok"]


RESET_SIGINT_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def test_ctrl_c_stops_cleanly_and_the_same_command_continues(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Topic {i}", "image_num": 0}) + "\n" for i in range(6)))
    out = tmp_path / "out"
    with FakeOpenAIServer(["A draft without images."] * 50, delay_s=0.5) as policy:
        command = [LLMI, "batch", str(rows), "--out", str(out), "--concurrency", "2", "--policy-url", policy.url,
                   "--model", "fake"]  # fmt: skip
        env = {**os.environ, "LLMI_CACHE_DIR": str(tmp_path / "cache")}
        # A shell that starts a job in the background (`cmd &`) gives it SIGINT ignored, and a program that inherits
        # that must keep ignoring it: reset the disposition to the default, as a terminal's foreground job has it.
        as_foreground = [sys.executable, "-c", RESET_SIGINT_THEN_EXEC, *command]
        first = subprocess.Popen(
            as_foreground, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        results = out / "results.jsonl"
        deadline = time.time() + 120
        while not (results.is_file() and len(results.read_text().splitlines()) >= 2):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, stderr = first.communicate(timeout=60)
        assert first.returncode == 130, stderr[-2000:]
        assert "interrupted" in stderr and "run the same command again" in stderr
        assert json.loads((out / "summary.json").read_text())["finished"] >= 2  # the summary was written
        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert Counter(r["sample_id"] for r in lines(out)) == {f"row-{i:05d}--s0": 1 for i in range(6)}
