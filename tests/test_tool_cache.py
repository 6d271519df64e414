"""The content-addressed tool cache: identical calls execute once, within a run always, across runs when enabled."""

from __future__ import annotations

import asyncio

from langchain_core.language_models.fake_chat_models import FakeListChatModel

from llmi_graph import ChatModelPolicy, State, Toolbox, build_graph
from llmi_graph import cache as cache_module
from tests.fakes import FakeBackend, png
from tests.test_graph import tag

DRAFT = (
    f"Intro {tag('search', query='eiffel tower')} then {tag('diffusion', prompt='a fox in snow')} and "
    f"{tag('code', code='plt.plot([1, 2])')} with its edit {tag('edit', img_index=2, prompt='grayscale')} "
    f"and the photo again {tag('search', query='eiffel tower')}."
)
DISTINCT_CALLS = 4  # the second search repeats the first


def toolbox(latency_s: float = 0.05) -> tuple[Toolbox, dict[str, FakeBackend]]:
    fakes = {s: FakeBackend(s, latency_s=latency_s) for s in ("search", "diffusion", "code", "edit")}
    return Toolbox(backends=dict(fakes)), fakes


async def test_identical_calls_within_a_run_execute_once(cfg):
    box, fakes = toolbox()
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[DRAFT])), toolbox=box)
    state = State.model_validate(await graph.ainvoke({"prompt": "p"}, context=cfg))
    assert len(fakes["search"].calls) == 1
    results = sorted(state.results, key=lambda r: r.index)
    assert [r.cache_hit for r in results] == [False, False, False, False, True]
    assert results[4].image == results[0].image and results[4].index == 4
    assert state.tool_metrics["search"]["cache_hits"] == 1 and state.tool_metrics["search"]["calls"] == 2


async def test_a_grpo_group_of_eight_identical_drafts_executes_each_distinct_call_once(cfg, tmp_path):
    box, fakes = toolbox(latency_s=0.2)
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[DRAFT] * 8)), toolbox=box)
    context = cfg.replace(tool_cache=True, cache_dir=str(tmp_path / "cache"))
    states = await asyncio.gather(*(graph.ainvoke({"prompt": "p"}, context=context) for _ in range(8)))
    states = [State.model_validate(s) for s in states]
    assert {name: len(fake.calls) for name, fake in fakes.items()} == {
        "search": 1,
        "diffusion": 1,
        "code": 1,
        "edit": 1,
    }
    hits = sum(r.cache_hit for s in states for r in s.results)
    assert hits == 8 * 5 - DISTINCT_CALLS
    assert all(r.status == "ok" for s in states for r in s.results)
    # every rollout got the same images
    assert len({tuple(r.image.sha256 for r in sorted(s.results, key=lambda r: r.index)) for s in states}) == 1


async def test_across_runs_only_when_enabled_and_from_disk(cfg, tmp_path, monkeypatch):
    box, fakes = toolbox()
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[DRAFT] * 4)), toolbox=box)
    await graph.ainvoke({"prompt": "p"}, context=cfg)
    await graph.ainvoke({"prompt": "p"}, context=cfg)
    assert len(fakes["diffusion"].calls) == 2  # off by default across runs

    enabled = cfg.replace(tool_cache=True, cache_dir=str(tmp_path / "cache"))
    await graph.ainvoke({"prompt": "p"}, context=enabled)
    assert len(fakes["diffusion"].calls) == 3
    monkeypatch.setattr(cache_module, "_shared", {})  # as a new process would start: memory empty, disk kept
    state = State.model_validate(await graph.ainvoke({"prompt": "p"}, context=enabled))
    assert len(fakes["diffusion"].calls) == 3 and all(r.cache_hit for r in state.results)


async def test_failures_are_shared_in_flight_but_not_stored(cfg, tmp_path):
    failing = FakeBackend("search", latency_s=0.2, error="nothing found")
    box = Toolbox(backends={"search": failing})
    draft = f"{tag('search', query='x')} {tag('search', query='x')}"
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft] * 2)), toolbox=box)
    enabled = cfg.replace(tool_cache=True, cache_dir=str(tmp_path / "cache"))
    state = State.model_validate(await graph.ainvoke({"prompt": "p"}, context=enabled))
    assert len(failing.calls) == 1 and [r.status for r in state.results] == ["failed", "failed"]
    await graph.ainvoke({"prompt": "p"}, context=enabled)
    assert len(failing.calls) == 2  # a failure is not remembered


class ColourByCode(FakeBackend):
    """A fake code backend whose image colour depends on the code, so different code gives different bytes."""

    async def __call__(self, params, inputs=()):
        out = await super().__call__(params, inputs)
        out.image = png((len(params["code"]) * 40 % 256, 10, 10))
        return out


async def test_edits_of_different_images_do_not_collide(cfg):
    box = Toolbox(backends={"code": ColourByCode("code"), "edit": FakeBackend("edit")})
    draft = (f"{tag('code', code='a')} {tag('code', code='bb')} {tag('code', code='a')} "
             f"{tag('edit', img_index=0, prompt='invert')} {tag('edit', img_index=1, prompt='invert')} "
             f"{tag('edit', img_index=2, prompt='invert')}")  # fmt: skip
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft])), toolbox=box)
    state = State.model_validate(await graph.ainvoke({"prompt": "p"}, context=cfg))
    results = {r.index: r for r in state.results}
    # the same prompt on different input images runs twice; on the same image (0 and 2 are identical) once
    assert len(box.backends["edit"].calls) == 2
    assert results[3].image.sha256 != results[4].image.sha256
    assert results[5].image.sha256 == results[3].image.sha256
    assert results[3].cache_hit != results[5].cache_hit  # whichever ran first served the other
