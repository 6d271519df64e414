"""Shared waits: several waiters share one result (the result board, the tool cache); one that times out or is
cancelled never cancels it for the others, and an edit's wait does not count time its source spent queued."""

from __future__ import annotations

import asyncio
import time

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from llmi_graph import ChatModelPolicy, Config, State, Toolbox, build_graph
from llmi_graph._run import ResultBoard
from llmi_graph.cache import ToolCache
from llmi_graph.state import Figure, ImageResult
from tests.fakes import FakeBackend


def tag(source: str, **params: object) -> str:
    return f"<imgen>{{'source': '{source}', 'description': 'd', 'params': {params!r}}}</imgen>"


def ok(index: int) -> ImageResult:
    return ImageResult(index=index, source="diffusion", status="ok")


async def test_a_board_waiter_that_times_out_leaves_the_others_waiting():
    board = ResultBoard()
    board.mark_started(0)
    impatient = asyncio.create_task(board.wait(0, budget_s=0.05))
    patient = asyncio.create_task(board.wait(0, budget_s=30))
    with pytest.raises(TimeoutError):
        await impatient
    await board.publish(ok(0))
    assert (await asyncio.wait_for(patient, 5)).status == "ok"


async def test_a_cancelled_board_waiter_leaves_the_others_waiting():
    board = ResultBoard()
    first = asyncio.create_task(board.wait(0, budget_s=30))
    second = asyncio.create_task(board.wait(0, budget_s=30))
    await asyncio.sleep(0.05)
    first.cancel()
    await asyncio.sleep(0.05)
    await board.publish(ok(0))
    assert (await asyncio.wait_for(second, 5)).status == "ok"


async def test_queued_time_does_not_count_against_a_board_wait():
    board = ResultBoard()
    waiter = asyncio.create_task(board.wait(0, budget_s=0.2))
    await asyncio.sleep(0.5)  # queued behind a concurrency limit: longer than the budget
    assert not waiter.done()
    board.mark_started(0)
    await asyncio.sleep(0.1)
    await board.publish(ok(0))
    assert (await asyncio.wait_for(waiter, 5)).status == "ok"


async def test_cancelling_the_first_cache_waiter_does_not_break_the_others():
    cache = ToolCache()
    backend = FakeBackend(latency_s=0.3)
    executions = 0

    async def execute() -> ImageResult:
        nonlocal executions
        executions += 1
        await backend({"prompt": "x"})
        return ok(0)

    owner = asyncio.create_task(cache.run("k", execute))
    await asyncio.sleep(0.05)
    sharer = asyncio.create_task(cache.run("k", execute))
    await asyncio.sleep(0.05)
    owner.cancel()
    result, hit = await asyncio.wait_for(sharer, 5)
    assert result.status == "ok" and hit and executions == 1
    assert len(backend.finished) == 1


async def test_a_shared_execution_is_cancelled_when_no_waiter_is_left():
    cache = ToolCache()
    cancelled = asyncio.Event()

    async def execute() -> ImageResult:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return ok(0)

    waiters = [asyncio.create_task(cache.run("k", execute)) for _ in range(2)]
    await asyncio.sleep(0.05)
    for w in waiters:
        w.cancel()
    await asyncio.wait_for(cancelled.wait(), 5)
    result, hit = await asyncio.wait_for(cache.run("k", lambda: asyncio.sleep(0, ok(0))), 5)  # a fresh execution
    assert result.status == "ok" and not hit


async def test_a_cancelled_rollout_does_not_break_others_sharing_the_cache(cfg, tmp_path):
    # GRPO: drafts of one group share identical calls through the process-wide tool cache.
    cfg = cfg.replace(tool_cache=True, cache_dir=str(tmp_path / "cache"))
    diffusion = FakeBackend("d", latency_s=0.6)
    draft = f"A picture: {tag('diffusion', prompt='a lighthouse')}"
    toolbox = Toolbox(backends={"search": None, "code": None, "edit": None, "diffusion": diffusion})
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft])), toolbox=toolbox, config=cfg)
    first = asyncio.create_task(graph.ainvoke({"prompt": "one"}))
    await asyncio.sleep(0.3)  # the first run owns the shared call, now in flight
    second = asyncio.create_task(graph.ainvoke({"prompt": "two"}))
    await asyncio.sleep(0.1)
    first.cancel()
    state = State.model_validate(await asyncio.wait_for(second, 10))
    figures = [f for f in state.document if isinstance(f, Figure)]
    assert [f.status for f in figures] == ["ok"], figures
    assert state.results[0].cache_hit and len(diffusion.calls) == 1


@pytest.mark.slow
async def test_edits_of_a_long_queued_image_succeed(tmp_path):
    # Under load the source of two edits waits in its backend's queue longer than any fixed wait (the old one
    # was twice 30 s plus the tool timeouts). Neither edit may fail for our own queueing, and one edit giving up
    # must not cancel the other's wait (it used to abort the run).
    cfg = Config(image_dir=str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"), tool_attempts=1,
                 tool_timeout_s=2.0, diffusion_concurrency=1)  # fmt: skip
    queue = [tag("diffusion", prompt=f"busy {i}") for i in range(66)]  # 66 x 1 s ahead of the source
    n = len(queue)
    draft = " ".join(queue) + f" {tag('diffusion', prompt='source')} "
    draft += f"{tag('edit', img_index=n, prompt='one')} {tag('edit', img_index=n, prompt='two')}"
    toolbox = Toolbox(
        backends={"search": None, "code": None, "diffusion": FakeBackend("d", latency_s=1.0), "edit": FakeBackend("e")},
        concurrency={"diffusion": 1, "edit": 2},
    )
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft])), toolbox=toolbox, config=cfg)
    started = time.perf_counter()
    state = State.model_validate(await graph.ainvoke({"prompt": "load"}))
    assert time.perf_counter() - started > 66
    figures = {f.index: f for f in state.document if isinstance(f, Figure)}
    assert figures[n].status == "ok"
    assert figures[n + 1].status == "ok", figures[n + 1].error
    assert figures[n + 2].status == "ok", figures[n + 2].error
