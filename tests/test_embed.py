"""The llmi graph inside other apps: as an agent's tool (`as_tool`), as a node of a parent graph, and the examples.

The agent is LangGraph's prebuilt ReAct agent driven by a scripted fake chat model; the policy is langchain-core's
fake chat model; charts run in the real local code sandbox, other tools are fake backends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, FakeMessagesListChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import create_react_agent
from PIL import Image

from llmi_graph import (
    ChatModelPolicy,
    Config,
    Figure,
    ImageResult,
    Output,
    Request,
    TextSegment,
    Toolbox,
    as_node,
    as_tool,
    build_graph,
)
from tests.fakes import FakeBackend

pytestmark = pytest.mark.filterwarnings("ignore::langgraph.warnings.LangGraphDeprecatedSinceV10")

EXAMPLES = Path(__file__).parents[1] / "examples"
CHART = "x = np.linspace(-3, 3, 50)\nplt.plot(x, x**2)\nplt.title('y = x^2')"
CHART_DRAFT = (
    f"# Parabolas\nA parabola is symmetric.\n<imgen>{{'source': 'code', 'description': 'the parabola y = x^2', "
    f"'params': {{'code': {CHART!r}}}}}</imgen>\nIts vertex is at the origin."
)
SEARCH_DRAFT = "Cats.\n<imgen>{'source': 'search', 'description': 'a cat', 'params': {'query': 'cat'}}</imgen>"


class FakeAgentModel(FakeMessagesListChatModel):
    """A scripted fake chat model for the agent: its replies are fixed, so binding tools changes nothing."""

    def bind_tools(self, tools: object, **kwargs: object) -> FakeAgentModel:
        return self


def call(args: dict[str, Any], call_id: str = "c0") -> dict[str, Any]:
    return {"name": "llmi_create_document", "args": args, "id": call_id}


def agent_for(tool: Any, *turns: list[dict[str, Any]]) -> Any:
    """A prebuilt agent whose fake model makes each turn's tool calls, then answers "done"."""
    replies = [AIMessage("", tool_calls=calls) for calls in turns] + [AIMessage("done")]
    return create_react_agent(FakeAgentModel(responses=replies), [tool])


async def run_agent(agent: Any) -> tuple[list[ToolMessage], list[tuple[tuple[str, ...], dict[str, Any]]]]:
    """Stream the agent with subgraphs: its tool messages and every progress event (with its namespace)."""
    events, final = [], None
    stream = agent.astream({"messages": [("user", "write it")]}, stream_mode=["custom", "values"], subgraphs=True)
    async for namespace, mode, chunk in stream:
        if mode == "custom":
            events.append((namespace, chunk))
        elif not namespace:
            final = chunk
    assert final is not None and final["messages"][-1].content == "done"
    return [m for m in final["messages"] if isinstance(m, ToolMessage)], events


def fake_tool(cfg: Config, out: Path, *drafts: str, **kwargs: Any) -> tuple[Any, FakeListChatModel, FakeBackend]:
    model = FakeListChatModel(responses=list(drafts or [SEARCH_DRAFT]))
    search = FakeBackend("fake-search")
    toolbox = Toolbox(backends={"search": search, "code": FakeBackend("fake-code")})
    return as_tool(policy=ChatModelPolicy(model), toolbox=toolbox, config=cfg, out_dir=out, **kwargs), model, search


# --- as_tool ------------------------------------------------------------------------------------------------------


async def test_agent_calls_the_tool_and_gets_the_document_and_report(cfg, tmp_path, requires_bwrap):
    model = FakeListChatModel(responses=[CHART_DRAFT])
    tool = as_tool(policy=ChatModelPolicy(model), config=cfg, out_dir=tmp_path / "reports")
    agent = agent_for(tool, [call({"prompt": "Explain parabolas", "image_num": 1, "tools": ["code"]})])

    (message,), events = await run_agent(agent)

    assert message.status == "success", message.content
    (folder,) = (tmp_path / "reports").iterdir()
    assert message.content.startswith(f"Report: {folder / 'report.html'}\nMarkdown: {folder / 'report.md'}")
    assert "Images: 1 made, 0 failed" in message.content
    markdown = (folder / "report.md").read_text()
    assert message.content.endswith(markdown)  # the document is report.md as written
    assert "![the parabola y = x^2](images/00-code.png)" in markdown
    assert Image.open(folder / "images" / "00-code.png").size[0] > 100  # a real chart from the sandbox
    assert "<footer>" in (folder / "report.html").read_text()
    figure = {"index": 0, "source": "code", "status": "ok", "image": str(folder / "images/00-code.png"), "error": None}
    assert message.artifact == {
        "out_dir": str(folder),
        "html": str(folder / "report.html"),
        "markdown": str(folder / "report.md"),
        "trajectory": str(folder / "trajectory.json"),
        "figures": [figure],
    }
    # The agent's arguments became the run's request.
    trajectory = json.loads((folder / "trajectory.json").read_text())
    assert (trajectory["prompt"], trajectory["image_num"], trajectory["allowed_tools"]) == (
        "Explain parabolas",
        1,
        ["code"],
    )
    # The llmi graph ran as a subgraph of the agent's tool node: its progress events reach the agent's stream.
    statuses = [(e["event"], e["status"]) for _, e in events]
    assert ("planner", "done") in statuses and ("tool", "ok") in statuses
    assert all(namespace[0].startswith("tools:") for namespace, _ in events)


async def test_the_caller_chooses_only_prompt_image_num_and_tools(cfg, tmp_path):
    tool, _, _ = fake_tool(cfg, tmp_path / "reports")
    assert set(tool.args) == {"prompt", "image_num", "tools"}
    assert tool.args["tools"]["anyOf"][0]["items"]["enum"] == ["search", "diffusion", "code", "edit"]
    assert "At most 8 images" in tool.description
    with pytest.raises(ValueError, match="either a graph or the policy"):
        as_tool(build_graph(), policy=ChatModelPolicy(FakeListChatModel(responses=["x"])))


async def test_bad_arguments_come_back_to_the_agent_as_errors(cfg, tmp_path):
    tool, policy_model, _ = fake_tool(cfg, tmp_path / "reports", max_images=4)
    elsewhere = tmp_path / "elsewhere"
    agent = agent_for(
        tool,
        [call({"prompt": "cats", "image_num": 5}, "a")],
        [call({"prompt": "cats", "tools": ["paint"]}, "b")],
        [call({"prompt": "   "}, "c")],
        [call({"prompt": "cats", "out_dir": str(elsewhere)}, "d")],
        [call({"prompt": "cats", "image_num": "many"}, "e")],
    )

    messages, _ = await run_agent(agent)

    assert [m.status for m in messages] == ["error"] * 5
    wrong = [m.content for m in messages]
    assert wrong[0].startswith("invalid arguments: image_num 5: use -1 (no images), 0 (any), 1 to 4 or 99")
    assert "tools.0: Input should be 'search', 'diffusion', 'code' or 'edit'" in wrong[1]
    assert "prompt: the prompt is empty" in wrong[2]
    assert "out_dir: Extra inputs are not permitted" in wrong[3]
    assert "image_num: Input should be a valid integer" in wrong[4]
    assert all(w.endswith("Correct them and call the tool again.") for w in wrong)
    assert not elsewhere.exists() and not (tmp_path / "reports").exists()  # no run, nothing written
    assert policy_model.i == 0  # the policy was never asked


async def test_a_failing_policy_comes_back_as_an_error(cfg, tmp_path):
    class BrokenFakeChatModel(FakeListChatModel):
        async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("connection refused")

    tool = as_tool(policy=ChatModelPolicy(BrokenFakeChatModel(responses=["x"])), config=cfg, out_dir=tmp_path)
    (message,), _ = await run_agent(agent_for(tool, [call({"prompt": "cats"})]))
    assert message.status == "error"
    assert message.content == (
        "the document could not be written: the policy failed: ConnectionError: connection refused"
    )


async def test_failed_images_stay_in_the_document_with_their_reason(cfg, tmp_path):
    tool, _, search = fake_tool(cfg, tmp_path / "reports")
    search.error = "no results for 'cat'"
    (message,), _ = await run_agent(agent_for(tool, [call({"prompt": "cats", "image_num": 99})]))
    assert message.status == "success"
    assert "Images: 0 made, 1 failed" in message.content
    assert "could not be made" in message.content and "no results for 'cat'" in message.content
    assert message.artifact["figures"] == [
        {"index": 0, "source": "search", "status": "failed", "image": None, "error": "no results for 'cat'"}
    ]


async def test_parallel_calls_write_separate_reports(cfg, tmp_path):
    tool, _, _ = fake_tool(cfg, tmp_path / "reports", SEARCH_DRAFT, "Dogs, no images.")
    calls = [call({"prompt": "cats"}, "a"), call({"prompt": "dogs", "image_num": -1}, "b")]
    messages, _ = await run_agent(agent_for(tool, calls))
    folders = sorted((tmp_path / "reports").iterdir())
    assert len(folders) == 2 and {m.artifact["out_dir"] for m in messages} == {str(f) for f in folders}
    prompts = {json.loads((f / "trajectory.json").read_text())["prompt"] for f in folders}
    assert prompts == {"cats", "dogs"}


async def test_an_agent_with_a_checkpointer_calls_the_tool_on_two_turns(cfg, tmp_path):
    from langgraph.checkpoint.memory import InMemorySaver

    tool, _, _ = fake_tool(cfg, tmp_path / "reports", SEARCH_DRAFT, "Dogs, no images.")
    replies = [AIMessage("", tool_calls=[call({"prompt": p}, p)]) for p in ("cats", "dogs")]
    model = FakeAgentModel(responses=[replies[0], AIMessage("done"), replies[1], AIMessage("done")])
    agent = create_react_agent(model, [tool], checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "t1"}}
    await agent.ainvoke({"messages": [("user", "cats")]}, thread)
    state = await agent.ainvoke({"messages": [("user", "dogs")]}, thread)
    first, second = (m for m in state["messages"] if isinstance(m, ToolMessage))
    assert first.status == second.status == "success"
    assert "Images: 1 made" in first.content and "Images: 0 made, 0 failed" in second.content
    assert len(list((tmp_path / "reports").iterdir())) == 2


# --- the graph as a node of a parent graph ---------------------------------------------------------------------


class Newsletter(TypedDict, total=False):
    topic: str
    prompt: str
    image_num: int
    document: list[TextSegment | Figure]
    results: list[ImageResult]
    issue: str


async def stream_parent(parent: Any, state: dict[str, Any], cfg: Config) -> tuple[dict[str, Any], list[Any]]:
    events, final = [], None
    async for namespace, mode, chunk in parent.astream(
        state, stream_mode=["custom", "values"], subgraphs=True, context=cfg
    ):
        if mode == "custom":
            events.append((namespace, chunk))
        elif not namespace:
            final = chunk
    assert final is not None
    return final, events


async def test_the_graph_is_a_node_of_a_parent_with_shared_keys(cfg, requires_bwrap):
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[CHART_DRAFT])))
    builder = StateGraph(Newsletter)
    builder.add_node("brief", lambda s: {"prompt": f"A section on {s['topic']}", "image_num": 1})
    builder.add_node("illustrate", graph)
    builder.add_node("publish", lambda s: {"issue": f"{len(s['document'])} parts, {len(s['results'])} image(s)"})
    builder.add_edge(START, "brief")
    builder.add_edge("brief", "illustrate")
    builder.add_edge("illustrate", "publish")
    builder.add_edge("publish", END)

    final, events = await stream_parent(builder.compile(), {"topic": "parabolas"}, cfg)

    # The parent's own keys stay; shared keys carry the request in and the document out; the rest of the
    # graph's output (draft, calls, timings ...) is not the parent's and does not reach it.
    assert set(final) == {"topic", "prompt", "image_num", "document", "results", "issue"}
    assert final["prompt"] == "A section on parabolas" and final["issue"] == "3 parts, 1 image(s)"
    text, figure, _ = final["document"]
    assert isinstance(text, TextSegment) and text.text.startswith("# Parabolas")
    assert isinstance(figure, Figure) and figure.status == "ok", figure.error
    assert figure.image.path.startswith(cfg.image_dir)  # the parent's context is the run's operator config
    assert Image.open(figure.image.path).size[0] > 100
    assert ("tool", "ok") in [(e["event"], e["status"]) for _, e in events]
    assert all(namespace[0].startswith("illustrate:") for namespace, _ in events)


class Lesson(TypedDict, total=False):
    subject: str
    handout: list[TextSegment | Figure]
    made: int
    draft_tokens: int


async def test_as_node_maps_a_parent_with_its_own_keys(cfg):
    model = FakeListChatModel(responses=[SEARCH_DRAFT])
    search = FakeBackend("fake-search")
    graph = build_graph(policy=ChatModelPolicy(model), toolbox=Toolbox(backends={"search": search}))
    outputs: list[Output] = []

    def from_output(output: Output) -> Lesson:
        outputs.append(output)
        return {"handout": output.document, "made": sum(r.status == "ok" for r in output.results)}

    node = as_node(
        graph,
        to_request=lambda s: Request(prompt=f"A handout on {s['subject']}", image_num=1, allowed_tools=["search"]),
        from_output=from_output,
    )
    builder = StateGraph(Lesson)
    builder.add_node("illustrate", node)
    builder.add_edge(START, "illustrate")
    builder.add_edge("illustrate", END)

    final, events = await stream_parent(builder.compile(), {"subject": "cats"}, cfg)

    assert final["made"] == 1 and [type(i).__name__ for i in final["handout"]] == ["TextSegment", "Figure"]
    assert "draft_tokens" not in final
    (output,) = outputs
    assert isinstance(output, Output)
    assert (output.prompt, output.image_num, output.allowed_tools) == ("A handout on cats", 1, ["search"])
    assert output.document[1].image.path.startswith(cfg.image_dir)
    assert search.calls == [({"query": "cat"}, [])]
    assert ("tool", "ok") in [(e["event"], e["status"]) for _, e in events]
    assert all(namespace[0].startswith("illustrate:") for namespace, _ in events)


async def test_as_node_takes_a_mapping_and_a_bad_request_fails_the_parent(cfg):
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=["Plain text."])))
    builder = StateGraph(Lesson)
    node = as_node(graph, to_request=lambda s: {"prompt": s["subject"]}, from_output=lambda o: {"handout": o.document})
    builder.add_node("illustrate", node)
    builder.add_edge(START, "illustrate")
    builder.add_edge("illustrate", END)
    parent = builder.compile()

    final, _ = await stream_parent(parent, {"subject": "cats"}, cfg)
    assert [i.text for i in final["handout"]] == ["Plain text."]
    with pytest.raises(Exception, match="the prompt is empty"):
        await parent.ainvoke({"subject": "  "}, context=cfg)


# --- the examples ----------------------------------------------------------------------------------------------


def run_example(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMI_")}  # offline: no endpoint
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, **env},
        check=False,
    )


def test_agent_tool_example_runs(tmp_path, requires_bwrap):
    result = run_example("agent_tool.py", "--out", str(tmp_path / "reports"), env={"LLMI_IMAGE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "reports").iterdir()
    assert f"--- tool llmi_create_document (success) ---\nReport: {folder / 'report.html'}" in result.stdout
    assert "![Tide height over 24 hours](images/00-code.png)" in result.stdout
    assert (folder / "images" / "00-code.png").is_file()
    assert "event: {'event': 'tool', 'index': 0, 'source': 'code', 'status': 'ok'" in result.stdout
    assert "--- agent ---\nYour explainer of tides is ready" in result.stdout
    assert "Warning" not in result.stderr


def test_parent_graph_example_runs(tmp_path, requires_bwrap):
    result = run_example("parent_graph.py", env={"LLMI_IMAGE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "newsletter: tides: 3 parts, 1 image(s)" in result.stdout
    assert "lesson: 3 parts, 1 chart(s)" in result.stdout
    assert f"[image 0 (code): ok {tmp_path}" in result.stdout
    chart_made = "event from illustrate: {'event': 'tool', 'index': 0, 'source': 'code', 'status': 'ok'"
    assert result.stdout.count(chart_made) == 2
