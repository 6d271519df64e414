"""Rule scores: what can be counted. Pure functions.

Conventions for `image_num` (shared with the dataset rows and the graph's request): -1 no images wanted, 0 no
constraint, 99 at least one, N > 0 exactly N.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from llmi_graph.checks import image_num_score
from llmi_graph.tags import SOURCES, ToolCall, parse_tags

__all__ = [
    "TOOL_WEIGHTS",
    "format_ok",
    "format_score",
    "image_num_score",
    "literal_image_markers",
    "opener_likeness",
    "tag_credit",
    "tag_validity",
    "tool_score",
]

TOOL_WEIGHTS: dict[str, float] = {"code": 0.4, "edit": 0.3, "search": 0.2, "diffusion": 0.1}
"""How much each tool counts in `tool_score` (the paper's weights)."""


def tool_score(
    required: Iterable[str],
    attempted: Iterable[str],
    succeeded: Iterable[str],
    weights: Mapping[str, float] | None = None,
    beta: float = 0.5,
) -> float:
    """Did the draft use the tools the prompt needs? r = beta w(req & succ)/w(req) + (1 - beta) w(req & att)/w(req).

    0 when nothing is required. Sets of tool names; `weights` default to code 0.4, edit 0.3, search 0.2,
    diffusion 0.1.
    """
    w = dict(TOOL_WEIGHTS if weights is None else weights)
    req, att, succ = set(required), set(attempted), set(succeeded)
    unknown = (req | att | succ) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown tool(s) {sorted(unknown)}: expected some of {list(SOURCES)}")
    total = sum(w[t] for t in req)
    if total <= 0:
        return 0.0
    return beta * sum(w[t] for t in req & succ) / total + (1 - beta) * sum(w[t] for t in req & att) / total


def tag_validity(draft: str, num_input_images: int = 0) -> float | None:
    """Share of the draft's `<imgen>` tags that parse and validate; None when it has no tags."""
    return parse_tags(draft, num_input_images).validity


def literal_image_markers(draft: str) -> int:
    """How many literal `<image>` markers the text holds (the original counted them as images)."""
    return draft.count("<image>")


def tag_credit(call: ToolCall) -> float:
    """Partial credit for one tag: 0.1 opened with <imgen> (0.05 with a near miss such as <imagen>); 0.1 closed
    with </imgen> (0.05 with a near miss); 0.2 the body reads as a dict; 0.2 the
    source is one of the four and there is a description; 0.4 everything validates (params included). A shaping
    reward for small policies: a complete, valid tag is worth clearly more than any near miss."""
    if call.valid:
        return 1.0
    error = call.error or ""
    # A near miss (`<imagen>`, `</img_gen>`) earns half of the opening or closing share.
    credit = 0.05 if "unknown tag <" in error else 0.1
    if "missing closing </imgen>" not in error:
        credit += 0.05 if "unknown closing tag <" in error else 0.1
    unreadable = ("empty tag", "not a dict", "not a valid dict literal", "too long", "unreadable")
    if any(marker in error for marker in unreadable):
        return credit
    credit += 0.2
    if call.source in SOURCES and call.description:
        credit += 0.2
    return credit


TAG_OPENER = "<imgen>{'source': '"


def opener_likeness(draft: str) -> float:
    """0 to 1: the longest stretch of the tag opener `<imgen>{'source': '` that the draft contains, over its length.
    A near miss such as `<image>{'source` scores above plain prose, so a policy that never writes a tag still
    gets a gradient towards one."""
    best = 0
    for start in range(len(TAG_OPENER)):
        for end in range(len(TAG_OPENER), start + best, -1):
            if TAG_OPENER[start:end] in draft:
                best = end - start
                break
    return best / len(TAG_OPENER)


def format_score(
    draft: str,
    image_num: int,
    num_input_images: int = 0,
    succeeded: Collection[int] | None = None,
    failed_credit: float = 0.0,
) -> float:
    """How well the draft follows the tag format, 0 to 1 (the documented partial-credit format reward).

    No images wanted (-1): 1 with no tags, else 0. Otherwise, with tags: the mean `tag_credit`, times a count
    factor (`image_num_score` of the number of tags; for image_num 0, -0.3 per tag beyond three), so repeating
    tags does not pay; with no tags: 0.1 x `opener_likeness` (below any real tag's credit).

    `succeeded`, when given, is the set of image indices whose tool made an image: a tag outside it earns only
    `failed_credit` times its credit (default 0: so a tag whose tool fails, such as `plt.line()`, stops paying once
    training is past its warm-up)."""
    calls = parse_tags(draft, num_input_images).calls
    if image_num == -1:
        return 0.0 if calls else 1.0
    if not calls:
        return 0.1 * opener_likeness(draft)
    count = len(calls)
    factor = max(0.0, 1.0 - 0.3 * max(0, count - 3)) if image_num == 0 else image_num_score(count, image_num)
    credits = (tag_credit(c) * (1.0 if succeeded is None or c.index in succeeded else failed_credit) for c in calls)
    return factor * sum(credits) / count


def format_ok(draft: str, image_num: int, num_input_images: int = 0) -> bool:
    """The held-out "tag validity" of one draft: tags present and all valid (none, when no images are wanted)."""
    calls = parse_tags(draft, num_input_images).calls
    if image_num == -1:
        return not calls
    return bool(calls) and all(c.valid for c in calls)
