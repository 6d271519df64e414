"""Rule scores: what can be counted. Pure functions.

Conventions for `image_num` (shared with the dataset rows and the graph's request): -1 no images wanted, 0 no
constraint, 99 at least one, N > 0 exactly N.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from llmi_graph.tags import SOURCES, parse_tags

TOOL_WEIGHTS: dict[str, float] = {"code": 0.4, "edit": 0.3, "search": 0.2, "diffusion": 0.1}
"""How much each tool counts in `tool_score` (the paper's weights)."""


def image_num_score(count: int, image_num: int, split: str = "train") -> float:
    """How well the number of successfully made images meets the request.

    -1: 1 if count is 0, else 0.  0: 1.  99: 1 if count > 0, else 0.  N > 0, training: count/N below N, 1 at N,
    max(0, 1 - 0.3 (count - N)) above.  N > 0, evaluation (`split="eval"`): 1 only at N.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if image_num == -1:
        return 1.0 if count == 0 else 0.0
    if image_num == 0:
        return 1.0
    if image_num == 99:
        return 1.0 if count > 0 else 0.0
    if image_num < -1:
        raise ValueError(f"image_num must be -1, 0, 99 or N > 0, got {image_num}")
    if split == "eval":
        return 1.0 if count == image_num else 0.0
    if count < image_num:
        return count / image_num
    if count == image_num:
        return 1.0
    return max(0.0, 1.0 - 0.3 * (count - image_num))


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
