"""Lifecycles: backends are built once per process for an operator configuration and closed at shutdown;
per-run resources (an E2B sandbox) live for one run; a run that crashes leaves nothing behind for long."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading

import pytest
from fastapi import FastAPI
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from llmi_graph import ChatModelPolicy, State, Toolbox, build_graph, close_toolboxes, toolbox_for
from llmi_graph import _run as runs
from llmi_graph.state import Figure
from tests.fakes import FakeBackend, LoopbackApp, png
from tests.tiny_qwen import build_tiny_generate


def tag(source: str, **params: object) -> str:
    return f"<imgen>{{'source': '{source}', 'description': 'd', 'params': {params!r}}}</imgen>"


def scripted(draft: str, n: int = 8) -> ChatModelPolicy:
    return ChatModelPolicy(FakeListChatModel(responses=[draft] * n))


def statuses(state: dict) -> list[str]:
    return [f.status for f in State.model_validate(state).document if isinstance(f, Figure)]


@pytest.fixture(autouse=True)
async def fresh_toolboxes():
    await close_toolboxes()
    yield
    await close_toolboxes()


@pytest.fixture(autouse=True)
async def no_runs_from_other_tests():
    """These tests count the process's open runs: close what earlier tests left open by design (a run stopped at an
    approval interrupt keeps its context for the resume, until an hour idle)."""
    for key in list(runs._runs):
        await runs.close_run(key)
    yield


async def test_an_in_process_diffusers_pipeline_loads_once(cfg, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    model = build_tiny_generate(tmp_path / "tiny")
    loads = []
    original = DiffusionPipeline.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(counting))
    cfg = cfg.replace(diffusers_model=str(model), diffusers_device="cpu", image_width=48, image_height=32,
                      image_steps=1, search_backend="none", edit_backend="none")  # fmt: skip
    draft = f"{tag('diffusion', prompt='a red cat')} and {tag('diffusion', prompt='a blue mat')}"
    graph = build_graph(policy=scripted(draft), config=cfg)
    for prompt in ("one", "two"):  # two runs, four calls
        assert statuses(await graph.ainvoke({"prompt": prompt})) == ["ok", "ok"]
    assert loads == [str(model)]
    assert toolbox_for(cfg) is toolbox_for(cfg.replace())  # same settings, same toolbox


class HangUpServer:
    """A TCP server that accepts and hangs up at once (a dead image server), counting connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def image_server_app() -> FastAPI:
    app = FastAPI()

    @app.post("/generate")
    async def generate(body: dict) -> dict:
        return {"images": [base64.b64encode(png()).decode()], "seed": 1}

    return app


async def test_the_image_server_pools_cool_down_outlives_a_run(cfg):
    dead = HangUpServer()
    with LoopbackApp(image_server_app()) as alive:
        cfg = cfg.replace(image_server_urls=f"{dead.url},{alive.url}", search_backend="none", edit_backend="none")
        graph = build_graph(policy=scripted(f"A picture: {tag('diffusion', prompt='a lighthouse')}"), config=cfg)
        first = State.model_validate(await graph.ainvoke({"prompt": "one"}))
        assert [r.status for r in first.results] == ["ok"], first.results
        assert dead.accepted == 1  # the first request of a new pool tries the first server, and sets it aside
        assert statuses(await graph.ainvoke({"prompt": "two"})) == ["ok"]
    assert dead.accepted == 1, "the second run forgot that the first server was down"
    dead.sock.close()


class PerRunBackend:
    """A fake backend holding a per-run resource (like an E2B sandbox): `for_run` makes one, `aclose` frees it."""

    name = "per-run"

    def __init__(self, registry: list[PerRunBackend] | None = None, latency_s: float = 0.0):
        self.registry = registry if registry is not None else []
        self.latency_s, self.closed, self.calls = latency_s, False, 0

    def for_run(self) -> PerRunBackend:
        instance = PerRunBackend(self.registry, self.latency_s)
        self.registry.append(instance)
        return instance

    async def __call__(self, params, inputs=()):
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        return await FakeBackend()(params, inputs)

    async def aclose(self) -> None:
        self.closed = True


async def test_per_run_resources_are_made_and_closed_per_run(cfg):
    shared = PerRunBackend()
    toolbox = Toolbox(backends={"search": None, "diffusion": None, "edit": None, "code": shared})
    draft = f"{tag('code', code='plt.plot([1])')} {tag('code', code='plt.plot([2])')}"
    graph = build_graph(policy=scripted(draft), toolbox=toolbox, config=cfg)
    for prompt in ("one", "two"):
        assert statuses(await graph.ainvoke({"prompt": prompt})) == ["ok", "ok"]
    assert shared.calls == 0 and len(shared.registry) == 2  # one per run, each used for both of its calls
    assert [s.calls for s in shared.registry] == [2, 2] and all(s.closed for s in shared.registry)
    assert runs.open_runs() == 0


async def test_a_crashed_runs_context_is_closed_by_a_later_run(cfg, monkeypatch):
    shared = PerRunBackend(latency_s=30)
    toolbox = Toolbox(backends={"search": None, "diffusion": FakeBackend(), "edit": None, "code": shared})
    crashing = build_graph(policy=scripted(f"{tag('code', code='plt.plot([1])')}"), toolbox=toolbox, config=cfg)
    task = asyncio.create_task(crashing.ainvoke({"prompt": "dies mid-tools"}))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs.open_runs() == 1 and not shared.registry[0].closed  # left behind by the crash
    monkeypatch.setattr(runs, "IDLE_CLOSE_S", 0.0)
    later = build_graph(policy=scripted(f"{tag('diffusion', prompt='x')}"), toolbox=toolbox, config=cfg)
    assert statuses(await later.ainvoke({"prompt": "a later run"})) == ["ok"]
    await asyncio.sleep(0.1)
    assert shared.registry[0].closed and runs.open_runs() == 0


async def test_each_run_gets_its_own_e2b_sandbox_killed_when_it_ends(cfg):
    from tests.test_tools import RECORDED_OK, FakeE2BSandbox
    from tools.code import E2BSandbox

    lines = [dict(line) for line in RECORDED_OK]
    lines[2]["png"] = base64.b64encode(png((5, 6, 7), (640, 480))).decode()
    sandboxes: list[FakeE2BSandbox] = []

    async def factory(**kwargs):
        sandboxes.append(FakeE2BSandbox(lines))
        return sandboxes[-1]

    e2b = E2BSandbox("e2b-key", sandbox_factory=factory)
    toolbox = Toolbox(backends={"search": None, "diffusion": None, "edit": None, "code": e2b})
    draft = f"{tag('code', code='plt.plot([1])')} {tag('code', code='plt.plot([2])')}"
    graph = build_graph(policy=scripted(draft), toolbox=toolbox, config=cfg)
    runs_at_once = await asyncio.gather(*(graph.ainvoke({"prompt": p}) for p in ("one", "two")))
    assert [statuses(s) for s in runs_at_once] == [["ok", "ok"], ["ok", "ok"]]
    assert len(sandboxes) == 2 and all(len(s.codes) == 2 and s.killed for s in sandboxes)
