"""Benchmark: GRPO on CPU, and rollouts through the graph against raw vLLM generation, in the same run.

1. Seconds per GRPO step (SmolLM2-135M + LoRA, the trainer sampling in-process), split into generation, tools,
   judges and the optimizer (forward, backward, update), read from the trainer's own log.
2. Rollout throughput through the llmi graph (planner -> parse -> tools -> assemble) with the policy on the vLLM
   CPU server, as a ratio of raw vLLM generation throughput on the same server and the same prompts.
3. GRPO's loss pass (forward + backward of one micro-batch) TRL's way, the group's prompt run once per completion,
   against rl/prefix.py's, the prompt run once per micro-batch, on the same inputs (the demo's settings).

Run: .venv/bin/python bench/rl.py [--steps 3] [--rollouts 32] [--only loss-pass]   (part 2 needs .venv-vllm:
make vllm-venv; part 3 needs no server)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
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


class RequestFailed(RuntimeError):
    """A raw vLLM request got no usable reply."""


def completion_tokens(index: int, reply: httpx.Response) -> int:
    """The reply's completion token count, or RequestFailed saying which request failed and what came back."""
    try:
        return int(reply.json()["usage"]["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        raise RequestFailed(
            f"raw vLLM request {index} failed: HTTP {reply.status_code}: {reply.text[:300]!r}"
        ) from None


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
                        # no per-request seed: vLLM's CPU worker fails seeded batches ("CPU Generator does not use
                        # offset", HTTP 500), and the graph side sends none either
                    },
                )
                for m in prompts
            )
        )
        elapsed = time.perf_counter() - started
    tokens = sum(completion_tokens(i, r) for i, r in enumerate(replies))
    return tokens / elapsed, tokens


def bench_throughput(rollouts: int, tmp: Path) -> bool:
    """Print graph against raw vLLM throughput; False when a request failed (the reason is printed)."""
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
        return True
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
    except RequestFailed as exc:
        kept = Path.cwd() / "bench-rl-vllm.log"  # the temporary folder goes when the bench ends; the log must not
        shutil.copyfile(tmp / "vllm.log", kept)
        print(f"rollout throughput: failed ({exc}); the server log: {kept}")
        return False
    finally:
        server.stop()
    print(f"rollout throughput ({rollouts} prompts at once, <=96 tokens, vLLM CPU server, same prompts):")
    print(f"  raw vLLM generation   {raw_tps:7.1f} tokens/s  ({raw_tokens} tokens)")
    print(f"  through the graph     {graph_tps:7.1f} tokens/s  ({graph_tokens} tokens, tools and assembly included)")
    print(f"  ratio                 {graph_tps / raw_tps:7.2f}")
    return True


def bench_loss_pass(micro_batches: list[int], reps: int, threads: int | None, tmp: Path) -> None:
    """Forward + backward of GRPO's loss on one micro-batch, TRL's way and with the shared prompt, same inputs."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from rl.prefix import SharedPrefixLogps
    from rl.train import grpo_args

    class Trainer(SharedPrefixLogps, GRPOTrainer):
        pass

    # the demo's settings: G=8 completions of <=96 tokens of one prompt, LoRA on every linear module
    cfg = dataclasses.replace(demo_config(tmp, minutes=0), output_dir=str(tmp / "loss-pass"), report_to="none")
    base = model_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(base)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        target_modules=cfg.lora_target_modules.split(","),
    )
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        processing_class=tokenizer,
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=grpo_args(cfg, [1.0]),
        train_dataset=Dataset.from_dict({"prompt": ["unused"]}),
        peft_config=lora,
    )
    model = trainer.model
    model.train()
    if threads:
        torch.set_num_threads(threads)

    # a real planner prompt (system prompt, worked examples, request) of the longer kind, ~360 tokens
    prompts = (
        tokenizer.apply_chat_template(
            build_messages(row.prompt, row.tools, row.image_num), add_generation_prompt=True, tokenize=True
        )["input_ids"]
        for row in load_rows(TRAIN_FILE)
    )
    prompt = next(p for p in prompts if len(p) >= 350)
    generator = torch.Generator().manual_seed(0)
    group, width = cfg.num_generations, cfg.max_completion_length
    lengths = torch.randint(width * 2 // 3, width + 1, (group,), generator=generator)
    completion_ids = torch.randint(100, len(tokenizer), (group, width), generator=generator)
    completion_mask = (torch.arange(width) < lengths.unsqueeze(1)).long()
    advantages = torch.randn(group, generator=generator)

    def loss_pass(rows: int, shared: bool) -> float:
        inputs = {
            "prompt_ids": torch.tensor([prompt] * rows),
            "prompt_mask": torch.ones(rows, len(prompt), dtype=torch.long),
            "completion_ids": completion_ids[:rows],
            "completion_mask": completion_mask[:rows],
            "advantages": advantages[:rows],
        }
        trainer.shared_prefix = shared
        trainer.current_gradient_accumulation_steps = group // rows
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        return time.perf_counter() - started

    print(
        f"GRPO loss pass (forward + backward, one micro-batch; SmolLM2-135M + LoRA r={cfg.lora_r} on all linear "
        f"modules, G={group}, a {len(prompt)}-token prompt, completions of {int(lengths.min())}-{width} tokens, "
        f"torch threads: {torch.get_num_threads()}; median of {reps}):"
    )
    for rows in micro_batches:
        loss_pass(rows, shared=False)  # warm-up, both ways
        loss_pass(rows, shared=True)
        trl_s, shared_s = [], []
        for _ in range(reps):  # alternate, so load on the machine hits both alike
            trl_s.append(loss_pass(rows, shared=False))
            shared_s.append(loss_pass(rows, shared=True))
        trl, shared = statistics.median(trl_s), statistics.median(shared_s)
        passes = group // rows
        print(
            f"  micro-batch {rows}:  TRL {trl:6.2f} s   shared prompt {shared:6.2f} s   {trl / shared:5.2f}x   "
            f"(a group of {group}: {trl * passes:.1f} s -> {shared * passes:.1f} s)"
        )


SECTIONS = ("grpo", "throughput", "loss-pass")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps to time (part 1).")
    parser.add_argument("--rollouts", type=int, default=32, help="Prompts sent at once (part 2).")
    parser.add_argument("--reps", type=int, default=3, help="Timed loss passes each way per micro-batch (part 3).")
    parser.add_argument("--micro-batches", default="4,8", help="Micro-batch sizes for the loss pass (part 3).")
    parser.add_argument(
        "--threads", type=int, help="Torch threads for part 3 (default: torch's; 1 is steadier on a busy machine)."
    )
    parser.add_argument("--only", action="append", choices=SECTIONS, help="Run only this part (repeatable).")
    args = parser.parse_args()
    sections = args.only or SECTIONS
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        if "grpo" in sections:
            bench_steps(args.steps, Path(tmp))
        if "throughput" in sections:
            ok = bench_throughput(args.rollouts, Path(tmp))
        if "loss-pass" in sections:
            bench_loss_pass([int(b) for b in args.micro_batches.split(",")], args.reps, args.threads, Path(tmp))
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
