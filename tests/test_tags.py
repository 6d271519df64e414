"""The tag protocol: what real models write must parse; what is wrong must say why."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmi_graph import ImageSlot, TextSegment, parse_tags

# The paper's own system-prompt example: a single-quoted code string with unescaped inner quotes.
PAPER_CODE_TAG = (
    "<imgen>{'source': 'code', 'description': 'Sine wave with zero line', 'params': {'code': "
    "'import numpy as np\\nx = np.linspace(0, 2*np.pi, 100)\\nplt.plot(x, np.sin(x))\\n"
    "plt.axhline(y=0, color='k', linestyle='--')\\nplt.title('Sine')'}}</imgen>"
)


def only_call(text: str, num_input_images: int = 0):
    draft = parse_tags(text, num_input_images)
    assert len(draft.calls) == 1
    return draft.calls[0]


def test_python_dict_literal():
    call = only_call(
        "<imgen>{'source': 'search', 'description': 'Eiffel Tower', 'params': {'query': 'Eiffel'}}</imgen>"
    )
    assert call.error is None
    assert (call.source, call.description, call.params) == ("search", "Eiffel Tower", {"query": "Eiffel"})


def test_json_with_whitespace_inside_the_tag():
    call = only_call(
        '<imgen>\n  {"source": "diffusion", "description": "a cat", "params": {"prompt": "a cat"}}  \n</imgen>'
    )
    assert call.error is None and call.params == {"prompt": "a cat"}


def test_paper_example_with_unescaped_inner_quotes():
    call = only_call(PAPER_CODE_TAG)
    assert call.error is None, call.error
    code = call.params["code"]
    assert "plt.axhline(y=0, color='k', linestyle='--')" in code
    assert code.splitlines()[0] == "import numpy as np"  # the escaped \n became real newlines
    assert code.endswith("plt.title('Sine')")


def test_unescaped_quotes_with_dict_inside_code_picks_the_valid_reading():
    text = (
        "<imgen>{'source': 'code', 'description': 'bars', 'params': {'code': "
        "'d = {'a': 1, 'b': 2}\nplt.bar(list(d), list(d.values()))'}}</imgen>"
    )
    call = only_call(text)
    assert call.error is None, call.error
    assert call.params["code"] == "d = {'a': 1, 'b': 2}\nplt.bar(list(d), list(d.values()))"


def test_raw_newlines_inside_a_code_string():
    text = "<imgen>{'source': 'code', 'description': 'line', 'params': {'code': 'x = [1, 2]\nplt.plot(x)'}}</imgen>"
    assert only_call(text).params["code"] == "x = [1, 2]\nplt.plot(x)"


def test_triple_quoted_code():
    text = (
        "<imgen>{'source': 'code', 'description': 'line', 'params': {'code': '''x = [1, 2]\n"
        "plt.title('it''s')\nplt.plot(x)'''}}</imgen>"
    )
    call = only_call(text)
    assert call.error is None, call.error
    assert "plt.plot(x)" in call.params["code"]


def test_non_ascii_reaches_the_params_intact():
    text = (
        "<imgen>{'source': 'code', 'description': '销售额图表', 'params': {'code': "
        "'plt.bar([1, 2], [3, 4])\\nplt.title('2023年销售额')'}}</imgen>"
    )
    call = only_call(text)
    assert call.error is None
    assert call.description == "销售额图表"
    assert "plt.title('2023年销售额')" in call.params["code"]


def test_json_escaped_quotes_and_unicode_escapes():
    payload = {
        "source": "code",
        "description": "t",
        "params": {"code": 'plt.title("caf\u00e9")\nplt.plot([1])'},
    }
    call = only_call(f"<imgen>{json.dumps(payload)}</imgen>")  # json.dumps writes \u00e9 and \"
    assert call.error is None and call.params == payload["params"]


@pytest.mark.parametrize("fence", ["```", "```json", "```python", "~~~"])
def test_tag_wrapped_in_a_code_fence_is_an_image_slot_and_the_fence_is_gone(fence):
    closing = "~~~" if fence.startswith("~") else "```"
    text = (
        f"Before.\n{fence}\n<imgen>{{'source': 'search', 'description': 'x', 'params': {{'query': 'x'}}}}</imgen>\n"
        f"{closing}\nAfter."
    )
    draft = parse_tags(text)
    assert draft.calls[0].error is None
    assert [type(s) for s in draft.segments] == [TextSegment, ImageSlot, TextSegment]
    assert "`" not in "".join(s.text for s in draft.segments if isinstance(s, TextSegment))
    assert "~~~" not in "".join(s.text for s in draft.segments if isinstance(s, TextSegment))


def test_fence_inside_the_tag_and_inline_backticks():
    inner = "<imgen>\n```python\n{'source': 'search', 'description': 'x', 'params': {'query': 'x'}}\n```\n</imgen>"
    assert only_call(inner).error is None
    draft = parse_tags("See `<imgen>{'source': 'search', 'description': 'x', 'params': {'query': 'x'}}</imgen>` here")
    assert [s.text for s in draft.segments if isinstance(s, TextSegment)] == ["See ", " here"]


def test_segments_keep_order_and_text_between_tags():
    tag = "<imgen>{'source': 'search', 'description': 'd', 'params': {'query': 'q'}}</imgen>"
    draft = parse_tags(f"A{tag}B{tag}{tag}C")
    kinds = [(s.kind, s.text if isinstance(s, TextSegment) else s.index) for s in draft.segments]
    assert kinds == [("text", "A"), ("image", 0), ("text", "B"), ("image", 1), ("image", 2), ("text", "C")]
    assert [c.index for c in draft.calls] == [0, 1, 2]


def test_literal_image_marker_in_model_text_stays_text():
    draft = parse_tags(
        "Write <image> here, and <imgen>{'source': 'search', 'description': 'd', 'params': {'query': 'q'}}</imgen>"
    )
    assert draft.segments[0] == TextSegment(text="Write <image> here, and ")
    assert len(draft.calls) == 1


def test_indices_count_input_images_first():
    tag = "<imgen>{'source': 'search', 'description': 'd', 'params': {'query': 'q'}}</imgen>"
    draft = parse_tags(tag + tag, num_input_images=2)
    assert [c.index for c in draft.calls] == [2, 3]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{'source': 'dalle', 'description': 'd', 'params': {'prompt': 'p'}}", "unknown source 'dalle'"),
        ("{'source': 'search', 'description': 'd', 'params': {}}", "missing 'query'"),
        (
            "{'source': 'search', 'description': 'd', 'params': {'query': 'q', 'num': 3}}",
            "unexpected key(s) 'num'",
        ),
        (
            "{'source': 'search', 'description': 'd', 'params': {'query': 42}}",
            "params.query must be a string",
        ),
        ("{'source': 'search', 'description': 'd', 'params': {'query': '  '}}", "params.query is empty"),
        ("{'source': 'search', 'params': {'query': 'q'}}", "missing key(s) 'description'"),
        (
            "{'source': 'search', 'description': 'd', 'params': {'query': 'q'}, 'x': 1}",
            "unexpected key(s) 'x'",
        ),
        ("{'source': 'search', 'description': 'd', 'params': 'q'}", "'params' must be a dict"),
        (
            "{'source': 'edit', 'description': 'd', 'params': {'img_index': '0', 'prompt': 'p'}}",
            "must be an integer",
        ),
        (
            "{'source': 'edit', 'description': 'd', 'params': {'img_index': True, 'prompt': 'p'}}",
            "must be an integer",
        ),
        ("['search', 'x']", "not a dict"),
        ("", "empty tag"),
        ("{'source': 'search', 'description': 'd', 'params': {'query': 'q'}", "not a valid dict literal"),
    ],
)
def test_invalid_tags_say_why(body, reason):
    call = only_call(f"<imgen>{body}</imgen>")
    assert call.error is not None and reason in call.error, call.error


def test_edit_index_out_of_range_and_forward():
    edit = "<imgen>{{'source': 'edit', 'description': 'd', 'params': {{'img_index': {}, 'prompt': 'gray'}}}}</imgen>"
    search = "<imgen>{'source': 'search', 'description': 'd', 'params': {'query': 'q'}}</imgen>"
    draft = parse_tags(edit.format(5) + search, num_input_images=1)
    assert "out of range" in draft.calls[0].error
    draft = parse_tags(edit.format(2) + search, num_input_images=1)
    assert "later tag" in draft.calls[0].error
    draft = parse_tags(edit.format(1), num_input_images=1)
    assert "points at itself" in draft.calls[0].error
    draft = parse_tags(edit.format(-1), num_input_images=1)
    assert "out of range" in draft.calls[0].error
    # Valid: an input image, and an earlier tag.
    assert parse_tags(edit.format(0), num_input_images=1).calls[0].error is None
    draft = parse_tags(search + edit.format(1), num_input_images=1)
    assert draft.calls[1].error is None and draft.calls[1].depends_on == 1


def test_failed_tags_still_count_for_edit_indices():
    bad = "<imgen>{'source': 'nope', 'description': 'd', 'params': {}}</imgen>"
    edit = "<imgen>{'source': 'edit', 'description': 'd', 'params': {'img_index': 0, 'prompt': 'gray'}}</imgen>"
    draft = parse_tags(bad + edit)
    assert draft.calls[0].error is not None
    assert draft.calls[1].error is None and draft.calls[1].depends_on == 0
    assert draft.validity == 0.5


def test_unclosed_tag_is_invalid_and_text_after_it_survives():
    text = "Intro <imgen>{'source': 'search', 'description': 'd', 'params': {'query': 'q'}} and the rest."
    draft = parse_tags(text)
    assert "missing closing </imgen>" in draft.calls[0].error
    assert draft.segments[-1] == TextSegment(text=" and the rest.")


def test_unclosed_tag_followed_by_a_good_one():
    good = "<imgen>{'source': 'search', 'description': 'd', 'params': {'query': 'q'}}</imgen>"
    draft = parse_tags("<imgen>{'source': 'search'\nmiddle " + good)
    assert len(draft.calls) == 2
    assert draft.calls[0].error is not None and draft.calls[1].error is None


def test_no_tags():
    draft = parse_tags("Just text.")
    assert draft.calls == [] and draft.validity is None
    assert draft.segments == [TextSegment(text="Just text.")]


def test_pathological_input_is_bounded():
    body = "{'source': 'code', 'description': 'd', 'params': {'code': '" + "', '" * 3000 + "'}}"
    call = only_call(f"<imgen>{body}</imgen>")  # must return, valid or not, without hanging
    assert call.index == 0


safe_text = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=40)
code_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(before=safe_text, after=safe_text, code=code_text, description=st.text(min_size=1, max_size=20))
def test_any_json_tag_round_trips(before, after, code, description):
    if not code.strip() or not description.strip():
        return
    payload = {"source": "code", "description": description, "params": {"code": code}}
    text = f"{before}<imgen>{json.dumps(payload, ensure_ascii=False)}</imgen>{after}"
    draft = parse_tags(text)
    assert len(draft.calls) == 1
    assert draft.calls[0].error is None
    assert draft.calls[0].params == {"code": code}
    texts = "".join(s.text for s in draft.segments if isinstance(s, TextSegment))
    assert texts == before + after or texts.replace("`", "") == (before + after).replace("`", "")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_never_crashes_on_arbitrary_text(text):
    draft = parse_tags(text)
    for call in draft.calls:
        assert call.valid or call.error


# --- odd values: each one an invalid call with a reason, never an exception ------------------------------------


def edit_tag(img_index: str, quote: str = "'") -> str:
    q = quote
    return (
        f"<imgen>{{{q}source{q}: {q}edit{q}, {q}description{q}: {q}d{q}, "
        f"{q}params{q}: {{{q}img_index{q}: {img_index}, {q}prompt{q}: {q}x{q}}}}}</imgen>"
    )


def ambiguous_code_tag(extra: str) -> str:
    """A code tag with unescaped quotes in its code (so the tolerant reader reads it) and `extra` params items."""
    return f"<imgen>{{'source': 'code', 'description': 'd', 'params': {{'code': 'a='b'', {extra}}}}}</imgen>"


@pytest.mark.parametrize("quote", ["'", '"'])
def test_number_with_a_leading_zero_says_what_to_write(quote):
    call = only_call(edit_tag("01", quote))
    assert "img_index 01: a number with a leading zero is not valid; write 1" in call.error
    assert "not a valid dict literal" in call.error  # the format reward counts it as an unreadable body


def test_leading_zero_inside_an_ambiguous_body_and_a_list():
    call = only_call(ambiguous_code_tag("'x': [1, 007]"))
    assert "007: a number with a leading zero is not valid; write 7" in call.error


def test_all_zeros_is_a_valid_number_as_in_python():
    draft = parse_tags(edit_tag("00"), num_input_images=1)
    assert draft.calls[0].error is None and draft.calls[0].params["img_index"] == 0


@pytest.mark.parametrize("ambiguous", [False, True])
def test_a_number_past_pythons_digit_limit_is_invalid(ambiguous):
    huge = "'x': " + "9" * 5000
    call = only_call(ambiguous_code_tag(huge) if ambiguous else f"<imgen>{{'source': 'code', {huge}}}</imgen>")
    assert "x 999999999999...: a number with 5000 digits is too long" in call.error
    call.model_dump_json()


def test_a_huge_hex_number_is_reported_without_printing_it():
    call = only_call(edit_tag("0x" + "f" * 5000))  # hex ints have no digit limit; printing one in decimal would fail
    assert "img_index <a number of about 6021 digits> is out of range" in call.error
    assert call.params["img_index"] == "<a number of about 6021 digits>"  # plain data: a JSON writer can take it
    call.model_dump_json()


@pytest.mark.parametrize(
    "value",
    [
        "[" * 100 + "]" * 100,  # JSON and Python both read it
        "(" * 150 + "1," + ")" * 150,
        "{'k': " * 40 + "1" + "}" * 40,
    ],
)
def test_deep_nesting_is_invalid_with_a_reason(value):
    call = only_call(f"<imgen>{{'source': 'search', 'description': 'd', 'params': {{'query': {value}}}}}</imgen>")
    assert call.error is not None
    assert "nesting deeper than 32 levels" in call.error or "must be a string" in call.error  # (...) is one tuple
    call.model_dump_json()


def test_deep_nesting_in_an_ambiguous_body_does_not_exhaust_the_stack():
    call = only_call(ambiguous_code_tag("'x': " + "[" * 5000 + "]" * 5000))
    assert "nesting deeper than 32 levels" in call.error


@pytest.mark.parametrize(
    "items", ["[" + "1, " * 2000 + "1]", "{" + ", ".join(f"'k{i}': 1" for i in range(2000)) + "}"], ids=["list", "dict"]
)
def test_many_items_in_an_ambiguous_body_do_not_exhaust_the_stack(items):
    call = only_call(ambiguous_code_tag(f"'x': {items}"))
    assert "not a valid dict literal" in call.error


@pytest.mark.filterwarnings("ignore:invalid escape sequence")  # ast.literal_eval's, on the way to the tolerant reader
def test_odd_escapes_in_an_ambiguous_body():
    code = r"a='b' \U99999999 \N{DEGREE SIGN} \N{NOT A NAME} \012 \q"
    call = only_call(f"<imgen>{{'source': 'code', 'description': 'd', 'params': {{'code': '{code}'}}}}</imgen>")
    assert call.error is None, call.error
    # As in Python: known escapes decode; an impossible or unknown one keeps its backslash.
    assert call.params["code"] == "a='b' \\U99999999 ° \\N{NOT A NAME} \n \\q"


def test_non_string_params_keys_and_odd_literals_become_plain_data():
    call = only_call(
        "<imgen>{'source': 'search', 'description': 'd', "
        "'params': {'query': b'\\xff', 1: 'q', (1, 2): {1, 2}, 'z': 1j, 'e': ...}}</imgen>"
    )
    assert "unexpected key(s) '(1, 2)', '1', 'e', 'z'" in call.error
    assert "params.query must be a string, got bytes" in call.error
    assert call.params == {"query": "b'\\xff'", "1": "q", "(1, 2)": "{1, 2}", "z": "1j", "e": "Ellipsis"}
    json.loads(call.model_dump_json())


def test_a_lone_surrogate_is_invalid_and_a_pair_is_joined():
    lone = only_call('<imgen>{"source": "search", "description": "d", "params": {"query": "a\\ud800"}}</imgen>')
    assert "params.query holds a lone surrogate \\ud800, which is not a character" in lone.error
    lone.model_dump_json()  # the stored value has U+FFFD in its place
    # Python-style escapes of an emoji give two surrogates; they are one character.
    pair = only_call("<imgen>{'source': 'search', 'description': 'd', 'params': {'query': '\\ud83d\\ude00'}}</imgen>")
    assert pair.error is None and pair.params == {"query": "😀"}


@pytest.mark.timeout(20)
def test_a_fence_with_long_whitespace_is_read_in_linear_time():
    # The old fence regex backtracked cubically here: minutes for 2,000 spaces.
    call = only_call("<imgen>```" + " " * 50_000 + "x</imgen>")
    assert "not a dict" in call.error


@pytest.mark.timeout(60)
def test_many_tags_and_many_unclosed_tags_are_parsed_in_linear_time():
    tag = "<imgen>{'source': 'search', 'description': 'd', 'params': {'query': 'q'}}</imgen>\n"
    assert len(parse_tags(tag * 3000).calls) == 3000
    assert len(parse_tags("<imgen>{" * 5000).calls) == 5000


def test_backticks_between_tags_belong_to_one_tag_only():
    tag = "<imgen>{'source': 'search', 'description': 'd', 'params': {'query': 'q'}}</imgen>"
    text = f"`{tag}`{tag}`"
    draft = parse_tags(text)
    first, second = draft.calls
    assert (first.start, first.end) == (0, len(tag) + 2)
    assert (second.start, second.raw) == (first.end, tag)  # the backtick between them went to the first
    assert draft.segments[-1] == TextSegment(text="`")
    rebuilt = "".join(s.text if isinstance(s, TextSegment) else draft.calls[s.index].raw for s in draft.segments)
    assert rebuilt == text


def test_a_parser_bug_costs_one_tag_and_is_logged(monkeypatch, caplog):
    import llmi_graph.tags as tags

    def broken(body):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(tags, "_read_body", broken)
    good_text = "Before <imgen>{'source': 'search', 'description': 'd', 'params': {'query': 'q'}}</imgen> after"
    draft = parse_tags(good_text)
    assert draft.calls[0].error == "unreadable tag (internal parser error: ZeroDivisionError)"
    assert [s.kind for s in draft.segments] == ["text", "image", "text"]
    assert "tag parser failed (ZeroDivisionError)" in caplog.text


@pytest.mark.parametrize(
    ("opener", "closer", "reason"),
    [
        ("<imagen>", "</imagen>", "unknown tag <imagen>: the tag is <imgen>"),
        ("<img_gen>", "</img_gen>", "unknown tag <img_gen>: the tag is <imgen>"),
        ("<imgen >", "</imgen>", "unknown tag <imgen >: the tag is <imgen>"),
        ("<IMGEN>", "</IMGEN>", "unknown tag <IMGEN>: the tag is <imgen>"),
        ("<image-generation>", "</imgen>", "unknown tag <image-generation>: the tag is <imgen>"),
        ("<imgen>", "</imagen>", "unknown closing tag </imagen>: the tag closes with </imgen>"),
        ("<imgen\n>", "</imgen>", "unknown tag <imgen\\n>: the tag is <imgen>"),
    ],
)
def test_near_miss_tags_are_failed_calls_with_the_reason(opener, closer, reason):
    body = "{'source': 'search', 'description': 'a red fox', 'params': {'query': 'red fox'}}"
    text = f"Foxes. {opener}{body}{closer} The end."
    draft = parse_tags(text)
    assert [s.kind for s in draft.segments] == ["text", "image", "text"]
    (call,) = draft.calls
    assert not call.valid and reason in call.error
    assert call.source == "search" and call.params == {"query": "red fox"}  # the body is still read
    assert call.raw == f"{opener}{body}{closer}"


def test_near_miss_tags_earn_less_format_credit_than_the_real_tag():
    from judges.rule import format_score, tag_credit

    body = "{'source': 'search', 'description': 'a red fox', 'params': {'query': 'red fox'}}"
    exact, near, prose = f"<imgen>{body}</imgen>", f"<imagen>{body}</imagen>", f"imagen {body}"
    near_call = parse_tags(near).calls[0]
    assert 0.1 < tag_credit(near_call) < 1.0
    assert format_score(exact, 1) == 1.0
    assert 0 < format_score(prose, 1) < format_score(near, 1) < format_score(exact, 1)


@pytest.mark.parametrize("text", ["an <image> here", "<img src='x.png'>", "<generate>", "<gen>", "<imgage>"])
def test_tags_that_are_not_near_misses_stay_text(text):
    draft = parse_tags(text)
    assert draft.calls == [] and draft.segments[0].text == text
