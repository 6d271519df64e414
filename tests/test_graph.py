"""The graph, driven by langchain-core's fake chat model and fake (latency-controlled) tool backends."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from llmi_graph import ChatModelPolicy, Config, State, Toolbox, build_graph, data_url
from llmi_graph.state import Figure
from tests.fakes import FakeBackend, png


def tag(source: str, description: str = "d", **params: object) -> str:
    return f"<imgen>{{'source': '{source}', 'description': '{description}', 'params': {params!r}}}</imgen>"


def graph_for(draft: str, **backends: FakeBackend | None):
    toolbox = Toolbox(backends={s: backends.get(s) for s in ("search", "diffusion", "code", "edit")})
    return build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=[draft])), toolbox=toolbox)


async def run(graph, cfg: Config, **request: object) -> State:
    request.setdefault("prompt", "a test prompt")
    return State.model_validate(await graph.ainvoke(request, context=cfg))


def figures(state: State) -> list[Figure]:
    return [item for item in state.document if isinstance(item, Figure)]


async def test_independent_calls_run_concurrently(cfg):
    search, diffusion = FakeBackend("s", latency_s=0.6), FakeBackend("d", latency_s=0.6)
    draft = f"A {tag('search', query='cat')} B {tag('diffusion', prompt='dog')} C {tag('search', query='cow')}"
    start = time.perf_counter()
    state = await run(graph_for(draft, search=search, diffusion=diffusion), cfg)
    elapsed = time.perf_counter() - start
    assert [f.status for f in figures(state)] == ["ok", "ok", "ok"]
    assert elapsed < 1.5, f"three 0.6 s calls took {elapsed:.2f} s: not concurrent"
    assert [c[0] for c in search.calls] == [{"query": "cat"}, {"query": "cow"}]


async def test_document_keeps_text_and_image_order(cfg):
    draft = f"Intro.\n{tag('search', 'first', query='a')}\nMiddle.\n{tag('diffusion', 'second', prompt='b')}\nEnd."
    state = await run(graph_for(draft, search=FakeBackend(), diffusion=FakeBackend()), cfg)
    kinds = [(i.kind, getattr(i, "text", None) or getattr(i, "description", None)) for i in state.document]
    assert kinds == [
        ("text", "Intro.\n"),
        ("figure", "first"),
        ("text", "\nMiddle.\n"),
        ("figure", "second"),
        ("text", "\nEnd."),
    ]
    assert state.policy is not None and state.policy.text == draft


async def test_edit_chain_waits_for_exactly_its_source(cfg):
    # slow search in parallel with code -> edit -> edit: the chain must not wait for the search.
    search, code, edit = (
        FakeBackend("s", latency_s=1.2),
        FakeBackend("c", latency_s=0.2),
        FakeBackend("e", latency_s=0.2),
    )
    draft = (
        f"{tag('search', query='slow')} {tag('code', code='plt.plot([1])')} "
        f"{tag('edit', img_index=1, prompt='gray')} {tag('edit', img_index=2, prompt='crop')}"
    )
    start = time.perf_counter()
    state = await run(graph_for(draft, search=search, code=code, edit=edit), cfg)
    elapsed = time.perf_counter() - start
    assert [f.status for f in figures(state)] == ["ok"] * 4
    # Each edit started after its source finished ...
    assert edit.started[0] >= code.finished[0]
    assert edit.started[1] >= edit.finished[0]
    # ... and the chain finished before the slow search: edits did not wait for the whole step.
    assert edit.finished[1] < search.finished[0]
    assert elapsed < 1.2 + 0.8
    # The edit received the code tool's image, and the second edit the first edit's output.
    store_images = {r.index: r for r in state.results}
    assert edit.calls[0][1][0] == open(store_images[1].image.path, "rb").read()
    assert edit.calls[1][1][0] == open(store_images[2].image.path, "rb").read()


async def test_edit_of_a_failed_image_fails_with_dependency_failed(cfg):
    draft = f"{tag('search', query='x')} then {tag('edit', img_index=0, prompt='gray')} and {tag('code', code='ok')}"
    edit = FakeBackend("e")
    state = await run(graph_for(draft, search=FakeBackend(error="nothing found"), edit=edit, code=FakeBackend()), cfg)
    search_fig, edit_fig, code_fig = figures(state)
    assert search_fig.status == "failed" and search_fig.error == "nothing found"
    assert edit_fig.status == "failed" and edit_fig.error.startswith("dependency failed")
    assert "nothing found" in edit_fig.error
    assert code_fig.status == "ok"  # the rest of the document survives
    assert edit.calls == []


async def test_edit_of_an_invalid_tag_fails_with_dependency_failed(cfg):
    bad = "<imgen>{'source': 'paint', 'description': 'x', 'params': {}}</imgen>"
    draft = f"{bad} {tag('edit', img_index=0, prompt='p')}"
    state = await run(graph_for(draft, edit=FakeBackend()), cfg)
    bad, edit = figures(state)
    assert bad.error.startswith("invalid tag: unknown source 'paint'")
    assert edit.error.startswith("dependency failed: image 0 (paint) failed: invalid tag")


async def test_edit_of_an_input_image(cfg, tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(png((10, 20, 30)))
    edit = FakeBackend("e")
    draft = f"Edited: {tag('edit', img_index=0, prompt='invert')}"
    state = await run(graph_for(draft, edit=edit), cfg, images=[data_url(source.read_bytes())])
    assert [f.status for f in figures(state)] == ["ok"]
    assert figures(state)[0].index == 1  # input images come first in the numbering
    assert edit.calls[0][1] == [source.read_bytes()]
    assert state.input_images[0].width == 64


async def test_input_image_as_data_url(cfg):
    data = "data:image/png;base64," + base64.b64encode(png()).decode()
    state = await run(graph_for("No tags."), cfg, images=[data])
    assert len(state.input_images) == 1 and state.input_images[0].mime == "image/png"


async def test_invalid_tags_become_failed_slots_and_the_text_survives(cfg):
    draft = "Start <imgen>{'source': 'search'}</imgen> middle <imgen>not a dict</imgen> end."
    state = await run(graph_for(draft, search=FakeBackend()), cfg)
    assert [f.status for f in figures(state)] == ["failed", "failed"]
    assert "missing key(s) 'description', 'params'" in figures(state)[0].error
    assert "".join(i.text for i in state.document if i.kind == "text") == "Start  middle  end."


async def test_tool_timeout_is_a_failed_slot_after_retries(cfg):
    slow = FakeBackend("slow", latency_s=5)
    draft = f"{tag('diffusion', prompt='x')} and {tag('search', query='y')}"
    cfg = cfg.replace(tool_timeout_s=0.3, tool_attempts=2)
    start = time.perf_counter()
    state = await run(graph_for(draft, diffusion=slow, search=FakeBackend()), cfg)
    diffusion_fig, search_fig = figures(state)
    assert diffusion_fig.status == "failed"
    assert diffusion_fig.error == "timed out after 0.3 s (after 2 attempts)"
    assert search_fig.status == "ok"
    assert len(slow.calls) == 2 and time.perf_counter() - start < 3


async def test_transient_errors_are_retried_permanent_ones_are_not(cfg):
    flaky, broken = FakeBackend("flaky", transient_failures=1), FakeBackend("broken", error="bad prompt")
    draft = f"{tag('search', query='x')} {tag('diffusion', prompt='y')}"
    state = await run(graph_for(draft, search=flaky, diffusion=broken), cfg)
    results = {r.index: r for r in state.results}
    assert results[0].status == "ok" and results[0].attempts == 2
    assert results[1].status == "failed" and results[1].attempts == 1 and len(broken.calls) == 1


async def test_no_backend_configured(cfg):
    draft = f"{tag('search', query='x')} {tag('diffusion', prompt='y')}"
    state = await run(graph_for(draft), cfg)
    assert [f.error for f in figures(state)] == [
        "no backend configured for the search tool",
        "no backend configured for the diffusion tool",
    ]


async def test_allowed_tools_are_enforced_and_listed(cfg):
    model = FakeListChatModel(responses=[f"{tag('search', query='x')} {tag('code', code='plt.plot([1])')}"])
    toolbox = Toolbox(backends={"search": FakeBackend(), "code": FakeBackend(), "diffusion": None, "edit": None})
    graph = build_graph(policy=ChatModelPolicy(model), toolbox=toolbox)
    state = await run(graph, cfg, allowed_tools=["code"])
    search_fig, code_fig = figures(state)
    assert search_fig.error == "the search tool is not allowed for this request (allowed: code)"
    assert code_fig.status == "ok"
    assert "'code'" in state.system_prompt and "'search':" not in state.system_prompt


async def test_system_prompt_lists_only_tools_with_a_backend(cfg):
    state = await run(graph_for("text", code=FakeBackend()), cfg)
    assert "- 'code':" in state.system_prompt
    for missing in ("search", "diffusion", "edit"):
        assert f"- '{missing}':" not in state.system_prompt


async def test_backend_returning_garbage_is_a_failed_slot(cfg):
    class Garbage(FakeBackend):
        async def __call__(self, params, inputs=()):
            out = await super().__call__(params, inputs)
            out.image = b"<html>not an image</html>"
            return out

    state = await run(graph_for(tag("search", query="x"), search=Garbage("g")), cfg)
    assert "returned an unusable image" in figures(state)[0].error


async def test_backend_bug_is_a_failed_slot(cfg):
    class Buggy(FakeBackend):
        async def __call__(self, params, inputs=()):
            raise KeyError("oops")

    state = await run(graph_for(f"{tag('search', query='x')} ok", search=Buggy("b")), cfg)
    assert "failed unexpectedly: KeyError" in figures(state)[0].error
    assert state.document[-1].text == " ok"


async def test_images_live_outside_the_state_by_content_hash(cfg):
    state = await run(graph_for(tag("search", query="x"), search=FakeBackend(color=(1, 2, 3))), cfg)
    ref = state.results[0].image
    assert ref is not None and ref.path.startswith(cfg.image_dir)
    assert ref.sha256 in ref.path
    dumped = state.model_dump_json()
    assert "base64" not in dumped and len(dumped) < 20_000


async def test_real_code_tool_through_the_graph(cfg, requires_bwrap):
    code = "x = np.linspace(-3, 3, 50)\nplt.plot(x, x**2)\nplt.title('y = x^2')"
    model = FakeListChatModel(responses=[f"The parabola:\n{tag('code', 'parabola', code=code)}\nIt is symmetric."])
    state = await run(build_graph(policy=ChatModelPolicy(model)), cfg)
    (fig,) = figures(state)
    assert fig.status == "ok", fig.error
    assert state.results[0].provenance["figure_texts"] == ["y = x^2"]


async def test_policy_failure_is_a_clear_error(cfg):
    class Broken(FakeListChatModel):
        async def _agenerate(self, *args, **kwargs):
            raise ConnectionError("connection refused")

    graph = build_graph(policy=ChatModelPolicy(Broken(responses=["x"])), toolbox=Toolbox(backends={}))
    with pytest.raises(Exception, match="the policy failed: ConnectionError: connection refused"):
        await graph.ainvoke({"prompt": "x"}, context=cfg)


async def test_empty_prompt_is_rejected_before_any_work(cfg):
    with pytest.raises(Exception, match="the prompt is empty"):
        await graph_for("x").ainvoke({"prompt": "   "}, context=cfg)


async def test_unusable_input_image_is_a_clear_error(cfg, tmp_path):
    not_an_image = base64.b64encode(b"not an image").decode()
    with pytest.raises(Exception, match="input image 0 is unusable: not a readable image"):
        await graph_for("x").ainvoke({"prompt": "x", "images": [not_an_image]}, context=cfg)


async def test_concurrent_runs_do_not_mix_results(cfg):
    async def one(i: int) -> State:
        color = (i * 20, 0, 0)
        draft = f"{tag('code', code=str(i))} {tag('edit', img_index=0, prompt='inv')}"
        return await run(
            graph_for(
                draft,
                code=FakeBackend(color=color, latency_s=0.05 * (5 - i)),
                edit=FakeBackend(latency_s=0.01),
            ),
            cfg,
        )

    states = await asyncio.gather(*(one(i) for i in range(5)))
    for state in states:
        code_result, edit_result = sorted(state.results, key=lambda r: r.index)
        assert code_result.status == edit_result.status == "ok"
        assert code_result.image.sha256 != edit_result.image.sha256


async def test_second_run_on_a_checkpointed_thread_starts_afresh(cfg):
    from langgraph.checkpoint.memory import InMemorySaver

    model = FakeListChatModel(responses=[f"{tag('search', query='a')} {tag('search', query='b')}", "Text only."])
    toolbox = Toolbox(backends={"search": FakeBackend()})
    graph = build_graph(policy=ChatModelPolicy(model), toolbox=toolbox, checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "t1"}}
    first = State.model_validate(await graph.ainvoke({"prompt": "one"}, thread, context=cfg))
    second = State.model_validate(await graph.ainvoke({"prompt": "two"}, thread, context=cfg))
    assert len(first.results) == 2
    assert second.results == [] and second.calls == [] and figures(second) == []
    assert "tools_s" in second.timings and second.timings["started_at"] > first.timings["started_at"]


async def test_lone_surrogates_in_a_draft_become_replacement_characters(cfg, tmp_path):
    from llmi_graph.report import write_report
    from llmi_graph.store import ImageStore

    state = await run(graph_for("Broken \ud800 escape, then text."), cfg)
    assert state.draft == "Broken \ufffd escape, then text." == state.policy.text
    write_report(state, tmp_path / "report", ImageStore(cfg.image_path), cfg)  # UTF-8 files, no error
