"""Offline replay: train on recorded rollouts instead of sampling.

The loop the design names: collect (batch graph runs against the vLLM policy, `python -m rl.collect`) -> score
(the judges, at collection) -> train (`rl/train.py --replay FILE.jsonl`) -> push the adapter -> collect again.

A record is one sample, one JSON line: {"group", "attempt", "sample", "group_size", "prompt", "prompt_ids",
"completion_ids", "logprobs", "rewards": {name: score for each of REWARD_NAMES}, "policy_model", "draft"}. A
group is the G samples of one row (its id covers the whole row, the group size and the round); an attempt is one
collection of a group, written in one append. A file a crash left behind is read as follows: lines that do not
parse are skipped, an attempt is kept only if complete (samples 0..G-1, one prompt, the same prompt ids), and a
group recorded complete more than once keeps its first attempt. Attempts are never merged.
Records from before `attempt` was written form an attempt per run of consecutive lines of one group.

Replay pays what was recorded, weighted as the online suite (`rl.rewards`) weights it: `hybrid` (R), the logged
components, `format` with its success-only switch, and the content rewards given a weight. A record from before a
score was recorded gives None (not scored) for it: TRL leaves that term out of the sample's reward and out of the
logged mean.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REWARD_NAMES = (
    "hybrid",
    "image_num",
    "llm_judge",
    "mllm_judge",
    "format",
    "format_success",
    "relevance",
    "relevance_success",
    "chart_numbers",
    "repetition",
)
"""The scores a record's `rewards` holds (rl.collect); older files lack the last five (`relevance_success`: the
newest)."""


@dataclass
class RecordedGroups:
    """What a recorded file holds: its complete groups (one attempt each, in file order) and what was set aside."""

    groups: OrderedDict[str, list[dict[str, Any]]] = field(default_factory=OrderedDict)
    unreadable: int = 0  # lines that do not parse as a record (a torn last line, ...)
    incomplete: int = 0  # attempts cut short, or whose records disagree (prompt, prompt ids, sample numbers)
    duplicates: int = 0  # complete attempts of a group already recorded complete

    @property
    def damaged(self) -> bool:
        return bool(self.unreadable or self.incomplete or self.duplicates)

    def records(self) -> list[dict[str, Any]]:
        return [record for group in self.groups.values() for record in group]


def _is_record(record: Any) -> bool:
    """A line's JSON has what training reads, with the types it expects."""
    if not isinstance(record, dict):
        return False
    ids = (record.get("prompt_ids"), record.get("completion_ids"), record.get("logprobs"))
    return (
        isinstance(record.get("group"), str)
        and isinstance(record.get("prompt"), str)
        and all(isinstance(x, list) for x in ids)
        and len(record["logprobs"]) == len(record["completion_ids"])
        and isinstance(record.get("rewards"), dict)
    )


def _complete(attempt: list[dict[str, Any]], size: int) -> bool:
    if len(attempt) != size:
        return False
    first = attempt[0]
    if any(r["prompt"] != first["prompt"] or r["prompt_ids"] != first["prompt_ids"] for r in attempt):
        return False
    samples = [r.get("sample") for r in attempt]
    return all(s is None for s in samples) or samples == list(range(size))


def read_groups(path: str | Path, group_size: int | None = None) -> RecordedGroups:
    """The complete groups of a recorded file, whatever a crash or a rerun left in it; never raises on content.

    `group_size` (G) applies to records that do not carry theirs; without it, the most common attempt size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"replay file {path} not found")
    found = RecordedGroups()
    attempts: OrderedDict[tuple[str, str], list[dict[str, Any]]] = OrderedDict()
    previous_group, run = None, 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not _is_record(record):
                found.unreadable += bool(line.strip())
                continue
            run += record["group"] != previous_group
            previous_group = record["group"]
            attempt = record.get("attempt")
            key = (record["group"], attempt if isinstance(attempt, str) else f"run-{run}")
            attempts.setdefault(key, []).append(record)
    legacy = Counter(len(a) for a in attempts.values() if not isinstance(a[0].get("group_size"), int))
    default_size = group_size or max(legacy, key=lambda n: (legacy[n], n), default=0)
    for (group, _), attempt in attempts.items():
        size = attempt[0].get("group_size")
        if not _complete(attempt, size if isinstance(size, int) else default_size):
            found.incomplete += 1
        elif group in found.groups:
            found.duplicates += 1
        else:
            found.groups[group] = attempt
    return found


def load_records(path: str | Path, group_size: int | None = None) -> list[dict[str, Any]]:
    """The records of the complete groups of a recorded file, in file order (what was set aside is logged)."""
    found = read_groups(path, group_size)
    if found.damaged:
        log.warning(
            "%s: skipped %d unreadable line(s), %d incomplete attempt(s), %d duplicate attempt(s)",
            path,
            found.unreadable,
            found.incomplete,
            found.duplicates,
        )
    if not found.groups:
        raise ValueError(f"{path} holds no complete group of recorded rollouts")
    return found.records()


def replay_dataset(records: list[dict[str, Any]]) -> Any:
    """One dataset row per recorded group (TRL repeats each `num_generations` times)."""
    from datasets import Dataset

    seen: OrderedDict[str, str] = OrderedDict()
    for record in records:
        seen.setdefault(record["group"], record["prompt"])
    return Dataset.from_list([{"prompt": prompt} for prompt in seen.values()])


class ReplayRollout:
    """A TRL rollout function that hands back recorded samples: the next unused group for each prompt.

    `records` are those of `load_records`: one attempt per group."""

    def __init__(self, records: list[dict[str, Any]], group_size: int):
        self.group_size = group_size
        by_prompt: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
        groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        for record in records:
            groups.setdefault(record["group"], []).append(record)
        for group in groups.values():
            if len(group) != group_size:
                raise ValueError(f"recorded groups have {len(group)} samples; num_generations is {group_size}")
            by_prompt[group[0]["prompt"]].append(group)
        self.by_prompt = by_prompt
        self.turn: dict[str, int] = defaultdict(int)

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "recorded_rewards": []}
        i = 0
        while i < len(prompts):
            prompt = prompts[i]
            groups = self.by_prompt.get(prompt)
            if not groups:
                raise KeyError(f"no recorded rollouts for prompt {str(prompt)[:60]!r}")
            group = groups[self.turn[prompt] % len(groups)]
            self.turn[prompt] += 1
            for record in group:
                out["prompt_ids"].append(record["prompt_ids"])
                out["completion_ids"].append(record["completion_ids"])
                out["logprobs"].append(record["logprobs"])
                out["recorded_rewards"].append(record["rewards"])
            i += self.group_size
        return out


def replay_reward_functions(
    format_weight: float = 0.0,
    *,
    relevance_weight: float | None = None,
    chart_numbers_weight: float | None = None,
    repetition_weight: float | None = None,
    format_needs_success_after_steps: int | None = None,
    format_warmup_failed_credit: float = 1.0,
) -> tuple[list[Callable[..., Any]], list[float]]:
    """TRL's `reward_funcs` and `reward_weights` read from the scores recorded with each sample, as `RewardSuite`
    gives them online: R as `hybrid` (weight 1), the judges' components logged, `format` at `format_weight`, and
    each content reward at its weight (0: logged only; None: not returned at all).

    `format` follows the online switch. Without `format_needs_success_after_steps` N it is the recorded `format`
    (every tag earns its credit). From step N on it is the recorded `format_success` (only tags whose tool made an
    image). Before N a failed tag earns `format_warmup_failed_credit` c of its credit: `format_score` is linear in
    that share, so format_success + c (format - format_success) is the online value exactly (up to float
    rounding). The step is TRL's `trainer_state.global_step`; called without one, the number of batches the
    function has scored. `relevance` follows the same switch through the recorded `relevance_success` (a failed
    tag's relevance is linear in its credit too). A record without `format_success` or `relevance_success`
    (recorded before it existed) gets None wherever it is needed, with a one-time warning.
    """
    if not 0.0 <= format_warmup_failed_credit <= 1.0:
        raise ValueError(f"format_warmup_failed_credit must be in [0, 1], got {format_warmup_failed_credit}")
    if repetition_weight is not None and repetition_weight < 0:
        raise ValueError(
            f"repetition_weight is {repetition_weight}: `repetition` is already minus the penalty, give it a "
            "positive weight (0 logs it only)"
        )
    warned: set[str] = set()

    def credited(name: str) -> Callable[[dict[str, Any], int], float | None]:
        """The recorded `name` (every tag's credit) or, once failed tags stop earning full credit, interpolated
        towards the recorded `name_success` (only working tags): both are linear in a failed tag's credit."""

        def pick(recorded: dict[str, Any], step: int) -> float | None:
            after, full = format_needs_success_after_steps, recorded.get(name)
            if after is None:
                return full
            credit = format_warmup_failed_credit if step < after else 0.0
            if credit == 1.0 or full is None:
                return full  # every tag earns its full credit: what `name` recorded
            success = recorded.get(f"{name}_success")
            if success is None:
                if name not in warned:
                    warned.add(name)
                    log.warning(
                        "recorded rollouts without `%s_success` (collected before it was recorded): their %s "
                        "reward is None (not scored) once failed tags stop earning full credit; collect them again "
                        "with the current rl.collect to replay format_needs_success_after_steps",
                        name,
                        name,
                    )
                return None
            return success + credit * (full - success)

        return pick

    def recorded_reward(name: str, pick: Callable[[dict[str, Any], int], float | None]) -> Callable[..., Any]:
        batches = 0

        def reward(
            prompts: list[Any],
            completions: list[Any],
            recorded_rewards: list[dict[str, Any]],
            trainer_state: Any = None,
            **kwargs: Any,
        ) -> list[float | None]:
            nonlocal batches
            step = trainer_state.global_step if trainer_state is not None else batches
            batches += 1
            return [None if r.get("hybrid") is None else pick(r, step) for r in recorded_rewards]

        reward.__name__ = name
        return reward

    def read(name: str) -> Callable[[dict[str, Any], int], float | None]:
        return lambda recorded, step: recorded.get(name)

    funcs = [recorded_reward(name, read(name)) for name in ("hybrid", "image_num", "llm_judge", "mllm_judge")]
    funcs.append(recorded_reward("format", credited("format")))
    weights = [1.0, 0.0, 0.0, 0.0, format_weight]
    content = {"relevance": relevance_weight, "chart_numbers": chart_numbers_weight, "repetition": repetition_weight}
    for name, weight in content.items():
        if weight is not None:  # None: switched off, as online
            funcs.append(recorded_reward(name, credited(name) if name == "relevance" else read(name)))
            weights.append(weight)
    return funcs, weights
