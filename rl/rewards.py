"""The judges' components as TRL reward functions.

TRL sums `weight * reward` over reward functions, but the paper's R has a product (m n) and a missing-score policy,
so R is one function (`hybrid`, weight 1) computed by `judges.hybrid`, and its components are separate functions
with weight 0: TRL logs each as `rewards/<name>/mean` without counting it twice. `format` is the documented
partial-credit format reward (`judges.rule.format_score`), weight 0 unless set (the CPU demo sets it).

Each completion is scored once (judges asked concurrently, async); every function reads that result. A sample the
missing-score policy marks unscored returns None from every function, so TRL gives it no advantage.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from judges.hybrid import HybridOptions, HybridReward, score_state
from judges.llm import LLMJudge
from judges.mllm import MLLMJudge
from judges.rule import format_score
from llmi_graph.state import State

RewardFunc = Callable[..., Any]


class RewardSuite:
    """Scores rollouts once and serves the components to TRL's reward functions."""

    def __init__(
        self,
        options: HybridOptions | None = None,
        llm_judge: LLMJudge | None = None,
        mllm_judge: MLLMJudge | None = None,
        format_weight: float = 0.0,
        hybrid_weight: float = 1.0,
    ):
        self.options = options or HybridOptions()
        self.llm_judge, self.mllm_judge = llm_judge, mllm_judge
        self.format_weight, self.hybrid_weight = format_weight, hybrid_weight
        self._results: OrderedDict[str, asyncio.Future[HybridReward]] = OrderedDict()
        self.judge_seconds = 0.0  # for bench/rl.py

    async def score(self, rollout_id: str, state: dict[str, Any], tools: list[str]) -> HybridReward:
        """The hybrid reward of one rollout, computed once however many functions ask."""
        future = self._results.get(rollout_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._results[rollout_id] = future
            while len(self._results) > 4096:
                self._results.popitem(last=False)
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

    def _component(self, name: str, pick: Callable[[HybridReward, dict[str, Any]], float | None]) -> RewardFunc:
        async def reward(
            prompts: list[Any],
            completions: list[Any],
            llmi_state: list[dict[str, Any]],
            rollout_id: list[str],
            tools: list[list[str]] | None = None,
            **kwargs: Any,
        ) -> list[float | None]:
            tools = tools or [[] for _ in prompts]
            results = await asyncio.gather(
                *(self.score(rid, st, t) for rid, st, t in zip(rollout_id, llmi_state, tools, strict=True))
            )
            out: list[float | None] = []
            for result, state in zip(results, llmi_state, strict=True):
                out.append(None if result.reward is None else pick(result, state))
            return out

        reward.__name__ = name
        return reward

    def functions(self) -> tuple[list[RewardFunc], list[float]]:
        """TRL's `reward_funcs` and `reward_weights`."""
        funcs = [
            self._component("hybrid", lambda r, s: r.reward),
            self._component("image_num", lambda r, s: r.image_num_score),
            self._component("llm_judge", lambda r, s: r.llm),
            self._component("mllm_judge", lambda r, s: r.mllm),
            self._component("format", lambda r, s: format_score(s["draft"], s["image_num"], len(s["input_images"]))),
        ]
        weights = [self.hybrid_weight, 0.0, 0.0, 0.0, self.format_weight]
        if self.options.tool_weight:
            funcs.append(self._component("tool", lambda r, s: r.tool_score))
            weights.append(0.0)  # already inside R
        return funcs, weights
