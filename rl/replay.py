"""Offline replay: train on recorded rollouts instead of sampling.

The loop the design names: collect (batch graph runs against the vLLM policy, `python -m rl.collect`) -> score
(the judges, at collection) -> train (`rl/train.py --replay FILE.jsonl`) -> push the adapter -> collect again.

A record is one sample, one JSON line: {"group", "prompt", "prompt_ids", "completion_ids", "logprobs",
"rewards": {"hybrid", "image_num", "llm_judge", "mllm_judge", "format"}, "policy_model"}. A group is the G samples
of one prompt. Lines that do not parse, and groups cut short by a crash, are skipped with a warning.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REWARD_NAMES = ("hybrid", "image_num", "llm_judge", "mllm_judge", "format")


def load_records(path: str | Path, group_size: int | None = None) -> list[dict[str, Any]]:
    """Complete groups of a recorded file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"replay file {path} not found")
    groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    bad = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
                groups.setdefault(record["group"], []).append(record)
            except (ValueError, KeyError, TypeError):
                bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line(s)", path, bad)
    size = group_size or max((len(g) for g in groups.values()), default=0)
    complete = [g for g in groups.values() if len(g) == size]
    if len(complete) < len(groups):
        log.warning("%s: skipped %d incomplete group(s)", path, len(groups) - len(complete))
    if not complete:
        raise ValueError(f"{path} holds no complete group of recorded rollouts")
    return [record for group in complete for record in group]


def replay_dataset(records: list[dict[str, Any]]) -> Any:
    """One dataset row per recorded group (TRL repeats each `num_generations` times)."""
    from datasets import Dataset

    seen: OrderedDict[str, str] = OrderedDict()
    for record in records:
        seen.setdefault(record["group"], record["prompt"])
    return Dataset.from_list([{"prompt": prompt} for prompt in seen.values()])


class ReplayRollout:
    """A TRL rollout function that hands back recorded samples: the next unused group for each prompt."""

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


def replay_reward_functions(format_weight: float = 0.0) -> tuple[list[Callable[..., Any]], list[float]]:
    """Reward functions that read the scores recorded with each sample (R as `hybrid`, the rest logged)."""

    def component(name: str) -> Callable[..., Any]:
        def reward(
            prompts: list[Any], completions: list[Any], recorded_rewards: list[dict[str, Any]], **kwargs: Any
        ) -> list[float | None]:
            return [None if r.get("hybrid") is None else r.get(name) for r in recorded_rewards]

        reward.__name__ = name
        return reward

    funcs = [component(name) for name in REWARD_NAMES]
    return funcs, [1.0, 0.0, 0.0, 0.0, format_weight]
