"""Human approval of tool calls (the operator's `approve` setting): what the graph asks a reviewer, and how it reads
the answer.

The graph's `approve` node interrupts (LangGraph `interrupt`) with `approval_request(...)`, plain JSON:

    {"type": "llmi.approval", "round": 0,
     "calls": [{"index": 1, "source": "code", "description": "sales by month", "params": {"code": "plt.bar(...)"}}],
     "actions": ["approve", "edit", "reject"], "error": null}

`round` is 0 for the draft's calls and N for the calls repair round N wrote. The run goes on with
`Command(resume=ANSWER)`. ANSWER is a mapping of image index, as a string ("1": LangGraph reads a resume mapping's
keys as strings), to one answer per call:

    {"action": "approve"}                                # or just "approve"
    {"action": "edit", "params": {"code": "plt.plot(...)"}}  # the keys given replace the call's own
    {"action": "reject", "reason": "no network calls"}   # or just "reject"

or one answer for every call ("approve", "reject", {"action": "reject", "reason": ...}; an edit only when one call
is asked about). Any answer may also carry `reason` and `reviewer` (who decided); both are kept in the run's
`approvals`. An edit is checked as the policy's own tags are (`parse_tags`, `checks.call_problem`: the tool's
params schema, code that compiles). A rejected call becomes a failed slot, "rejected by the reviewer" (with the
reason, when given). An answer that cannot be applied as a whole (an unknown action or key, a call left out, an
edit that does not check) changes nothing: the node asks again with the same calls and the reasons in `error`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from llmi_graph.checks import call_problem
from llmi_graph.state import Approval
from llmi_graph.tags import ToolCall, parse_replacement

ACTIONS = ("approve", "edit", "reject")
REJECTED = "rejected by the reviewer"
"""The reason of a rejected call's failed slot (followed by the reviewer's reason, when given)."""
_ANSWER_KEYS = ("action", "params", "reason", "reviewer")


class AnswerError(ValueError):
    """A resume value that cannot be applied; its message says what to change."""


def approval_request(calls: list[ToolCall], round_: int, error: str | None = None) -> dict[str, Any]:
    """The interrupt's payload: the calls awaiting a decision, the actions, and why the last answer was not applied."""
    return {
        "type": "llmi.approval",
        "round": round_,
        "calls": [
            {"index": c.index, "source": c.source, "description": c.description, "params": c.params} for c in calls
        ],
        "actions": list(ACTIONS),
        "error": error,
    }


def rejection(reason: str | None) -> str:
    """The failed slot's reason for a rejected call."""
    return f"{REJECTED}: {reason}" if reason else REJECTED


def read_answer(
    value: Any, calls: list[ToolCall], *, round_: int, total: int, num_inputs: int, tools: Collection[str]
) -> list[Approval]:
    """The decisions a resume value makes for `calls` (a draft of `total` images, `num_inputs` of them inputs, that
    may use `tools`), in index order; `AnswerError` with every problem found when it cannot be applied as a whole."""
    by_index = {c.index: c for c in calls}
    awaiting = ", ".join(str(i) for i in by_index)
    problems: list[str] = []
    answers: dict[int, Any] = {}
    if isinstance(value, str) or (isinstance(value, Mapping) and "action" in value):
        if _action_name(value) == "edit" and len(calls) > 1:
            problems.append(f"one edit for {len(calls)} calls: answer each image index ({awaiting}) on its own")
        else:
            answers = dict.fromkeys(by_index, value)
    elif isinstance(value, Mapping):
        for key, answer in value.items():
            index = _index(key)
            if index not in by_index:
                problems.append(f"{_short(key)} is not the index of a call awaiting approval ({awaiting})")
            else:
                answers[index] = answer
        missing = [str(i) for i in by_index if i not in answers]
        if missing:
            problems.append(f"no answer for image(s) {', '.join(missing)}: answer every call ({awaiting})")
    else:
        problems.append(
            "the answer must be 'approve', 'reject', {'action': ...} or a mapping of image index to one, "
            f"got {type(value).__name__}"
        )
    decisions = []
    for index, answer in sorted(answers.items()):
        try:
            decisions.append(_decide(by_index[index], answer, round_, total, num_inputs, tools))
        except AnswerError as exc:
            problems.append(f"image {index}: {exc}")
    if problems:
        raise AnswerError("; ".join(problems))
    return decisions


def _decide(call: ToolCall, answer: Any, round_: int, total: int, num_inputs: int, tools: Collection[str]) -> Approval:
    if isinstance(answer, str):
        answer = {"action": answer}
    if not isinstance(answer, Mapping):
        raise AnswerError(f"an answer is an action or {{'action': ...}}, got {type(answer).__name__}")
    extra = [_short(k) for k in answer if k not in _ANSWER_KEYS]
    if extra:
        raise AnswerError(f"unknown key(s) {', '.join(extra)}: an answer takes {', '.join(_ANSWER_KEYS)}")
    action = answer.get("action")
    if action not in ACTIONS:
        raise AnswerError(f"unknown action {_short(action)}: expected one of {', '.join(ACTIONS)}")
    for key in ("reason", "reviewer"):
        if answer.get(key) is not None and not isinstance(answer[key], str):
            raise AnswerError(f"'{key}' must be a string, got {type(answer[key]).__name__}")
    params = answer.get("params")
    if action != "edit" and params is not None:
        raise AnswerError(f"'params' go with 'edit', not '{action}'")
    runs: ToolCall | None = call if action == "approve" else None
    if action == "edit":
        if not isinstance(params, Mapping) or not params:
            raise AnswerError("'edit' needs 'params': the keys of the call's params to replace, with their new values")
        runs = _edited(call, dict(params), total, num_inputs, tools)
    return Approval(
        round=round_,
        index=call.index,
        decision=action,
        proposed=call,
        call=runs,
        reason=(answer.get("reason") or "").strip() or None,
        reviewer=(answer.get("reviewer") or "").strip() or None,
    )


def _edited(call: ToolCall, params: dict[str, Any], total: int, num_inputs: int, tools: Collection[str]) -> ToolCall:
    """The call with the reviewer's params, read as the policy's tags are read (so checked the same way)."""
    tag = {"source": call.source, "description": call.description, "params": {**call.params, **params}}
    try:
        # "<" appears only inside JSON strings: escaped, a param cannot end the tag early.
        body = json.dumps(tag, ensure_ascii=False).replace("<", "\\u003c")
    except (TypeError, ValueError) as exc:
        raise AnswerError(f"the edited params are not plain JSON data ({exc})") from None
    edited = parse_replacement(f"<imgen>{body}</imgen>", call.index, total, num_inputs)
    assert edited is not None  # the text is one whole tag
    problem = call_problem(edited, tools)
    if problem is not None:
        raise AnswerError(f"the edited call would fail: {problem.removeprefix('invalid tag: ')}")
    return edited


def _action_name(value: Any) -> Any:
    return value if isinstance(value, str) else value.get("action")


def _index(key: Any) -> int | None:
    if isinstance(key, str) and key.strip().isascii() and key.strip().isdigit():
        return int(key)
    return None


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
