"""`llmi batch --checkpoint-url postgresql://...`: LangGraph's Postgres saver against a real PostgreSQL server
that the tests start (tests/postgres.py): a batch, a kill -9 and a rerun, finished samples' checkpoints
deleted, and the URL's password kept out of the batch folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from llmi_graph import ChatModelPolicy
from llmi_graph.batch import BatchSettings, run_batch
from tests.fakes import FakeBackend, FakeOpenAIServer, LoopbackApp
from tests.test_batch import LLMI, ROOT, image_server, items, lines, tag, toolbox

PASSWORD = "s3cret-pw"
NONE_LEFT = {"checkpoints": 0, "checkpoint_blobs": 0, "checkpoint_writes": 0}


def with_password(url: str) -> str:
    """The URL with a password in it (the test server trusts loopback, so any password is accepted)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


def checkpoint_rows(url: str, batch_id: str) -> dict[str, int]:
    """Rows left in the Postgres saver's tables for this batch's threads."""
    left = {}
    with psycopg.connect(url) as conn:
        for table in NONE_LEFT:
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE thread_id LIKE %s", (f"{batch_id}:%",)).fetchone()
            left[table] = row[0]
    return left


def batch_id(out: Path) -> str:
    return json.loads((out / "batch.json").read_text())["batch_id"]


async def test_a_batch_checkpoints_in_postgres_and_deletes_what_finished(cfg, tmp_path, postgres_url):
    out = tmp_path / "b"
    url = with_password(postgres_url)
    model = FakeListChatModel(responses=[f"Text. {tag('diffusion', prompt='a lighthouse')} More."] * 20)
    backend = FakeBackend("d")
    settings = BatchSettings(out=out, samples=2, concurrency=3, checkpoint_url=url)
    outcome = await run_batch(
        items(3), settings, cfg, policy=ChatModelPolicy(model), toolbox=toolbox(diffusion=backend)
    )
    assert (outcome.finished, outcome.ok) == (6, 6)
    assert all(r["status"] == "ok" and r["images_ok"] == 1 for r in lines(out))
    assert not (out / "checkpoints.sqlite").exists()
    assert checkpoint_rows(postgres_url, batch_id(out)) == NONE_LEFT
    settings_json = json.loads((out / "settings.json").read_text())
    assert settings_json["checkpoints"] == url.replace(PASSWORD, "***")
    for path in out.rglob("*"):
        assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path

    again = await run_batch(items(3), settings, cfg, policy=ChatModelPolicy(model), toolbox=toolbox(diffusion=backend))
    assert (again.done_before, again.finished) == (6, 0) and len(backend.calls) == 6


def test_kill_9_mid_batch_then_the_same_command_resumes_from_postgres_and_completes_every_sample_once(
    tmp_path, postgres_url
):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Topic {i}", "image_num": 1}) + "\n" for i in range(8)))
    drafts = [f"Part {n}. {tag('diffusion', prompt=f'picture {n}')} End." for n in range(200)]
    seen: Counter = Counter()
    out = tmp_path / "out"
    url = with_password(postgres_url)
    with FakeOpenAIServer(drafts, delay_s=0.3) as policy, LoopbackApp(image_server(0.6, seen)) as images:
        command = [
            LLMI, "batch", str(rows), "--out", str(out), "--samples", "2", "--concurrency", "4",
            "--checkpoint-url", url, "--policy-url", policy.url, "--model", "fake",
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
        assert checkpoint_rows(postgres_url, batch_id(out))["checkpoints"] > 0  # the samples in flight, in Postgres
        assert not (out / "checkpoints.sqlite").exists()

        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    records = lines(out)
    ids = Counter(r["sample_id"] for r in records)
    assert len(ids) == 16 and set(ids.values()) == {1}, ids  # every sample exactly once
    assert all(r["status"] == "ok" and r["images_ok"] == 1 for r in records)
    assert f"{done_at_kill} already finished" in second.stdout + second.stderr
    # Only what was in flight at the kill ran again: the policy and the tools redid at most 4 samples.
    assert len(policy.requests) - requests_at_kill <= 16 - done_at_kill + 4
    assert sum(seen.values()) <= 16 + 4 and max(seen.values()) <= 2, seen
    assert checkpoint_rows(postgres_url, batch_id(out)) == NONE_LEFT
    assert PASSWORD not in second.stdout + second.stderr
    for name in ("summary.json", "settings.json", "batch.json", "results.jsonl"):
        assert PASSWORD not in (out / name).read_text(), name
