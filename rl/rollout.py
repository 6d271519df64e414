"""Rollouts through the llmi graph, as a TRL `rollout_func`.

TRL hands the function the prompts of a step, each already repeated `num_generations` times. For each entry, in
order, the graph runs once (planner, parse, tools, assemble), all entries concurrently; the policy's sampled ids
and logprobs come back from the planner (never re-tokenised text), and the executed trajectory rides along for
the rewards. Identical tool calls across the group go through the tool cache.

The policy is either the trainer's own model in-process (requests batched together), or a vLLM policy server
whose LoRA adapter is hot-swapped as training goes (`AdapterSync`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmi_graph import Config, Toolbox, build_graph
from llmi_graph.policy import ModelPolicy, OpenAIPolicy, Policy
from llmi_graph.state import State
from rl.data import RowIndex

Scorer = Callable[[str, dict[str, Any], list[str]], Awaitable[Any]]
"""Scores one finished rollout: (rollout id, state as JSON, the row's tools), e.g. `RewardSuite.score`."""


class RolloutTimes:
    """Where rollout time went, for logging and bench/rl.py."""

    def __init__(self) -> None:
        self.generation_s = self.tools_s = self.total_s = 0.0
        self.rollouts = 0

    def add(self, states: list[State], wall_s: float) -> None:
        self.total_s += wall_s
        self.rollouts += len(states)
        # concurrent runs: charge the step the slowest run's planner and tool phases
        self.generation_s += max((s.timings.get("planner_s", 0.0) for s in states), default=0.0)
        self.tools_s += max((s.timings.get("tools_s", 0.0) for s in states), default=0.0)


def trainer_policy(trainer: Any) -> Policy:
    """The trainer's own (peft-wrapped) model, sampling in-process."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return ModelPolicy(model, trainer.processing_class, name="trainer", max_batch=64)


class GraphRollout:
    """A TRL rollout function that runs the llmi graph once per (repeated) prompt."""

    def __init__(
        self,
        rows: RowIndex,
        cfg: Config,
        policy_factory: Callable[[Any], Policy] = trainer_policy,
        toolbox: Toolbox | None = None,
        max_concurrency: int = 64,
        scorer: Scorer | None = None,
    ):
        if cfg.repair_rounds:
            # The trainer learns from the first turn's tokens only; rewards for images a repair turn made would be
            # credited to a draft that did not make them. Repairs are recorded per turn (State.repairs) for a
            # multi-turn trainer, which is not built.
            raise ValueError(
                f"repair_rounds={cfg.repair_rounds}: RL rollouts run without repair (GRPO trains on the first turn)"
            )
        if cfg.approval_tools:
            raise ValueError(f"approve={cfg.approve!r} (LLMI_APPROVE): RL rollouts cannot wait for a person; unset it")
        self.rows, self.cfg, self.policy_factory = rows, cfg, policy_factory
        self.toolbox, self.max_concurrency, self.scorer = toolbox, max_concurrency, scorer
        self.times = RolloutTimes()

    def run_states(self, prompts: list[Any], policy: Policy, ids: list[str] | None = None) -> list[State]:
        """Run the graph for each prompt (in order) and return the final states. With `ids` and a `scorer`, each
        run is scored (judges included) as soon as it finishes, while the other drafts are still being written; the
        reward functions then find the result ready (`RewardSuite.score` computes each rollout id once)."""
        graph = build_graph(policy=policy, toolbox=self.toolbox)

        async def run_all() -> list[State]:
            gate = asyncio.Semaphore(self.max_concurrency)

            async def one(k: int, prompt: Any) -> State:
                row = self.rows[prompt]
                async with gate:
                    state = State.model_validate(await graph.ainvoke(row.request(), context=self.cfg))
                if self.scorer is not None and ids is not None:
                    try:
                        await self.scorer(ids[k], state.model_dump(mode="json"), list(row.tools))
                    except Exception:  # kept in the scorer's result: the reward function raises it
                        pass
                return state

            return list(await asyncio.gather(*(one(k, p) for k, p in enumerate(prompts))))

        started = time.perf_counter()
        states = asyncio.run(run_all())
        self.times.add(states, time.perf_counter() - started)
        return states

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        ids = [uuid.uuid4().hex for _ in prompts]
        states = self.run_states(prompts, self.policy_factory(trainer), ids)
        return rollout_output(states, ids)


def rollout_output(states: list[State], ids: list[str] | None = None) -> dict[str, list[Any]]:
    """TRL's rollout contract: ids and logprobs as sampled, plus the trajectories for the reward functions."""
    out: dict[str, list[Any]] = {
        "prompt_ids": [],
        "completion_ids": [],
        "logprobs": [],
        "llmi_state": [],
        "rollout_id": [],
    }
    for k, state in enumerate(states):
        policy = state.policy
        if policy is None or policy.prompt_token_ids is None or policy.completion_token_ids is None:
            raise RuntimeError(
                "the policy returned no token ids: RL needs a backend that reports them (the in-process model, "
                "or vLLM with return_token_ids)"
            )
        if policy.logprobs is None or len(policy.logprobs) != len(policy.completion_token_ids):
            raise RuntimeError("the policy returned no logprobs (or not one per sampled token)")
        out["prompt_ids"].append(policy.prompt_token_ids)
        out["completion_ids"].append(policy.completion_token_ids)
        out["logprobs"].append(policy.logprobs)
        out["llmi_state"].append(state.model_dump(mode="json"))
        out["rollout_id"].append(ids[k] if ids is not None else uuid.uuid4().hex)
    return out


class AdapterSync(TrainerCallback):
    """Save the LoRA adapter every `every` optimizer steps and hot-load it into the vLLM policy server by name;
    rollouts then sample from it. The previous adapter is unloaded, so the server holds one. With several
    training processes, the main one pushes and the others wait at a barrier; all derive the name from the step.

    A resumed run first pushes the checkpoint's adapter, as `policy-step-<resumed step>`, before its first rollout:
    a fresh server has never seen it, and a server that outlived the crash may hold an older copy under that name
    (loading replaces it)."""

    def __init__(self, server: Any, base_name: str, directory: Path, every: int = 1):
        self.server, self.base_name, self.directory, self.every = server, base_name, directory, max(1, every)
        self.resumed_at = 0

    def name_for(self, step: int) -> str:
        """The adapter rollouts should request at `step`: the last push (the base model before the first one)."""
        synced = max((step // self.every) * self.every, self.resumed_at if step >= self.resumed_at else 0)
        return f"policy-step-{synced}" if synced > 0 else self.base_name

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # Trainer.train has loaded the checkpoint's weights (and global_step) by now, and samples nothing yet
        if state.global_step > 0:
            self.resumed_at = state.global_step
            self._push(state, model, previous=None)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every == 0:
            self._push(state, model, previous=self.name_for(state.global_step - 1))

    def _push(self, state: Any, model: Any, previous: str | None) -> None:
        """Save the model's adapter and load it as `name_for(global_step)`; unload `previous` (not the base)."""
        if state.is_world_process_zero:
            name = self.name_for(state.global_step)
            path = self.directory / name
            getattr(model, "module", model).save_pretrained(path)
            self.server.load_lora_adapter(name, path)
            if previous is not None and previous not in (name, self.base_name):
                self.server.unload_lora_adapter(previous)
                shutil.rmtree(self.directory / previous, ignore_errors=True)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def server_policy(server_url: str, sync: AdapterSync | None, base_name: str, api_key: str | None = None) -> Callable:
    """A policy factory for rollouts sampled by a vLLM server (the current adapter, or the base model)."""

    def factory(trainer: Any) -> Policy:
        name = sync.name_for(trainer.state.global_step) if sync and trainer is not None else base_name
        return OpenAIPolicy(server_url, name, api_key=api_key)

    return factory
