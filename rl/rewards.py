"""The judges' components as TRL reward functions.

TRL sums `weight * reward` over reward functions, but the paper's R has a product (m n) and a missing-score policy,
so R is one function (`hybrid`, weight 1) computed by `judges.hybrid`, and its components are separate functions
with weight 0: TRL logs each as `rewards/<name>/mean` without counting it twice. `format` is the documented
partial-credit format reward (`judges.rule.format_score`), weight 0 unless set (the CPU demo sets it); with
`format_needs_success_after_steps`, from that step on a tag whose tool made no image earns no format credit.

The content rewards (`rl.content`) are switched on by giving them a weight (0: logged only; None: not computed):
`relevance` (MiniLM cosine of each tag to the prompt), `chart_numbers` (the prompt's numbers and names in working
chart code) and `repetition` (minus the penalty for repeating what was written for another prompt; its weight is
positive like the others').

Each completion is scored once (judges asked concurrently, async); every function reads that result. A sample the
missing-score policy marks unscored returns None from every function, so TRL gives it no advantage.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from judges.hybrid import HybridOptions, HybridReward, score_state
from judges.llm import LLMJudge
from judges.mllm import MLLMJudge
from judges.rule import format_score
from llmi_graph.state import State
from rl.collapse import TagWatch
from rl.content import (
    RepetitionMemory,
    chart_numbers_score,
    relevance_scores,
    succeeded_indices,
    worked_example_texts,
    written_texts,
)

RewardFunc = Callable[..., Any]


@dataclass
class Batch:
    """One call of a reward function: the rollouts' states, ids, required tools and hybrid results, and the step."""

    states: list[dict[str, Any]]
    rollout_ids: list[str]
    tools: list[list[str]]
    results: list[HybridReward]
    step: int


BatchScorer = Callable[[Batch], Awaitable[list[float | None]]]


class RewardSuite:
    """Scores rollouts once and serves the components to TRL's reward functions."""

    def __init__(
        self,
        options: HybridOptions | None = None,
        llm_judge: LLMJudge | None = None,
        mllm_judge: MLLMJudge | None = None,
        format_weight: float = 0.0,
        hybrid_weight: float = 1.0,
        *,
        format_needs_success_after_steps: int | None = None,
        format_warmup_failed_credit: float = 1.0,
        relevance_weight: float | None = None,
        chart_numbers_weight: float | None = None,
        repetition_weight: float | None = None,
        repetition: RepetitionMemory | None = None,
    ):
        self.options = options or HybridOptions()
        self.llm_judge, self.mllm_judge = llm_judge, mllm_judge
        self.format_weight, self.hybrid_weight = format_weight, hybrid_weight
        self.format_needs_success_after_steps = format_needs_success_after_steps
        if not 0.0 <= format_warmup_failed_credit <= 1.0:
            raise ValueError(f"format_warmup_failed_credit must be in [0, 1], got {format_warmup_failed_credit}")
        self.format_warmup_failed_credit = format_warmup_failed_credit
        self.relevance_weight, self.chart_numbers_weight = relevance_weight, chart_numbers_weight
        self.repetition_weight = repetition_weight
        self.repetition = repetition
        if repetition_weight is not None and repetition_weight < 0:
            raise ValueError(
                f"repetition_weight is {repetition_weight}: `repetition` is already minus the penalty, give it a "
                "positive weight (0 logs it only)"
            )
        if repetition_weight is not None and repetition is None:
            self.repetition = RepetitionMemory(seed=worked_example_texts())
        self._results: OrderedDict[str, asyncio.Future[HybridReward]] = OrderedDict()
        self.judge_seconds = 0.0  # for bench/rl.py
        self.watch: TagWatch | None = None  # sees each rollout's tags once (rl.collapse)

    async def score(self, rollout_id: str, state: dict[str, Any], tools: list[str]) -> HybridReward:
        """The hybrid reward of one rollout, computed once however many functions ask."""
        future = self._results.get(rollout_id)
        if future is not None and future.done():
            return future.result()  # perhaps scored in the rollout's own event loop (GraphRollout's scorer)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._results[rollout_id] = future
            while len(self._results) > 4096:
                self._results.popitem(last=False)
            if self.watch is not None:
                self.watch.observe(state)
            started = time.perf_counter()
            try:
                result = await score_state(
                    State.model_validate(state), self.llm_judge, self.mllm_judge, self.options, list(tools or [])
                )
                future.set_result(result)
            except BaseException as exc:
                future.set_exception(exc)
                raise
            finally:
                self.judge_seconds += time.perf_counter() - started
        return await asyncio.shield(future)

    def _reward(self, name: str, scorer: BatchScorer) -> RewardFunc:
        """A TRL reward function: score the batch once (judges included), then `scorer`; an unscored sample gets None.

        The step is TRL's `trainer_state.global_step`; called without one, the number of batches this function scored.
        """
        batches = 0

        async def reward(
            prompts: list[Any],
            completions: list[Any],
            llmi_state: list[dict[str, Any]],
            rollout_id: list[str],
            tools: list[list[str]] | None = None,
            trainer_state: Any = None,
            **kwargs: Any,
        ) -> list[float | None]:
            nonlocal batches
            step = trainer_state.global_step if trainer_state is not None else batches
            batches += 1
            tools = tools or [[] for _ in prompts]
            results = await asyncio.gather(
                *(self.score(rid, st, t) for rid, st, t in zip(rollout_id, llmi_state, tools, strict=True))
            )
            values = await scorer(Batch(list(llmi_state), list(rollout_id), list(tools), list(results), step))
            return [None if r.reward is None else v for r, v in zip(results, values, strict=True)]

        reward.__name__ = name
        return reward

    def _component(self, name: str, pick: Callable[[HybridReward, dict[str, Any], int], float | None]) -> RewardFunc:
        """A reward function that reads one number per sample from its result and state (and the step)."""

        async def scorer(batch: Batch) -> list[float | None]:
            return [pick(r, s, batch.step) for r, s in zip(batch.results, batch.states, strict=True)]

        return self._reward(name, scorer)

    def failed_credit(self, step: int) -> float:
        """The share of its credit a tag whose tool made no image earns at `step`, in format and relevance alike:
        all of it without `format_needs_success_after_steps` N, `format_warmup_failed_credit` before step N (the
        warm-up), none from step N on."""
        after = self.format_needs_success_after_steps
        if after is None:
            return 1.0
        return self.format_warmup_failed_credit if step < after else 0.0

    def format_reward(self, state: dict[str, Any], step: int) -> float:
        """The partial-credit format reward; a failed tag earns `failed_credit(step)` of its credit."""
        succeeded = None if self.format_needs_success_after_steps is None else succeeded_indices(state)
        return format_score(
            state["draft"],
            state["image_num"],
            len(state["input_images"]),
            succeeded=succeeded,
            failed_credit=self.failed_credit(step),
        )

    async def _relevance(self, batch: Batch) -> list[float | None]:
        credit = self.failed_credit(batch.step)  # MiniLM blocks: off the event loop
        return await asyncio.to_thread(relevance_scores, batch.states, failed_credit=credit)

    async def _chart_numbers(self, batch: Batch) -> list[float | None]:
        return [chart_numbers_score(s, t) for s, t in zip(batch.states, batch.tools, strict=True)]

    async def _repetition(self, batch: Batch) -> list[float | None]:
        assert self.repetition is not None
        drafts = [
            (s["prompt"], rid, written_texts(s.get("calls") or []))
            for s, rid in zip(batch.states, batch.rollout_ids, strict=True)
        ]
        penalties = await asyncio.to_thread(self.repetition.penalties, drafts)
        return [-p if p else 0.0 for p in penalties]

    def functions(self) -> tuple[list[RewardFunc], list[float]]:
        """TRL's `reward_funcs` and `reward_weights`."""
        funcs = [
            self._component("hybrid", lambda r, s, step: r.reward),
            self._component("image_num", lambda r, s, step: r.image_num_score),
            self._component("llm_judge", lambda r, s, step: r.llm),
            self._component("mllm_judge", lambda r, s, step: r.mllm),
            self._component("format", lambda r, s, step: self.format_reward(s, step)),
        ]
        weights = [self.hybrid_weight, 0.0, 0.0, 0.0, self.format_weight]
        if self.options.tool_weight:
            funcs.append(self._component("tool", lambda r, s, step: r.tool_score))
            weights.append(0.0)  # already inside R
        content: list[tuple[str, float | None, BatchScorer]] = [
            ("relevance", self.relevance_weight, self._relevance),
            ("chart_numbers", self.chart_numbers_weight, self._chart_numbers),
            ("repetition", self.repetition_weight, self._repetition),
        ]
        for name, weight, scorer in content:
            if weight is not None:  # None: switched off, never computed
                funcs.append(self._reward(name, scorer))
                weights.append(weight)
        return funcs, weights
