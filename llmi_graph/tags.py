"""The LLM-I tag protocol: `<imgen>{'source': S, 'description': D, 'params': P}</imgen>`.

`parse_tags` turns a policy draft into an ordered list of segments (text, or an image slot) and one
`ToolCall` per tag. Every tag becomes a call: valid (``error is None``) or invalid with a reason a
person can read. Image indices count the input images first, then every tag in text order (invalid
tags included), so an edit's ``img_index`` and a call's ``index`` use the same numbering.

The parser accepts what real models write: JSON or Python dict literals, whitespace inside the tag,
a tag wrapped in a Markdown code fence or inline backticks, code strings with unescaped inner quotes
(``'plt.axhline(y=0, color='k', linestyle='--')'``), escaped or raw newlines, and non-ASCII text.

Only the exact ``<imgen>`` and ``</imgen>`` are the protocol. A near miss (``<imagen>``, ``<img_gen>``,
``<IMGEN >``, ``</image-gen>``) still makes a call, invalid with the reason ("unknown tag <imagen>: the tag is
<imgen>"), so the document shows a failed slot instead of the tag as text, and the format reward can give it
partial credit.

`parse_tags` never raises for a ``str``. Numbers with leading zeros or thousands of digits, nesting
deeper than `MAX_DEPTH`, lone surrogates and unbalanced quotes make an invalid call with a reason; odd
escapes read as Python reads them. A call's fields are plain JSON data, so a run's state always
serializes. `bench/parser_fuzz.py` checks this on 100,000 generated drafts.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import unicodedata
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

SOURCES: tuple[str, ...] = ("search", "diffusion", "code", "edit")
"""The four image tools, in the order the system prompt lists them."""

PARAM_TYPES: dict[str, dict[str, type]] = {
    "search": {"query": str},
    "diffusion": {"prompt": str},
    "code": {"code": str},
    "edit": {"img_index": int, "prompt": str},
}
"""The exact ``params`` keys (and their types) each source takes."""

TAG_KEYS = ("source", "description", "params")
MAX_TAG_CHARS = 64_000
MAX_DEPTH = 32
"""The deepest nesting of brackets a tag body may have (a valid tag has two levels)."""
_MAX_PARSE_STEPS = 200_000
_MAX_READINGS = 16
# Items plus nesting levels along one path of the tolerant reader: each is a generator frame on the stack.
_MAX_CHAIN = 256
_MAX_INT_BITS = 4096  # larger ints in an invalid call's params are kept as a short text (JSON writers choke on them)

log = logging.getLogger(__name__)

_OPEN = "<imgen>"
_CLOSE = "</imgen>"
# The tag and its near misses (`<imagen>`, `<img_gen>`, `<image-gen>`, `<IMGEN >`, ...): only the exact `<imgen>` and
# `</imgen>` are the protocol; a near miss still makes a call (invalid, with a reason), so a policy that writes one
# sees a failed slot instead of its tag printed as text. `<image>` and `<img>` are not near misses (no "gen").
_NAME = r"\s*(?:im(?:age|ag|a|ge|g)?[\s_-]*gen(?:erat(?:e|ion|or))?)\s*"
_OPEN_RE = re.compile(rf"<{_NAME}>", re.IGNORECASE)
_CLOSE_RE = re.compile(rf"</{_NAME}>", re.IGNORECASE)
# A fence's line, then the tag's line up to the tag; matched from the start of the fence's line.
_FENCE_OPEN_RE = re.compile(r"[ \t]*(`{3,}|~{3,})[\w+-]*[ \t]*\n[ \t]*")
_FENCE_CLOSE_RE = re.compile(r"([ \t]*\n[ \t]*(`{3,}|~{3,})[ \t]*)(?:\n|$)")
_FENCE_START_RE = re.compile(r"(`{3,}|~{3,})[\w+-]*")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


class ToolCall(BaseModel):
    """One `<imgen>` tag of a draft, valid or not."""

    index: int = Field(description="Image index of this slot: input images first, then tags in text order.")
    source: str | None = Field(default=None, description="The tool the tag asks for (as written).")
    description: str | None = Field(default=None, description="What the image should show.")
    params: dict[str, Any] = Field(default_factory=dict, description="The tool's parameters, as written.")
    error: str | None = Field(default=None, description="Why the tag is invalid; None when valid.")
    raw: str = Field(default="", description="The tag exactly as it appears in the draft.")
    start: int = Field(default=0, description="Character offset of the tag in the draft.")
    end: int = Field(default=0, description="Character offset just past the tag in the draft.")

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def depends_on(self) -> int | None:
        """The image index a valid edit reads, else None."""
        if self.valid and self.source == "edit":
            return int(self.params["img_index"])
        return None


class TextSegment(BaseModel):
    """A run of model text between image slots."""

    kind: Literal["text"] = "text"
    text: str


class ImageSlot(BaseModel):
    """The place in the document where the image of call ``index`` goes."""

    kind: Literal["image"] = "image"
    index: int


Segment = TextSegment | ImageSlot


class ParsedDraft(BaseModel):
    """A draft split into ordered segments plus one call per tag."""

    segments: list[TextSegment | ImageSlot]
    calls: list[ToolCall]
    num_input_images: int = 0

    @property
    def valid_calls(self) -> list[ToolCall]:
        return [c for c in self.calls if c.valid]

    @property
    def validity(self) -> float | None:
        """Share of tags that parse and validate; None when the draft has no tags."""
        if not self.calls:
            return None
        return len(self.valid_calls) / len(self.calls)


def parse_tags(text: str, num_input_images: int = 0) -> ParsedDraft:
    """Split a policy draft into ordered text/image segments and validated tool calls.

    >>> d = parse_tags("Intro <imgen>{'source': 'search', 'description': 'x', 'params': {'query': 'x'}}</imgen> end")
    >>> [s.kind for s in d.segments], d.calls[0].error
    (['text', 'image', 'text'], None)
    """
    if num_input_images < 0:
        raise ValueError(f"num_input_images must be >= 0, got {num_input_images}")
    spans = list(_find_tags(text))
    total = num_input_images + len(spans)
    segments: list[TextSegment | ImageSlot] = []
    calls: list[ToolCall] = []
    cursor = 0
    for k, (start, end, body, closed, near_miss) in enumerate(spans):
        index = num_input_images + k
        if start > cursor:
            segments.append(TextSegment(text=text[cursor:start]))
        segments.append(ImageSlot(index=index))
        cursor = end
        call = _build_call(body, closed, index=index, total=total, num_input_images=num_input_images)
        if near_miss:
            call = call.model_copy(update={"error": f"{near_miss}; {call.error}" if call.error else near_miss})
        calls.append(call.model_copy(update={"raw": text[start:end], "start": start, "end": end}))
    if cursor < len(text):
        segments.append(TextSegment(text=text[cursor:]))
    segments = [s for s in segments if not (isinstance(s, TextSegment) and not s.text)]
    return ParsedDraft(segments=segments, calls=calls, num_input_images=num_input_images)


def parse_replacement(text: str, index: int, total: int, num_input_images: int = 0) -> ToolCall | None:
    """The first tag of `text` (a policy's reply that rewrites one tag) read as slot `index` of a draft with `total`
    images, so an edit may read any image before it; None when the reply holds no tag. `raw` is the tag as written;
    `start` and `end` are its offsets in the reply."""
    for start, end, body, closed, near_miss in _find_tags(text):
        call = _build_call(body, closed, index=index, total=total, num_input_images=num_input_images)
        if near_miss:
            call = call.model_copy(update={"error": f"{near_miss}; {call.error}" if call.error else near_miss})
        return call.model_copy(update={"raw": text[start:end], "start": start, "end": end})
    return None


# --- finding tags -----------------------------------------------------------------------------------


def _find_tags(text: str) -> Iterator[tuple[int, int, str, bool, str | None]]:
    """Yield (start, end, body, closed, near_miss) per tag; the span includes a wrapping fence or backticks, and
    `near_miss` says why an opening or closing tag that is not exactly `<imgen>` / `</imgen>` fails (else None).

    Spans are in order and do not overlap. Linear in the text: each regex search resumes where the last left off.
    """
    pos = 0
    m_open = _OPEN_RE.search(text)
    m_close: re.Match[str] | None = None
    close_from = -1  # m_close is the first closing tag at or after this offset
    while m_open is not None:
        body_start = m_open.end()
        if close_from < 0 or (m_close is not None and m_close.start() < body_start):
            m_close, close_from = _CLOSE_RE.search(text, body_start), body_start
        m_next = _OPEN_RE.search(text, body_start)
        if m_close is not None and (m_next is None or m_close.start() < m_next.start()):
            start, end = _widen(text, m_open.start(), m_close.end(), floor=pos)
            yield start, end, text[body_start : m_close.start()], True, _near_miss(m_open, m_close)
        else:
            # Unclosed tag: it covers a balanced {...} if one follows, else the rest of its line.
            limit = m_next.start() if m_next is not None else len(text)
            body_end = _balanced_end(text, body_start, limit)
            if body_end is None:
                newline = text.find("\n", body_start, limit)
                body_end = limit if newline < 0 else newline
            end = body_end
            yield m_open.start(), end, text[body_start:end], False, _near_miss(m_open, None)
        pos = end
        m_open = m_next if m_next is None or m_next.start() >= pos else _OPEN_RE.search(text, pos)


def _near_miss(m_open: re.Match[str], m_close: re.Match[str] | None) -> str | None:
    """Why a tag written almost as the protocol's fails: "unknown tag <imagen>: the tag is <imgen>"."""
    problems = []
    if m_open.group(0) != _OPEN:
        problems.append(f"unknown tag {_visible(m_open.group(0))}: the tag is {_OPEN}")
    if m_close is not None and m_close.group(0) != _CLOSE:
        problems.append(f"unknown closing tag {_visible(m_close.group(0))}: the tag closes with {_CLOSE}")
    return _repair("; ".join(problems)) if problems else None


def _visible(tag: str) -> str:
    """A near-miss tag as a message shows it: whitespace other than spaces escaped, so `<imgen\\n>` reads as such."""
    return _shorten(tag.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r"))


def _widen(text: str, start: int, end: int, floor: int) -> tuple[int, int]:
    """Extend a tag's span over a Markdown fence or inline backticks that wrap only the tag (never before `floor`)."""
    before = None
    newline = text.rfind("\n", floor, start)
    if newline >= 0:
        line_start = text.rfind("\n", 0, newline) + 1
        if line_start >= floor:
            before = _FENCE_OPEN_RE.fullmatch(text, line_start, start)
    after = _FENCE_CLOSE_RE.match(text, end)
    if before and after and before.group(1)[0] == after.group(2)[0]:
        return before.start(), after.end(1)
    if start > floor and end < len(text) and text[start - 1] == "`" and text[end] == "`":
        return start - 1, end + 1
    return start, end


def _balanced_end(text: str, start: int, limit: int) -> int | None:
    """Index just past a brace-balanced {...} starting at `start` (after whitespace), else None."""
    i = start
    while i < limit and text[i].isspace():
        i += 1
    if i >= limit or text[i] != "{":
        return None
    depth = 0
    quote: str | None = None
    while i < limit:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


# --- reading a tag body -----------------------------------------------------------------------------


def _build_call(body: str, closed: bool, *, index: int, total: int, num_input_images: int) -> ToolCall:
    """The call for one tag body, valid or invalid; never raises."""
    try:
        return _read_call(body, closed, index=index, total=total, num_input_images=num_input_images)
    except Exception as exc:  # a parser bug must cost one tag, not a run or a GRPO batch; the log keeps it visible
        log.warning("tag parser failed (%s) on %r", type(exc).__name__, body[:300], exc_info=True)
        return ToolCall(index=index, error=f"unreadable tag (internal parser error: {type(exc).__name__})")


def _read_call(body: str, closed: bool, *, index: int, total: int, num_input_images: int) -> ToolCall:
    readings, exact, error = _read_body(body)
    if not readings:
        reason = error or "unreadable tag"
        if not closed:
            reason = f"missing closing {_CLOSE} tag; {reason}"
        return ToolCall(index=index, error=_repair(reason))
    # An ambiguous body (unescaped quotes) can have several readings: take the first that validates.
    checked = [(obj, _validate(obj, index=index, total=total, num_input_images=num_input_images)) for obj in readings]
    obj, problems = next(((o, p) for o, p in checked if not p), checked[0])
    if problems and not exact:
        problems = [f"tag body is not a valid dict literal (the closest reading: {'; '.join(problems)})"]
    source, description, params = obj.get("source"), obj.get("description"), obj.get("params")
    if not closed:
        problems = [f"missing closing {_CLOSE} tag", *problems]
    return ToolCall(
        index=index,
        source=_repair(source) if isinstance(source, str) else None,
        description=_repair(description) if isinstance(description, str) else None,
        params=_json_safe(params) if isinstance(params, dict) else {},
        error=_repair("; ".join(problems)) if problems else None,
    )


def _read_body(body: str) -> tuple[list[dict[str, Any]], bool, str | None]:
    """Read a tag body as a dict: JSON, then a Python literal, then the tolerant reader.

    Returns the possible readings (one unless the body is ambiguous), whether the reading is exact
    (strict JSON or Python), and the reason when there is none.
    """
    text = _unfence(body.strip())
    if not text:
        return [], False, "empty tag: expected {'source': ..., 'description': ..., 'params': {...}}"
    if len(text) > MAX_TAG_CHARS:
        return [], False, f"tag is too long ({len(text)} characters, at most {MAX_TAG_CHARS})"
    if not text.startswith("{"):
        return (
            [],
            False,
            "tag body is not a dict: expected {'source': ..., 'description': ..., 'params': {...}}",
        )
    for reader in (json.loads, ast.literal_eval):
        try:
            obj = reader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue  # ValueError covers JSON errors and ints past Python's 4300-digit limit
        if isinstance(obj, dict):
            # Counting brackets is cheap, and rules out deep nesting for nearly every body.
            if sum(map(text.count, "[{(")) > MAX_DEPTH and _deeper_than(obj, MAX_DEPTH):
                return [], False, f"tag body is not a valid dict literal (nesting deeper than {MAX_DEPTH} levels)"
            return [obj], True, None
    try:
        readings = _TolerantReader(text).readings(limit=_MAX_READINGS)
    except _Unreadable as exc:
        return [], False, f"tag body is not a valid dict literal ({exc})"
    if not readings:
        return (
            [],
            False,
            "tag body is not a valid dict literal: expected {'source': ..., 'description': ..., 'params': {...}}",
        )
    return readings, False, None


def _unfence(text: str) -> str:
    """The inside of a body wrapped whole in a Markdown fence (```json ... ```), else the body as it is."""
    m = _FENCE_START_RE.match(text)
    if m is None:
        return text
    fence = m.group(1)
    if len(text) < m.end() + len(fence) or not text.endswith(fence):
        return text
    return text[m.end() : len(text) - len(fence)].strip()


def _deeper_than(obj: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` levels; a loop, so deep data cannot exhaust the stack."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = [*value, *value.values()]
        elif isinstance(value, list | tuple | set | frozenset):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class _Unreadable(Exception):
    pass


_END = "\x00"  # stands for "end of text" in a follow set
_WS_RE = re.compile(r"\s*")
_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_KEY_RE = re.compile(r"[^'\"{}:,\n]{1,64}")
_WORDS = {"True": True, "true": True, "False": False, "false": False, "None": None, "null": None}
_WORD_RE = re.compile("|".join(_WORDS))


class _TolerantReader:
    """A backtracking reader for dict literals whose strings may hold unescaped quotes.

    A quote closes a string only where what follows fits the grammar (`,` `}` `]` `:` or the end);
    when the rest of the text then fails to parse, the reader tries the next such quote. So the
    paper's own example, ``'code': 'plt.axhline(y=0, color='k', linestyle='--')'``, reads as intended.
    A path that meets a number Python would reject fails, and the first such reason is reported when no
    path succeeds. Nesting deeper than `MAX_DEPTH`, more than `_MAX_CHAIN` items and levels on one path, or
    more than `_MAX_PARSE_STEPS` steps end the reading: no valid tag comes near them, and backtracking out of
    them could take exponential time.
    """

    def __init__(self, text: str):
        self.s = text
        self.steps = 0
        self.problem: str | None = None
        self.strings: dict[tuple[int, int], str] = {}

    def readings(self, limit: int) -> list[dict[str, Any]]:
        """Every complete reading of the text as a dict, shortest strings first (at most `limit`)."""
        found: list[dict[str, Any]] = []
        try:
            for value, j in self._value(0, _END, None, 0, 0):
                if self._ws(j) == len(self.s) and isinstance(value, dict):
                    found.append(value)
                    if len(found) >= limit:
                        break
        except _Unreadable:
            if not found:
                raise
        if not found and self.problem:
            raise _Unreadable(self.problem)
        return found

    def _tick(self, chain: int = 0, cost: int = 1) -> None:
        """Count a step (scans of long text cost more); `chain` is how many generators this path has stacked."""
        self.steps += cost
        if self.steps > _MAX_PARSE_STEPS:
            raise _Unreadable("too ambiguous to read")
        if chain > _MAX_CHAIN:
            raise _Unreadable(f"more than {_MAX_CHAIN} items and nesting levels")

    def _ws(self, i: int) -> int:
        if i >= len(self.s) or not self.s[i].isspace():
            return i
        m = _WS_RE.match(self.s, i)
        j = m.end() if m else i
        self.steps += (j - i) >> 8  # a long run of spaces costs like the steps it would take to scan
        return j

    def _follows(self, i: int, allowed: str) -> bool:
        i = self._ws(i)
        return (i == len(self.s) and _END in allowed) or (i < len(self.s) and self.s[i] in allowed)

    def _value(self, i: int, allowed: str, key: str | None, nest: int, chain: int) -> Iterator[tuple[Any, int]]:
        self._tick(chain)
        i = self._ws(i)
        if i >= len(self.s):
            return
        c = self.s[i]
        if c in "{[" and nest >= MAX_DEPTH:
            raise _Unreadable(f"nesting deeper than {MAX_DEPTH} levels")
        if c == "{":
            yield from self._dict(i + 1, {}, nest + 1, chain + 1)
        elif c == "[":
            yield from self._list(i + 1, [], nest + 1, chain + 1)
        elif c in "'\"":
            yield from self._string(i, allowed)
        elif m := _NUMBER_RE.match(self.s, i):
            value, problem = _number(m.group(0), key)
            if problem:
                self.problem = self.problem or problem  # this path fails; say why if no other succeeds
            else:
                yield value, m.end()
        elif m := _WORD_RE.match(self.s, i):
            yield _WORDS[m.group(0)], m.end()

    def _dict(self, i: int, acc: dict[str, Any], nest: int, chain: int) -> Iterator[tuple[Any, int]]:
        self._tick(chain)
        i = self._ws(i)
        if i < len(self.s) and self.s[i] == "}":
            yield dict(acc), i + 1
            return
        if i >= len(self.s) or self.s[i] not in "'\"":
            return
        for key, j in self._string(i, ":"):
            if not _KEY_RE.fullmatch(key):  # keys are plain names; only values hold stray quotes
                continue
            j = self._ws(j) + 1  # past ':'
            for value, k in self._value(j, ",}", key, nest, chain + 1):
                k = self._ws(k)
                if k >= len(self.s) or self.s[k] not in ",}":
                    continue
                item = {**acc, key: value}
                if self.s[k] == "}":
                    yield item, k + 1
                else:
                    yield from self._dict(k + 1, item, nest, chain + 1)

    def _list(self, i: int, acc: list[Any], nest: int, chain: int) -> Iterator[tuple[Any, int]]:
        self._tick(chain)
        i = self._ws(i)
        if i < len(self.s) and self.s[i] == "]":
            yield list(acc), i + 1
            return
        for value, k in self._value(i, ",]", None, nest, chain + 1):
            k = self._ws(k)
            if k >= len(self.s) or self.s[k] not in ",]":
                continue
            if self.s[k] == "]":
                yield [*acc, value], k + 1
            else:
                yield from self._list(k + 1, [*acc, value], nest, chain + 1)

    def _string(self, i: int, allowed: str) -> Iterator[tuple[str, int]]:
        q = self.s[i]
        delim = q * 3 if self.s.startswith(q * 3, i) else q
        j = i + len(delim)
        while True:
            k = self.s.find(delim, j)
            self._tick(cost=1 + ((k if k >= 0 else len(self.s)) - j >> 8))
            if k < 0:
                return
            backslashes = 0
            while k - backslashes - 1 >= j and self.s[k - backslashes - 1] == "\\":
                backslashes += 1
            if backslashes % 2 == 0 and self._follows(k + len(delim), allowed):
                span = (i + len(delim), k)
                if span not in self.strings:  # backtracking meets the same strings again and again
                    self._tick(cost=span[1] - span[0] >> 8)
                    self.strings[span] = _unescape(self.s[span[0] : span[1]])
                yield self.strings[span], k + len(delim)
            j = k + 1


def _number(token: str, key: str | None) -> tuple[int | float | None, str | None]:
    """A number token's value, or why Python would reject it (a leading zero, more digits than ints allow)."""
    if any(c in token for c in ".eE"):
        return float(token), None  # float() has no digit limit; huge values become inf, as in Python
    shown = token if len(token) <= 20 else f"{token[:12]}..."
    what = f"{key} {shown}" if key else shown
    try:
        value = int(token)
    except ValueError:  # past sys.get_int_max_str_digits()
        return None, f"{what}: a number with {len(token.lstrip('-'))} digits is too long"
    if token.lstrip("-")[0] == "0" and value != 0:
        return None, f"{what}: a number with a leading zero is not valid; write {value}"
    return value, None


_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "a": "\a",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "/": "/",
    "\n": "",
}
_ESCAPE_RE = re.compile(
    r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|N\{[A-Za-z0-9 -]{1,100}\}|[0-7]{1,3}|\n|.)", re.DOTALL
)


def _unescape(raw: str) -> str:
    """Decode Python/JSON string escapes; unknown or impossible escapes keep their backslash, as in Python."""
    if "\\" not in raw:
        return raw

    def sub(m: re.Match[str]) -> str:
        e = m.group(1)
        if e in _ESCAPES:
            return _ESCAPES[e]
        if e[0] in "uUx" and len(e) > 1:
            code = int(e[1:], 16)
            return chr(code) if code <= 0x10FFFF else m.group(0)
        if e[0] == "N" and len(e) > 1:
            try:
                return unicodedata.lookup(e[2:-1])
            except KeyError:
                return m.group(0)
        if e[0] in "01234567":
            return chr(int(e, 8))
        return m.group(0)

    return _ESCAPE_RE.sub(sub, raw)


# --- making the fields plain data -------------------------------------------------------------------


def _repair(text: str) -> str:
    """Join surrogate pairs (Python-style escapes of an emoji give two) and replace lone surrogates with U+FFFD."""
    if not _SURROGATE_RE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _lone_surrogate(text: str) -> str | None:
    """The first surrogate in `text` that is not half of a pair, as an escape (``\\ud800``), else None."""
    if not _SURROGATE_RE.search(text):
        return None
    m = _SURROGATE_RE.search(text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass"))
    return f"\\u{ord(m.group(0)):04x}" if m else None


def _shorten(text: str, limit: int = 60) -> str:
    """A model-written string, cut to `limit` characters for a message."""
    text = _repair(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _preview(value: Any, limit: int = 60) -> str:
    """A value's repr, cut to `limit` characters: safe for ints past Python's digit limit and for deep data."""
    if isinstance(value, int) and value.bit_length() > 192:
        return f"<a number of about {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        text = repr(value)  # escapes lone surrogates
    except (ValueError, RecursionError):  # an int past the digit limit inside a container, or deep data
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_safe(value: Any, depth: int = 0) -> Any:
    """`value` as plain JSON data: strings repaired, odd literals (bytes, sets, complex, huge ints) as short text."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, str):
        return _repair(value)
    if isinstance(value, int):
        return value if value.bit_length() <= _MAX_INT_BITS else _preview(value)
    if depth < MAX_DEPTH and isinstance(value, dict):
        return {(_repair(k) if isinstance(k, str) else _preview(k)): _json_safe(v, depth + 1) for k, v in value.items()}
    if depth < MAX_DEPTH and isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value]
    return _preview(value)


# --- validating a tag -------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _quoted(keys: Any) -> str:
    return ", ".join(sorted(f"'{_shorten(k, 40) if isinstance(k, str) else _preview(k, 40)}'" for k in keys))


def _validate(obj: dict[str, Any], *, index: int, total: int, num_input_images: int) -> list[str]:
    """Return the reasons a tag dict is invalid (empty when valid)."""
    problems: list[str] = []
    missing = [k for k in TAG_KEYS if k not in obj]
    extra = [k for k in obj if k not in TAG_KEYS]
    if missing:
        problems.append(f"tag is missing key(s) {_quoted(missing)}")
    if extra:
        problems.append(f"tag has unexpected key(s) {_quoted(extra)}; allowed: {_quoted(TAG_KEYS)}")

    source = obj.get("source")
    if "source" in obj and not isinstance(source, str):
        problems.append(f"'source' must be a string, got {_type_name(source)}")
        source = None
    elif isinstance(source, str) and source not in PARAM_TYPES:
        problems.append(f"unknown source '{_shorten(source)}': expected one of {', '.join(SOURCES)}")
        source = None

    description = obj.get("description")
    if "description" in obj:
        if not isinstance(description, str):
            problems.append(f"'description' must be a string, got {_type_name(description)}")
        elif not description.strip():
            problems.append("'description' is empty")
        elif surrogate := _lone_surrogate(description):
            problems.append(f"'description' holds a lone surrogate {surrogate}, which is not a character")

    params = obj.get("params")
    if "params" in obj and not isinstance(params, dict):
        problems.append(f"'params' must be a dict, got {_type_name(params)}")
    elif isinstance(params, dict) and source is not None:
        problems.extend(_validate_params(source, params, index=index, total=total, inputs=num_input_images))
    return problems


def _validate_params(source: str, params: dict[str, Any], *, index: int, total: int, inputs: int) -> list[str]:
    expected = PARAM_TYPES[source]
    problems: list[str] = []
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing:
        problems.append(f"params for '{source}' are missing {_quoted(missing)}")
    if extra:
        problems.append(
            f"params for '{source}' have unexpected key(s) {_quoted(extra)}; '{source}' takes {_quoted(expected)}"
        )
    for key, kind in expected.items():
        if key not in params:
            continue
        value = params[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"params.{key} must be an integer, got {_type_name(value)} {_preview(value)}")
        elif kind is str and not isinstance(value, str):
            problems.append(f"params.{key} must be a string, got {_type_name(value)}")
        elif kind is str and not value.strip():
            problems.append(f"params.{key} is empty")
        elif kind is str and (surrogate := _lone_surrogate(value)):
            problems.append(f"params.{key} holds a lone surrogate {surrogate}, which is not a character")
    img_index = params.get("img_index")
    if source == "edit" and isinstance(img_index, int) and not isinstance(img_index, bool):
        problems.extend(_check_img_index(img_index, index=index, total=total, inputs=inputs))
    return problems


def _check_img_index(img_index: int, *, index: int, total: int, inputs: int) -> list[str]:
    counts = f"{inputs} input image(s) and {total - inputs} tag(s)"
    if img_index < 0 or img_index >= total:
        return [f"img_index {_preview(img_index)} is out of range: the draft has {counts}, indexed 0..{total - 1}"]
    if img_index >= index:
        what = "itself" if img_index == index else f"a later tag (image {img_index})"
        return [
            f"img_index {img_index} points at {what}; an edit may only use an input image "
            f"(0..{inputs - 1}) or an earlier tag"
            if inputs
            else f"img_index {img_index} points at {what}; an edit may only use an earlier tag"
        ]
    return []
