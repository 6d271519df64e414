"""Content rewards (rl/content.py) and their place in the reward suite: relevance with the real all-MiniLM-L6-v2,
the prompt's numbers in working chart code, the repetition penalty across prompts, the switches, and format credit
that needs a working tool after the warm-up."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from judges.hybrid import HybridOptions
from judges.rule import format_score
from llmi_graph.state import ImageResult, State
from llmi_graph.tags import parse_tags
from rl import content
from rl.content import (
    RepetitionMemory,
    chart_numbers_score,
    live_code,
    overlap,
    prompt_items,
    relevance_scores,
    shingles,
    worked_example_texts,
)
from rl.rewards import RewardSuite

MARATHON = "Analyse a marathon runner's pace over each 5 km split and point out the trend."
SALES = "Plot the weekly sales of 120, 135, 160 and 210 units in Germany."
LEAVES_CODE = "plt.bar(range(5), [0, 20, 50, 85, 100])"  # a worked example's chart


def tag(source: str, description: str, **params: Any) -> str:
    return f"<imgen>{ ({'source': source, 'description': description, 'params': params})!r}</imgen>"


def make_state(prompt: str, draft: str, ok: tuple[int, ...] = (), image_num: int = 1) -> dict[str, Any]:
    """A finished run: the draft's tags, with the tools of the slots in `ok` successful and the others failed."""
    calls = parse_tags(draft).calls
    results = [
        ImageResult(index=c.index, source=c.source, status="ok" if c.index in ok else "failed", error=None)
        for c in calls
        if c.valid
    ]
    state = State(prompt=prompt, image_num=image_num, draft=draft, calls=calls, results=results)
    return state.model_dump(mode="json")


async def call_like_trl(func: Any, states: list[dict[str, Any]], step: int | None = 0, **extra: Any) -> list[Any]:
    """Call a reward function with the keyword arguments TRL 1.16's `_calculate_rewards` passes."""
    n = len(states)
    kwargs: dict[str, Any] = dict(
        prompts=[s["prompt"] for s in states],
        completions=[s["draft"] for s in states],
        completion_ids=[[1, 2]] * n,
        llmi_state=states,
        rollout_id=extra.pop("rollout_id", [f"r{k}-{id(states)}" for k in range(n)]),
        image_num=[s["image_num"] for s in states],
        tools=extra.pop("tools", [["code"]] * n),
        input_images=[[] for _ in states],
        log_extra=lambda *a, **k: None,
        log_metric=lambda *a, **k: None,
    )
    if step is not None:
        kwargs["trainer_state"] = SimpleNamespace(global_step=step)
    return await func(**kwargs, **extra)


def by_name(suite: RewardSuite) -> dict[str, tuple[Any, float]]:
    funcs, weights = suite.functions()
    return {f.__name__: (f, w) for f, w in zip(funcs, weights, strict=True)}


# --- relevance (the real all-MiniLM-L6-v2) ---------------------------------------------------------------------


async def test_relevance_pays_a_tag_about_the_prompt_more_than_a_copied_one():
    relevant = make_state(
        MARATHON,
        "Pace:\n" + tag("code", "Pace per 5 km split", code="plt.plot([5, 10, 15, 20], [4.9, 5.0, 5.2, 5.5])"),
    )
    copied = make_state(MARATHON, "Pace:\n" + tag("code", "Leaves fallen by week", code=LEAVES_CODE))
    no_tag = make_state(MARATHON, "The runner slows down after 30 km.")
    unwanted = make_state("Give me five tips for a job interview.", tag("search", "A job interview", query="x"), (), -1)
    suite = RewardSuite(relevance_weight=0.5)
    funcs = by_name(suite)
    assert funcs["relevance"][1] == 0.5
    scores = await call_like_trl(funcs["relevance"][0], [relevant, copied, no_tag, unwanted])
    assert scores[0] > 0.45 and scores[1] < 0.3 and scores[0] - scores[1] > 0.3, scores  # measured: 0.59, 0.17
    assert scores[2] is None and scores[3] is None  # no valid tag; no images wanted
    # Pure function, same numbers; a draft's score is the mean over its valid tags (one batched encode).
    both = make_state(MARATHON, relevant["draft"] + "\n" + copied["draft"] + "\n<imgen>{'source': 'code'}</imgen>")
    import tools.library

    encoder = tools.library._encoder
    direct = relevance_scores([relevant, copied, both])
    assert encoder is not None and tools.library._encoder is encoder  # loaded once per process, shared with search
    assert direct[:2] == pytest.approx(scores[:2], abs=1e-5)
    assert direct[2] == pytest.approx((direct[0] + direct[1]) / 2, abs=1e-5)


# --- the prompt's numbers and names in chart code --------------------------------------------------------------


def test_prompt_items_reads_numbers_names_and_labels():
    items = prompt_items(SALES)
    assert items.numbers == ((120.0, False), (135.0, False), (160.0, False), (210.0, False))
    assert items.names == ("Germany",)  # "Plot" starts the sentence
    items = prompt_items("Compare how compound interest grows at 3%, 5% and 7% over 30 years, from 1,200.50 dollars.")
    assert items.numbers == ((3.0, True), (5.0, True), (7.0, True), (30.0, False), (1200.5, False))
    items = prompt_items("Explain how CO2 in the Great Barrier Reef changed since 1960: label it 'Reef CO2 data'.")
    assert items.numbers == ((1960.0, False),)  # CO2 holds no number
    assert items.names == ("Great Barrier Reef", "Reef CO2 data")  # CO2 is inside the label, counted once
    assert prompt_items("Analyse y = x^3 - 3x between -2 and 2.").numbers == ((3.0, False), (2.0, False))
    assert prompt_items("Write a haiku about rain.").total == 0


def test_live_code_drops_comments_dead_data_and_prints_but_keeps_drawing_calls():
    assert live_code("# 120, 135\n'''160'''\nplt.plot([210])").numbers == {210.0}
    assert live_code("data = [120, 135]\ncopy = data\nprint(data)\nplt.plot([1])").numbers == {1.0}
    assert live_code("data = [120, 135]\nplt.plot(data, label='sales 2024')").numbers == {120.0, 135.0, 2024.0}
    assert live_code("bars = plt.bar(range(2), [120, 135])").numbers == {2.0, 120.0, 135.0}  # bars unused: drawn
    assert live_code("for r in [0.03, 0.05]:\n    plt.plot(x, 100 * (1 + r) ** x)").numbers == {0.03, 0.05, 100.0, 1.0}
    assert live_code("plt.plot(") is None


def test_chart_numbers_pays_plotted_numbers_and_not_comment_or_dead_ones():
    plotted = "plt.bar(['W1', 'W2', 'W3', 'W4'], [120, 135, 160, 210])\nplt.title('Sales in Germany')"
    full = make_state(SALES, tag("code", "Weekly sales", code=plotted), ok=(0,))
    assert chart_numbers_score(full, ["code"]) == 1.0
    partial = make_state(SALES, tag("code", "Weekly sales", code="plt.plot([120, 135, 7])"), ok=(0,))
    assert chart_numbers_score(partial, ["code"]) == pytest.approx(2 / 5)  # 2 of 4 numbers, no Germany
    hacks = {
        "comment": f"# 120, 135, 160, 210 Germany\n{LEAVES_CODE}",
        "unused variable": f"sales = [120, 135, 160, 210]\nname = 'Germany'\n{LEAVES_CODE}",
        "docstring": f"'''120, 135, 160, 210 in Germany'''\n{LEAVES_CODE}",
        "print": f"print(120, 135, 160, 210, 'Germany')\n{LEAVES_CODE}",
    }
    for what, code in hacks.items():
        assert chart_numbers_score(make_state(SALES, tag("code", "Sales", code=code), ok=(0,)), ["code"]) == 0.0, what
    failed = make_state(SALES, tag("code", "Weekly sales", code=plotted), ok=())  # the tool failed: no chart
    assert chart_numbers_score(failed, ["code"]) == 0.0
    assert chart_numbers_score(make_state(SALES, "No chart."), ["code"]) == 0.0
    percent = "Compare how savings grow at 3% and 5% a year."
    code = "for r in [0.03, 0.05]:\n    plt.plot(range(10), [(1 + r) ** t for t in range(10)])"
    assert chart_numbers_score(make_state(percent, tag("code", "Growth", code=code), ok=(0,)), ["code"]) == 1.0
    # Not scored: no numbers in the prompt, no images wanted, or a row that needs tools other than code.
    assert chart_numbers_score(make_state(MARATHON.replace("5 km", "mile"), full["draft"], ok=(0,)), ["code"]) is None
    assert chart_numbers_score(make_state(SALES, full["draft"], ok=(0,), image_num=-1), ["code"]) is None
    assert chart_numbers_score(full, ["edit"]) is None
    assert chart_numbers_score(full, []) == 1.0  # tools unknown: scored


# --- repetition across prompts ----------------------------------------------------------------------------------


def test_repetition_is_penalised_only_across_different_prompts():
    memory = RepetitionMemory(capacity=16, threshold=0.5)
    code_a = "plt.plot([5, 10, 15, 20], [4.9, 5.0, 5.2, 5.5])\nplt.title('Pace per split')"
    assert memory.penalties([(MARATHON, "a1", ["Pace per split", code_a])]) == [0.0]
    assert memory.penalties([(MARATHON, "a2", ["Pace per split", code_a])]) == [0.0]  # same prompt: fine
    # Whitespace and case do not hide a copy; another prompt's own chart is no repetition.
    copy = "plt.plot([5, 10, 15, 20],   [4.9, 5.0, 5.2, 5.5])\nPLT.title('Pace per split')"
    own = "plt.bar(['W1', 'W2', 'W3', 'W4'], [120, 135, 160, 210])"
    assert memory.penalties([(SALES, "b1", [copy]), (SALES, "b2", ["Weekly sales", own])]) == [1.0, 0.0]
    # Partial overlap: linear from the threshold (0) to an exact copy (1).
    near = code_a + "\nplt.xlabel('km')\nplt.ylabel('min per km')"
    similarity = overlap(shingles(near), shingles(code_a))
    assert 0.5 < similarity < 1.0
    assert memory.penalties([(SALES, "b3", [near])]) == [pytest.approx((similarity - 0.5) / 0.5)]
    assert len(memory) == 5


def test_repetition_within_a_batch_does_not_depend_on_order_and_remembers_each_rollout_once():
    drafts = [
        ("Prompt one.", "x1", ["A line chart"]),
        ("Prompt two.", "x2", ["A line chart"]),
        ("Prompt two.", "x3", []),
    ]
    forward = RepetitionMemory().penalties(drafts)
    backward = RepetitionMemory().penalties(drafts[::-1])[::-1]
    assert forward == backward == [1.0, 1.0, 0.0]
    memory = RepetitionMemory()
    memory.penalties(drafts)
    memory.penalties(drafts)  # the same rollouts again (a re-score): not remembered twice
    assert len(memory) == 3


def test_copying_a_worked_example_is_repetition_from_the_first_step():
    seed = worked_example_texts()
    assert any(LEAVES_CODE in texts for _, texts in seed)
    memory = RepetitionMemory(seed=seed)
    fresh = "plt.plot([5, 10, 15, 20], [4.9, 5.0, 5.2, 5.5])"
    assert memory.penalties([(MARATHON, "m1", ["Leaves fallen by week", LEAVES_CODE]), (MARATHON, "m2", [fresh])]) == [
        1.0,
        0.0,
    ]
    assert len(memory) == 2  # the seed is permanent and not counted


def test_repetition_memory_is_bounded_and_thread_safe():
    memory = RepetitionMemory(capacity=3, threshold=0.0)
    for k in range(10):
        memory.penalties([(f"Prompt {k}.", f"id{k}", [f"alpha beta gamma delta {k}"])])
    assert len(memory) == 3
    # The oldest drafts are forgotten: a copy of draft 0 no longer pays a penalty, one of draft 9 does.
    assert memory.penalties([("Another prompt.", "new0", ["alpha beta gamma delta 0"])]) == [pytest.approx(0.5)]
    assert memory.penalties([("Another prompt.", "new9", ["alpha beta gamma delta 9"])]) == [1.0]

    shared = RepetitionMemory(capacity=50)
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for k in range(40):
                shared.penalties([(f"Prompt {w}-{k}.", f"{w}-{k}", [f"chart {w} {k} {'x ' * k}"])])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(shared) == 50
    with pytest.raises(ValueError, match="at least one draft"):
        RepetitionMemory(capacity=0)


# --- the suite: switches, TRL's calling convention, format after the warm-up ----------------------------------


async def test_content_rewards_are_off_by_default_and_a_disabled_one_is_never_computed(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(
        "rl.rewards.relevance_scores", lambda states, **kw: calls.append("relevance") or [0.0] * len(states)
    )
    monkeypatch.setattr("rl.rewards.chart_numbers_score", lambda s, t: calls.append("chart_numbers") or 0.0)
    off = RewardSuite()
    assert list(by_name(off)) == ["hybrid", "image_num", "llm_judge", "mllm_judge", "format"]
    assert off.repetition is None
    states = [make_state(SALES, tag("code", "Sales", code=LEAVES_CODE), ok=(0,))]
    for func, _ in by_name(off).values():
        await call_like_trl(func, states)
    assert calls == []
    logged = RewardSuite(relevance_weight=0.0, chart_numbers_weight=0.0, repetition_weight=0.0)
    funcs = by_name(logged)
    assert {n: w for n, (_, w) in funcs.items() if n in ("relevance", "chart_numbers", "repetition")} == {
        "relevance": 0.0,
        "chart_numbers": 0.0,
        "repetition": 0.0,
    }
    for func, _ in funcs.values():
        await call_like_trl(func, states)
    assert calls == ["relevance", "chart_numbers"]
    with pytest.raises(ValueError, match="positive weight"):
        RewardSuite(repetition_weight=-1.0)


async def test_trl_facing_functions_score_a_batch_and_skip_unscored_samples():
    suite = RewardSuite(chart_numbers_weight=1.0, repetition_weight=0.5)
    funcs = by_name(suite)
    plotted = tag("code", "Weekly sales in Germany", code="plt.bar(range(4), [120, 135, 160, 210])")
    batch = [
        make_state(SALES, plotted, ok=(0,)),
        make_state(SALES, tag("code", "Leaves fallen by week", code=LEAVES_CODE), ok=(0,)),
        make_state(MARATHON, "Text only."),
    ]
    numbers = await call_like_trl(funcs["chart_numbers"][0], batch, tools=[["code"], ["code"], ["search"]])
    assert numbers == [pytest.approx(4 / 5), 0.0, None]
    repetition = await call_like_trl(funcs["repetition"][0], batch, rollout_id=["s1", "s2", "s3"])
    assert repetition == [0.0, -1.0, 0.0]  # minus the penalty: the copied worked example
    # A sample the missing-score policy leaves unscored gets None from every function, content ones included.
    unscored = RewardSuite(HybridOptions(missing="unscored"), chart_numbers_weight=1.0, repetition_weight=1.0)
    for name in ("hybrid", "chart_numbers", "repetition"):
        assert await call_like_trl(by_name(unscored)[name][0], batch[:1]) == [None]


async def test_format_pays_a_failed_tag_only_during_the_warm_up():
    failed = make_state(SALES, tag("code", "Sales", code="plt.line([120])"), ok=())
    worked = make_state(SALES, tag("code", "Sales", code="plt.plot([120])"), ok=(0,))
    assert format_score(failed["draft"], 1) == format_score(failed["draft"], 1, succeeded=None) == 1.0
    assert format_score(failed["draft"], 1, succeeded=set()) == 0.0
    fmt = by_name(RewardSuite(format_needs_success_after_steps=2))["format"][0]
    assert await call_like_trl(fmt, [failed, worked], step=1) == [1.0, 1.0]
    assert await call_like_trl(fmt, [failed, worked], step=2) == [0.0, 1.0]
    # Without TRL's trainer_state the step is the number of batches the function has scored.
    fmt = by_name(RewardSuite(format_needs_success_after_steps=1))["format"][0]
    assert [await call_like_trl(fmt, [failed], step=None) for _ in range(2)] == [[1.0], [0.0]]
    never = by_name(RewardSuite())["format"][0]
    assert await call_like_trl(never, [failed], step=10_000) == [1.0]


async def test_a_warm_up_can_pay_failed_tags_less_than_working_ones():
    failed = make_state(SALES, tag("code", "Sales", code="plt.line([120])"), ok=())
    worked = make_state(SALES, tag("code", "Sales", code="plt.plot([120])"), ok=(0,))
    assert format_score(failed["draft"], 1, succeeded=set(), failed_credit=0.5) == 0.5
    fmt = by_name(RewardSuite(format_needs_success_after_steps=2, format_warmup_failed_credit=0.25))["format"][0]
    assert await call_like_trl(fmt, [failed, worked], step=1) == [0.25, 1.0]
    assert await call_like_trl(fmt, [failed, worked], step=2) == [0.0, 1.0]
    with pytest.raises(ValueError, match="format_warmup_failed_credit"):
        RewardSuite(format_needs_success_after_steps=2, format_warmup_failed_credit=1.5)


async def test_relevance_pays_a_failed_tag_only_during_the_warm_up_as_format_does():
    """The demo's GRPO (seed 2, step 11) learned from a group whose edits all failed: relevance alone ranked them,
    and the draft that pasted the prompt into its failing tag got the largest advantage (1.42). Past the warm-up a
    failing tag earns no relevance, so such a group is all zeros and teaches nothing."""
    pasted = make_state(MARATHON, tag("code", MARATHON, code="plt.line([4.9, 5.0])"), ok=())
    vague = make_state(MARATHON, tag("code", "A figure", code="plt.line([1])"), ok=())
    worked = make_state(MARATHON, tag("code", "Pace per 5 km split", code="plt.plot([4.9, 5.0, 5.2])"), ok=(0,))
    both = make_state(MARATHON, pasted["draft"] + worked["draft"], ok=(1,))
    full = relevance_scores([pasted, vague, worked, both])
    assert full[0] > full[1] > 0.0 and full[0] > 0.5, full  # the pasted prompt wins while failures earn relevance
    assert full[3] == pytest.approx((full[0] + full[2]) / 2, abs=1e-5)
    relevance = by_name(RewardSuite(relevance_weight=0.3, format_needs_success_after_steps=2,
                                    format_warmup_failed_credit=0.5))["relevance"][0]  # fmt: skip
    warm = await call_like_trl(relevance, [pasted, vague, worked, both], step=1)
    assert warm == pytest.approx([full[0] / 2, full[1] / 2, full[2], (full[0] / 2 + full[2]) / 2], abs=1e-5)
    past = await call_like_trl(relevance, [pasted, vague, worked, both], step=2)
    assert past == pytest.approx([0.0, 0.0, full[2], full[2] / 2], abs=1e-5)
    # Without the switch every valid tag earns its relevance, failed or not (the previous behaviour, kept for
    # runs that pay failed tags' format too).
    plain = by_name(RewardSuite(relevance_weight=0.3))["relevance"][0]
    assert await call_like_trl(plain, [pasted, vague], step=50) == pytest.approx(full[:2], abs=1e-5)
    with pytest.raises(ValueError, match="failed_credit"):
        relevance_scores([pasted], failed_credit=2.0)


def test_the_module_reads_states_as_the_graph_writes_them():
    state = make_state(SALES, tag("edit", "Brighter", img_index=0, prompt="make it brighter") + tag("code", "x"))
    assert content.tag_text(state["calls"][0]) == "Brighter\nmake it brighter"
    assert content.written_texts(state["calls"]) == ["Brighter", "make it brighter", "x"]
    assert [c["index"] for c in content.valid_calls(state)] == []  # the edit points at itself; the code has no code
