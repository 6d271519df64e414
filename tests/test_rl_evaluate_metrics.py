"""The held-out content figures of `rl.evaluate`: made_image, distinct_chart_code, numbers_in_chart and the demo's
parabola check, on states built by hand from drafts (parsed with the real tag parser), no model and no tools."""

from __future__ import annotations

import pytest

from llmi_graph.state import ImageResult, PolicyOutput, State
from llmi_graph.tags import parse_tags
from rl.data import Row
from rl.evaluate import chart_codes, content_metrics, metrics, plots_parabola

SHOP = "Our shop sold 120, 225, 200 and 95 books last year; chart the sales."
RAINBOW = "Explain how rainbows form, with a diagram."
PARABOLA = "x = np.linspace(-3, 3)\nplt.plot(x, x**2)"


def tag(source: str, description: str = "d", **params: object) -> str:
    return f"<imgen>{{'source': '{source}', 'description': '{description}', 'params': {params!r}}}</imgen>"


def code(text: str) -> str:
    return tag("code", code=text)


def drafted(prompt: str, draft: str, *, failed: tuple[int, ...] = (), image_num: int = 0) -> State:
    """A finished state as the graph leaves it: every valid tag ran, those in `failed` failed (no image bytes: the
    content figures read only the statuses)."""
    parsed = parse_tags(draft)
    results = [
        ImageResult(
            index=c.index,
            source=c.source,
            status="failed" if c.index in failed else "ok",
            error="the backend failed" if c.index in failed else None,
        )
        for c in parsed.calls
        if c.valid
    ]
    policy = PolicyOutput(text=draft, backend="test", model="m", completion_token_ids=[1, 2, 3, 4])
    return State(
        prompt=prompt,
        image_num=image_num,
        draft=draft,
        segments=parsed.segments,
        calls=parsed.calls,
        results=results,
        policy=policy,
    )


def row(prompt: str, image_num: int = 1, tools: tuple[str, ...] = ("code",)) -> Row:
    return Row(prompt=prompt, image_num=image_num, tools=tools, images=())


def dump(state: State) -> dict:
    return state.model_dump(mode="json")


# --- chart_codes and plots_parabola -----------------------------------------------------------------------------


def test_chart_codes_are_the_code_of_working_code_tags_only():
    draft = (
        f"A. {code('plt.bar([1], [2])')} B. {tag('search', query='plt.plot([9])')} C. {code('plt.plot([3])')} "
        f"D. <imgen>{{'source': 'code', 'params': {{}}}}</imgen>"
    )
    state = drafted("p", draft, failed=(2,))
    assert [c.valid for c in state.calls] == [True, True, True, False]
    assert chart_codes(dump(state)) == ["plt.bar([1], [2])"]  # not the search, not the failed chart, not the invalid
    assert chart_codes(dump(drafted("p", draft))) == ["plt.bar([1], [2])", "plt.plot([3])"]
    assert chart_codes(dump(drafted("p", "No tags."))) == []


@pytest.mark.parametrize(
    ("chart", "expected"),
    [
        (PARABOLA, True),
        ("x = np.linspace(-3, 3)\nplt.plot(x, x * x)", True),
        ("x = np.linspace(-3, 3)\nplt.plot(x, np.square(x))", True),
        ("t = np.linspace(-3, 3)\ny = t**2\nplt.plot(t, y)", True),  # any name, through a variable
        ("x = np.linspace(-3, 3)\nsns.lineplot(x=x, y=(x)**2)", True),
        ("x = np.linspace(-3, 3)\nplt.plot(x, x * x * x)", False),  # a cubic
        ("x = np.linspace(-3, 3)\n# not x**2\nplt.plot(x, x**3)", False),  # a comment is no chart
        ("x = np.linspace(-3, 3)\nprint(x**2)\nplt.plot(x, x**3)", False),  # squared, but not plotted
        ("x = np.linspace(1, 3)\nplt.plot(x, x**2.5)", False),
        ("x = np.linspace(-3, 3)\nplt.plot(x, np.power(x, 2))", True),
        ("x = np.linspace(-3, 3)\nplt.plot(x, x**3)", False),
        ("x = np.linspace(-3, 3)\nplt.plot(x, 2 * x + 1)", False),
        ("plt.bar(range(4), [120, 225, 200, 95])", False),
    ],
)
def test_plots_parabola_reads_working_chart_code(chart, expected):
    assert plots_parabola(dump(drafted("Plot y = x^2.", f"The parabola: {code(chart)}"))) is expected


def test_plots_parabola_is_false_when_the_parabola_tag_failed():
    draft = f"Cubic: {code('plt.plot(x, x**3)')} Parabola: {code(PARABOLA)}"
    assert plots_parabola(dump(drafted("p", draft))) is True
    assert plots_parabola(dump(drafted("p", draft, failed=(1,)))) is False  # the x**2 chart made no image
    assert plots_parabola(dump(drafted("p", draft, failed=(0,)))) is True
    search = tag("search", query="x**2 parabola")
    assert plots_parabola(dump(drafted("p", f"Only a search: {search}"))) is False  # not a chart


# --- made_image ------------------------------------------------------------------------------------------------


def test_made_image_counts_rows_that_want_images_and_working_tools_only():
    rows = [row("a"), row("b"), row("c"), row("d", image_num=-1), row("e", image_num=99)]
    states = [
        drafted("a", f"A. {code('plt.plot([1])')}"),  # made
        drafted("b", f"B. {code('plt.plot([2])')}", failed=(0,)),  # the tool failed: not made
        drafted("c", "C has no tags."),  # not made
        drafted("d", f"D. {code('plt.plot([4])')}", image_num=-1),  # wants none: not counted, made or not
        drafted("e", f"E. {tag('search', query='q')} {code('plt.plot([5])')}", failed=(0,)),  # one of two: made
    ]
    got = content_metrics(rows, states)
    assert (got["made_image"], got["made_image_rows"]) == (0.5, 4)
    got = content_metrics(rows[3:4], states[3:4])
    assert (got["made_image"], got["made_image_rows"]) == (None, 0)


# --- distinct_chart_code ----------------------------------------------------------------------------------------


def test_a_chart_copied_under_another_prompt_is_not_distinct_whitespace_aside():
    copied = "fig, ax = plt.subplots()\nax.bar(['a', 'b'], [1, 2])"
    spaced = "fig, ax = plt.subplots()\n\n  ax.bar(['a', 'b'],   [1, 2])\n"  # the same code, other whitespace
    rows = [row("first"), row("second"), row("third")]
    states = [
        drafted("first", f"One. {code(copied)}"),
        drafted("second", f"Two. {code(spaced)}"),
        drafted("third", f"Three. {code('plt.pie([3, 4])')}"),
    ]
    got = content_metrics(rows, states)
    assert (got["distinct_chart_code"], got["charted_drafts"]) == (pytest.approx(1 / 3), 3)


def test_spacing_alone_does_not_make_a_copied_chart_distinct():
    states = [drafted("first", code("plt.bar([1,2],[3,4])")), drafted("second", code("plt.bar([1, 2], [3, 4])"))]
    got = content_metrics([row("first"), row("second")], states)
    assert (got["distinct_chart_code"], got["charted_drafts"]) == (0.0, 2)


def test_the_same_prompt_twice_with_the_same_chart_stays_distinct():
    rows = [row("first"), row("first"), row("third")]
    states = [
        drafted("first", f"One. {code('plt.bar([1], [2])')}"),
        drafted("first", f"One again. {code('plt.bar([1], [2])')}"),
        drafted("third", f"Three. {code('plt.pie([3, 4])')}"),
    ]
    got = content_metrics(rows, states)
    assert (got["distinct_chart_code"], got["charted_drafts"]) == (1.0, 3)


def test_only_drafts_with_a_working_chart_count_for_distinct_chart_code():
    same = "plt.bar([1], [2])"
    rows = [row("first"), row("second"), row("third"), row("fourth")]
    states = [
        drafted("first", f"One. {code(same)}"),
        drafted("second", f"Two. {code(same)}", failed=(0,)),  # its copy made no image: neither is charged for it
        drafted("third", f"Three. {tag('search', query='q')}"),  # no chart at all
        drafted("fourth", "Four, no tags."),
    ]
    got = content_metrics(rows, states)
    assert (got["distinct_chart_code"], got["charted_drafts"]) == (1.0, 1)
    got = content_metrics(rows[2:], states[2:])
    assert (got["distinct_chart_code"], got["charted_drafts"]) == (None, 0)


def test_one_shared_chart_among_several_makes_the_draft_not_distinct():
    rows = [row("first"), row("second")]
    states = [
        drafted("first", f"One. {code('plt.plot([1, 2])')} {code('plt.pie([7, 8])')}"),
        drafted("second", f"Two. {code('plt.pie([7, 8])')}"),
    ]
    got = content_metrics(rows, states)
    assert (got["distinct_chart_code"], got["charted_drafts"]) == (0.0, 2)


# --- numbers_in_chart -------------------------------------------------------------------------------------------


def test_numbers_in_chart_needs_half_the_prompts_numbers_in_working_code():
    prompts = [SHOP, SHOP.replace("books", "pens"), SHOP.replace("books", "cups"), SHOP.replace("books", "hats")]
    rows = [row(p) for p in prompts]
    states = [
        drafted(prompts[0], f"Sales. {code('plt.bar(range(4), [120, 225, 200, 95])')}"),  # 4 of 4
        drafted(prompts[1], f"Sales. {code('plt.bar(range(4), [1, 2, 3, 4])')}"),  # 0 of 4
        drafted(prompts[2], f"Sales. {code('plt.bar(range(2), [120, 225])')}"),  # 2 of 4: half counts
        drafted(prompts[3], f"Sales. {code('plt.bar(range(1), [120])')}"),  # 1 of 4
    ]
    got = content_metrics(rows, states)
    assert (got["numbers_in_chart"], got["number_prompts"]) == (0.5, 4)


def test_a_failed_chart_does_not_use_the_numbers():
    draft = f"Sales. {code('plt.bar(range(4), [120, 225, 200, 95])')}"
    got = content_metrics([row(SHOP)], [drafted(SHOP, draft, failed=(0,))])
    assert (got["numbers_in_chart"], got["number_prompts"]) == (0.0, 1)
    got = content_metrics([row(SHOP)], [drafted(SHOP, draft)])
    assert (got["numbers_in_chart"], got["number_prompts"]) == (1.0, 1)


def test_prompts_without_numbers_or_without_a_chart_are_not_counted():
    chart = f"Sales. {code('plt.bar(range(4), [120, 225, 200, 95])')}"
    rows = [row(RAINBOW), row(SHOP, image_num=-1), row(SHOP.replace("books", "pens"), tools=("search",))]
    states = [
        drafted(RAINBOW, f"Light bends. {code('plt.plot([1, 2])')}"),
        drafted(SHOP, chart, image_num=-1),
        drafted(rows[2].prompt, chart),
    ]
    got = content_metrics(rows, states)
    assert (got["numbers_in_chart"], got["number_prompts"]) == (None, 0)
    got = content_metrics([*rows, row(SHOP)], [*states, drafted(SHOP, chart)])
    assert (got["numbers_in_chart"], got["number_prompts"]) == (1.0, 1)


# --- metrics carries them ---------------------------------------------------------------------------------------


def test_metrics_reports_the_content_figures_with_their_counts():
    rows = [row(SHOP), row(RAINBOW), row("No pictures please.", image_num=-1, tools=())]
    states = [
        drafted(SHOP, f"Sales. {code('plt.bar(range(4), [120, 225, 200, 95])')}"),
        drafted(RAINBOW, f"Light. {code('plt.bar(range(4), [120, 225, 200, 95])')}", failed=(0,)),
        drafted("No pictures please.", "Just words.", image_num=-1),
    ]
    got = metrics(rows, states)
    assert got["rows"] == 3
    content = ("made_image", "made_image_rows", "distinct_chart_code", "charted_drafts", "numbers_in_chart")
    assert {k: got[k] for k in (*content, "number_prompts")} == {
        "made_image": 0.5,
        "made_image_rows": 2,
        "distinct_chart_code": 1.0,  # the rainbow's copy made no image
        "charted_drafts": 1,
        "numbers_in_chart": 1.0,
        "number_prompts": 1,
    }
    assert (got["tool_success"], got["mean_completion_tokens"]) == (0.5, 4)
