"""A durable tool phase: a run killed mid-tools and resumed in a new process (same thread, `None` input) finishes
with the same images, without running finished calls again, edits of images made before the crash included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]


def durable_run(tmp_path: Path, *, crash: bool, resume: bool) -> subprocess.CompletedProcess[str]:
    args = [
        sys.executable, "-m", "tests.durable_run",
        str(tmp_path / "checkpoints.sqlite"), "thread-1", str(tmp_path / "executions.jsonl"),
        str(tmp_path / "images"), str(tmp_path / "cache"),
    ]  # fmt: skip
    env = {**os.environ, "LLMI_TEST_CRASH": "1" if crash else "0"}
    return subprocess.run(
        [*args, *(["--resume"] if resume else [])], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def executions(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "executions.jsonl").read_text().splitlines()]


def test_a_run_killed_mid_tools_resumes_in_a_new_process(tmp_path):
    crashed = durable_run(tmp_path, crash=True, resume=False)
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # SIGKILL: no clean-up ran
    before = executions(tmp_path)
    assert [e["prompt"] for e in before] == ["first"], "the crash should come after 'first' and before the edit"
    assert (tmp_path / "cache" / "runs").is_dir()  # the run's results wait there for a resume

    resumed = durable_run(tmp_path, crash=False, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    figures = [d for d in out["document"] if d["kind"] == "figure"]
    assert [f["status"] for f in figures] == ["ok", "ok", "ok"], [f.get("error") for f in figures]

    runs = executions(tmp_path)
    assert sorted(e["prompt"] for e in runs) == ["crash", "first", "slow edit"]  # 'first' did not run again
    first = next(e for e in runs if e["prompt"] == "first")
    edit = next(e for e in runs if e["prompt"] == "slow edit")
    assert edit["pid"] != first["pid"]  # resumed in a new process ...
    assert edit["inputs"] == [first["output"]]  # ... on the image made before the crash
    assert figures[0]["image"]["sha256"] == first["output"]
    assert figures[1]["image"]["sha256"] == edit["output"]
    assert list((tmp_path / "cache" / "runs").iterdir()) == []  # a finished run leaves nothing behind


class NotOurs(BaseModel):
    """A type no llmi state holds: a checkpoint naming it must not be able to build it."""

    x: int = 1


def test_checkpoints_restore_every_type_the_state_holds_and_refuse_others():
    """The serializer of our checkpointers (batch, approval at the terminal) lists our types: they come back as
    themselves (so LangGraph has nothing to warn about), and a type outside the list is not built from a checkpoint
    (LangGraph's strict mode, soon its default)."""
    from llmi_graph._checkpoint import serializer
    from llmi_graph.checks import Problem, Validation
    from llmi_graph.state import Approval, Candidate, ImageRef, ImageResult, PolicyOutput, Repair, State
    from llmi_graph.tags import ImageSlot, TextSegment, ToolCall

    call = ToolCall(index=0, source="code", description="d", params={"code": "plt.plot([1])"}, raw="<imgen>...")
    ref = ImageRef(sha256="0" * 64, path="/x.png", mime="image/png", width=1, height=1)
    reply = PolicyOutput(text="Intro.", backend="fake", model="fake", completion_token_ids=[1], logprobs=[-0.1])
    state = State(
        prompt="p",
        segments=[TextSegment(text="Intro."), ImageSlot(index=0)],
        calls=[call],
        results=[ImageResult(index=0, source="code", status="ok", image=ref)],
        policy=reply,
        repairs=[Repair(round=1, index=0, failed=call, reason="boom", reply=reply, call=call)],
        approvals=[Approval(round=0, index=0, decision="approve", proposed=call)],
    )
    validation = Validation(tags=1, clean=0, problems=[Problem(index=0, reason="the code does not compile")])
    candidate = Candidate(output=reply, validation=validation, rules_score=1.0)
    serde = serializer()
    # LangGraph checkpoints each state key (channel) on its own, so each value's types must come back as themselves
    for name in State.model_fields:
        value = getattr(state, name)
        assert serde.loads_typed(serde.dumps_typed(value)) == value, name
    assert serde.loads_typed(serde.dumps_typed([candidate])) == [candidate]
    assert not isinstance(serde.loads_typed(serde.dumps_typed(NotOurs())), NotOurs)
