"""The llmi graph inside other LangChain / LangGraph apps: as an agent's tool, or as a node of a parent graph.

- `as_tool` wraps the graph as a LangChain tool. The calling LLM chooses only what a request may choose (prompt,
  image count, tools); the app that makes the tool is the operator and sets everything else, the output folder
  included. Each call writes a report (HTML, Markdown with images/, trajectory.json) into a new folder there, as
  `llmi run` does, and answers with the document as Markdown plus the report's path.
- A parent `StateGraph` whose state shares the graph's keys adds it as a node directly
  (`parent.add_node("llmi", graph)`: the node reads `prompt`, `image_num`, ... and writes `document`, `results`, ...
  where the parent has those keys). `as_node` makes a node for a parent whose state differs, from two mappings.

Either way the graph runs as a subgraph of the caller's graph: stream the parent with `subgraphs=True` to see its
progress events.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import StructuredTool, ToolException
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmi_graph.config import Config
from llmi_graph.graph import InputError, PolicyError, image_store
from llmi_graph.policy import Policy
from llmi_graph.report import image_filename, write_report
from llmi_graph.scaling import graph_for
from llmi_graph.state import Figure, Output, Request, State
from llmi_graph.tags import SOURCES
from llmi_graph.toolbox import Toolbox

ToolName = Literal[SOURCES]  # type: ignore[valid-type]  # the tool names, an enum in the tool's JSON schema


class DocumentArgs(BaseModel):
    """What the calling LLM may choose for one document: a request's prompt, image count and tools, nothing else."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the document should be about, written as a full request to its author.")
    image_num: int = Field(default=0, description="Images wanted: 0 any number, -1 none, N exactly N, 99 at least one.")
    tools: list[ToolName] | None = Field(
        default=None,
        description="Image tools the document may use (default: all that are enabled): search finds existing "
        "images, diffusion generates pictures, code draws charts and diagrams, edit changes an earlier image.",
    )


DESCRIPTION = (
    "Write an illustrated document (text with images placed where they belong) for a request, and save it as a "
    "report. Returns the document as Markdown, with image paths relative to the report folder, and the paths of "
    "the report files."
)


def as_tool(
    graph: CompiledStateGraph | None = None,
    *,
    policy: Policy | None = None,
    toolbox: Toolbox | None = None,
    config: Config | None = None,
    out_dir: str | Path = "llmi-out",
    max_images: int = 8,
    name: str = "llmi_create_document",
    description: str | None = None,
) -> StructuredTool:
    """The llmi graph as an async LangChain tool (`prompt`, `image_num`, `tools`) for an agent.

    Each call runs the graph and writes report.html, report.md with images/, and trajectory.json into a new folder
    under `out_dir` (chosen here, never by the caller); the tool's answer is the Markdown and the report's paths,
    and its artifact (`ToolMessage.artifact`) the same as data: `out_dir`, `html`, `markdown`, `trajectory`, and
    `figures` (index, source, status, image path or error). `config` holds the operator settings of every run (it
    is each run's context, so it also governs a `graph` you pass; default: the environment). Without `graph`, the
    graph is the one `config` asks for (`llmi_graph.scaling.graph_for`: the scaled graph when scaling is on),
    with `policy` and `toolbox` (default: from `config`). `image_num` may ask for at most `max_images` images
    (99, "at least one", is always allowed); the default `description` says so.

    Bad arguments, a request the operator's caps refuse and a policy that fails come back to the agent as the
    tool's error message (`ToolMessage.status == "error"`), so it can correct the call; images that fail are
    failed figures inside the document, with their reasons.

        from langgraph.prebuilt import create_react_agent

        tool = as_tool(policy=ChatModelPolicy(my_model), config=Config(max_tokens_limit=2048), out_dir="reports")
        agent = create_react_agent(agent_model, [tool])
        state = await agent.ainvoke({"messages": [("user", "Write me an illustrated guide to tides")]})
    """
    if graph is not None and (policy is not None or toolbox is not None):
        raise ValueError("pass either a graph or the policy and toolbox to build one with, not both")
    cfg = config or Config()
    graph = graph or graph_for(cfg, policy, toolbox)
    root = Path(out_dir).expanduser().resolve()

    async def create_document(
        prompt: str, image_num: int = 0, tools: list[str] | None = None, *, config: RunnableConfig
    ) -> tuple[str, dict[str, Any]]:
        request = _request(prompt, image_num, tools, max_images)
        try:
            # The caller's config makes this run a subgraph of its graph (its progress events reach the parent's
            # stream); the operator's config is the run's context.
            output = await graph.ainvoke(request, config, context=cfg)
        except (PolicyError, InputError) as exc:
            raise ToolException(f"the document could not be written: {exc}") from exc
        state = State.model_validate(output)
        return await asyncio.to_thread(_write, state, _new_folder(root), cfg)

    return StructuredTool.from_function(
        coroutine=create_document,
        name=name,
        description=description or f"{DESCRIPTION} At most {max_images} images (image_num up to {max_images}, or 99).",
        args_schema=DocumentArgs,
        response_format="content_and_artifact",
        handle_tool_error=True,
        handle_validation_error=_argument_errors,
    )


def as_node(
    graph: CompiledStateGraph,
    *,
    to_request: Callable[[Any], Request | Mapping[str, Any]],
    from_output: Callable[[Output], Mapping[str, Any]],
) -> Callable[[Any, RunnableConfig], Awaitable[dict[str, Any]]]:
    """A node that runs the llmi graph for a parent graph whose state differs from it.

    `to_request` makes the run's request from the parent's state (a `Request` or its fields); `from_output` makes
    the parent's state update from the run's `Output`. The run is a subgraph of the parent's (stream the parent with
    `subgraphs=True` for its progress events) and gets the parent's context (a `Config` object, or none: the
    graph's own config). A parent whose state has the graph's keys needs no wrapper: `add_node("llmi", graph)`.

        parent.add_node("illustrate", as_node(
            graph,
            to_request=lambda s: {"prompt": f"A one-page explainer of {s['topic']}", "image_num": 1},
            from_output=lambda out: {"article": out.document},
        ))
    """

    async def llmi_node(state: Any, config: RunnableConfig) -> dict[str, Any]:
        request = to_request(state)
        if isinstance(request, Request):
            request = request.model_dump(exclude_unset=True)
        output = Output.model_validate(await graph.ainvoke(dict(request), config))
        return dict(from_output(output))

    return llmi_node


def _request(prompt: str, image_num: int, tools: list[str] | None, max_images: int) -> dict[str, Any]:
    """The graph input for a tool call, checked as the graph checks a request, within the tool's image cap."""
    if image_num not in (-1, 0, 99) and not 0 < image_num <= max_images:
        raise ToolException(
            _invalid(f"image_num {image_num}: use -1 (no images), 0 (any), 1 to {max_images} or 99 (at least one)")
        )
    request = {"prompt": prompt, "image_num": image_num, "allowed_tools": tools}
    try:
        Request.model_validate(request)
    except ValidationError as exc:
        raise ToolException(_argument_errors(exc)) from None
    return request


def _argument_errors(exc: ValidationError) -> str:
    """A validation error as the calling LLM should read it: each argument and what is wrong with it."""
    return _invalid(
        "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
    )


def _invalid(problem: str) -> str:
    return f"invalid arguments: {problem}. Correct them and call the tool again."


def _new_folder(root: Path) -> Path:
    """A report folder name under `root` that no other call uses (write_report creates it)."""
    return root / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def _write(state: State, folder: Path, cfg: Config) -> tuple[str, dict[str, Any]]:
    """Write the report (as `llmi run` does); the tool's answer and artifact."""
    paths = write_report(state, folder, image_store(cfg), cfg)
    figures = [item for item in state.document if isinstance(item, Figure)]
    images = {f.index: paths.images / image_filename(f) for f in figures if f.status == "ok" and f.image is not None}
    artifact = {
        "out_dir": str(paths.out_dir),
        "html": str(paths.html),
        "markdown": str(paths.markdown),
        "trajectory": str(paths.trajectory),
        "figures": [
            {
                "index": f.index,
                "source": f.source,
                "status": f.status,
                "image": str(images[f.index]) if f.index in images else None,
                "error": f.error,
            }
            for f in figures
        ],
    }
    content = (
        f"Report: {paths.html}\n"
        f"Markdown: {paths.markdown} (image paths below are relative to {paths.out_dir})\n"
        f"Images: {len(images)} made, {len(figures) - len(images)} failed\n\n"
        + paths.markdown.read_text(encoding="utf-8")
    )
    return content, artifact
