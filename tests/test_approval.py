"""Human approval (the operator's `approve`): the graph stops with the pending calls of the named tools, and a
person's answer (approve, edit or reject) decides what runs, in-process, across processes, through `langgraph dev`
and at the terminal. The policy is scripted (langchain-core's `FakeListChatModel`, or the fake OpenAI-compatible
server of tests/fakes.py); code runs in the real local sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from langgraph_sdk import get_client

from llmi_graph import ChatModelPolicy, Config, State, Toolbox, build_graph, checkpoint_serializer
from llmi_graph.state import Figure
from tests.fakes import FakeBackend, FakeOpenAIServer
from tests.test_langgraph_dev import langgraph_dev

ROOT = Path(__file__).resolve().parents[1]
LLMI = [sys.executable, "-c", "from llmi_graph.cli import app; app(prog_name='llmi')"]  # `llmi`, a process of its own


def tag(source: str, description: str = "d", **params: object) -> str:
    return f"<imgen>{{'source': '{source}', 'description': '{description}', 'params': {params!r}}}</imgen>"


BARS = "plt.bar(['a', 'b'], [3, 5])"
LINE = "plt.plot([1, 2, 3], [2, 1, 3])"
BROKEN = "plt.line([1, 2], [3, 4])"  # matplotlib has no plt.line: the sandbox fails


@pytest.fixture
def local_code(requires_bwrap):
    """The real local code sandbox (bubblewrap)."""
    from tools.code import LocalSandbox, SandboxLimits

    return LocalSandbox(SandboxLimits(timeout_s=30))


def approving(drafts: list[str], cfg: Config, *, code, approve: str = "code", edit=None, search=None, saver=None):
    """The graph with a scripted policy and `approve` set, on a checkpointer; and a new thread's config."""
    toolbox = Toolbox(backends={"search": search, "diffusion": None, "code": code, "edit": edit})
    graph = build_graph(
        policy=ChatModelPolicy(FakeListChatModel(responses=drafts)),
        toolbox=toolbox,
        config=cfg.replace(approve=approve),
        checkpointer=saver
        if saver is not None
        else InMemorySaver(serde=checkpoint_serializer()),  # as the README advises
    )
    return graph, {"configurable": {"thread_id": "t"}}


async def start(graph, thread, **request: object) -> dict:
    """Run until the approval interrupt: its payload."""
    state = await graph.ainvoke({"prompt": "Chart it", **request}, thread)
    (pending,) = state["__interrupt__"]
    return pending.value


async def answer(graph, thread, value: object) -> dict:
    return await graph.ainvoke(Command(resume=value), thread)


def figures(state: State) -> list[Figure]:
    return [item for item in state.document if isinstance(item, Figure)]


async def test_the_run_stops_with_the_pending_code_call_and_approval_makes_the_image(cfg, local_code):
    graph, thread = approving([f"Bars.\n{tag('code', 'two bars', code=BARS)}\nEnd."], cfg, code=local_code)
    payload = await start(graph, thread)
    assert payload == {
        "type": "llmi.approval",
        "round": 0,
        "calls": [{"index": 0, "source": "code", "description": "two bars", "params": {"code": BARS}}],
        "actions": ["approve", "edit", "reject"],
        "error": None,
    }
    json.dumps(payload)  # plain JSON, as a LangGraph API client gets it
    snapshot = await graph.aget_state(thread)
    assert snapshot.next == ("approve",) and snapshot.values["results"] == []  # nothing ran yet

    state = State.model_validate(await answer(graph, thread, {"0": {"action": "approve", "reviewer": "ana"}}))
    assert [f.status for f in figures(state)] == ["ok"]
    assert state.results[0].provenance["code"] == BARS
    (approval,) = state.approvals
    assert (approval.round, approval.index, approval.decision, approval.reviewer) == (0, 0, "approve", "ana")
    assert approval.call == approval.proposed == state.calls[0]


async def test_a_checkpointer_with_an_allowlist_of_its_own_learns_our_types_and_keeps_its_storage(cfg, local_code):
    """An embedder's checkpointer whose serializer lists the embedder's own types (as LangGraph's strict mode asks)
    would refuse ours; build_graph adds them (LangGraph's `with_allowlist`), so our checkpoints come back as
    themselves, the embedder's type still does, a type neither lists is not built, and the caller's object reads the
    same checkpoints."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    from tests.test_durable import NotOurs

    theirs = JsonPlusSerializer(allowed_msgpack_modules=[(NotOurs.__module__, "NotOurs")])
    saver = InMemorySaver(serde=theirs)
    graph, thread = approving([f"Bars.\n{tag('code', 'two bars', code=BARS)}"], cfg, code=local_code, saver=saver)
    serde = graph.checkpointer.serde
    payload = await start(graph, thread)
    assert payload["calls"][0]["source"] == "code"
    mine, ours = saver.get_tuple(thread), graph.checkpointer.get_tuple(thread)  # one storage, two serializers
    assert mine is not None and ours is not None and mine.checkpoint["id"] == ours.checkpoint["id"]
    calls = ours.checkpoint["channel_values"]["calls"]
    assert calls[0].source == "code" and serde.loads_typed(serde.dumps_typed(calls)) == calls
    assert isinstance(mine.checkpoint["channel_values"]["calls"][0], dict)  # their serializer alone refuses ours
    assert isinstance(serde.loads_typed(serde.dumps_typed(NotOurs())), NotOurs)

    class Neither(NotOurs):
        pass

    assert not isinstance(serde.loads_typed(serde.dumps_typed(Neither())), Neither)
    done = State.model_validate(await answer(graph, thread, {"0": {"action": "approve"}}))
    assert [f.status for f in figures(done)] == ["ok"]


async def test_an_edit_runs_the_reviewers_code_and_the_run_records_both(cfg, local_code):
    graph, thread = approving([f"Sales.\n{tag('code', 'sales', code=BROKEN)}"], cfg, code=local_code)
    await start(graph, thread)
    state = State.model_validate(await answer(graph, thread, {"0": {"action": "edit", "params": {"code": LINE}}}))
    assert [f.status for f in figures(state)] == ["ok"]  # the policy's code would have failed
    assert state.results[0].provenance["code"] == LINE and state.calls[0].params == {"code": LINE}
    assert BROKEN in state.draft  # the policy's turn stays as written
    (approval,) = state.approvals
    assert approval.decision == "edit" and approval.proposed.params == {"code": BROKEN}
    assert approval.call is not None and approval.call.params == {"code": LINE} and approval.call.valid


async def test_a_rejected_call_is_a_failed_slot_and_is_not_repaired(cfg, local_code):
    graph, thread = approving([f"Bars.\n{tag('code', 'bars', code=BARS)}", "unused"], cfg, code=local_code)
    await start(graph, thread, repair_rounds=2)
    state = State.model_validate(await answer(graph, thread, {"action": "reject", "reason": "no charts today"}))
    (figure,) = figures(state)
    assert figure.status == "failed" and figure.error == "rejected by the reviewer: no charts today"
    assert len(state.results) == 1 and state.results[0].attempts == 0  # the code never ran
    assert state.repairs == []  # a rejection is the reviewer's last word on the slot
    assert state.approvals[0].decision == "reject" and state.approvals[0].call is None


async def test_mixed_decisions_and_tools_not_in_approve_run_without_asking(cfg, local_code):
    editor = FakeBackend("edit")
    draft = (
        f"{tag('code', 'bars', code=BARS)} {tag('code', 'line', code=LINE)} "
        f"{tag('edit', 'bars in gray', img_index=0, prompt='grayscale')} {tag('edit', 'line', img_index=1, prompt='x')}"
    )
    graph, thread = approving([draft], cfg, code=local_code, edit=editor)
    payload = await start(graph, thread)
    assert [c["index"] for c in payload["calls"]] == [0, 1]  # the edits are not asked about
    state = State.model_validate(await answer(graph, thread, {"0": "reject", "1": "approve"}))
    by_index = {f.index: f for f in figures(state)}
    assert by_index[0].error == "rejected by the reviewer"
    assert by_index[1].status == "ok" and by_index[3].status == "ok"
    assert by_index[2].error == "dependency failed: image 0 (code) failed: rejected by the reviewer"
    assert len(editor.calls) == 1  # only the edit of the approved chart ran
    assert [(a.index, a.decision) for a in state.approvals] == [(0, "reject"), (1, "approve")]

    # A tool not in `approve` runs without asking.
    graph, thread = approving([tag("code", "bars", code=BARS)], cfg, code=local_code, approve="search")
    state = State.model_validate(await graph.ainvoke({"prompt": "Chart it"}, thread))
    assert [f.status for f in figures(state)] == ["ok"] and state.approvals == []


async def test_without_approve_the_graph_needs_no_checkpointer_and_never_stops(cfg, local_code):
    toolbox = Toolbox(backends={"search": None, "diffusion": None, "code": local_code, "edit": None})
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[tag("code", code=BARS)])), toolbox=toolbox)
    state = await graph.ainvoke({"prompt": "Chart it"}, context=cfg)
    assert "__interrupt__" not in state and state["document"][0].status == "ok" and state["approvals"] == []


async def test_a_bad_answer_changes_nothing_and_asks_again_with_the_reason(cfg, local_code):
    draft = f"{tag('code', 'bars', code=BARS)} {tag('code', 'line', code=LINE)}"
    graph, thread = approving([draft], cfg, code=local_code)
    first = await start(graph, thread)
    bad = [
        ("maybe", "unknown action 'maybe'"),
        (42, "the answer must be 'approve', 'reject', {'action': ...} or a mapping of image index to one, got int"),
        ({"0": "approve"}, "no answer for image(s) 1: answer every call (0, 1)"),
        ({"0": "approve", "1": "approve", "7": "approve"}, "'7' is not the index of a call awaiting approval (0, 1)"),
        ({"action": "edit", "params": {"code": LINE}}, "one edit for 2 calls: answer each image index (0, 1)"),
        ({"0": {"action": "edit"}, "1": "approve"}, "image 0: 'edit' needs 'params'"),
        ({"0": {"action": "approve", "note": "x"}, "1": "approve"}, "image 0: unknown key(s) 'note'"),
        ({"0": {"action": "edit", "params": {"code": "plt.plot(["}}, "1": "approve"}, "the code does not compile"),
        ({"0": {"action": "edit", "params": {"code": 5}}, "1": "approve"}, "params.code must be a string, got int"),
        ({"0": {"action": "edit", "params": {"query": "x"}}, "1": "approve"}, "unexpected key(s) 'query'"),
        ({"0": {"action": "reject", "params": {"code": LINE}}, "1": "approve"}, "'params' go with 'edit'"),
    ]
    for value, reason in bad:
        state = await answer(graph, thread, value)
        (pending,) = state["__interrupt__"]
        assert pending.value["calls"] == first["calls"], value
        assert reason in pending.value["error"], (value, pending.value["error"])
        assert state["results"] == [], value  # nothing was applied, nothing ran
    state = State.model_validate(await answer(graph, thread, "approve"))
    assert [f.status for f in figures(state)] == ["ok", "ok"]
    assert [a.decision for a in state.approvals] == ["approve", "approve"]


async def test_each_call_is_announced_awaiting_approval_once_however_often_the_run_resumes(cfg, local_code):
    draft = f"{tag('code', 'bars', code=BARS)} {tag('code', 'line', code=LINE)}"
    graph, thread = approving([draft], cfg, code=local_code)
    statuses: list[tuple[int, str]] = []

    async def stream(value: object) -> None:
        async for event in graph.astream(value, thread, stream_mode="custom"):
            if event.get("event") == "tool":
                statuses.append((event["index"], event["status"]))

    await stream({"prompt": "Chart it"})
    await stream(Command(resume="maybe"))  # a bad answer: asked again
    await stream(Command(resume="approve"))
    waits = [index for index, status in statuses if status == "awaiting approval"]
    assert waits == [0, 1], statuses
    assert sorted(index for index, status in statuses if status == "ok") == [0, 1]


async def test_the_calls_a_repair_round_writes_are_asked_about_too(cfg, local_code):
    fixed = tag("code", "sales", code=LINE)
    graph, thread = approving([f"Sales.\n{tag('code', 'sales', code=BROKEN)}", f"Fixed: {fixed}"], cfg, code=local_code)
    await start(graph, thread, repair_rounds=1)
    state = await answer(graph, thread, "approve")
    (pending,) = state["__interrupt__"]  # the broken chart ran, failed and was rewritten
    assert pending.value["round"] == 1 and pending.value["calls"][0]["params"] == {"code": LINE}
    state = State.model_validate(await answer(graph, thread, {"0": {"action": "approve"}}))
    assert [r.status for r in state.results] == ["failed", "ok"]
    assert [(a.round, a.decision) for a in state.approvals] == [(0, "approve"), (1, "approve")]


async def test_the_scaled_graph_stops_in_its_create_stage(cfg, local_code):
    from llmi_graph.scaling import build_scaled_graph

    draft = tag("code", "bars", code=BARS)
    toolbox = Toolbox(backends={"search": None, "diffusion": None, "code": local_code, "edit": None})
    graph = build_scaled_graph(
        policy=ChatModelPolicy(FakeListChatModel(responses=[draft, draft])),
        toolbox=toolbox,
        config=cfg.replace(approve="code", candidates=2),
        checkpointer=InMemorySaver(serde=checkpoint_serializer()),
    )
    thread = {"configurable": {"thread_id": "t"}}
    payload = await start(graph, thread)
    assert [c["index"] for c in payload["calls"]] == [0]
    assert (await graph.aget_state(thread)).interrupts[0].value == payload  # what `llmi run` reads to ask
    state = State.model_validate(await answer(graph, thread, "approve"))
    assert len(state.drafts) == 2 and [f.status for f in figures(state)] == ["ok"]
    assert [a.decision for a in state.approvals] == ["approve"]


async def test_approval_needs_a_checkpointer(cfg, local_code):
    with pytest.raises(ValueError, match=r"approval needs a checkpointer: approve='code' .*InMemorySaver"):
        build_graph(config=cfg.replace(approve="code"))
    build_graph(config=cfg.replace(approve="code"), subgraph=True)  # a subgraph uses its parent's
    # Approval asked for at run time (a `Config` context) of a graph compiled without one: a clear error, not a
    # run that stops and can never be answered.
    toolbox = Toolbox(backends={"search": None, "diffusion": None, "code": local_code, "edit": None})
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[tag("code", code=BARS)])), toolbox=toolbox)
    with pytest.raises(RuntimeError, match="approval needs a checkpointer"):
        await graph.ainvoke({"prompt": "Chart it"}, context=cfg.replace(approve="code"))
    with pytest.raises(ValueError, match=r"unknown tool\(s\) shell; expected some of search, diffusion, code, edit"):
        Config(approve="code,shell")


def approval_run(tmp_path: Path, resume: object | None = None) -> dict:
    args = [
        sys.executable, "-m", "tests.approval_run", str(tmp_path / "checkpoints.sqlite"), "thread-1",
        str(tmp_path / "images"), str(tmp_path / "cache"),
    ]  # fmt: skip
    if resume is not None:
        args += ["--resume", json.dumps(resume)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_answer_can_come_from_another_process(tmp_path, requires_bwrap):
    first = approval_run(tmp_path)
    assert first["output"] is None and [c["index"] for c in first["interrupt"]["calls"]] == [0]

    second = approval_run(tmp_path, {"0": {"action": "edit", "params": {"code": LINE}, "reviewer": "ana"}})
    assert second["pid"] != first["pid"] and second["interrupt"] is None
    out = second["output"]
    assert [f["status"] for f in out["document"] if f["kind"] == "figure"] == ["ok", "ok"]
    chart, gray = sorted(out["results"], key=lambda r: r["index"])
    assert chart["provenance"]["code"] == LINE and gray["provenance"]["operations"] == ["grayscale"]
    (approval,) = out["approvals"]
    assert approval["decision"] == "edit" and approval["reviewer"] == "ana"
    assert list((tmp_path / "cache" / "runs").iterdir()) == []  # a finished run leaves nothing behind


async def test_approval_through_langgraph_dev(tmp_path, requires_bwrap):
    draft = f"Bars.\n{tag('code', 'bars', code=BROKEN)}\nEnd."
    with FakeOpenAIServer([draft]) as policy:
        env = {
            **os.environ,
            "LLMI_POLICY_URL": policy.url,
            "LLMI_POLICY_MODEL": "fake",
            "LLMI_IMAGE_DIR": str(tmp_path / "store"),
            "LLMI_APPROVE": "code",
        }
        with langgraph_dev(env, tmp_path / "dev.log") as url:
            client = get_client(url=url)
            thread = await client.threads.create()
            state = await client.runs.wait(thread["thread_id"], "llmi", input={"prompt": "Chart it"})
            (pending,) = state["__interrupt__"]
            assert pending["value"]["calls"] == [
                {"index": 0, "source": "code", "description": "bars", "params": {"code": BROKEN}}
            ]
            # A malformed answer: asked again, with the reason.
            state = await client.runs.wait(thread["thread_id"], "llmi", command={"resume": {"0": "perhaps"}})
            assert "unknown action 'perhaps'" in state["__interrupt__"][0]["value"]["error"]
            resume = {"0": {"action": "edit", "params": {"code": LINE}, "reviewer": "ana"}}
            state = await client.runs.wait(thread["thread_id"], "llmi", command={"resume": resume})
    assert "__interrupt__" not in state
    figures = [item for item in state["document"] if item["kind"] == "figure"]
    assert [f["status"] for f in figures] == ["ok"], figures
    assert [(a["decision"], a["reviewer"]) for a in state["approvals"]] == [("edit", "ana")]
    assert state["calls"][0]["params"] == {"code": LINE}


def llmi_run(tmp_path: Path, draft: str, stdin: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`llmi run --approve code` with a fake policy server and the person's answers piped in; and the trajectory."""
    out = tmp_path / "report"
    env = {**os.environ, "LLMI_IMAGE_DIR": str(tmp_path / "store"), "LLMI_TOOL_ATTEMPTS": "1"}
    with FakeOpenAIServer([draft]) as server:
        args = ["run", "Chart it", "--policy-url", server.url, "--model", "fake", "--out", str(out), *extra]
        done = subprocess.run(
            [*LLMI, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((out / "trajectory.json").read_text())


def test_llmi_run_asks_at_the_terminal(tmp_path, requires_bwrap):
    draft = f"Bars {tag('code', 'bars', code=BARS)} and a line {tag('code', 'line', code=BROKEN)}."
    # image 0: a wrong key, then reject with a reason; image 1: edit, the new code read up to a line holding "."
    done, traj = llmi_run(tmp_path, draft, f"x\nr\nnot needed\ne\n{LINE}\n.\n", "--approve", "code")
    assert BARS in done.stderr and BROKEN in done.stderr  # each pending call is shown, then asked about
    assert "approve, edit or reject? [a/e/r]" in done.stderr
    assert "Please select one of the available options" in done.stderr  # "x" is not an answer
    assert "Deserializ" not in done.stderr
    assert [(c["status"], c["reason"]) for c in traj["calls"]] == [
        ("failed", "rejected by the reviewer: not needed"),
        ("ok", None),
    ]
    assert traj["calls"][1]["params"] == {"code": LINE} and traj["config"]["approve"] == "code"
    # the trajectory keeps each decision: what the policy proposed, and what ran
    assert [(a["index"], a["decision"], a["reason"]) for a in traj["approvals"]] == [
        (0, "reject", "not needed"),
        (1, "edit", None),
    ]
    assert traj["approvals"][1]["proposed"]["params"] == {"code": BROKEN}
    assert traj["approvals"][1]["call"]["params"] == {"code": LINE}

    # The input ends before every call has an answer: the calls left are rejected, nothing unapproved runs.
    done, traj = llmi_run(tmp_path / "eof", draft, "a\n", "--approve", "code")
    assert [(c["status"], c["reason"]) for c in traj["calls"]] == [
        ("ok", None),
        ("failed", "rejected by the reviewer: no answer: the input ended"),
    ]


def test_llmi_run_refuses_an_unknown_tool_to_approve(tmp_path):
    done = subprocess.run(
        [*LLMI, "run", "x", "--approve", "shell", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "unknown tool(s) shell" in done.stderr
