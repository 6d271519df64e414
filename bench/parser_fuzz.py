"""Benchmark: the tag parser on 100,000 generated tag-shaped drafts; it must never raise.

Each draft is composed from pieces, driven by a seeded `random.Random` (fast and reproducible): opening and closing
tags (well-formed, upper-case, broken, missing), dict bodies in JSON and Python-literal style with single, double
and triple quotes and unescaped inner quotes, numbers (leading zeros, thousands of digits, exponents, underscores,
hex), escapes (\\x, \\u, \\N{...}, surrogates, lone backslashes), deep nesting, any Unicode, several tags in a row,
tags inside fences and backticks, corrupted characters, and truncation anywhere.

It prints:
- crashes: exceptions out of `parse_tags`, plus tags its last-resort guard caught (an internal error); target 0;
- contract violations: segments and tag spans must rebuild the draft, slots must match calls, valid calls must
  fit the params schema and every call must serialize to JSON; target 0;
- valid and invalid tag counts;
- the parser's throughput, against plain `json.loads` (then `ast.literal_eval`) on the same tag bodies in the same
  run, as a ratio of times (these machines are noisy; the ratio is the figure to compare).

Exit status 1 when there is a crash or a violation; the first few offending drafts are printed.

Run: .venv/bin/python bench/parser_fuzz.py [--n 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmi_graph import ImageSlot, ParsedDraft, TextSegment, parse_tags
from llmi_graph.tags import PARAM_TYPES, SOURCES

ODD_OPENERS = ["<IMGEN >", "<imgen\n>", "<Imgen>", "<imgen", "< imgen>", "", "<imgen>```json\n"]
ODD_CLOSERS = ["</IMGEN>", "</imgen >", "</imgen", "</ imgen>", "", "\n```</imgen>", "<imgen>"]
PROSE = [
    "Here is the chart.",
    "Paris is the capital of France.",
    "\n\n",
    "Write <image> here.",
    "`inline code` and ```fenced```",
    "销售额逐年增长。",
    "emoji 😀 and flags 🇫🇷",
    "\u202eright to left\u202c",
    "e\u0301 combining",
    "\x00\x07\x1b[0m",
    "\ud800 lone surrogate",
    "{'source': 'search'}",
    "a stray </imgen> closer",
    "`",
    "```python\nprint('x')\n```",
]
# Pieces of string content: plain text, code with quotes, Unicode, control characters, every kind of escape.
TEXT = [
    "a cat",
    "Eiffel Tower at night",
    "plt.plot(x, y)",
    "plt.title('Sine')",
    'print("hi")',
    "it's",
    "d = {'a': 1, 'b': [2, 3]}",
    "plt.axhline(y=0, color='k', linestyle='--')",
    "x = np.linspace(0, 2*np.pi, 100)",
    "销售额",
    "😀",
    "\u0301",
    "\t",
    "\n",
    "\r\n",
    "\x00",
    "\x7f",
    "\ufeff",
    "\u2028",
    "\ud800",
    "\udfff",
    "\ud83d\ude00",
    "\\",
    "\\\\",
    "\\n",
    "\\t",
    "\\x41",
    "\\xZZ",
    "\\u00e9",
    "\\u12",
    "\\ud83d\\ude00",
    "\\ud800",
    "\\udc00\\ud800",
    "\\U0001F600",
    "\\U99999999",
    "\\N{DEGREE SIGN}",
    "\\N{NOT A NAME}",
    "\\N{",
    "\\012",
    "\\0",
    "\\q",
    "\\'",
    '\\"',
    "'",
    '"',
    "'''",
    '"""',
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
    "0",
    "1",
    "2",
    "-1",
    "01",
    "007",
    "00",
    "-01",
    "0_1",
    "1_000",
    "0x1F",
    "0o17",
    "0b11",
    "1e3",
    "1E-3",
    "1e999",
    "-1e999",
    "1.5",
    "01.5",
    ".5",
    "1.",
    "+1",
    "--1",
    "NaN",
    "Infinity",
    "-Infinity",
    "1j",
    "١",
    "²",
    "1" + "0" * 30,
    "9" * 4300,
    "9" * 4301,
    "0" + "9" * 5000,
    "0x" + "f" * 5000,
]
WORDS = ["True", "False", "None", "true", "false", "null", "...", "b'\\xff'", "{1, 2}", "1+2j", "()", "(1,)", "[]"]
DEPTHS = [2, 5, 31, 32, 33, 40, 100, 199, 200, 300, 1000, 5000]
CORRUPTIONS = "'\"{}[]\\:,`<>\n"


def random_text(rng: random.Random) -> str:
    """String content: pieces, sometimes with random code points (surrogates included)."""
    parts = rng.choices(TEXT, k=rng.randint(0, 5))
    if rng.random() < 0.2:
        parts.append("".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(1, 4))))
    return "".join(parts)


def random_string(rng: random.Random, json_style: bool, content: str | None = None) -> str:
    """A string literal in one of the quote styles, its inner quotes escaped or (as models often do) not."""
    quote = '"' if json_style else rng.choice(["'", "'", "'", '"', "'''", '"""'])
    content = random_text(rng) if content is None else content
    if rng.random() < 0.5 and len(quote) == 1:
        content = content.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return f"{quote}{content}{quote}"


def random_number(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(NUMBERS)
    if roll < 0.8:
        return str(rng.randint(-3, 6))
    return str(rng.randrange(10 ** rng.randint(1, 40)))


def random_nest(rng: random.Random, json_style: bool) -> str:
    """Deep nesting of lists or dicts, sometimes unbalanced."""
    depth = rng.choice(DEPTHS)
    key = random_string(rng, json_style, "k")
    opener = rng.choice(["[", "(", f"{{{key}: "])
    closer = {"[": "]", "(": ",)"}.get(opener, "}")
    closes = depth if rng.random() < 0.8 else rng.randrange(depth + 2)
    return opener * depth + random_number(rng) + closer * closes


def random_value(rng: random.Random, json_style: bool, depth: int = 0) -> str:
    roll = rng.random()
    if roll < 0.55:
        return random_string(rng, json_style)
    if roll < 0.75:
        return random_number(rng)
    if roll < 0.83:
        return rng.choice(WORDS)
    if roll < 0.9 or depth > 2:
        return random_nest(rng, json_style)
    if roll < 0.95:
        items = [random_value(rng, json_style, depth + 1) for _ in range(rng.randint(0, 4))]
        return "[" + ", ".join(items) + "]"
    items = [
        f"{random_string(rng, json_style, rng.choice(['a', 'query', 'x']))}: {random_value(rng, json_style, depth + 1)}"
        for _ in range(rng.randint(0, 3))
    ]
    return "{" + ", ".join(items) + "}"


def valid_payload(rng: random.Random, index: int) -> dict:
    source = rng.choice(SOURCES)
    params: dict = {key: random_text(rng).strip() or "x" for key, kind in PARAM_TYPES[source].items() if kind is str}
    if source == "edit":
        params["img_index"] = rng.randrange(index) if index else 0
    return {"source": source, "description": random_text(rng).strip() or "d", "params": params}


def random_body(rng: random.Random, index: int) -> str:
    """A tag body: a clean JSON or Python dict (40%), else one assembled from odd pieces."""
    if rng.random() < 0.4:
        payload = valid_payload(rng, index)
        return json.dumps(payload, ensure_ascii=rng.random() < 0.5) if rng.random() < 0.5 else repr(payload)
    json_style = rng.random() < 0.3
    source = rng.choice([*SOURCES, *SOURCES, "dalle", "", "Search"])
    params = [
        (key, str(rng.randrange(index + 2)) if kind is int and rng.random() < 0.5 else random_value(rng, json_style))
        for key, kind in PARAM_TYPES.get(source, {"query": str}).items()
    ]
    if rng.random() < 0.2:
        params.append((rng.choice(["extra", "num", "1"]), random_value(rng, json_style)))
    sep = rng.choice([", ", ",", ",\n  "])
    params_text = "{" + sep.join(f"{random_string(rng, json_style, k)}: {v}" for k, v in params) + "}"
    items = [
        (rng.choice(["source", "source", "Source", "src"]), random_string(rng, json_style, source)),
        ("description", random_value(rng, json_style)),
        ("params", params_text if rng.random() < 0.9 else random_value(rng, json_style)),
    ]
    if rng.random() < 0.1:
        items.pop(rng.randrange(len(items)))
    body = "{" + sep.join(f"{random_string(rng, json_style, k)}: {v}" for k, v in items) + rng.choice(["}", "}", ",}"])
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        at = rng.randrange(len(body) + 1)
        body = body[:at] + rng.choice([rng.choice(CORRUPTIONS), ""]) + body[at + 1 :]
    return body


def random_draft(rng: random.Random) -> tuple[str, list[str]]:
    """A draft of prose and tags (the bodies it holds are returned too); sometimes truncated anywhere."""
    parts: list[str] = []
    bodies: list[str] = []
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.3:
            parts.append(rng.choice(PROSE))
            continue
        body = random_body(rng, len(bodies))
        bodies.append(body)
        opener = "<imgen>" if rng.random() < 0.85 else rng.choice(ODD_OPENERS)
        closer = "</imgen>" if rng.random() < 0.85 else rng.choice(ODD_CLOSERS)
        tag = opener + rng.choice(["", "", " ", "\n"]) + body + closer
        wrap = rng.random()
        if wrap < 0.1:
            tag = f"`{tag}`"
        elif wrap < 0.2:
            tag = f"\n{rng.choice(['```', '```json', '~~~'])}\n{tag}\n{rng.choice(['```', '~~~'])}\n"
        parts.append(tag)
    draft = rng.choice(["", " ", "\n", "\n\n"]).join(parts)
    if rng.random() < 0.2:
        draft = draft[: rng.randrange(len(draft) + 1)]
    return draft, bodies


def contract_violations(text: str, draft: ParsedDraft) -> list[str]:
    """What `draft` breaks of the parser's promises about `text` (empty when it keeps them all)."""
    problems = []
    calls = {c.index: c for c in draft.calls}
    if [c.index for c in draft.calls] != list(range(draft.num_input_images, draft.num_input_images + len(calls))):
        problems.append("call indices are not input images first, then tags in order")
    slots = [s.index for s in draft.segments if isinstance(s, ImageSlot)]
    if slots != list(calls):
        problems.append("image slots do not match the calls one to one, in order")
    rebuilt = "".join(s.text if isinstance(s, TextSegment) else calls[s.index].raw for s in draft.segments)
    if rebuilt != text:
        problems.append("text segments and tag spans do not rebuild the draft")
    if any(isinstance(s, TextSegment) and not s.text for s in draft.segments):
        problems.append("an empty text segment")
    for call in draft.calls:
        if call.raw != text[call.start : call.end]:
            problems.append(f"call {call.index}: raw is not text[start:end]")
        if call.valid and (
            call.source not in PARAM_TYPES
            or not (call.description or "").strip()
            or set(call.params) != set(PARAM_TYPES[call.source])
            or any(type(call.params[k]) is not kind for k, kind in PARAM_TYPES[call.source].items())
        ):
            problems.append(f"call {call.index} is valid but does not fit the schema: {call.params!r}"[:200])
        if not call.valid and not call.error.strip():
            problems.append(f"call {call.index} is invalid with an empty reason")
        try:
            call.model_dump_json(exclude={"raw"})
        except ValueError as exc:
            problems.append(f"call {call.index} does not serialize: {exc}"[:200])
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="How many drafts to generate and parse.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the draft generator.")
    args = parser.parse_args()
    logging.getLogger("llmi_graph.tags").setLevel(logging.ERROR)  # guard hits are counted below, not logged

    rng = random.Random(args.seed)
    cases = [random_draft(rng) for _ in range(args.n)]

    drafts: list[ParsedDraft | None] = []
    crashes: list[tuple[str, str]] = []
    slowest = 0.0
    start = time.perf_counter()
    for text, _ in cases:
        t0 = time.perf_counter()
        try:
            drafts.append(parse_tags(text))
        except Exception as exc:  # the figure this bench exists for
            drafts.append(None)
            crashes.append((text, f"{type(exc).__name__}: {exc}"))
        slowest = max(slowest, time.perf_counter() - t0)
    parse_s = time.perf_counter() - start

    bodies = [body.strip() for _, b in cases for body in b]
    start = time.perf_counter()
    for body in bodies:
        try:
            json.loads(body)
        except Exception:
            try:
                ast.literal_eval(body)
            except Exception:
                pass
    reference_s = time.perf_counter() - start

    violations: list[tuple[str, str]] = []
    guarded = valid = invalid = 0
    for (text, _), draft in zip(cases, drafts, strict=True):
        if draft is None:
            continue
        for call in draft.calls:
            valid += call.valid
            invalid += not call.valid
            if call.error and "internal parser error" in call.error:
                guarded += 1
                crashes.append((text, call.error))
        violations.extend((text, problem) for problem in contract_violations(text, draft))
    tags = valid + invalid

    exceptions = len(crashes) - guarded
    per_tag, per_body = parse_s / max(tags, 1), reference_s / max(len(bodies), 1)
    print(f"inputs       {args.n:,} drafts, {tags:,} tags, {len(bodies):,} generated bodies (seed {args.seed})")
    print(f"crashes      {len(crashes):,}   (exceptions {exceptions}, internal errors {guarded})   target 0")
    print(f"violations   {len(violations):,}   (segments, spans, slots, schema, JSON)   target 0")
    print(f"tags         valid {valid:,} ({valid / max(tags, 1):.1%})   invalid {invalid:,}")
    print(f"parser       {parse_s:6.2f} s   {1 / per_tag:9,.0f} tags/s     slowest draft {1000 * slowest:.0f} ms")
    print(f"reference    {reference_s:6.2f} s   {1 / per_body:9,.0f} bodies/s   json.loads, then ast.literal_eval")
    print(f"ratio        {per_tag / per_body:6.2f}   parser time per tag / reference time per body")
    for text, what in (crashes + violations)[:5]:
        what = what.encode("utf-8", "backslashreplace").decode()  # an exception's message may hold a lone surrogate
        print(f"\n{what}\n  {text[:300]!r}{' ...' if len(text) > 300 else ''}")
    sys.exit(1 if crashes or violations else 0)


if __name__ == "__main__":
    main()
