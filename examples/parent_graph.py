"""Use the llmi graph as a node of your own LangGraph `StateGraph`.

Run:  python examples/parent_graph.py
      LLMI_POLICY_URL=http://127.0.0.1:8000/v1 LLMI_POLICY_MODEL=NAME python examples/parent_graph.py

Two parents, the two ways LangGraph composes graphs:

- `newsletter`: its state shares the llmi graph's keys (`prompt`, `image_num` in; `document`, `results` out), so the
  compiled graph is the node itself: `add_node("illustrate", graph)`.
- `lesson`: its state has keys of its own, so `as_node` maps it to a request and the run's `Output` back.

Either way the llmi graph runs as a subgraph: streaming the parent with `subgraphs=True` shows its progress events.
Without an endpoint the policy is a scripted fake chat model, so this runs offline; the code tool still runs the
chart code for real, in the local sandbox.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, TypedDict

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from llmi_graph import ChatModelPolicy, Config, Figure, ImageResult, Output, Request, TextSegment, as_node, build_graph

CHART_CODE = (
    "h = np.arange(0, 24.1, 0.25)\n"
    "plt.plot(h, 1.8 * np.sin(2 * np.pi * h / 12.42))\n"
    "plt.xlabel('hour')\nplt.ylabel('height (m)')\nplt.title('Semidiurnal tide')"
)
SCRIPTED_DRAFT = (
    "## Tides in one chart\nThe sea rises and falls about twice a day.\n"
    f"<imgen>{{'source': 'code', 'description': 'Tide height over 24 hours', 'params': {{'code': {CHART_CODE!r}}}}}"
    "</imgen>\nTwo highs and two lows arrive each lunar day, about 50 minutes later than the day before."
)


class Newsletter(TypedDict, total=False):
    """A parent whose state shares the llmi graph's keys: `prompt` and `image_num` in, `document` and `results` out."""

    topic: str
    prompt: str
    image_num: int
    document: list[TextSegment | Figure]
    results: list[ImageResult]
    issue: str


class Lesson(TypedDict, total=False):
    """A parent with keys of its own."""

    subject: str
    grade: int
    handout: list[TextSegment | Figure]
    charts_made: int


def newsletter(graph: CompiledStateGraph) -> CompiledStateGraph:
    def brief(state: Newsletter) -> Newsletter:
        return {"prompt": f"A newsletter section on {state['topic']}, with one chart", "image_num": 1}

    def publish(state: Newsletter) -> Newsletter:
        made = sum(1 for r in state["results"] if r.status == "ok")
        return {"issue": f"{state['topic']}: {len(state['document'])} parts, {made} image(s)"}

    builder = StateGraph(Newsletter)
    builder.add_node("brief", brief)
    builder.add_node("illustrate", graph)  # shared keys: the compiled graph is the node
    builder.add_node("publish", publish)
    builder.add_edge(START, "brief")
    builder.add_edge("brief", "illustrate")
    builder.add_edge("illustrate", "publish")
    builder.add_edge("publish", END)
    return builder.compile()


def lesson(graph: CompiledStateGraph) -> CompiledStateGraph:
    def to_request(state: Lesson) -> Request:
        return Request(prompt=f"A handout on {state['subject']} for grade {state['grade']}", image_num=1,
                       allowed_tools=["code"])  # fmt: skip

    def from_output(output: Output) -> Lesson:
        return {"handout": output.document, "charts_made": sum(1 for r in output.results if r.status == "ok")}

    builder = StateGraph(Lesson)
    builder.add_node("illustrate", as_node(graph, to_request=to_request, from_output=from_output))
    builder.add_edge(START, "illustrate")
    builder.add_edge("illustrate", END)
    return builder.compile()


async def stream(parent: CompiledStateGraph, state: dict[str, Any]) -> dict[str, Any]:
    """Run a parent graph, printing the llmi subgraph's progress events; the parent's final state."""
    final = None
    async for namespace, mode, chunk in parent.astream(state, stream_mode=["custom", "values"], subgraphs=True):
        if mode == "custom":
            print(f"event from {namespace[-1].split(':')[0]}:", chunk)
        elif not namespace:
            final = chunk
    assert final is not None
    return final


async def main() -> None:
    config = Config(max_tokens_limit=1024)  # operator settings: the environment's, with this cap
    if os.environ.get("LLMI_POLICY_URL"):
        graph = build_graph(config=config)  # the policy comes from the config: an OpenAI-compatible endpoint
    else:
        scripted = ChatModelPolicy(FakeListChatModel(responses=[SCRIPTED_DRAFT]), name="scripted")
        graph = build_graph(policy=scripted, config=config)

    issue = await stream(newsletter(graph), {"topic": "tides"})
    print("newsletter:", issue["issue"])
    handout = await stream(lesson(graph), {"subject": "tides", "grade": 7})
    print("lesson:", f"{len(handout['handout'])} parts, {handout['charts_made']} chart(s)")
    for item in handout["handout"]:
        if isinstance(item, Figure):
            where = item.image.path if item.image else item.error
            print(f"[image {item.index} ({item.source}): {item.status} {where}]")


if __name__ == "__main__":
    asyncio.run(main())
