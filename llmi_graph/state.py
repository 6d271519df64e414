"""The graph's state: the request, the draft, the calls, the image results and the document.

Image bytes never live in the state: tools store them under a content-hash path (`ImageStore`) and the
state holds an `ImageRef`. Everything here is plain data, so a state serialises to JSON as it is.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmi_graph.checks import Validation
from llmi_graph.tags import SOURCES, ImageSlot, TextSegment, ToolCall


class ImageRef(BaseModel):
    """An image stored by content hash (see `ImageStore`)."""

    sha256: str
    path: str = Field(description="Absolute path of the stored bytes.")
    mime: str
    width: int
    height: int


class ImageResult(BaseModel):
    """What one tool call produced: an image, or a failure with its reason."""

    index: int
    source: str | None = None
    status: Literal["ok", "failed"]
    image: ImageRef | None = None
    error: str | None = None
    backend: str | None = Field(default=None, description="Which backend ran the call.")
    provenance: dict[str, Any] = Field(
        default_factory=dict, description="What made the image: query, prompt or code; URL where relevant."
    )
    latency_s: float = 0.0
    attempts: int = 0
    cache_hit: bool = False
    logs: str = Field(default="", description="Tool output worth keeping (stdout/stderr of code, truncated).")


class PolicyOutput(BaseModel):
    """The policy's draft plus what RL needs from the sampling step."""

    text: str
    backend: str
    model: str
    prompt_token_ids: list[int] | None = None
    completion_token_ids: list[int] | None = None
    logprobs: list[float] | None = Field(default=None, description="Log-probability of each sampled token.")
    finish_reason: str | None = None
    latency_s: float = 0.0
    usage: dict[str, int] = Field(default_factory=dict)
    sampling: dict[str, Any] = Field(
        default_factory=dict, description="The sampling the draft was made with: max_tokens, temperature, top_p, seed."
    )


class Repair(BaseModel):
    """One repair of a failed slot: the call that failed and why, the policy's reply (its own tokens and logprobs,
    a turn of its own) and the call that replaced the failed one."""

    round: int
    index: int
    failed: ToolCall = Field(description="The call that failed.")
    reason: str = Field(description="Why it failed, as the policy was told.")
    reply: PolicyOutput | None = Field(default=None, description="The policy's reply; None when the policy failed.")
    call: ToolCall | None = Field(default=None, description="The call read from the reply; None when it held none.")
    error: str | None = Field(default=None, description="Why the repair gave no call (no tag, policy error).")


class Approval(BaseModel):
    """A reviewer's decision on one tool call before it ran (the operator's `approve` setting): the call the policy
    wrote, the decision, and the call that ran instead when the reviewer edited it."""

    round: int = Field(description="0: a call of the draft; N: a call that repair round N wrote.")
    index: int
    decision: Literal["approve", "edit", "reject"]
    proposed: ToolCall = Field(description="The call as the policy wrote it.")
    call: ToolCall | None = Field(
        default=None, description="The call that ran (the proposed one, or the edited one); None when rejected."
    )
    reason: str | None = Field(default=None, description="The reviewer's reason, when the answer gave one.")
    reviewer: str | None = Field(default=None, description="Who decided, when the answer says.")


class Candidate(BaseModel):
    """One sampled draft, what validation found in it, and its selection score."""

    output: PolicyOutput
    validation: Validation
    score: float | None = Field(default=None, description="The selector's score (higher is better).")
    rules_score: float = Field(description="The rules selector's score (ties of other selectors fall to it).")


class Enhancement(BaseModel):
    """A diffusion prompt the policy rewrote into a detailed one before generation."""

    index: int
    before: str
    after: str | None = Field(default=None, description="The prompt used; None when the rewrite was not usable.")
    reply: PolicyOutput | None = None
    error: str | None = None


class Polish(BaseModel):
    """The polish turn: the policy's rewrite of the text around the final figures, and whether it was used."""

    applied: bool
    reply: PolicyOutput | None = None
    error: str | None = Field(default=None, description="Why the rewrite was not used.")


class Figure(BaseModel):
    """An image slot of the finished document: the image, or why there is none."""

    kind: Literal["figure"] = "figure"
    index: int
    source: str | None = None
    description: str | None = None
    status: Literal["ok", "failed"]
    image: ImageRef | None = None
    error: str | None = None


def _merge(left: dict[str, float], right: dict[str, float]) -> dict[str, float]:
    return {**left, **right}


MAX_INPUT_IMAGE_CHARS = 96 * 1024 * 1024
"""A hard ceiling on one encoded input image (the operator's `input_image_max_mb` is usually far lower)."""


class Request(BaseModel):
    """What a caller may choose for one run: the graph's input schema.

    A request carries data, never a server path or an operator setting: input images are data: URLs or
    base64, tools are a subset of the ones the operator enabled, and sampling stays within the operator's
    caps (checked when the run starts). Backends, URLs, keys, folders and sandbox switches are operator
    settings (`Config`), which only the environment, the CLI or embedding code can set.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the user asks for.")
    images: list[str] = Field(
        default_factory=list,
        description="Input images as data: URLs (data:image/png;base64,...) or base64 strings; never file paths.",
    )
    image_num: int = Field(
        default=0, description="Expected image count: -1 none, 0 no constraint, 99 at least one, N exactly N."
    )
    allowed_tools: list[str] | None = Field(
        default=None, description="Tools this request may use, a subset of the enabled ones (None: all enabled)."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens the policy may write (capped).")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Sampling temperature (0: greedy).")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(default=None, ge=0, lt=2**63, description="Sampling seed, for repeatable drafts.")
    repair_rounds: int | None = Field(
        default=None, ge=0, description="Rounds of tool-failure repair (capped; None: the operator's default)."
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty: say what the document should be about")
        return value

    @field_validator("images")
    @classmethod
    def _image_data(cls, value: list[str]) -> list[str]:
        for i, item in enumerate(value):
            if len(item) > MAX_INPUT_IMAGE_CHARS:
                raise ValueError(f"input image {i} is over {MAX_INPUT_IMAGE_CHARS // 2**20} MB of encoded data")
        return value

    @field_validator("image_num")
    @classmethod
    def _image_num_convention(cls, value: int) -> int:
        if value < -1:
            raise ValueError(f"image_num must be -1 (none), 0 (any), 99 (at least one) or N > 0, got {value}")
        return value

    @field_validator("allowed_tools")
    @classmethod
    def _known_tools(cls, value: list[str] | None) -> list[str] | None:
        unknown = [t for t in value or [] if t not in SOURCES]
        if unknown:
            raise ValueError(f"unknown tool(s) {', '.join(unknown)}: expected some of {', '.join(SOURCES)}")
        return value


class Output(BaseModel):
    """What a run gives back: the graph's output schema (the document, calls, results, timings, token data)."""

    prompt: str
    image_num: int = 0
    allowed_tools: list[str] | None = None
    input_images: list[ImageRef] = Field(default_factory=list)
    system_prompt: str = ""
    draft: str = ""
    policy: PolicyOutput | None = None
    segments: list[TextSegment | ImageSlot] = Field(default_factory=list)
    calls: list[ToolCall] = Field(default_factory=list)
    results: list[ImageResult] = Field(default_factory=list)
    repairs: list[Repair] = Field(default_factory=list)
    approvals: list[Approval] = Field(default_factory=list, description="Each reviewer decision (`approve`).")
    document: list[TextSegment | Figure] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    tool_metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    # What the scaled graph (`llmi_graph.scaling`) did; empty for a run of the llmi graph alone.
    drafts: list[Candidate] = Field(default_factory=list, description="Every candidate draft, in sampling order.")
    selected: int | None = Field(default=None, description="The index of the chosen draft in `drafts`.")
    selector: str = Field(default="", description="What chose it: rules, judge or relative.")
    enhancements: list[Enhancement] = Field(default_factory=list)
    polish_turn: Polish | None = None


class State(Request):
    """Graph state: the request plus what the nodes fill in."""

    model_config = ConfigDict(extra="ignore")

    input_images: list[ImageRef] = Field(default_factory=list)
    system_prompt: str = ""
    draft: str = ""
    policy: PolicyOutput | None = None
    segments: list[TextSegment | ImageSlot] = Field(default_factory=list)
    calls: list[ToolCall] = Field(default_factory=list)
    results: Annotated[list[ImageResult], operator.add] = Field(
        default_factory=list, description="Every attempt's result; a slot's last one is its final result."
    )
    repairs: Annotated[list[Repair], operator.add] = Field(default_factory=list)
    repair_round: int = 0
    approvals: Annotated[list[Approval], operator.add] = Field(
        default_factory=list, description="Each reviewer decision, in order (the operator's `approve` setting)."
    )
    awaiting_approval: list[int] = Field(
        default_factory=list, description="The image indices the `approve` node dispatches (after asking for some)."
    )
    given: PolicyOutput | None = Field(
        default=None,
        description="A draft chosen upstream (the scaled graph's selection): the planner uses it instead of sampling. "
        "Not part of the request: a caller cannot set it.",
    )
    # Set by the scaled graph's enhancement (`llmi_graph.scaling`), never by a request:
    overrides: dict[int, dict[str, Any]] = Field(
        default_factory=dict, description="Params that replace a valid call's own, by image index (rewritten prompts)."
    )
    enhance_search: bool = Field(
        default=False, description="Search calls keep the result an image chooser scores highest (enhancement)."
    )
    enhance_repair: list[str] = Field(
        default_factory=list,
        description="Tools whose failed slots get one repair round even when repair_rounds is 0 (enhancement).",
    )
    document: list[TextSegment | Figure] = Field(default_factory=list)
    timings: Annotated[dict[str, float], _merge] = Field(default_factory=dict)
    tool_metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per tool: calls, ok, failed, cache hits, attempts, latency."
    )
    run_key: str = ""
    # What the scaled graph (`llmi_graph.scaling`) did; empty for a run of the llmi graph alone.
    drafts: list[Candidate] = Field(default_factory=list, description="Every candidate draft, in sampling order.")
    selected: int | None = Field(default=None, description="The index of the chosen draft in `drafts`.")
    selector: str = Field(default="", description="What chose it: rules, judge or relative.")
    enhancements: list[Enhancement] = Field(default_factory=list)
    polish_turn: Polish | None = None


class ToolTask(BaseModel):
    """What the planner's fan-out sends to one tool node."""

    call: ToolCall
    run_key: str
    input_images: list[ImageRef] = Field(default_factory=list)
    refusal: str | None = Field(default=None, description="Set when the request does not allow this tool.")
    choose: bool = Field(default=False, description="Keep the result the image chooser prefers (search enhancement).")
    wait_timeout_s: float = Field(
        default=600.0,
        description="How long an edit may wait for its source image once that has started (queueing not counted).",
    )


def policy_turns(state: Output | State) -> list[PolicyOutput]:
    """Every policy output a run paid for: the candidates (or the one draft), each repair reply, each enhancement
    rewrite and the polish turn."""
    turns = [c.output for c in state.drafts] or ([state.policy] if state.policy else [])
    turns += [r.reply for r in state.repairs if r.reply]
    turns += [e.reply for e in state.enhancements if e.reply]
    if state.polish_turn and state.polish_turn.reply:
        turns.append(state.polish_turn.reply)
    return turns


def cost(state: Output | State) -> dict[str, int]:
    """What a run cost: policy turns and the tokens they wrote (and read), and tool calls (attempts that reached a
    tool; an invalid tag reaches none)."""
    turns = policy_turns(state)
    return {
        "policy_turns": len(turns),
        "policy_tokens": sum(len(t.completion_token_ids or ()) or t.usage.get("completion_tokens", 0) for t in turns),
        "prompt_tokens": sum(len(t.prompt_token_ids or ()) or t.usage.get("prompt_tokens", 0) for t in turns),
        "tool_calls": sum(1 for r in state.results if not (r.error or "").startswith("invalid tag")),
    }
