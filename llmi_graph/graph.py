"""The llmi graph: planner -> parse -> {search, diffusion, code, edit} (fanned out with Send) -> assemble.

    START -> planner -> parse --Send--> search ----\\
                            |--Send--> diffusion --+--> assemble -> END
                            |--Send--> code -------|
                            |--Send--> edit -------/
                            \\-----------------------> assemble   (no valid tags)

Every call of a draft is sent in one step, so independent calls run concurrently; an edit waits only
for the image it depends on (see `_run`). Tool failures become failed slots, never a failed run.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable
from typing import Any

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Overwrite, Send

from llmi_graph._run import RunContext, close_run, get_run, open_run
from llmi_graph.cache import ToolCache, cache_key, shared_cache
from llmi_graph.config import Config, resolve
from llmi_graph.policy import Message, Policy, Sampling, policy_for
from llmi_graph.prompts import build_messages, build_user_message
from llmi_graph.state import Figure, ImageRef, ImageResult, State, ToolTask
from llmi_graph.store import ImageStore, InvalidImageError, decode_image_input
from llmi_graph.tags import SOURCES, TextSegment, ToolCall, parse_tags
from llmi_graph.toolbox import Toolbox, execute_call, failed, tool_metrics


class PolicyError(RuntimeError):
    """The policy could not produce a draft (endpoint down, timeout, model missing)."""


class InputError(ValueError):
    """The request itself is unusable (an input image that is not an image, ...)."""


def image_store(cfg: Config) -> ImageStore:
    return ImageStore(cfg.image_path)


class _Nodes:
    def __init__(self, policy: Policy | None, toolbox: Toolbox | Callable[[Config], Toolbox] | None):
        self.policy = policy
        self.toolbox = toolbox

    def _toolbox(self, cfg: Config) -> Toolbox:
        if isinstance(self.toolbox, Toolbox):
            return self.toolbox
        return (self.toolbox or Toolbox.from_config)(cfg)

    # --- planner ---------------------------------------------------------------------------------------

    async def planner(self, state: State, runtime: Runtime[Config]) -> dict[str, Any]:
        cfg = resolve(runtime.context)
        started = time.time()
        emit = get_stream_writer()
        store = image_store(cfg)
        refs = [await asyncio.to_thread(_ingest, store, v, i) for i, v in enumerate(state.images)]
        tools = [t for t in self._toolbox(cfg).available() if state.allowed_tools is None or t in state.allowed_tools]
        content = await asyncio.to_thread(_user_content, state.prompt, refs, store, cfg.policy_vision)
        messages: list[Message] = build_messages(content, tools, state.image_num)
        emit({"event": "planner", "status": "preparing the policy"})
        try:
            policy = self.policy or await asyncio.to_thread(policy_for, cfg)
        except Exception as exc:
            raise PolicyError(f"the policy could not be prepared: {exc}") from exc
        emit({"event": "planner", "status": "writing"})
        on_token = _token_reporter(emit)
        try:
            output = await asyncio.wait_for(
                policy.generate(messages, Sampling.from_config(cfg), on_token), timeout=cfg.policy_timeout_s
            )
        except TimeoutError as exc:
            raise PolicyError(f"the policy gave no draft within {cfg.policy_timeout_s:g} s") from exc
        except Exception as exc:
            where = f" at {cfg.policy_url}" if cfg.policy_url and self.policy is None else ""
            raise PolicyError(f"the policy{where} failed: {type(exc).__name__}: {exc}") from exc
        emit({"event": "planner", "status": "done", "tokens": len(output.completion_token_ids or [])})
        return {
            "input_images": refs,
            "system_prompt": messages[0]["content"],
            "draft": output.text,
            "policy": output,
            # A new run on a thread that already holds one: start its results and timings afresh.
            "results": Overwrite([]),
            "timings": Overwrite({"started_at": started, "planner_s": time.time() - started}),
        }

    # --- parse -----------------------------------------------------------------------------------------

    async def parse(self, state: State, runtime: Runtime[Config]) -> Command[Any]:
        cfg = resolve(runtime.context)
        parsed = parse_tags(state.draft, num_input_images=len(state.input_images))
        run_key = uuid.uuid4().hex
        cache = shared_cache(cfg.cache_path / "tool-cache") if cfg.tool_cache else ToolCache()
        context = open_run(
            run_key,
            RunContext(toolbox=self._toolbox(cfg), cache=cache, owns_toolbox=not isinstance(self.toolbox, Toolbox)),
        )
        board = context.board
        emit = get_stream_writer()
        invalid: list[ImageResult] = []
        sends: list[Send] = []
        depth: dict[int, int] = {}
        for call in parsed.calls:
            emit(
                {
                    "event": "tool",
                    "index": call.index,
                    "source": call.source,
                    "status": "queued",
                    "description": call.description,
                }
            )
            if not call.valid:
                result = failed(call, f"invalid tag: {call.error}")
                board.publish(result)
                invalid.append(result)
                emit(_tool_event(result))
                continue
            dep = call.depends_on
            depth[call.index] = 1 + (depth.get(dep, 0) if dep is not None else 0)
            refusal = None
            if state.allowed_tools is not None and call.source not in state.allowed_tools:
                refusal = (
                    f"the {call.source} tool is not allowed for this request (allowed: "
                    + (", ".join(state.allowed_tools) or "none")
                    + ")"
                )
            per_call = cfg.tool_timeout_s * max(1, cfg.tool_attempts) + 30.0
            sends.append(
                Send(
                    call.source,
                    ToolTask(
                        call=call,
                        run_key=run_key,
                        input_images=state.input_images,
                        refusal=refusal,
                        wait_timeout_s=per_call * depth[call.index],
                    ),
                )
            )
        update = {
            "segments": parsed.segments,
            "calls": parsed.calls,
            "run_key": run_key,
            "results": invalid,
            "timings": {"tools_started_at": time.time()},
        }
        return Command(update=update, goto=sends or "assemble")

    # --- tools -----------------------------------------------------------------------------------------

    def tool_node(self, source: str) -> Callable[..., Any]:
        async def node(task: ToolTask, runtime: Runtime[Config]) -> dict[str, Any]:
            cfg = resolve(runtime.context)
            emit = get_stream_writer()
            emit({"event": "tool", "index": task.call.index, "source": source, "status": "running"})
            context = get_run(task.run_key)
            try:
                result = await self._run_tool(task, cfg, context)
            except asyncio.CancelledError:
                if context is not None:
                    context.board.publish(failed(task.call, "cancelled"))
                raise
            except Exception as exc:  # a bug here must not sink the document
                result = failed(task.call, f"internal error: {type(exc).__name__}: {exc}")
            if context is not None:
                context.board.publish(result)
            emit(_tool_event(result))
            return {"results": [result]}

        node.__name__ = f"{source}_node"
        return node

    async def _run_tool(self, task: ToolTask, cfg: Config, context: RunContext | None) -> ImageResult:
        call = task.call
        assert call.source is not None
        if task.refusal:
            return failed(call, task.refusal)
        toolbox = context.toolbox if context is not None else self._toolbox(cfg)
        backend = toolbox.backend(call.source)
        if backend is None:
            return failed(call, toolbox.missing_reason(call.source))
        store = image_store(cfg)
        inputs: list[bytes] = []
        dep = call.depends_on
        if dep is not None:
            if dep < len(task.input_images):
                inputs = [await asyncio.to_thread(store.get, task.input_images[dep])]
            else:
                if context is None:
                    return failed(
                        call,
                        f"dependency failed: the result of image {dep} is not available "
                        "(was the run resumed in another process?)",
                    )
                try:
                    source = await context.board.wait(dep, timeout=task.wait_timeout_s)
                except TimeoutError:
                    return failed(call, f"dependency failed: image {dep} did not finish in time")
                if source.status != "ok" or source.image is None:
                    what = source.source or "invalid tag"
                    return failed(call, f"dependency failed: image {dep} ({what}) failed: {source.error}")
                inputs = [await asyncio.to_thread(store.get, source.image)]

        async def execute() -> ImageResult:
            return await execute_call(
                call, backend, inputs, store=store, cfg=cfg, concurrency=toolbox.concurrency.get(call.source)
            )

        cache = context.cache if context is not None else ToolCache()
        backend_id = str(getattr(backend, "cache_id", None) or getattr(backend, "name", type(backend).__name__))
        started = time.perf_counter()
        result, hit = await cache.run(cache_key(call.source, backend_id, call.params, inputs), execute)
        if hit:  # the stored or shared result belongs to another slot: make it this one's
            result = result.model_copy(
                update={
                    "index": call.index,
                    "cache_hit": True,
                    "attempts": 0,
                    "latency_s": time.perf_counter() - started,
                }
            )
        return result

    # --- assemble --------------------------------------------------------------------------------------

    async def assemble(self, state: State, runtime: Runtime[Config]) -> dict[str, Any]:
        results = {r.index: r for r in state.results}
        calls = {c.index: c for c in state.calls}
        document: list[TextSegment | Figure] = []
        for segment in state.segments:
            if isinstance(segment, TextSegment):
                document.append(segment)
                continue
            document.append(_figure(calls[segment.index], results.get(segment.index)))
        await close_run(state.run_key)
        now = time.time()
        timings: dict[str, float] = {"finished_at": now}
        if "tools_started_at" in state.timings:
            timings["tools_s"] = now - state.timings["tools_started_at"]
        if "started_at" in state.timings:
            timings["total_s"] = now - state.timings["started_at"]
        return {"document": document, "timings": timings, "tool_metrics": tool_metrics(state.results)}


def _figure(call: ToolCall, result: ImageResult | None) -> Figure:
    if result is None:
        return Figure(
            index=call.index,
            source=call.source,
            description=call.description,
            status="failed",
            error="the tool produced no result",
        )
    return Figure(
        index=call.index,
        source=call.source,
        description=call.description,
        status=result.status,
        image=result.image,
        error=result.error,
    )


def _tool_event(result: ImageResult) -> dict[str, Any]:
    return {
        "event": "tool",
        "index": result.index,
        "source": result.source,
        "status": result.status,
        "error": result.error,
        "latency_s": round(result.latency_s, 3),
    }


def _token_reporter(emit: Callable[[Any], None]) -> Callable[[int], None]:
    """Forward token counts from the generation thread to the stream, at most every 16 tokens."""
    loop = asyncio.get_running_loop()

    def report(count: int) -> None:
        if count % 16 == 0:
            loop.call_soon_threadsafe(emit, {"event": "planner", "status": "writing", "tokens": count})

    return report


def _ingest(store: ImageStore, value: str, position: int) -> ImageRef:
    try:
        return store.put(decode_image_input(value))
    except (InvalidImageError, OSError) as exc:
        raise InputError(f"input image {position} is unusable: {exc}") from exc


def _user_content(prompt: str, refs: list[ImageRef], store: ImageStore, vision: bool) -> Any:
    text = build_user_message(prompt, refs)
    if not (vision and refs):
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for ref in refs:
        data = base64.b64encode(store.get(ref)).decode()
        parts.append({"type": "image_url", "image_url": {"url": f"data:{ref.mime};base64,{data}"}})
    return parts


def build_graph(
    policy: Policy | None = None,
    toolbox: Toolbox | Callable[[Config], Toolbox] | None = None,
    *,
    checkpointer: Any = None,
) -> CompiledStateGraph:
    """Build the llmi graph.

    `policy` and `toolbox` default to what the run's `Config` describes (an OpenAI-compatible endpoint or
    the embedded model; the configured tool backends). Pass your own to embed llmi in an app:

        graph = build_graph(policy=ChatModelPolicy(my_chat_model))
        state = await graph.ainvoke({"prompt": "A guide to composting"}, context=Config(max_tokens=1024))
    """
    nodes = _Nodes(policy, toolbox)
    builder = StateGraph(State, context_schema=Config)
    builder.add_node("planner", nodes.planner)
    builder.add_node("parse", nodes.parse, destinations=(*SOURCES, "assemble"))
    for source in SOURCES:
        builder.add_node(source, nodes.tool_node(source), input_schema=ToolTask)
        builder.add_edge(source, "assemble")
    builder.add_node("assemble", nodes.assemble)
    builder.add_edge(START, "planner")
    builder.add_edge("planner", "parse")
    builder.add_edge("assemble", END)
    return builder.compile(checkpointer=checkpointer, name="llmi")


graph = build_graph()
"""The graph `langgraph.json` exports (compiled without a checkpointer; the server brings its own)."""
