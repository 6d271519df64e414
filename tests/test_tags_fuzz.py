"""Fuzzing the tag parser: tag-shaped drafts built from pieces. It never raises, and it keeps its promises.

The promises: call indices count the input images, then the tags in order; each tag has one image slot; text
segments and the tags' raw spans rebuild the draft exactly; a valid call has exactly its source's params, of
the right types; an invalid one says why; every call serializes to JSON. bench/parser_fuzz.py runs 100,000
drafts of the same kind.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from judges.rule import format_ok, format_score, tag_validity
from llmi_graph import ImageSlot, ParsedDraft, TextSegment, parse_tags
from llmi_graph.tags import PARAM_TYPES, SOURCES

# ast.literal_eval warns about the invalid escapes the pieces are full of, on the way to the tolerant reader.
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence")

FUZZ = settings(max_examples=400, deadline=None)

OPENERS = ["<imgen>", "<imgen>", "<IMGEN >", "<imgen\n>", "<imgen", "", "<imgen>```json\n"]
CLOSERS = ["</imgen>", "</imgen>", "</IMGEN>", "</imgen", "", "\n```</imgen>", "<imgen>"]
TEXT_PIECES = [
    "a cat",
    "plt.title('Sine')",
    'print("hi")',
    "it's",
    "d = {'a': 1, 'b': [2, 3]}",
    "销售额",
    "😀",
    "\u0301",
    "\n",
    "\x00",
    "\ud800",
    "\udfff",
    "\\",
    "\\n",
    "\\x41",
    "\\xZZ",
    "\\u00e9",
    "\\u12",
    "\\ud83d\\ude00",
    "\\ud800",
    "\\U0001F600",
    "\\U99999999",
    "\\N{DEGREE SIGN}",
    "\\N{NOT A NAME}",
    "\\N{\ud800}",
    "\\012",
    "\\q",
    "\\'",
    '\\"',
    "'",
    '"',
    "'''",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "</imgen>",
    "<imgen>",
    "```",
]
NUMBERS = [
    "01",
    "007",
    "00",
    "-01",
    "0_1",
    "1_000",
    "0x1F",
    "0o17",
    "1e3",
    "1e999",
    "-1.5e-3",
    "01.5",
    ".5",
    "1.",
    "+1",
    "--1",
    "NaN",
    "-Infinity",
    "1j",
    "١",
    "9" * 4301,
    "0" + "9" * 5000,
    "0x" + "f" * 5000,
]
WORDS = ["True", "false", "None", "null", "...", "b'\\xff'", "{1, 2}", "1+2j", "()", "(1,)"]

text_pieces = st.one_of(st.sampled_from(TEXT_PIECES), st.text(st.characters(exclude_categories=()), max_size=4))
string_content = st.lists(text_pieces, max_size=5).map("".join)
numbers = st.one_of(st.sampled_from(NUMBERS), st.integers(-5, 10**40).map(str), st.floats().map(repr))


@st.composite
def string_literal(draw: st.DrawFn, json_style: bool, content: str | None = None) -> str:
    """A string literal in one of the quote styles, with its inner quotes escaped or (as models often do) not."""
    quote = '"' if json_style else draw(st.sampled_from(["'", '"', "'''", '"""']))
    text = draw(string_content) if content is None else content
    if len(quote) == 1 and draw(st.booleans()):
        text = text.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return f"{quote}{text}{quote}"


@st.composite
def nesting(draw: st.DrawFn, json_style: bool) -> str:
    """Lists, tuples or dicts nested up to thousands deep, sometimes unbalanced."""
    depth = draw(st.one_of(st.integers(1, 40), st.sampled_from([100, 199, 200, 1000, 5000])))
    key = '"k"' if json_style else "'k'"
    opener, closer = draw(st.sampled_from([("[", "]"), ("(", ",)"), (f"{{{key}: ", "}")]))
    closes = draw(st.one_of(st.just(depth), st.integers(0, depth + 1)))
    return opener * depth + draw(numbers) + closer * closes


def values(json_style: bool) -> st.SearchStrategy[str]:
    """A value as written in a body: strings, numbers, words, deep nesting, and lists and dicts of them."""
    scalars = st.one_of(string_literal(json_style), numbers, st.sampled_from(WORDS), nesting(json_style))
    keys = string_literal(json_style, content="k") | string_literal(json_style)
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
            st.lists(st.tuples(keys, inner), max_size=3).map(
                lambda kvs: "{" + ", ".join(f"{k}: {v}" for k, v in kvs) + "}"
            ),
        ),
        max_leaves=6,
    )


def valid_payloads(index: int) -> st.SearchStrategy[dict]:
    """Tags that validate as tag `index` (its edit uses an earlier image); strings hold no `<` (so no `</imgen>`)."""
    chars = st.characters(exclude_characters="<", exclude_categories=("Cs",))  # a lone surrogate is invalid
    words = st.text(chars, min_size=1, max_size=20).filter(str.strip)
    img_index = st.integers(0, max(index - 1, 0))
    return st.sampled_from(SOURCES).flatmap(
        lambda source: st.fixed_dictionaries(
            {
                "source": st.just(source),
                "description": words,
                "params": st.fixed_dictionaries(
                    {key: img_index if kind is int else words for key, kind in PARAM_TYPES[source].items()}
                ),
            }
        )
    )


@st.composite
def bodies(draw: st.DrawFn, index: int = 0) -> str:
    """A tag body: a clean JSON or Python dict, or one assembled from odd pieces, maybe with a character broken."""
    if draw(st.booleans()):
        payload = draw(valid_payloads(index))
        return draw(st.sampled_from([json.dumps(payload), json.dumps(payload, ensure_ascii=False), repr(payload)]))
    json_style = draw(st.booleans())
    source = draw(st.sampled_from([*SOURCES, "dalle", ""]))

    def key(name: str) -> str:
        return draw(string_literal(json_style, content=name))

    params = [(key(name), draw(values(json_style))) for name in PARAM_TYPES.get(source, {"query": str})]
    sep = draw(st.sampled_from([", ", ",", ",\n  "]))
    items = [
        (key("source"), key(source)),
        (key("description"), draw(values(json_style))),
        (key("params"), "{" + sep.join(f"{k}: {v}" for k, v in params) + "}"),
    ]
    if draw(st.booleans()):
        items = draw(st.permutations(items))[: draw(st.integers(1, 3))]
    body = "{" + sep.join(f"{k}: {v}" for k, v in items) + draw(st.sampled_from(["}", ",}", "}}", ""]))
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([*"'\"{}[]\\:,`<>\n", ""])) + body[at + 1 :]
    return body


@st.composite
def drafts(draw: st.DrawFn) -> str:
    """Prose and tags (in fences, in backticks, several in a row), sometimes cut anywhere."""
    parts = []
    for k in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 3)) == 0:
            parts.append(draw(st.text(st.characters(exclude_categories=()), max_size=30) | string_content))
            continue
        tag = draw(st.sampled_from(OPENERS)) + draw(bodies(index=k)) + draw(st.sampled_from(CLOSERS))
        wrap = draw(st.sampled_from(["{}", "{}", "`{}`", "\n```\n{}\n```\n", "\n~~~json\n{}\n~~~"]))
        parts.append(wrap.format(tag))
    text = draw(st.sampled_from(["", " ", "\n\n"])).join(parts)
    if draw(st.integers(0, 4)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


def assert_promises(text: str, draft: ParsedDraft) -> None:
    """What parse_tags promises about any draft."""
    first = draft.num_input_images
    assert [c.index for c in draft.calls] == list(range(first, first + len(draft.calls)))
    calls = {c.index: c for c in draft.calls}
    assert [s.index for s in draft.segments if isinstance(s, ImageSlot)] == list(calls)
    assert all(s.text for s in draft.segments if isinstance(s, TextSegment))
    assert "".join(s.text if isinstance(s, TextSegment) else calls[s.index].raw for s in draft.segments) == text
    for call in draft.calls:
        assert call.raw == text[call.start : call.end]
        json.loads(call.model_dump_json(exclude={"raw"}))  # plain data: a run's state always serializes
        if call.valid:
            expected = PARAM_TYPES[call.source]
            assert call.description and call.description.strip()
            assert set(call.params) == set(expected)
            assert all(type(call.params[key]) is kind for key, kind in expected.items())
            if call.source == "edit":
                assert 0 <= call.params["img_index"] < call.index
        else:
            assert call.error and call.error.strip()
            assert "internal parser error" not in call.error, call.error


@FUZZ
@given(text=drafts(), num_input_images=st.integers(0, 3))
def test_tag_shaped_drafts_never_raise_and_keep_the_promises(text, num_input_images):
    assert_promises(text, parse_tags(text, num_input_images))


@FUZZ
@given(text=st.text(st.characters(exclude_categories=()), max_size=200))
def test_any_text_never_raises_and_keeps_the_promises(text):
    assert_promises(text, parse_tags(text))


@FUZZ
@given(body=bodies())
def test_a_bare_body_in_a_tag_is_one_call(body):
    draft = parse_tags(f"<imgen>{body}</imgen>")
    assert_promises(f"<imgen>{body}</imgen>", draft)
    assert len(draft.calls) >= 1


@settings(max_examples=200, deadline=None)
@given(payload=valid_payloads(index=1), style=st.sampled_from(["json", "json-unicode", "python"]))
def test_clean_tags_are_valid_and_read_back_exactly(payload, style):
    body = {"json": json.dumps, "json-unicode": lambda p: json.dumps(p, ensure_ascii=False), "python": repr}[style]
    draft = parse_tags(f"<imgen>{body(payload)}</imgen>", num_input_images=1)
    call = draft.calls[0]
    assert call.error is None, call.error
    assert call.model_dump(include={"source", "description", "params"}) == payload


@FUZZ
@given(text=drafts(), image_num=st.sampled_from([-1, 0, 1, 2, 3, 99]))
def test_the_format_reward_never_raises(text, image_num):
    score = format_score(text, image_num)
    assert 0.0 <= score <= 1.0
    assert isinstance(format_ok(text, image_num), bool)
    validity = tag_validity(text)
    assert validity is None or 0.0 <= validity <= 1.0


# Each of these crashed parse_tags (and with it a run, a GRPO batch, the format reward) before the parser was
# hardened: the tolerant reader handed number tokens to ast.literal_eval, recursed once per item and per level,
# and decoded \U escapes past U+10FFFF; pydantic refused params with non-string keys; messages printed ints past
# Python's digit limit; the unfencing regex took minutes on a long run of spaces.
def _edit(img_index: str) -> str:
    params = f"{{'img_index': {img_index}, 'prompt': 'x'}}"
    return f"<imgen>{{'source': 'edit', 'description': 'd', 'params': {params}}}</imgen>"


def _ambiguous(extra: str) -> str:
    return f"<imgen>{{'source': 'code', 'description': 'd', 'params': {{'code': 'a='b'', {extra}}}}}</imgen>"


REGRESSIONS = [
    _edit("01"),
    _edit("-007"),
    '<imgen>{"source": "edit", "description": "d", "params": {"img_index": 01, "prompt": "x"}}</imgen>',
    _ambiguous("'x': 01"),
    _edit("9" * 5000),
    _edit("-" + "9" * 5000),
    _ambiguous("'x': " + "9" * 5000),
    _edit("0x" + "f" * 5000),
    "<imgen>{'source': 'edit', 'description': 'd', 'params': {0x" + "f" * 5000 + ": 1, 'prompt': 'x'}}</imgen>",
    _edit("١"),
    _ambiguous("'x': ١"),
    _ambiguous("'x': " + "[" * 5000 + "]" * 5000),
    _ambiguous("'x': [" + "1," * 2000 + "1]"),
    _ambiguous(", ".join(f"'k{i}': 1" for i in range(2000))),
    "<imgen>{'source': 'code', 'description': 'd', 'params': {'code': 'a='b' \\U99999999'}}</imgen>",
    "<imgen>{'source': 'code', 'description': 'd', 'params': {'code': 'a='b' \\N{\ud800}'}}</imgen>",
    "<imgen>{'source': 'search', 'description': 'd', 'params': {1: 'q', (1, 2): 3}}</imgen>",
    '<imgen>{"source": "edit", "description": "d", "params": {"img_index": ' + "[" * 900 + "]" * 900 + "}}</imgen>",
    "<imgen>```" + " " * 3000 + "x</imgen>",
    "<imgen>{'source': 'search', 'description': 'd', 'params': {'query': '\ud800'}}</imgen>",
]


@pytest.mark.parametrize("text", REGRESSIONS, ids=range(len(REGRESSIONS)))
def test_inputs_that_used_to_crash_are_one_call_each(text):
    draft = parse_tags(text)
    assert_promises(text, draft)  # valid (the odd escapes), or invalid with a reason
    assert len(draft.calls) == 1
    assert 0.0 <= format_score(text, image_num=1) <= 1.0
