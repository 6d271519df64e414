"""Checks a draft can pass before any tool runs, and the rule score that picks among candidate drafts.

`validate` reads a draft as the graph would and lists, per tag, what would fail: a tag that does not parse or
validate (schema, edit indices, an empty search query or prompt: `parse_tags` checks those), a tool this request
may not use or that has no backend, Python code that does not compile. Nothing runs: code is compiled, never
executed.

`image_num_score` is the image-count rule the judges share (`judges.rule` re-exports it); it lives here because the
graph's own selector needs it and the graph does not import `judges`.
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import BaseModel, Field

from llmi_graph.tags import ToolCall, parse_tags


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


class Problem(BaseModel):
    """One thing in a draft that would fail, found without running anything."""

    index: int = Field(description="The image index of the tag.")
    reason: str


class Validation(BaseModel):
    """What `validate` found in one draft."""

    tags: int = Field(description="Tags in the draft.")
    clean: int = Field(description="Tags with no problem found.")
    problems: list[Problem] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def call_problem(call: ToolCall, tools: Collection[str]) -> str | None:
    """Why this call would fail before or at its tool, as far as can be told without running it; None if no reason."""
    if not call.valid:
        return f"invalid tag: {call.error}"
    if call.source not in tools:
        usable = ", ".join(tools) or "none"
        return f"the {call.source} tool is not available to this request (usable: {usable})"
    if call.source == "code":
        try:
            compile(str(call.params.get("code", "")), "<tag>", "exec", dont_inherit=True)
        except SyntaxError as exc:
            return f"the code does not compile: {exc.msg} (line {exc.lineno})"
        except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
            return f"the code does not compile: {type(exc).__name__}"
    return None


def validate(draft: str, tools: Collection[str], num_input_images: int = 0) -> Validation:
    """The problems of each tag of `draft`, for a request that may use `tools` (enabled and allowed)."""
    calls = parse_tags(draft, num_input_images).calls
    problems = [Problem(index=c.index, reason=r) for c in calls if (r := call_problem(c, tools)) is not None]
    return Validation(tags=len(calls), clean=len(calls) - len(problems), problems=problems)


def rules_score(validation: Validation, image_num: int) -> float:
    """The `rules` selector's score, 0 to 2: how well the tags that would work meet the image count
    (`image_num_score`), plus the share of tags that would work (1 for a draft without tags). Higher is better."""
    share = validation.clean / validation.tags if validation.tags else 1.0
    return image_num_score(validation.clean, image_num) + share
