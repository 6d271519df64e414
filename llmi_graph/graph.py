"""The llmi graph: planner -> parse -> [approve] -> {search, diffusion, code, edit} (fanned out with Send) -> review
-> assemble.

    START -> planner -> parse --Send--> search ----\\
                            |--Send--> diffusion --+--> review --> assemble -> END
                            |--Send--> code -------|      |   ^
                            |--Send--> edit -------/      |   |  (repair rounds: the rewritten tags, and the
                            \\-----------------------> review  |   edits that read them, run again)
                                                   Send --/---/

Every call of a draft is sent in one step, so independent calls run concurrently; an edit waits only
for the image it depends on (see `_run`). Tool failures become failed slots, never a failed run. With
`repair_rounds` (a request setting within the operator's cap; 0 by default), `review` sends each failed slot
back to the policy with its reason and the tag that failed, as a turn of its own; the tag it writes runs again,
and the run keeps every attempt (`results` in order, `repairs` with each reply's tokens and logprobs). With the
operator's `approve` (tools whose calls a person approves), the calls of a round go to `approve` first, which
interrupts until a person approves, edits or rejects each call of those tools, then sends them (`llmi_graph.approval`).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from langchain_core.runnables.config import ensure_config, merge_configs, set_config_context
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Overwrite, Send, interrupt

from llmi_graph._checkpoint import with_state_types
from llmi_graph._run import ResultBoard, RunContext, close_run, open_run, release_run, runs_root
from llmi_graph.approval import REJECTED, AnswerError, approval_request, read_answer, rejection
from llmi_graph.cache import SharedCallCancelled, ToolCache, cache_key, shared_cache
from llmi_graph.config import Config, resolve
from llmi_graph.policy import Message, Policy, Sampling, policy_for
from llmi_graph.prompts import build_messages, build_user_message, repair_message
from llmi_graph.state import (
    Approval,
    Figure,
    ImageRef,
    ImageResult,
    Output,
    PolicyOutput,
    Repair,
    Request,
    State,
    ToolTask,
)
from llmi_graph.store import ImageStore, InvalidImageError, decode_image_input
from llmi_graph.tags import SOURCES, TextSegment, ToolCall, parse_replacement, parse_tags
from llmi_graph.toolbox import (
    ChoosingBackend,
    ImageChooser,
    Toolbox,
    execute_call,
    failed,
    tool_metrics,
    toolbox_for,
)

_SURROGATE = re.compile("[\ud800-\udfff]")
T = TypeVar("T")


REPAIR_MAX_TOKENS = 256
"""The most tokens a repair turn may write: its reply is read for one tag (a chart's code fits with room to spare)."""


class PolicyError(RuntimeError):
    """The policy could not produce a draft (endpoint down, timeout, model missing)."""


class InputError(ValueError):
    """The request itself is unusable (an input image that is not an image, ...)."""


def image_store(cfg: Config) -> ImageStore:
    return ImageStore(cfg.image_path)


class _Nodes:
    def __init__(
        self, policy: Policy | None, toolbox: Toolbox | None, config: Config, chooser: ImageChooser | None = None
    ):
        self.policy = policy
        self.toolbox = toolbox
        self.config = config
        self.chooser = chooser

    def _config(self, runtime: Runtime[Any]) -> Config:
        return resolve(runtime.context, self.config)

    def _toolbox(self, cfg: Config) -> Toolbox:
        return self.toolbox if self.toolbox is not None else toolbox_for(cfg)

    def _run(self, run_key: str, cfg: Config, runtime: Runtime[Any]) -> RunContext:
        """This process's context for a run (made here if the run was resumed in a new process). With a
        checkpointer, the run's results are also kept on disk until it finishes, for a resume elsewhere."""

        def make() -> RunContext:
            info = runtime.execution_info
            durable = info is not None and info.thread_id is not None
            directory = runs_root(cfg.cache_path) / run_key if durable else None
            cache = shared_cache(cfg.cache_path / "tool-cache") if cfg.tool_cache else ToolCache()
            return RunContext(self._toolbox(cfg), cache, ResultBoard(directory), directory)

        return open_run(run_key, make)

    # --- planner ---------------------------------------------------------------------------------------

    async def chat(self, state: State, cfg: Config) -> tuple[list[ImageRef], list[Message], list[str]]:
        """The input images (stored), the planner's chat and the tools this request may use."""
        if len(state.images) > cfg.max_input_images:
            raise InputError(f"{len(state.images)} input images is over this server's limit of {cfg.max_input_images}")
        store = image_store(cfg)
        max_bytes = int(cfg.input_image_max_mb * 1024 * 1024)
        refs = [await asyncio.to_thread(_ingest, store, v, i, max_bytes) for i, v in enumerate(state.images)]
        tools = self.tools(state, cfg)
        content = await asyncio.to_thread(_user_content, state.prompt, refs, store, cfg.policy_vision)
        return refs, build_messages(content, tools, state.image_num), tools

    def tools(self, state: Request, cfg: Config) -> list[str]:
        """The tools this request may use: those with a backend that the request allows."""
        return [t for t in self._toolbox(cfg).available() if state.allowed_tools is None or t in state.allowed_tools]

    async def policy_for(self, cfg: Config) -> Policy:
        try:
            return self.policy or await asyncio.to_thread(policy_for, cfg)
        except Exception as exc:
            raise PolicyError(f"the policy could not be prepared: {exc}") from exc

    async def sample(
        self,
        policy: Policy,
        messages: list[Message],
        sampling: Sampling,
        cfg: Config,
        *,
        turn: str,
        on_token: Any = None,
        **metadata: Any,
    ) -> PolicyOutput:
        """One policy call with the operator's time limit, as the `turn` it is (`policy_turn`); failures become a
        `PolicyError` that says where."""
        try:
            call = policy_turn(policy.generate(messages, sampling, on_token), turn, **metadata)
            output = await asyncio.wait_for(call, timeout=cfg.policy_timeout_s)
        except TimeoutError as exc:
            raise PolicyError(f"the policy gave no draft within {cfg.policy_timeout_s:g} s") from exc
        except Exception as exc:
            where = f" at {cfg.policy_url}" if cfg.policy_url and self.policy is None else ""
            raise PolicyError(f"the policy{where} failed: {type(exc).__name__}: {exc}") from exc
        # Lone surrogates (an endpoint's broken escapes) cannot be written as UTF-8: make them U+FFFD.
        text = _SURROGATE.sub("\ufffd", output.text)
        return output.model_copy(update={"text": text, "sampling": dataclasses.asdict(sampling)})

    async def planner(self, state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        cfg = self._config(runtime)
        started = time.time()
        emit = get_stream_writer()
        sampling = _sampling(state, cfg)
        repair_rounds(state, cfg)  # a request over the cap fails now, not after the tools ran
        refs, messages, _ = await self.chat(state, cfg)
        if state.given is not None:  # chosen upstream (the scaled graph): no sampling here
            output = state.given
        else:
            emit({"event": "planner", "status": "preparing the policy"})
            policy = await self.policy_for(cfg)
            emit({"event": "planner", "status": "writing"})
            output = await self.sample(policy, messages, sampling, cfg, turn="planner", on_token=_token_reporter(emit))
        emit({"event": "planner", "status": "done", "tokens": len(output.completion_token_ids or [])})
        return {
            "input_images": refs,
            "system_prompt": messages[0]["content"],
            "draft": output.text,
            "policy": output,
            # A new run on a thread that already holds one: start its results, repairs and timings afresh.
            "results": Overwrite([]),
            "repairs": Overwrite([]),
            "approvals": Overwrite([]),
            "repair_round": 0,
            "timings": Overwrite({"started_at": started, "planner_s": time.time() - started}),
        }

    # --- parse -----------------------------------------------------------------------------------------

    async def parse(self, state: State, runtime: Runtime[Any]) -> Command[Any]:
        cfg = self._config(runtime)
        parsed = parse_tags(state.draft, num_input_images=len(state.input_images))
        if state.overrides:  # the scaled graph's enhancement (rewritten prompts) on the chosen draft
            calls = [
                c.model_copy(update={"params": {**c.params, **state.overrides[c.index]}})
                if c.valid and c.index in state.overrides
                else c
                for c in parsed.calls
            ]
            parsed = parsed.model_copy(update={"calls": calls})
        run_key = uuid.uuid4().hex
        context = self._run(run_key, cfg, runtime)
        emit = get_stream_writer()
        invalid: list[ImageResult] = []
        sends: list[Send] = []
        budget = _wait_budget(cfg)
        try:
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
                    await context.board.publish(result)
                    invalid.append(result)
                    emit(_tool_event(result))
                    continue
                sends.append(Send(call.source, _task(call, state, run_key, budget)))
        finally:
            release_run(context)
        update = {
            "segments": parsed.segments,
            "calls": parsed.calls,
            "run_key": run_key,
            "results": invalid,
            "timings": {"tools_started_at": time.time()},
        }
        return self._dispatch(update, sends, state, cfg)

    def _dispatch(self, update: dict[str, Any], sends: list[Send], state: State, cfg: Config) -> Command[Any]:
        """Send the calls to their tools; when the operator wants some of them approved, hand them all to `approve`
        (which sends them once a person has decided)."""
        tools = self.tools(state, cfg) if cfg.approval_tools else []
        asked = [send.arg.call for send in sends if _asks(send.arg, cfg, tools)]
        if asked:
            emit = get_stream_writer()
            for call in asked:  # here, not in `approve`: that node runs again on every resume
                emit({"event": "tool", "index": call.index, "source": call.source, "status": "awaiting approval"})
            held = [send.arg.call.index for send in sends]
            return Command(update={**update, "awaiting_approval": held}, goto="approve")
        return Command(update=update, goto=sends or "review")

    # --- approve: a person decides on the calls of the tools the operator named ----------------------------------

    async def approve(self, state: State, runtime: Runtime[Any]) -> Command[Any]:
        """Ask a person about the calls of the tools in the operator's `approve` (one `interrupt` per round of calls),
        then send the approved and edited calls with those that need no approval; a rejected call is a failed slot.
        An answer that cannot be applied changes nothing: the node asks again, with the reasons (`llmi_graph.approval`).
        """
        cfg = self._config(runtime)
        info = runtime.execution_info
        if info is None or info.thread_id is None:  # an interrupt without a checkpointer could never be answered
            raise RuntimeError(needs_checkpointer(cfg))
        budget = _wait_budget(cfg)
        waiting = set(state.awaiting_approval)
        tasks = [_task(c, state, state.run_key, budget) for c in state.calls if c.index in waiting]
        tools = self.tools(state, cfg)
        asked = [t.call for t in tasks if _asks(t, cfg, tools)]
        emit = get_stream_writer()
        total, inputs = len(state.input_images) + len(state.calls), len(state.input_images)
        error: str | None = None
        while True:  # each pass that finds a problem interrupts again; the node re-runs with every answer so far
            answer = interrupt(approval_request(asked, state.repair_round, error))
            try:
                decisions = read_answer(
                    answer, asked, round_=state.repair_round, total=total, num_inputs=inputs, tools=tools
                )
                break
            except AnswerError as exc:
                error = str(exc)
        decided: dict[int, Approval] = {d.index: d for d in decisions}
        edited = {d.index: d.call for d in decisions if d.decision == "edit" and d.call is not None}
        context = self._run(state.run_key, cfg, runtime)
        rejected: list[ImageResult] = []
        sends: list[Send] = []
        try:
            for task in tasks:
                decision = decided.get(task.call.index)
                if decision is not None and decision.decision == "reject":
                    result = failed(task.call, rejection(decision.reason))
                    await context.board.publish(result)  # an edit of this image fails with "dependency failed"
                    rejected.append(result)
                    emit(_tool_event(result))
                    continue
                call = edited.get(task.call.index, task.call)
                sends.append(Send(call.source, task.model_copy(update={"call": call})))
        finally:
            release_run(context)
        update: dict[str, Any] = {
            "calls": [edited.get(c.index, c) for c in state.calls],
            "approvals": decisions,
            "results": rejected,
        }
        if state.repair_round == 0:  # the tools start now: the time a person took is not the tools' time
            update["timings"] = {"tools_started_at": time.time()}
        return Command(update=update, goto=sends or "review")

    # --- tools -----------------------------------------------------------------------------------------

    def tool_node(self, source: str) -> Callable[..., Any]:
        async def node(task: ToolTask, runtime: Runtime[Any]) -> dict[str, Any]:
            cfg = self._config(runtime)
            emit = get_stream_writer()
            emit({"event": "tool", "index": task.call.index, "source": source, "status": "running"})
            context = self._run(task.run_key, cfg, runtime)
            try:
                try:
                    result = await self._run_tool(task, cfg, context)
                except SharedCallCancelled:
                    result = failed(task.call, "cancelled: the identical call this one shared was cancelled")
                except asyncio.CancelledError:
                    raise  # the run is being cancelled; a resume runs this call again
                except Exception as exc:  # a bug here must not sink the document
                    result = failed(task.call, f"internal error: {type(exc).__name__}: {exc}")
                await context.board.publish(result)
            finally:
                release_run(context)
            emit(_tool_event(result))
            return {"results": [result]}

        node.__name__ = f"{source}_node"
        return node

    async def _run_tool(self, task: ToolTask, cfg: Config, context: RunContext) -> ImageResult:
        call = task.call
        assert call.source is not None
        if task.refusal:
            return failed(call, task.refusal)
        backend = context.backend(call.source)
        if backend is None:
            return failed(call, context.toolbox.missing_reason(call.source))
        store = image_store(cfg)
        inputs: list[bytes] = []
        dep = call.depends_on
        if dep is not None:
            if dep < len(task.input_images):
                source_image = task.input_images[dep]
            else:
                try:
                    source = await context.board.wait(dep, budget_s=task.wait_timeout_s)
                except TimeoutError:
                    return failed(
                        call, f"dependency failed: image {dep} started but did not finish in {task.wait_timeout_s:g} s"
                    )
                if source.status != "ok" or source.image is None:
                    what = source.source or "invalid tag"
                    return failed(call, f"dependency failed: image {dep} ({what}) failed: {source.error}")
                source_image = source.image
            try:
                inputs = [await asyncio.to_thread(store.get, source_image)]
            except (InvalidImageError, OSError) as exc:
                return failed(call, f"dependency failed: image {dep} is not readable from the image store ({exc})")

        async def execute() -> ImageResult:
            return await execute_call(
                call,
                backend,
                inputs,
                store=store,
                cfg=cfg,
                concurrency=context.toolbox.concurrency.get(call.source),
                on_start=lambda: context.board.mark_started(call.index),
            )

        backend_id = str(getattr(backend, "cache_id", None) or getattr(backend, "name", type(backend).__name__))
        if task.choose and self.chooser is not None and hasattr(backend, "candidates"):
            backend = ChoosingBackend(backend, self.chooser, call.description or "", cfg.search_top_k)
            backend_id += ":chosen"  # a chosen result is not the rank-order one: cache it apart
        started = time.perf_counter()
        result, hit = await context.cache.run(cache_key(call.source, backend_id, call.params, inputs), execute)
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

    # --- review: repair failed slots --------------------------------------------------------------------

    async def review(self, state: State, runtime: Runtime[Any]) -> Command[Any]:
        """After the tools: while repair rounds are left, send each failed slot back to the policy with its reason
        and the tag that failed, and run the tag it writes (plus the edits that read that slot); else assemble."""
        cfg = self._config(runtime)
        latest = {r.index: r for r in state.results}
        rounds, sources = repair_rounds(state, cfg), None
        if rounds == 0 and state.enhance_repair:  # the scaled graph's enhancement: one round for these tools
            rounds, sources = 1, state.enhance_repair
        todo = [c for c in state.calls if _repairable(latest.get(c.index)) and (sources is None or c.source in sources)]
        if state.repair_round >= rounds or not todo:
            return Command(goto="assemble")
        emit = get_stream_writer()
        round_ = state.repair_round + 1
        emit({"event": "repair", "round": round_, "status": "asking", "indices": [c.index for c in todo]})
        _, messages, tools = await self.chat(state, cfg)
        messages = [*messages, {"role": "assistant", "content": state.draft}]
        sampling = _sampling(state, cfg)
        # the reply needs one tag, not a document: cap its length, so a repair turn costs a tag's tokens
        sampling = dataclasses.replace(sampling, max_tokens=min(sampling.max_tokens, REPAIR_MAX_TOKENS))
        if sampling.seed is not None:  # another round, another sample
            sampling = dataclasses.replace(sampling, seed=sampling.seed + round_)
        policy = await self.policy_for(cfg)
        total = len(state.input_images) + len(state.calls)
        repairs = await asyncio.gather(
            *(
                self._repair(
                    policy,
                    messages,
                    call,
                    latest[call.index],
                    tools,
                    sampling,
                    cfg,
                    round_,
                    total,
                    len(state.input_images),
                )
                for call in todo
            )
        )
        replaced = {r.index: r.call for r in repairs if r.call is not None}
        calls = [replaced.get(c.index, c) for c in state.calls]
        rerun = _with_dependents(set(replaced), calls, latest)
        run_key = uuid.uuid4().hex
        context = self._run(run_key, cfg, runtime)
        invalid: list[ImageResult] = []
        sends: list[Send] = []
        try:
            for result in latest.values():  # what stays: the edits that are sent again may read it
                if result.index not in rerun:
                    await context.board.publish(result)
            for call in calls:
                if call.index not in rerun:
                    continue
                if not call.valid:
                    result = failed(call, f"invalid tag: {call.error}")
                    await context.board.publish(result)
                    invalid.append(result)
                    continue
                sends.append(Send(call.source, _task(call, state, run_key, _wait_budget(cfg))))
        finally:
            release_run(context)
        await close_run(state.run_key)
        for repair in repairs:
            emit({"event": "repair", "round": round_, "index": repair.index, "status": "rewritten" if repair.call
                  else "no tag", "error": repair.error})  # fmt: skip
        update = {
            "calls": calls,
            "run_key": run_key,
            "repair_round": round_,
            "repairs": list(repairs),
            "results": invalid,
        }
        return self._dispatch(update, sends, state, cfg)

    async def _repair(
        self,
        policy: Policy,
        messages: list[Message],
        call: ToolCall,
        result: ImageResult,
        tools: list[str],
        sampling: Sampling,
        cfg: Config,
        round_: int,
        total: int,
        num_inputs: int,
    ) -> Repair:
        reason = result.error or "the tool failed"
        tag = call.raw or _tag_text(call)
        chat = [*messages, {"role": "user", "content": repair_message(call.index, tag, reason, tools)}]
        base = Repair(round=round_, index=call.index, failed=call, reason=reason)
        try:
            reply = await self.sample(
                policy, chat, sampling, cfg, turn="repair", llmi_round=round_, llmi_index=call.index
            )
        except PolicyError as exc:
            return base.model_copy(update={"error": str(exc)})
        new = parse_replacement(reply.text, call.index, total, num_inputs)
        if new is None:
            return base.model_copy(update={"reply": reply, "error": "the reply holds no <imgen> tag"})
        return base.model_copy(update={"reply": reply, "call": new})

    # --- assemble --------------------------------------------------------------------------------------

    async def assemble(self, state: State, runtime: Runtime[Any]) -> dict[str, Any]:
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


async def policy_turn(call: Coroutine[Any, Any, T], turn: str, **metadata: Any) -> T:
    """Run a policy call as one turn of the run: the chat-model runs it makes carry the tag `llmi:<turn>` and the
    metadata `llmi_turn` (plus `metadata`), so a `messages` stream tells the planner's text from a repair's.

    Turns: `planner`, `repair` (`llmi_round`, `llmi_index`), and in the scaled graph `candidates`, `enhance`
    (`llmi_index`) and `polish`. The call runs as a task of its own whose LangChain config is the node's plus these.
    """
    config = merge_configs(ensure_config(), {"tags": [f"llmi:{turn}"], "metadata": {"llmi_turn": turn, **metadata}})
    with set_config_context(config) as context:
        return await asyncio.create_task(call, context=context)


def repair_rounds(state: Request, cfg: Config) -> int:
    """The request's repair rounds within the operator's cap (the operator's default when it says nothing)."""
    if state.repair_rounds is not None and state.repair_rounds > cfg.max_repair_rounds:
        raise InputError(f"repair_rounds {state.repair_rounds} is over this server's limit of {cfg.max_repair_rounds}")
    return state.repair_rounds if state.repair_rounds is not None else cfg.repair_rounds


_UNREPAIRABLE = ("dependency failed", "cancelled", REJECTED)
"""Failures that are not the slot's own (an edit whose source failed runs again once that source is repaired), and
a reviewer's rejection, which is final."""


def _repairable(result: ImageResult | None) -> bool:
    return result is not None and result.status == "failed" and not (result.error or "").startswith(_UNREPAIRABLE)


def _with_dependents(indices: set[int], calls: list[ToolCall], latest: dict[int, ImageResult]) -> set[int]:
    """The repaired slots plus every failed edit that reads one of them, directly or through another."""
    rerun = set(indices)
    grew = True
    while grew:
        grew = False
        for call in calls:
            result = latest.get(call.index)
            if call.index in rerun or result is None or result.status == "ok":
                continue
            if call.depends_on in rerun:
                rerun.add(call.index)
                grew = True
    return rerun


def _tag_text(call: ToolCall) -> str:
    return (
        f"<imgen>{{'source': {call.source!r}, 'description': {call.description!r}, 'params': {call.params!r}}}</imgen>"
    )


def _asks(task: ToolTask, cfg: Config, tools: list[str]) -> bool:
    """Whether this call waits for a person: its tool is in the operator's `approve`, and it would run at all (the
    request allows the tool, which has a backend)."""
    return task.call.source in cfg.approval_tools and task.refusal is None and task.call.source in tools


def needs_checkpointer(cfg: Config) -> str:
    """The error for approval without a checkpointer."""
    return (
        f"approval needs a checkpointer: approve={cfg.approve!r} makes a run stop until a person answers, so compile "
        "the graph with one (build_graph(..., checkpointer=InMemorySaver()), or an AsyncSqliteSaver to answer from "
        "another process) and run it with a thread_id; or unset approve (LLMI_APPROVE)"
    )


def _wait_budget(cfg: Config) -> float:
    """How long an edit may wait for its source once that source has started (queueing does not count)."""
    return cfg.tool_timeout_s * max(1, cfg.tool_attempts) + 8.0 * max(0, cfg.tool_attempts - 1) + 30.0


def _task(call: ToolCall, state: State, run_key: str, budget: float) -> ToolTask:
    """What a tool node gets for one call, with a refusal when the request does not allow its tool."""
    refusal = None
    if state.allowed_tools is not None and call.source not in state.allowed_tools:
        refusal = (
            f"the {call.source} tool is not allowed for this request (allowed: "
            + (", ".join(state.allowed_tools) or "none")
            + ")"
        )
    choose = state.enhance_search and call.source == "search"
    return ToolTask(
        call=call,
        run_key=run_key,
        input_images=state.input_images,
        refusal=refusal,
        wait_timeout_s=budget,
        choose=choose,
    )


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


def _sampling(state: State, cfg: Config) -> Sampling:
    """The request's sampling within the operator's caps, the operator's defaults where it says nothing."""
    if state.max_tokens is not None and state.max_tokens > cfg.max_tokens_limit:
        raise InputError(f"max_tokens {state.max_tokens} is over this server's limit of {cfg.max_tokens_limit}")
    return Sampling(
        max_tokens=state.max_tokens if state.max_tokens is not None else cfg.max_tokens,
        temperature=state.temperature if state.temperature is not None else cfg.temperature,
        top_p=state.top_p if state.top_p is not None else cfg.top_p,
        seed=state.seed if state.seed is not None else cfg.seed,
    )


def _ingest(store: ImageStore, value: str, position: int, max_bytes: int) -> ImageRef:
    try:
        data = decode_image_input(value)
        if len(data) > max_bytes:
            raise InvalidImageError(
                f"{len(data):,} bytes is over this server's limit of {max_bytes:,} bytes (input_image_max_mb)"
            )
        return store.put(data)
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
    toolbox: Toolbox | None = None,
    *,
    config: Config | None = None,
    checkpointer: Any = None,
    subgraph: bool = False,
    chooser: ImageChooser | None = None,
) -> CompiledStateGraph:
    """Build the llmi graph.

    The input is a `Request` (what a caller may choose: prompt, input images as data, image_num, tools,
    sampling); the output is an `Output` (the document, calls, results, timings, token data). Operator settings
    come from `config` (default: the environment when the graph is built); embedding code may also pass a
    `Config` object as a run's context. A JSON context (all a LangGraph API client can send) is ignored.
    `policy` and `toolbox` default to what the config describes (an OpenAI-compatible endpoint or the embedded
    model; the configured tool backends, built once per process). Pass your own to embed llmi in an app:

        graph = build_graph(policy=ChatModelPolicy(my_chat_model), config=Config(max_tokens=1024))
        state = await graph.ainvoke({"prompt": "A guide to composting", "temperature": 0.2})

    `subgraph=True` builds it for a parent graph whose state extends `State` (`llmi_graph.scaling`); `chooser` picks
    among a search's top results when that parent's enhancement asks (`State.enhance_search`).

    When the config names tools in `approve`, their calls wait for a person (`interrupt`; see
    `llmi_graph.approval`), so the graph needs a `checkpointer` (a `ValueError` says so; a subgraph uses its
    parent's).
    """
    cfg = config or Config()
    if cfg.approval_tools and not checkpointer and not subgraph:
        raise ValueError(needs_checkpointer(cfg))
    # a checkpointer given here learns our state's types, so it restores them without warning (and no other type)
    return _builder(policy, toolbox, cfg, subgraph, chooser).compile(
        checkpointer=with_state_types(checkpointer), name="llmi"
    )


def _builder(
    policy: Policy | None, toolbox: Toolbox | None, config: Config, subgraph: bool, chooser: ImageChooser | None
) -> StateGraph:
    nodes = _Nodes(policy, toolbox, config, chooser)
    # As a subgraph (of `llmi_graph.scaling`) it reads the parent's whole state, the chosen draft (`given`) included;
    # standing alone, its input is a caller's `Request`, which cannot carry one.
    builder = StateGraph(State, input_schema=State if subgraph else Request, output_schema=Output)
    builder.add_node("planner", nodes.planner)
    builder.add_node("parse", nodes.parse, destinations=(*SOURCES, "approve", "review"))
    builder.add_node("approve", nodes.approve, destinations=(*SOURCES, "review"))
    for source in SOURCES:
        builder.add_node(source, nodes.tool_node(source), input_schema=ToolTask)
        builder.add_edge(source, "review")
    builder.add_node("review", nodes.review, destinations=(*SOURCES, "approve", "review", "assemble"))
    builder.add_node("assemble", nodes.assemble)
    builder.add_edge(START, "planner")
    builder.add_edge("planner", "parse")
    builder.add_edge("assemble", END)
    return builder


graph = _builder(None, None, Config(), False, None).compile(name="llmi")
"""The graph `langgraph.json` exports: operator settings from the server's environment, compiled without a
checkpointer (the server brings its own, so approval needs none here)."""
