"""Benchmark: GRPO on CPU, and rollouts through the graph against raw vLLM generation, in the same run.

1. Seconds per GRPO step (SmolLM2-135M + LoRA, the trainer sampling in-process), split into generation, tools,
   judges and the optimizer (forward, backward, update), read from the trainer's own log.
2. Rollout throughput through the llmi graph (planner -> parse -> tools -> assemble) with the policy on the vLLM
   CPU server, as a ratio of raw vLLM generation throughput on the same server and the same prompts.

Run: .venv/bin/python bench/rl.py [--steps 3] [--rollouts 32]   (part 2 needs .venv-vllm: make vllm-venv)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from llmi_graph import Config
from llmi_graph.policy import OpenAIPolicy
from llmi_graph.prompts import build_messages
from rl.config import TrainConfig
from rl.data import TRAIN_FILE, RowIndex, load_rows
from rl.demo import demo_config
from rl.rollout import GraphRollout
from rl.train import model_path, train


def bench_steps(steps: int, tmp: Path) -> None:
    # the CPU demo's settings (rl/demo.py), for a fixed number of steps
    cfg = dataclasses.replace(
        demo_config(tmp, minutes=0), max_steps=steps, time_budget_minutes=None, save_steps=1000, report_to="none"
    )
    train(cfg)
    log = [json.loads(line) for line in open(tmp / "train" / "log.jsonl")]
    per_step = [e for e in log if "step_time" in e]
    # the trainer logs cumulative means of our timings; recover per-step values from the last entry
    last = log[-1]
    step_time = statistics.mean(e["step_time"] for e in per_step)
    generation, tools, judges = last["time/generation_s"], last["time/tools_s"], last["time/judges_s"]
    rollout = last["time/rollout_s"]
    optimizer = step_time - rollout - judges
    print(f"GRPO step on CPU ({steps} steps, the demo settings: G=8 x 1 prompt, <=96 tokens, SmolLM2-135M + LoRA):")
    print(f"  step                  {step_time:7.2f} s")
    print(f"    generation          {generation:7.2f} s  ({generation / step_time:.0%})")
    print(f"    tools               {tools:7.2f} s  ({tools / step_time:.0%})")
    print(f"    other rollout work  {rollout - generation - tools:7.2f} s")
    print(f"    judges              {judges:7.2f} s  ({judges / step_time:.0%})")
    print(f"    optimizer           {optimizer:7.2f} s  ({optimizer / step_time:.0%})  forward, backward, update")


async def raw_throughput(url: str, model: str, prompts: list[list[dict]], max_tokens: int) -> tuple[float, int]:
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        replies = await asyncio.gather(
            *(
                client.post(
                    f"{url}/chat/completions",
                    json={
                        "model": model,
                        "messages": m,
                        "max_tokens": max_tokens,
                        "temperature": 0.8,
                        "seed": i,
                    },
                )
                for i, m in enumerate(prompts)
            )
        )
        elapsed = time.perf_counter() - started
    tokens = sum(r.json()["usage"]["completion_tokens"] for r in replies)
    return tokens / elapsed, tokens


def bench_throughput(rollouts: int, tmp: Path) -> None:
    from servers.policy import PolicyServer, PolicyServerConfig, VllmMissing

    rows = load_rows(TRAIN_FILE)[:rollouts]
    max_tokens = 96
    try:
        server = PolicyServer(
            PolicyServerConfig(
                model=model_path(TrainConfig()), served_model_name="bench", log_path=str(tmp / "vllm.log")
            )
        ).start()
    except VllmMissing as exc:
        print(f"rollout throughput: skipped ({exc})")
        return
    try:
        messages = [build_messages(r.prompt, ["code", "edit"], r.image_num) for r in rows]
        asyncio.run(raw_throughput(server.url, "bench", messages[:4], 8))  # warm-up
        raw_tps, raw_tokens = asyncio.run(raw_throughput(server.url, "bench", messages, max_tokens))
        cfg = Config(max_tokens=max_tokens, temperature=0.8, top_p=1.0, tool_cache=True, image_dir=str(tmp / "images"))
        rollout = GraphRollout(RowIndex(rows), cfg, policy_factory=lambda t: OpenAIPolicy(server.url, "bench"))
        started = time.perf_counter()
        out = rollout([r.prompt for r in rows], trainer=None)
        elapsed = time.perf_counter() - started
        graph_tokens = sum(len(ids) for ids in out["completion_ids"])
        graph_tps = graph_tokens / elapsed
    finally:
        server.stop()
    print(f"rollout throughput ({rollouts} prompts at once, <=96 tokens, vLLM CPU server, same prompts):")
    print(f"  raw vLLM generation   {raw_tps:7.1f} tokens/s  ({raw_tokens} tokens)")
    print(f"  through the graph     {graph_tps:7.1f} tokens/s  ({graph_tokens} tokens, tools and assembly included)")
    print(f"  ratio                 {graph_tps / raw_tps:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_steps(args.steps, Path(tmp))
        bench_throughput(args.rollouts, Path(tmp))


if __name__ == "__main__":
    main()
