"""Test-time scaling (`llmi_graph.scaling`): K candidates in one request or one batch, validation, selection by
rules or by a judge, then the llmi graph as a subgraph on the chosen draft (repair rounds included).

Policies and judges here are fakes, named as such: `FakeOpenAIServer` (a scripted OpenAI-compatible server on
loopback) and langchain-core's `FakeListChatModel`; one test samples K drafts from the real embedded SmolLM2."""

from __future__ import annotations

import json

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from llmi_graph import ChatModelPolicy, Config, OpenAIPolicy, Toolbox, build_graph
from llmi_graph.checks import rules_score, validate
from llmi_graph.graph import InputError
from llmi_graph.policy import EmbeddedPolicy, Sampling, generate_n
from llmi_graph.scaling import build_scaled_graph
from llmi_graph.state import Output
from tests.fakes import FakeBackend, FakeOpenAIServer


def tag(source: str, description: str = "d", **params: object) -> str:
    return f"<imgen>{{'source': '{source}', 'description': '{description}', 'params': {params!r}}}</imgen>"


NO_COMPILE = tag("code", "c", code="plt.plot([1,")
WORKS = tag("code", "c", code="plt.plot([1, 2])")
EMPTY_SEARCH = tag("search", "s", query=" ")


def toolbox(**backends: FakeBackend | None) -> Toolbox:
    return Toolbox(backends={s: backends.get(s) for s in ("search", "diffusion", "code", "edit")})


async def run(graph, cfg: Config, **request: object) -> Output:
    request.setdefault("prompt", "Chart the sales")
    return Output.model_validate(await graph.ainvoke(request, context=cfg))


def test_validation_finds_what_would_fail_without_running_anything():
    tools = ["code", "search"]
    found = validate(f"A {NO_COMPILE} B {EMPTY_SEARCH} C {tag('diffusion', prompt='x')} D {WORKS} E <imgen>{{", tools)
    reasons = {p.index: p.reason for p in found.problems}
    assert found.tags == 5 and found.clean == 1 and not found.passed
    assert reasons[0].startswith("the code does not compile: ")
    assert reasons[1] == "invalid tag: params.query is empty"
    assert reasons[2] == "the diffusion tool is not available to this request (usable: code, search)"
    assert reasons[4].startswith("invalid tag: ")
    late_edit = validate(f"{WORKS} {tag('edit', img_index=1, prompt='p')}", ["code", "edit"])
    assert late_edit.problems[0].index == 1 and "img_index" in late_edit.problems[0].reason
    assert validate("no tags", tools).passed
    # code is compiled, never run
    assert validate(tag("code", code="import os; os.remove('/etc/passwd')"), tools).passed


def test_the_rules_score_prefers_working_tags_in_the_wanted_number():
    one, none, bad = validate(WORKS, ["code"]), validate("text only", ["code"]), validate(NO_COMPILE, ["code"])
    assert rules_score(one, 1) == 2.0 and rules_score(none, 1) == 1.0 and rules_score(bad, 1) == 0.0
    assert rules_score(none, -1) == 2.0 > rules_score(one, -1)  # a request for no images


async def test_k_candidates_come_from_one_request_and_rules_choose_the_one_that_works(cfg):
    drafts = [f"First. {NO_COMPILE}", f"Second. {WORKS}", "Third, no image."]
    code = FakeBackend("code")
    with FakeOpenAIServer(drafts) as server:
        graph = build_scaled_graph(OpenAIPolicy(server.url, "fake"), toolbox(code=code))
        out = await run(graph, cfg, candidates=3, image_num=1, seed=7)
        requests = server.requests
    assert len(requests) == 1 and requests[0]["n"] == 3 and requests[0]["seed"] == 7
    assert [c.output.text for c in out.drafts] == drafts  # all K are kept, with their tokens and logprobs
    assert all(c.output.completion_token_ids and c.output.logprobs for c in out.drafts)
    assert [c.validation.clean for c in out.drafts] == [0, 1, 0]
    assert out.selector == "rules" and out.selected == 1 and [c.score for c in out.drafts] == [0.0, 2.0, 1.0]
    assert out.draft == drafts[1] and out.policy is not None and out.policy.text == drafts[1]
    assert out.policy.sampling["n"] == 3
    assert [r.status for r in out.results] == ["ok"] and len(code.calls) == 1  # only the chosen draft's tools ran


async def test_the_chosen_draft_s_failed_slot_is_repaired_inside_the_subgraph(cfg):
    broken = tag("code", "c", code="plt.line([1, 2])")  # compiles, fails when run
    fake = FakeListChatModel(responses=[f"Only one. {broken}", WORKS])

    class FailsOnLine(FakeBackend):
        async def __call__(self, params, inputs=()):
            self.error = "AttributeError: no plt.line" if "line" in params["code"] else None
            return await super().__call__(params, inputs)

    graph = build_scaled_graph(ChatModelPolicy(fake), toolbox(code=FailsOnLine("code")))
    out = await run(graph, cfg, candidates=1, select="rules", repair_rounds=1)
    assert [r.status for r in out.results] == ["failed", "ok"] and out.repairs[0].call.params[
        "code"
    ] == "plt.plot([1, 2])"


async def test_a_judge_selector_is_passed_in_and_can_overrule_the_rules(cfg):
    from judges._endpoint import JudgeEndpoint
    from judges.llm import LLMJudge
    from judges.select import JudgeSelector, RelativeSelector

    drafts = [f"Short. {WORKS}", f"A fuller answer. {WORKS}"]
    answers = [
        json.dumps({"text": 2, "image": 3, "explanation": "thin"}),
        '{"text": 5, "image": 4, "explanation": "ok"}',
    ]
    with FakeOpenAIServer(drafts) as policy, FakeOpenAIServer(answers) as judge:
        selector = JudgeSelector(LLMJudge(JudgeEndpoint(base_url=judge.url, model="fake-judge", concurrency=1)))
        graph = build_scaled_graph(
            OpenAIPolicy(policy.url, "fake"), toolbox(code=FakeBackend()), scorers={"judge": selector}
        )
        out = await run(graph, cfg, candidates=2, select="judge")
        assert len(judge.requests) == 2  # one judgement per draft
    assert out.selector == "judge" and out.selected == 1 and [c.score for c in out.drafts] == [2.5, 4.5]
    assert [c.rules_score for c in out.drafts] == [2.0, 2.0]

    ranking = json.dumps({"answer_1": 9, "answer_2": 3, "answer_3": 6, "explanation": "1 plots the numbers"})
    with FakeOpenAIServer([*drafts, "Third."]) as policy, FakeOpenAIServer([ranking]) as judge:
        relative = RelativeSelector(JudgeEndpoint(base_url=judge.url, model="fake-judge"))
        graph = build_scaled_graph(
            OpenAIPolicy(policy.url, "fake"), toolbox(code=FakeBackend()), scorers={"relative": relative}
        )
        out = await run(graph, cfg, candidates=3, select="relative")
        assert len(judge.requests) == 1  # one call sees all three
        shown = judge.requests[0]["messages"][-1]["content"]
    assert "=== Answer 3 ===\nThird." in shown and out.selected == 0 and [c.score for c in out.drafts] == [9, 3, 6]


async def test_requests_over_the_caps_or_for_a_missing_judge_fail_before_any_sampling(cfg):
    fake = FakeListChatModel(responses=["never"])
    graph = build_scaled_graph(ChatModelPolicy(fake), toolbox(code=FakeBackend()))
    with pytest.raises(InputError, match="candidates 9 is over this server's limit of 8"):
        await run(graph, cfg, candidates=9)
    with pytest.raises(InputError, match="the judge selector needs a judge"):
        await run(graph, cfg, candidates=2, select="judge")
    with pytest.raises(InputError, match="repair_rounds 5 is over"):
        await run(graph, cfg, candidates=2, repair_rounds=5)
    assert fake.i == 0
    with pytest.raises(ValueError, match="unknown selector"):
        build_scaled_graph(ChatModelPolicy(fake), scorers={"best": object()})


async def test_a_caller_cannot_hand_the_graph_a_draft(cfg):
    """`given` (the chosen draft) is state, not request: only the scaled graph's own selection sets it. A request
    that carries one has it dropped (LangGraph reads only the input schema's keys), and the policy writes the draft."""
    injected = {"text": f"INJECTED {WORKS}", "backend": "me", "model": "me"}
    graph = build_graph(policy=ChatModelPolicy(FakeListChatModel(responses=["from the policy"])), toolbox=toolbox())
    out = await graph.ainvoke({"prompt": "p", "given": injected}, context=cfg)
    assert out["draft"] == "from the policy" and out["policy"].backend == "chat-model"
    scaled = build_scaled_graph(ChatModelPolicy(FakeListChatModel(responses=["from the policy"])), toolbox())
    out = await scaled.ainvoke({"prompt": "p", "given": injected}, context=cfg)
    assert out["draft"] == "from the policy" and out["policy"].backend == "chat-model"


async def test_without_generate_n_each_candidate_gets_its_own_seed():
    seen = []

    class OneAtATime:
        async def generate(self, messages, sampling, on_token=None):
            seen.append(sampling.seed)
            from llmi_graph.state import PolicyOutput

            return PolicyOutput(text=str(sampling.seed), backend="fake", model="fake")

    outs = await generate_n(OneAtATime(), [{"role": "user", "content": "p"}], Sampling(seed=10), 3)
    assert sorted(seen) == [10, 11, 12] and [o.text for o in outs] == ["10", "11", "12"]


async def test_the_embedded_model_samples_k_candidates_in_one_batch(embedded_model_dir):
    policy = EmbeddedPolicy(embedded_model_dir, adapter=None)
    batches = []
    real = policy.generate_batch

    def counting(prompts, sampling, callbacks=()):
        batches.append(len(prompts))
        return real(prompts, sampling, callbacks)

    policy.generate_batch = counting  # type: ignore[method-assign]
    messages = [{"role": "user", "content": "Name a colour."}]
    outs = await generate_n(policy, messages, Sampling(max_tokens=12, temperature=1.0, seed=3), 3)
    assert batches == [3] and len(outs) == 3
    assert len({tuple(o.completion_token_ids) for o in outs}) > 1  # one seed, different samples
    assert all(len(o.logprobs) == len(o.completion_token_ids) for o in outs)


async def test_the_scaled_graph_streams_each_stage(cfg):
    fake = FakeListChatModel(responses=[f"A. {WORKS}", "B."])
    graph = build_scaled_graph(ChatModelPolicy(fake), toolbox(code=FakeBackend()))
    events = []
    async for namespace, mode, chunk in graph.astream(
        {"prompt": "p", "candidates": 2}, context=cfg, stream_mode=["custom", "values"], subgraphs=True
    ):
        if mode == "custom":
            events.append((bool(namespace), chunk["event"], chunk.get("status")))
    assert events[:3] == [
        (False, "candidates", "sampling"),
        (False, "candidates", "validated"),
        (False, "select", None),
    ]
    assert (True, "planner", "done") in events and (True, "tool", "ok") in events  # from the subgraph
    assert set(graph.get_graph().nodes) >= {"candidates", "select", "create"}


async def test_enhancement_rewrites_diffusion_prompts_and_repairs_code_once(cfg):
    diffusion, code = FakeBackend("diffusion"), FakeBackend("code", error="NameError: name 'x' is not defined")
    draft = f"A scene. {tag('diffusion', 's', prompt='a fox')} A chart. {tag('code', 'c', code='plt.plot(x)')}"
    replies = [draft, "A red fox in fresh snow at dawn, soft golden light, wide shot.", WORKS]
    fake = FakeListChatModel(responses=replies)
    graph = build_scaled_graph(ChatModelPolicy(fake), toolbox(diffusion=diffusion, code=code))
    out = await run(graph, cfg, enhance=True)
    (enhancement,) = out.enhancements
    assert enhancement.before == "a fox" and enhancement.after.startswith("A red fox in fresh snow")
    assert diffusion.calls[0][0]["prompt"] == enhancement.after  # generated from the detailed prompt
    assert out.draft == draft  # the chosen draft stays as the policy wrote it
    assert [r.index for r in out.repairs] == [1]  # the code slot went back once, with its reason
    assert "NameError" in out.repairs[0].reason

    fake = FakeListChatModel(responses=[draft])
    diffusion = FakeBackend("diffusion")
    out = await run(build_scaled_graph(ChatModelPolicy(fake), toolbox(diffusion=diffusion, code=code)), cfg)
    assert not out.enhancements and diffusion.calls[0][0]["prompt"] == "a fox" and not out.repairs  # off by default


async def test_polish_rewrites_the_text_but_keeps_every_figure_in_place(cfg):
    chart, photo = tag("code", "a", code="plt.plot([1])"), tag("search", "p", query="q")
    draft = f"Intro. {chart} Middle, see the photo below. {photo} End."
    rewrite = "A clearer intro.\n[[FIGURE 0]]\n(shows: a)\nA better middle.\n[[FIGURE 1]]\nA better end."
    graph = build_scaled_graph(
        ChatModelPolicy(FakeListChatModel(responses=[draft, rewrite])),
        toolbox(code=FakeBackend(), search=FakeBackend(error="no results")),
    )
    out = await run(graph, cfg, polish=True)
    assert out.polish_turn is not None and out.polish_turn.applied
    kinds = [(i.kind, getattr(i, "text", None) or i.status) for i in out.document]
    assert kinds == [
        ("text", "A clearer intro.\n"),
        ("figure", "ok"),
        ("text", "\nA better middle.\n"),
        ("figure", "failed"),
        ("text", "\nA better end."),
    ]
    assert out.polish_turn.reply is not None and out.draft == draft

    moved = "Intro.\n[[FIGURE 1]]\nMiddle.\n[[FIGURE 0]]\nEnd."
    graph = build_scaled_graph(
        ChatModelPolicy(FakeListChatModel(responses=[draft, moved])),
        toolbox(code=FakeBackend(), search=FakeBackend(error="no results")),
    )
    out = await run(graph, cfg, polish=True)
    assert not out.polish_turn.applied and "figures [1, 0]" in out.polish_turn.error
    assert out.document[0].text == "Intro. "  # the original document stays

    # Every figure in place, but the editor's instructions copied into the text (as the 135M policy did on OpenING)
    echo = (
        "Intro.\n[[FIGURE 0]]\nMiddle.\n[[FIGURE 1]]\nEnd.\n\nRewrite the text so it reads well and fits the "
        "figures. You are an editor."
    )
    graph = build_scaled_graph(
        ChatModelPolicy(FakeListChatModel(responses=[draft, echo])),
        toolbox(code=FakeBackend(), search=FakeBackend(error="no results")),
    )
    out = await run(graph, cfg, polish=True)
    assert not out.polish_turn.applied
    assert out.polish_turn.error == "the rewrite repeats the editor's instructions ('rewrite the text so it'...)"
    assert out.document[0].text == "Intro. "


async def test_a_batch_with_candidates_runs_the_scaled_graph_durably(cfg, tmp_path):
    from llmi_graph.batch import BatchItem, BatchSettings, run_batch

    rows = [BatchItem(row_id=f"r{i}", request={"prompt": f"topic {i}", "image_num": 1}) for i in range(2)]
    model = FakeListChatModel(responses=[f"Bad. {NO_COMPILE}", f"Good. {WORKS}"] * 4)
    code = FakeBackend("code")
    scaled = cfg.replace(candidates=2)
    settings = BatchSettings(out=tmp_path / "b", concurrency=1)
    outcome = await run_batch(rows, settings, scaled, policy=ChatModelPolicy(model), toolbox=toolbox(code=code))
    assert (outcome.finished, outcome.ok) == (2, 2)
    records = [json.loads(line) for line in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    assert all(r["images_ok"] == 1 for r in records)
    assert [c[0]["code"] for c in code.calls] == ["plt.plot([1, 2])"] * 2  # the good candidate, each time
    for r in records:
        traj = json.loads((tmp_path / "b" / "samples" / r["sample_id"] / "trajectory.json").read_text())
        assert traj["draft"].startswith("Good.") and traj["policy"]["sampling"]["n"] == 2
        assert traj["selected"] == 1 and len(traj["candidates"]) == 2  # the batch keeps every candidate too


@pytest.mark.slow
async def test_every_stage_end_to_end_with_the_embedded_model(cfg, embedded_model_dir, requires_bwrap):
    """The real embedded SmolLM2 with the shipped adapter, the real local sandbox and editor: every stage runs and
    records what it did (the 135M policy is weak; the checks are on what the run keeps, not on its quality)."""
    from llmi_graph.scaling import build_scaled_graph

    run_cfg = cfg.replace(max_tokens=128, temperature=0.8, seed=0, code_backend="local", edit_backend="local")
    graph = build_scaled_graph(config=run_cfg)
    request = {"prompt": "Plot y = x^2 for x from -3 to 3 and explain its shape", "candidates": 3}
    out = await run(graph, run_cfg, **request, repair_rounds=1, enhance=True, polish=True)
    assert len(out.drafts) == 3 and all(c.output.completion_token_ids for c in out.drafts)
    assert len({c.output.text for c in out.drafts}) > 1  # one batch, three samples
    best = max(c.rules_score for c in out.drafts)
    assert out.selected is not None and out.drafts[out.selected].rules_score == best
    assert out.policy is not None and out.draft == out.drafts[out.selected].output.text
    latest = {r.index: r for r in out.results}
    assert set(latest) == {c.index for c in out.calls}  # every slot has its final result
    for repair in out.repairs:  # each repair turn is the policy's own, with its tokens
        assert repair.reply is None or repair.reply.completion_token_ids
    assert out.polish_turn is not None and (out.polish_turn.applied or out.polish_turn.error)
    figures = [f for f in out.document if getattr(f, "kind", "") == "figure"]
    assert [f.index for f in figures] == [c.index for c in out.calls]  # polish or not, every figure in place


async def test_enhancement_keeps_the_search_result_the_chooser_prefers(cfg, tmp_path):
    """The real local library's top results; a scripted chooser (a fake, standing in for the MLLM judge) scores them."""
    from PIL import Image

    from tools.library import LocalImageLibrary

    folder = tmp_path / "library"
    folder.mkdir()
    for i, caption in enumerate(
        ["A golden retriever puppy on grass", "A black dog running on a beach", "A dog asleep"]
    ):
        Image.new("RGB", (64, 64), (40 * i, 90, 90)).save(folder / f"dog{i}.png")
        (folder / f"dog{i}.txt").write_text(caption)
    library = LocalImageLibrary(folder, tmp_path / "cache", min_score=0.1)
    # Load the embedding model and index the folder before the run: on a loaded machine that can take longer than
    # the test's 10 s tool timeout, and the search would fail before the chooser is asked.
    top = library.search("a dog", 1)[0][0]

    class FakeChooser:
        def __init__(self):
            self.asked: list[tuple[str, int]] = []

        async def scores(self, description, images):
            self.asked.append((description, len(images)))
            return [1.0, 9.0, 3.0][: len(images)]

    chooser = FakeChooser()
    draft = f"Dogs. {tag('search', 'a dog on a beach', query='a dog')}"
    box = toolbox(search=library)
    graph = build_scaled_graph(ChatModelPolicy(FakeListChatModel(responses=[draft])), box, chooser=chooser)
    out = await run(graph, cfg, enhance=True)
    (result,) = out.results
    assert chooser.asked == [("a dog on a beach", 3)]
    assert result.status == "ok" and result.provenance["rank"] == 2 and result.provenance["choice_scores"] == [1, 9, 3]
    plain = await run(
        build_scaled_graph(ChatModelPolicy(FakeListChatModel(responses=[draft])), box, chooser=chooser), cfg
    )
    assert plain.results[0].provenance["library_path"] == top and len(chooser.asked) == 1  # no enhance: rank order


async def test_the_mllm_chooser_shows_the_judge_every_image_in_one_call():
    from judges._endpoint import JudgeEndpoint
    from judges.select import MLLMImageChooser
    from tests.fakes import png

    answer = json.dumps({"picture_1": 2, "picture_2": 8, "explanation": "the second shows a beach"})
    with FakeOpenAIServer([answer]) as judge:
        chooser = MLLMImageChooser(JudgeEndpoint(base_url=judge.url, model="fake-vl"))
        scores = await chooser.scores("a dog on a beach", [png((1, 2, 3)), png((4, 5, 6))])
        (request,) = judge.requests
    assert scores == [2, 8] and chooser.last.prompt_version == "image-chooser/1"
    parts = request["messages"][-1]["content"]
    assert [p["type"] for p in parts].count("image_url") == 2 and "a dog on a beach" in parts[0]["text"]
